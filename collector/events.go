// Scrapes the Celery event stream: task counters and histograms, worker liveness and counts from
// heartbeats, running tasks, and the health of the subscription.

package collector

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/event"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/state"
	"github.com/celery-exporter/celery_exporter/internal/tasks"
)

// The event source's code is split by job: this file runs the stream and scrapes;
// events_tasks.go correlates a task's events (held until task-sent names the queue);
// events_series.go resolves and caps the series; events_workers.go keeps worker liveness in the
// model and the hostname label; running.go the running-task set.

// EventOptions configure the event source; DefaultEventOptions has the defaults, which a zero
// cap, bucket list or default queue takes (see withDefaults). The worker liveness slack and the
// task cache's bounds are the model's (state.Options).
type EventOptions struct {
	// PurgeAfter is how long a down worker's series stay (at celery_worker_up 0) before they go.
	PurgeAfter       time.Duration
	RuntimeBuckets   []float64
	QueueWaitBuckets []float64
	// SentWait is how long a task's events wait for its task-sent (which carries the queue) when
	// they arrive first: a producer publishes the event after pushing the message, so a worker's
	// task-received often wins the race.
	SentWait     time.Duration
	DefaultQueue string
	// Cardinality caps; past them the label value becomes "other". Less than 1: the default.
	MaxTaskNames         int
	MaxQueues            int // queue_name values from task-sent
	MaxExceptionsPerTask int
	MaxWorkers           int
	// InitialExceptions are the exception classes whose celery_task_failed_total series are
	// created at 0 when a (name, hostname, queue_name) is first seen, so the first such failure
	// is an increase (--task.initial-exceptions). They count against MaxExceptionsPerTask.
	InitialExceptions []string
	// ActiveTTL is how long a running task that only remote control reported (no task-started
	// arrived) is kept without a reply listing it again (default 5m).
	ActiveTTL time.Duration
}

// EventStream is where event messages come from: Redis pub/sub (internal/listener) or an AMQP
// queue bound to the event exchange (internal/amqp). Out carries one broker message per string.
type EventStream interface {
	Run(ctx context.Context)
	Out() <-chan string
	// Up: established now; Ready: established at least once.
	Up() bool
	Ready() bool
	// Reconnects counts lost subscriptions; Dropped, messages dropped on a full hand-off buffer.
	Reconnects() uint64
	Dropped() uint64
}

// rawBodies is implemented by streams whose messages are bare event bodies (AMQP carries the
// content type in the message properties), not kombu's JSON envelope (Redis pub/sub).
type rawBodies interface {
	RawBodies() bool
}

// EventSource turns the Celery event stream into metrics: stream → decoder → model and series →
// metrics, data flowing one way. Payloads are applied by a single goroutine (Run), which owns the
// task correlation state and the series caches without a lock; what others read (workers, task
// sent times) is in the model, behind the model's locks.
type EventSource struct {
	opts   EventOptions
	logger log.Logger
	clk    clock.Clock
	sub    EventStream
	raw    bool // payloads are event bodies, not kombu envelopes
	model  *state.Model

	env   kombu.EnvelopeDecoder
	dec   *event.Decoder
	cache *state.Tasks
	// finished remembers the labels of tasks that just finished, for events that come late.
	finished finishedTasks
	holds    []*tasks.Task // tasks waiting for task-sent, oldest first
	// pending counts the events held in holds' tasks, bounded by maxPendingEvents.
	pending int

	// Owned by the applying goroutine.
	nameQueue     map[string]string // queue task-sent last showed per task name
	names         *labelSet
	exceptions    map[string]*labelSet // per task name label value
	hosts         *labelSet
	lastTaskEvent map[string]time.Time
	queues        *labelSet            // queue_name label values from task-sent
	hostSeen      map[string]time.Time // when each hostname label value was last used, to age out task-only ones
	counters      map[seriesKey]prometheus.Counter
	combos        map[taskSeries]struct{} // (name, hostname, queue) whose zero series exist
	observers     map[seriesKey]prometheus.Observer
	lastExpire    time.Time
	now           time.Time // of the message being applied: one clock read per message, not per event

	syncMu       sync.Mutex
	errBufSynced uint64

	run  runningSet
	lost lostEvents // lost.go

	lastEvent    atomic.Int64  // unix nanos on the exporter's clock
	hostsEvicted atomic.Uint64 // task-only hostnames dropped for a worker at the cap

	sent, received, started, succeeded, rejected, failed, retried, revoked *prometheus.CounterVec
	seen                                                                   *prometheus.CounterVec
	runtime, queueWait                                                     *prometheus.HistogramVec
	eventsTotal, eventErrors, overflow                                     *prometheus.CounterVec
}

// Values of the reason label of celery_exporter_event_errors_total.
const (
	reasonUnknownType = "unknown_type" // a well-formed event of a type Celery does not send
	reasonBufferFull  = "buffer_full"  // dropped between the Redis reader and the decoder
)

