package collector

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/go-kit/log"

	"github.com/celery-exporter/celery_exporter/internal/handoff"
)

// gapStream is a raw-body stream that records its gaps as the real readers do.
type gappyStream struct {
	rawStream
	gaps *handoff.Gaps
}

func (g gappyStream) GapsBefore(n uint64) uint64 { return g.gaps.Before(n) }

// The estimate of events lost in a subscription gap, from the heartbeats around it: tasks the
// worker's processed count grew by less the task-started events received meanwhile, and the
// heartbeats its freq says were sent.
func TestEventSourceEstimatesLostEvents(t *testing.T) {
	hb := func(pid, processed int, ts float64) string {
		b, _ := json.Marshal(ev{"type": "worker-heartbeat", "hostname": "celery@w", "freq": 2.0, "active": 0,
			"processed": processed, "pid": pid, "timestamp": ts})
		return string(b)
	}
	started := func(id int) string {
		b, _ := json.Marshal(taskEv("task-started", fmt.Sprint(id), "celery@w", 1))
		return string(b)
	}
	const gap = "gap"
	for _, tc := range []struct {
		name                  string
		stream                []string
		wantStarted, wantBeat float64
	}{
		{"no gap: nothing lost", []string{hb(1, 0, 100), started(1), started(2), hb(1, 2, 102), hb(1, 2, 104)}, 0, 0},
		{"tasks and heartbeats in the gap", []string{hb(1, 0, 100), started(1), started(2), hb(1, 2, 102), gap, started(9), hb(1, 7, 110)}, 4, 3},
		{"the gap is reached only where the stream reaches it", []string{hb(1, 0, 100), started(1), hb(1, 1, 102), started(2), gap, hb(1, 6, 104)}, 4, 0},
		{"two gaps between two heartbeats", []string{hb(1, 0, 100), started(1), hb(1, 1, 102), gap, started(5), gap, hb(1, 4, 108)}, 2, 2},
		{"a worker without task events loses only heartbeats", []string{hb(1, 0, 100), hb(1, 2, 102), gap, hb(1, 9, 108)}, 0, 2},
		{"restarted in the gap: its new count, no heartbeat estimate", []string{hb(1, 0, 100), started(1), hb(1, 1, 102), gap, hb(2, 3, 150)}, 3, 0},
		{"first heard after the gap: no baseline", []string{gap, started(1), hb(1, 5, 100), hb(1, 5, 102)}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gaps := &handoff.Gaps{}
			s := NewEventSource(log.NewNopLogger(), gappyStream{gaps: gaps}, EventOptions{SentWait: -1}, emptyModel())
			pos := uint64(0)
			for _, p := range tc.stream {
				if p == gap {
					gaps.Down(pos)
					gaps.Up()
					continue
				}
				s.handleStreamed(p)
				pos++
			}
			expectSamples(t, samples(t, AsCollector(s)), map[string]float64{
				`celery_exporter_events_lost_estimated_total{type="task-started"}`:     tc.wantStarted,
				`celery_exporter_events_lost_estimated_total{type="worker-heartbeat"}`: tc.wantBeat,
			})
		})
	}
}
