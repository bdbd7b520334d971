package collector

import (
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/celery-exporter/celery_exporter/internal/event"
)

// Events lost while the subscription was down (Redis pub/sub and the AMQP event queue keep
// nothing for an absent subscriber) are estimated from what the workers tell afterwards: a
// worker's first heartbeat after a gap says how many tasks it accepted since its last heartbeat
// before the gap (processed), of which the exporter saw the task-started events it received
// meanwhile; the difference are tasks whose task-started was lost. Heartbeats are sent every
// freq seconds, so the time between the two heartbeats says how many were missed.

var lostDesc = desc("exporter_events_lost_estimated_total",
	"Events estimated lost while the event subscription was down: by type, task-started (tasks a worker's processed count grew by "+
		"across the gap, less the task-started events received from it meanwhile; its other task events were most likely lost with it) "+
		"and worker-heartbeat (from the time between a worker's heartbeats around the gap and its freq).", "type")

// gapStream is an event stream that tells where in Out its gaps fall (the Redis listener, the
// AMQP consumer).
type gapStream interface {
	GapsBefore(n uint64) uint64
}

// lostMark is a worker's state at its last heartbeat with counts, for the estimate.
type lostMark struct {
	gaps      uint64  // stream gaps passed then
	processed float64 // ProcessedTotal then
	seen      float64 // task-started events received from it by then
	at        float64 // heartbeat timestamp (the worker's clock)
	pid       int64
}

// lostEvents is the estimate so far. taken and marks are the applying goroutine's; the totals
// are read by scrapes under mu.
type lostEvents struct {
	taken uint64              // payloads taken from the stream so far
	marks map[string]lostMark // per hostname; dropped with the hostname's series

	mu             sync.Mutex
	started, beats float64
}

// handleStreamed applies the next payload of the stream, keeping its position.
func (s *EventSource) handleStreamed(p string) {
	s.HandlePayload(p)
	s.lost.taken++
}

// estimateLost runs at a worker's heartbeat with counts, once the model has applied it. Past a
// gap of the stream it adds the events lost in it.
func (s *EventSource) estimateLost(ev *event.Event, now time.Time) {
	gs, ok := s.sub.(gapStream)
	if !ok {
		return
	}
	w, ok := s.model.Workers.Get(ev.Hostname, now)
	if !ok {
		return
	}
	gaps := gs.GapsBefore(s.lost.taken)
	seen := counterValue(s.series(mSeen, "", ev.Hostname, "", ""))
	if m, ok := s.lost.marks[ev.Hostname]; ok && gaps > m.gaps {
		var started, beats float64
		// Only for a worker that sends task events: without them seen stays 0 and nothing was lost.
		if seen > 0 && w.EventsEnabled {
			started = max(0, (w.ProcessedTotal-m.processed)-(seen-m.seen))
		}
		if ev.Type == event.WorkerHeartbeat && ev.PID == m.pid && m.at > 0 && w.Freq > 0 {
			beats = max(0, math.Round((ev.Timestamp-m.at)/w.Freq)-1)
		}
		s.lost.mu.Lock()
		s.lost.started += started
		s.lost.beats += beats
		s.lost.mu.Unlock()
	}
	at := 0.0
	if ev.Type == event.WorkerHeartbeat {
		at = ev.Timestamp
	}
	if s.lost.marks == nil {
		s.lost.marks = map[string]lostMark{}
	}
	s.lost.marks[ev.Hostname] = lostMark{gaps: gaps, processed: w.ProcessedTotal, seen: seen, at: at, pid: ev.PID}
}

// collectLost sends the estimate.
func (s *EventSource) collectLost(ch chan<- prometheus.Metric) {
	s.lost.mu.Lock()
	started, beats := s.lost.started, s.lost.beats
	s.lost.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, started, event.TaskStarted.String())
	ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, beats, event.WorkerHeartbeat.String())
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}