// EventErrorReasons are all values of the reason label of celery_exporter_event_errors_total.
var EventErrorReasons = append(append([]string{
	kombu.ReasonInvalidEnvelope, kombu.ReasonInvalidBase64, kombu.ReasonContentType, kombu.ReasonCompressed,
}, event.Reasons()...), reasonUnknownType, reasonBufferFull)

// OverflowLabels are all values of the label label of celery_exporter_label_overflow_total.
var OverflowLabels = []string{"name", "hostname", "exception", "queue_name"}

// NewEventSource returns an event source writing into m; sub may be nil when payloads are fed by
// HandlePayload (tests, benchmarks).
func NewEventSource(logger log.Logger, sub EventStream, opts EventOptions, m *state.Model) *EventSource {
	opts = opts.withDefaults()
	task := []string{"name", "hostname", "queue_name"}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	}
	s := &EventSource{
		opts: opts, logger: logger, clk: m.Clock(), sub: sub, model: m,
		dec:           event.NewDecoder(event.NewInterner(opts.MaxTaskNames + opts.MaxWorkers + 10000)),
		cache:         m.Tasks,
		nameQueue:     map[string]string{},
		exceptions:    map[string]*labelSet{},
		lastTaskEvent: map[string]time.Time{},
		hostSeen:      map[string]time.Time{},
		counters:      map[seriesKey]prometheus.Counter{},
		combos:        map[taskSeries]struct{}{},
		observers:     map[seriesKey]prometheus.Observer{},
		run:           newRunningSet(),

		sent:      counter("task_sent_total", "Tasks sent (task-sent events).", "name", "queue_name"),
		received:  counter("task_received_total", "Tasks received by a worker.", task...),
		started:   counter("task_started_total", "Tasks started.", task...),
		succeeded: counter("task_succeeded_total", "Tasks that succeeded.", task...),
		rejected:  counter("task_rejected_total", "Tasks rejected by a worker.", task...),
		failed:    counter("task_failed_total", "Tasks that failed, by exception class.", append(task, "exception")...),
		retried:   counter("task_retried_total", "Task retries, by the exception that caused them.", append(task, "exception")...),
		revoked:   counter("task_revoked_total", "Tasks revoked, terminated or expired.", append(task, "reason")...),
		seen: counter("worker_tasks_seen_total", "Task-started events received from the worker: one per task it accepted, "+
			"which is what its heartbeat's processed (celery_worker_tasks_processed_total) counts. Less than that means task events were lost.",
			"hostname"),
		runtime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "task_runtime_seconds",
			Help: "Task run time: runtime of task-succeeded; failed minus started time for failures.", Buckets: opts.RuntimeBuckets},
			append(task, "state")),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "task_queue_wait_seconds",
			Help: "Time from sent (or ETA, or received) to started.", Buckets: opts.QueueWaitBuckets},
			[]string{"name", "queue_name"}),
		eventsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "exporter", Name: "events_total",
			Help: "Events received, by type."}, []string{"type"}),
		eventErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "exporter", Name: "event_errors_total",
			Help: "Event messages or events skipped, or values of an event refused (wrong_type, non_finite_number, number_out_of_range, label_truncated), by reason."}, []string{"reason"}),
		overflow: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "exporter", Name: "label_overflow_total",
			Help: "Label values replaced by \"other\" because a cardinality cap was reached."}, []string{"label"}),
	}
	// The decoder cuts every label value to event.MaxLabelBytes, so the byte caps never refuse one:
	// they state the bound.
	s.names = newLabelSet(opts.MaxTaskNames, event.MaxLabelBytes, s.overflow.WithLabelValues("name"))
	s.queues = newLabelSet(opts.MaxQueues, event.MaxLabelBytes, s.overflow.WithLabelValues("queue_name"))
	s.hosts = newLabelSet(opts.MaxWorkers, event.MaxLabelBytes, s.overflow.WithLabelValues("hostname"))
	for _, t := range event.Types() {
		s.eventsTotal.WithLabelValues(t.String())
	}
	// Every reason and label exists at 0 from the start, so increase() sees the first one.
	for _, r := range EventErrorReasons {
		s.eventErrors.WithLabelValues(r)
	}
	for _, l := range OverflowLabels {
		s.overflow.WithLabelValues(l)
	}
	s.lastExpire = s.clk.Now()
	if r, ok := sub.(rawBodies); ok {
		s.raw = r.RawBodies()
	}
	return s
}

// CountEventError counts a message the stream itself skipped (an AMQP message of another content
// type), under the same reasons as the envelope decoder's.
func (s *EventSource) CountEventError(reason string) { s.eventErrors.WithLabelValues(reason).Inc() }

// Up reports whether the event subscription is established now.
func (s *EventSource) Up() bool { return s.sub != nil && s.sub.Up() }

// Run applies payloads from the subscriber until ctx is done.
func (s *EventSource) Run(ctx context.Context) {
	go s.sub.Run(ctx)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	in := s.sub.Out()
	for {
		select {
		case p, ok := <-in:
			if !ok {
				return
			}
			s.handleStreamed(p)
		case <-tick.C:
			s.Tick()
		}
	}
}

// HandlePayload applies one pub/sub message. Bad input is counted by reason and skipped.
func (s *EventSource) HandlePayload(payload string) {
	if s.raw {
		s.now = s.clk.Now()
		if err := s.dec.Decode([]byte(payload), s.apply, s.badEvent); err != nil {
			s.eventErrors.WithLabelValues(event.ReasonInvalidJSON).Inc()
		}
		return
	}
	body, err := s.env.DecodeString(payload)
	if err != nil {
		s.eventErrors.WithLabelValues(kombu.ReasonOf(err, kombu.ReasonInvalidEnvelope)).Inc()
		return
	}
	s.now = s.clk.Now()
	if err := s.dec.Decode(body, s.apply, s.badEvent); err != nil {
		s.eventErrors.WithLabelValues(event.ReasonInvalidJSON).Inc()
	}
}

func (s *EventSource) badEvent(err error) { s.eventErrors.WithLabelValues(event.ReasonOf(err)).Inc() }

// Tick settles what waits on time: held events whose task-sent never came, expired tasks, and
// workers past their purge time. Run calls it periodically; tests call it after moving the clock.
func (s *EventSource) Tick() {
	now := s.clk.Now()
	s.now = now // what released events are applied at
	for len(s.holds) > 0 && !s.holds[0].HoldUntil.After(now) {
		t := s.holds[0]
		s.holds[0] = nil
		s.holds = s.holds[1:]
		if len(t.Pending) > 0 && t.Queue == "" {
			s.release(t)
		}
	}
	s.mergeActive(now)
	if now.Sub(s.lastExpire) >= 5*time.Second {
		s.lastExpire = now
		for _, t := range s.cache.Expire(now) {
			s.release(t)
			s.stopRunning(t.UUID)
		}
		s.expireActive(now)
		s.purgeWorkers(now)
	}
}

func (s *EventSource) apply(ev *event.Event) {
	now := s.now
	s.lastEvent.Store(now.UnixNano())
	s.eventsTotal.WithLabelValues(ev.Type.String()).Inc()
	switch {
	case ev.Type.IsWorker():
		s.applyWorker(ev, now)
	case ev.Type.IsTask():
		s.applyTaskEvent(ev, now)
	default:
		s.eventErrors.WithLabelValues(reasonUnknownType).Inc()
	}
}

var (
	subUpDesc      = desc("exporter_subscription_up", "1 while the event subscription is established.")
	lastEventDesc  = desc("exporter_last_event_timestamp_seconds", "When the last event arrived, on the exporter's clock.")
	reconnectsDesc = desc("exporter_subscription_reconnects_total", "Times the event subscription was lost.")
	trackedDesc    = desc("exporter_tracked_tasks", "Tasks held in the task cache.")
	evictedDesc    = desc("exporter_tracked_tasks_evicted_total", "Tasks dropped from the task cache for capacity or age before they finished.")
)

// Name implements Scraper.
func (s *EventSource) Name() string { return "events" }

// Scrape implements Scraper. It fails while the subscription is down; the metrics kept so far are
// still reported.
func (s *EventSource) Scrape(_ context.Context, ch chan<- prometheus.Metric) error {
	now := s.clk.Now()
	down := s.collectWorkers(ch, now)
	s.collectRunning(ch, now, down)
	s.collectLost(ch)

	up, reconnects := 0.0, 0.0
	if s.sub != nil {
		if s.sub.Up() {
			up = 1
		}
		reconnects = float64(s.sub.Reconnects())
		s.syncDropped()
	}
	ch <- prometheus.MustNewConstMetric(subUpDesc, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(reconnectsDesc, prometheus.CounterValue, reconnects)
	if last := s.lastEvent.Load(); last > 0 {
		ch <- prometheus.MustNewConstMetric(lastEventDesc, prometheus.GaugeValue, float64(last)/1e9)
	}
	ch <- prometheus.MustNewConstMetric(trackedDesc, prometheus.GaugeValue, float64(s.cache.Len()))
	ch <- prometheus.MustNewConstMetric(hostsEvictedDesc, prometheus.CounterValue, float64(s.hostsEvicted.Load()))
	ch <- prometheus.MustNewConstMetric(evictedDesc, prometheus.CounterValue, float64(s.cache.Evicted()))

	for _, c := range []prometheus.Collector{s.sent, s.received, s.started, s.succeeded, s.rejected, s.failed,
		s.retried, s.revoked, s.seen, s.runtime, s.queueWait, s.eventsTotal, s.eventErrors, s.overflow} {
		c.Collect(ch)
	}
	if s.sub != nil && up == 0 {
		return errors.New("event subscription is down")
	}
	return nil
}

// syncDropped carries the reader's count of payloads dropped on a full buffer into
// event_errors_total, so every lost message shows under one metric.
func (s *EventSource) syncDropped() {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	d := s.sub.Dropped()
	if d > s.errBufSynced {
		s.eventErrors.WithLabelValues(reasonBufferFull).Add(float64(d - s.errBufSynced))
		s.errBufSynced = d
	}
}
