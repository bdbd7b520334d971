package collector

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/event"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/tasks"
)

// maxPendingEvents bounds the task events waiting for their task-sent, all tasks together
// (about 250 bytes each: 16 MiB).
const maxPendingEvents = 65536

// overflowValue replaces a label value past its cardinality cap.
const overflowValue = "other"

// unknownName labels task events whose name never reached the exporter (no task-sent or
// task-received seen, e.g. a task revoked on receipt).
const unknownName = "unknown"

// EventOptions configure the event source; DefaultEventOptions has the defaults, which a zero
// cap, TTL, bucket list or default queue takes (see withDefaults).
type EventOptions struct {
	// WorkerTimeout is the slack after 2×freq past the last heartbeat before a worker is down.
	WorkerTimeout time.Duration
	// PurgeAfter is how long a down worker's series stay (at celery_worker_up 0) before they go.
	PurgeAfter       time.Duration
	RuntimeBuckets   []float64
	QueueWaitBuckets []float64
	MaxTracked       int
	// MaxTrackedBytes bounds the task cache in bytes (uuids, labels and held events; see
	// tasks.Task.Size): past it the least recently used tasks are evicted.
	MaxTrackedBytes int64
	TaskTTL         time.Duration
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
	Clock     clock.Clock
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

// QueueHinter knows the queue of a worker that consumes exactly one (from remote control).
type QueueHinter interface {
	SingleQueue(hostname string) (string, bool)
}

// EventSource turns the Celery event stream into metrics: listener → decoder → task and worker
// state → metrics, data flowing one way. Payloads are applied by a single goroutine (Run), so the
// task state needs no lock; worker state is shared with scrapes under mu.
type EventSource struct {
	opts   EventOptions
	logger log.Logger
	clk    clock.Clock
	sub    EventStream
	raw    bool // payloads are event bodies, not kombu envelopes

	env   kombu.EnvelopeDecoder
	dec   *event.Decoder
	cache *tasks.Cache
	// finished remembers the labels of tasks that just finished, for events that come late.
	finished finishedTasks
	holds    []*tasks.Task // tasks waiting for task-sent, oldest first
	// pending counts the events held in holds' tasks, bounded by maxPendingEvents.
	pending int

	// Owned by the applying goroutine.
	nameQueue     map[string]string // queue task-sent last showed per task name
	names         map[string]struct{}
	exceptions    map[string]map[string]struct{}
	hosts         map[string]struct{}
	lastTaskEvent map[string]time.Time
	queues        map[string]struct{}  // queue_name label values, bounded by MaxQueues
	hostSeen      map[string]time.Time // when each hostname label value was last used, to age out task-only ones
	counters      map[seriesKey]prometheus.Counter
	combos        map[taskSeries]struct{} // (name, hostname, queue) whose zero series exist
	observers     map[seriesKey]prometheus.Observer
	lastExpire    time.Time
	now           time.Time // of the message being applied: one clock read per message, not per event

	syncMu       sync.Mutex
	errBufSynced uint64

	hints atomic.Value // QueueHinter

	mu      sync.Mutex
	workers map[string]*workerState
	lost    lostEvents // under mu, but taken: the applying goroutine's

	run runningSet

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

type seriesKey struct {
	metric     uint8
	a, b, c, d string
}

type taskSeries struct{ name, host, queue string }

const (
	mSent uint8 = iota
	mReceived
	mStarted
	mSucceeded
	mRejected
	mFailed
	mRetried
	mRevoked
	mSeen
	mRuntime
	mQueueWait
)

type workerState struct {
	lastSeen  time.Time
	freq      float64
	offline   bool
	offlineAt time.Time

	hasCounts      bool
	active         int64
	processed      int64
	processedTotal float64 // grows across worker restarts, never resets while we run
	loadavg        [3]float64
	swIdent        string
	swVer          string
	swSys          string

	// Task-event detection compares the heartbeat before last with the one before it, so task
	// events batched after a heartbeat still count for the interval they belong to.
	hb            [2]heartbeatMark
	eventsEnabled bool

	// Processes seen under this hostname (two workers sharing a nodename, or one restarted),
	// with each one's last processed count, so their counts never mix; bounded by maxPIDs.
	pids    []pidMark
	clashes float64 // times a process seen before spoke again after another one had

	lost lostMark // for the estimate of events lost in subscription gaps (lost.go)
}

// pidMark is one process of a hostname.
type pidMark struct {
	pid       int64
	processed int64
	hasCounts bool
}

// maxPIDs bounds the processes remembered per hostname.
const maxPIDs = 4

// process returns the mark of pid, adding it (most recent last). clash is true when pid is
// known but was not the last to speak: two live processes share the hostname, since a
// restarted worker's old process never comes back.
func (w *workerState) process(pid int64) (m *pidMark, clash bool) {
	for i := range w.pids {
		if w.pids[i].pid == pid {
			clash = i != len(w.pids)-1
			mark := w.pids[i]
			w.pids = append(append(w.pids[:i:i], w.pids[i+1:]...), mark)
			return &w.pids[len(w.pids)-1], clash
		}
	}
	if len(w.pids) >= maxPIDs {
		w.pids = append(w.pids[:0:0], w.pids[1:]...)
	}
	w.pids = append(w.pids, pidMark{pid: pid})
	return &w.pids[len(w.pids)-1], false
}

type heartbeatMark struct {
	at        time.Time
	processed int64
}

// NewEventSource returns an event source; sub may be nil when payloads are fed by HandlePayload
// (tests, benchmarks).
func NewEventSource(logger log.Logger, sub EventStream, opts EventOptions) *EventSource {
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	opts = opts.withDefaults()
	task := []string{"name", "hostname", "queue_name"}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	}
	s := &EventSource{
		opts: opts, logger: logger, clk: opts.Clock, sub: sub,
		dec:           event.NewDecoder(event.NewInterner(opts.MaxTaskNames + opts.MaxWorkers + 10000)),
		cache:         newTaskCache(opts),
		nameQueue:     map[string]string{},
		names:         map[string]struct{}{},
		exceptions:    map[string]map[string]struct{}{},
		hosts:         map[string]struct{}{},
		lastTaskEvent: map[string]time.Time{},
		queues:        map[string]struct{}{},
		hostSeen:      map[string]time.Time{},
		counters:      map[seriesKey]prometheus.Counter{},
		combos:        map[taskSeries]struct{}{},
		observers:     map[seriesKey]prometheus.Observer{},
		workers:       map[string]*workerState{},
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

// SetQueueHints gives the source the remote-control view of which worker consumes which queue.
func (s *EventSource) SetQueueHints(h QueueHinter) { s.hints.Store(&h) }

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

func (s *EventSource) applyTaskEvent(ev *event.Event, now time.Time) {
	t, created, evicted := s.cache.GetOrCreate(ev.UUID, now)
	if evicted != nil {
		s.release(evicted) // its held events still count, with a fallback queue
		s.stopRunning(evicted.UUID)
	}
	if created && ev.Type != event.TaskSent {
		if f, ok := s.finished.get(ev.UUID, now); ok {
			t.Name, t.Queue = f.name, f.queue // an event after the task's final one
		}
	}
	if _, known := s.hosts[ev.Hostname]; known && ev.Type != event.TaskSent {
		s.lastTaskEvent[ev.Hostname] = now
	}
	switch ev.Type {
	case event.TaskSent:
		s.cache.Update(t.UUID, func(t *tasks.Task) { // the broker scrape reads SentAt
			t.Name, t.SentAt = ev.Name, ev.Timestamp
			if ev.ETA > 0 {
				t.ETA = ev.ETA
			}
		})
		queue := ev.Queue
		if queue == "" {
			queue = s.opts.DefaultQueue
		}
		queue = s.queueLabel(queue)
		t.Queue = queue
		name := s.nameLabel(t.Name)
		if name != overflowValue { // the map is bounded by the name cap, like the labels
			s.nameQueue[t.Name] = queue
		}
		s.inc(mSent, name, queue, "", "")
		s.release(t)
		return
	case event.TaskReceived:
		if t.Name == "" {
			t.Name = ev.Name
		}
		t.Hostname, t.ReceivedAt = ev.Hostname, ev.Timestamp
		if ev.ETA > 0 && t.ETA == 0 {
			t.ETA = ev.ETA
		}
	}
	s.account(t) // its name and hostname
	if t.Queue != "" || s.opts.SentWait <= 0 {
		s.applyTask(ev, t)
		return
	}
	if len(t.Pending) == 0 {
		t.HoldUntil = now.Add(s.opts.SentWait)
		s.holds = append(s.holds, t)
	}
	held := *ev
	held.UUID = "" // the task's own; up to 256 bytes per held event otherwise
	t.Pending = append(t.Pending, held)
	s.pending++
	s.account(t)
	// A task's whole life fits well below 16; more means task-sent is not coming. Past
	// maxPendingEvents in all, events are applied at once with a fallback queue: a flood of
	// task events without task-sent would otherwise hold up to 16 events × the task cache.
	if len(t.Pending) >= 16 || s.pending > maxPendingEvents {
		s.release(t)
	}
}

// release applies a task's held events, with the queue task-sent gave or a fallback.
func (s *EventSource) release(t *tasks.Task) {
	defer s.account(t) // its queue, and the held events it no longer holds
	if len(t.Pending) == 0 {
		return
	}
	if t.Queue == "" {
		t.Queue = s.fallbackQueue(t)
	}
	pending := t.Pending
	t.Pending = nil
	s.pending -= len(pending)
	for i := range pending {
		s.applyTask(&pending[i], t)
	}
}

// fallbackQueue: the only queue the receiving worker consumes; else the queue task-sent showed
// for this task name before; else the configured default queue.
func (s *EventSource) fallbackQueue(t *tasks.Task) string {
	if h, ok := s.hints.Load().(*QueueHinter); ok && t.Hostname != "" {
		if q, ok := (*h).SingleQueue(t.Hostname); ok {
			return q
		}
	}
	if q, ok := s.nameQueue[t.Name]; ok {
		return q
	}
	return s.opts.DefaultQueue
}

// applyTask counts one task event with its task's labels.
func (s *EventSource) applyTask(ev *event.Event, t *tasks.Task) {
	name := t.Name
	if name == "" {
		name = unknownName
	}
	name = s.nameLabel(name)
	host := s.hostLabel(ev.Hostname)
	q := t.Queue
	s.zeroSeries(name, host, q)
	finished := false
	switch ev.Type {
	case event.TaskReceived:
		s.inc(mReceived, name, host, q, "")
	case event.TaskStarted:
		s.inc(mStarted, name, host, q, "")
		s.startRunning(t.UUID, name, q, ev.Hostname, ev.Timestamp)
		// The worker sends task-started right after counting the task in processed
		// (Request.on_accepted → state.task_accepted), so the two count the same tasks.
		s.inc(mSeen, "", host, "", "")
		t.StartedAt = ev.Timestamp
		from := max(t.SentAt, t.ETA)
		if from == 0 {
			from = t.ReceivedAt
		}
		if from > 0 && ev.Timestamp > 0 {
			s.observe(mQueueWait, name, q, "", "", max(ev.Timestamp-from, 0))
		}
	case event.TaskSucceeded:
		s.inc(mSucceeded, name, host, q, "")
		s.observe(mRuntime, name, host, q, "succeeded", max(ev.Runtime, 0))
		finished = true
	case event.TaskFailed:
		s.inc(mFailed, name, host, q, s.exceptionLabel(name, ev.Exception))
		if t.StartedAt > 0 && ev.Timestamp >= t.StartedAt {
			s.observe(mRuntime, name, host, q, "failed", ev.Timestamp-t.StartedAt)
		}
		finished = true
	case event.TaskRetried:
		s.inc(mRetried, name, host, q, s.exceptionLabel(name, ev.Exception))
		t.StartedAt = 0
	case event.TaskRejected:
		s.inc(mRejected, name, host, q, "")
		finished = !ev.Requeue
	case event.TaskRevoked:
		reason := "revoked"
		switch {
		case ev.Terminated:
			reason = "terminated"
		case ev.Expired:
			reason = "expired"
		}
		s.inc(mRevoked, name, host, q, reason)
		finished = true
	}
	if ev.Type != event.TaskReceived && ev.Type != event.TaskStarted {
		s.stopRunning(t.UUID) // ended, or back in a queue (retried, requeued)
	}
	if finished {
		s.finished.add(t.UUID, t.Name, t.Queue, s.now)
		s.cache.Delete(t)
	}
}

func (s *EventSource) vecFor(metric uint8) *prometheus.CounterVec {
	switch metric {
	case mSent:
		return s.sent
	case mReceived:
		return s.received
	case mStarted:
		return s.started
	case mSucceeded:
		return s.succeeded
	case mRejected:
		return s.rejected
	case mFailed:
		return s.failed
	case mRetried:
		return s.retried
	case mSeen:
		return s.seen
	default:
		return s.revoked
	}
}

// zeroSeries creates, the first time a task name runs on a worker and queue, the outcome counters
// at 0: succeeded, rejected, and failed for each initial exception class. Without them the first
// failure of a task is a series born at 1, which increase() reads as no change.
func (s *EventSource) zeroSeries(name, host, q string) {
	k := taskSeries{name, host, q}
	if _, ok := s.combos[k]; ok {
		return
	}
	s.combos[k] = struct{}{}
	s.series(mSucceeded, name, host, q, "")
	s.series(mRejected, name, host, q, "")
	for _, e := range s.opts.InitialExceptions {
		if s.reserveException(name, e) {
			s.series(mFailed, name, host, q, e)
		}
	}
}

// inc adds one to a counter.
func (s *EventSource) inc(metric uint8, a, b, c, d string) { s.series(metric, a, b, c, d).Inc() }

// series resolves a counter's series once: WithLabelValues hashes every label on every call,
// which the hot path cannot afford.
func (s *EventSource) series(metric uint8, a, b, c, d string) prometheus.Counter {
	k := seriesKey{metric, a, b, c, d}
	ctr, ok := s.counters[k]
	if !ok {
		labels := []string{a, b, c, d}
		switch metric {
		case mSent:
			labels = labels[:2]
		case mReceived, mStarted, mSucceeded, mRejected:
			labels = labels[:3]
		case mSeen:
			labels = labels[1:2]
		}
		ctr = s.vecFor(metric).WithLabelValues(labels...)
		s.counters[k] = ctr
	}
	return ctr
}

func (s *EventSource) observe(metric uint8, a, b, c, d string, v float64) {
	k := seriesKey{metric, a, b, c, d}
	o, ok := s.observers[k]
	if !ok {
		if metric == mQueueWait {
			o = s.queueWait.WithLabelValues(a, b)
		} else {
			o = s.runtime.WithLabelValues(a, b, c, d)
		}
		s.observers[k] = o
	}
	o.Observe(v)
}

func (s *EventSource) nameLabel(name string) string {
	return s.capped(s.names, s.opts.MaxTaskNames, "name", name)
}

// capped returns v if it is in set or set has room for it (then adds it), else the overflow
// value, counted under label.
func (s *EventSource) capped(set map[string]struct{}, limit int, label, v string) string {
	if _, ok := set[v]; ok {
		return v
	}
	if len(set) >= limit {
		s.overflow.WithLabelValues(label).Inc()
		return overflowValue
	}
	set[v] = struct{}{}
	return v
}

// queueLabel caps the queue_name values task-sent brings in: one publisher sending to a million
// queue names made 83.6 MB of /metrics and 1.8 GiB of RSS, and series are never removed.
func (s *EventSource) queueLabel(q string) string {
	return s.capped(s.queues, s.opts.MaxQueues, "queue_name", q)
}

func (s *EventSource) hostLabel(host string) string {
	if _, ok := s.hosts[host]; ok {
		s.hostSeen[host] = s.now
		return host
	}
	if len(s.hosts) >= s.opts.MaxWorkers {
		s.overflow.WithLabelValues("hostname").Inc()
		return overflowValue
	}
	s.hosts[host] = struct{}{}
	s.hostSeen[host] = s.now
	return host
}

// workerHostLabel is hostLabel for a worker event: a worker that heartbeats is never locked out
// by hostnames only task events named (which age out, see purgeTaskOnlyHosts). At the cap, the
// task-only hostname least recently seen gives its place up.
func (s *EventSource) workerHostLabel(host string) string {
	if _, ok := s.hosts[host]; ok || len(s.hosts) < s.opts.MaxWorkers {
		return s.hostLabel(host)
	}
	victim, oldest := "", time.Time{}
	s.mu.Lock()
	for h := range s.hosts {
		if _, isWorker := s.workers[h]; !isWorker && (victim == "" || s.hostSeen[h].Before(oldest)) {
			victim, oldest = h, s.hostSeen[h]
		}
	}
	s.mu.Unlock()
	if victim != "" {
		s.dropHostSeries([]string{victim})
		s.hostsEvicted.Add(1)
	}
	return s.hostLabel(host)
}

// purgeTaskOnlyHosts drops the series of hostnames that only task events named (no worker
// event: e.g. a producer's gen<pid>@host, or events of workers whose heartbeats never came) and
// were not seen for PurgeAfter: they would fill the hostname cap for good.
func (s *EventSource) purgeTaskOnlyHosts(now time.Time) {
	var gone []string
	s.mu.Lock()
	for h := range s.hosts {
		if _, isWorker := s.workers[h]; !isWorker && now.Sub(s.hostSeen[h]) >= s.opts.PurgeAfter {
			gone = append(gone, h)
		}
	}
	s.mu.Unlock()
	s.dropHostSeries(gone)
}

func (s *EventSource) exceptionLabel(name, exc string) string {
	if s.reserveException(name, exc) {
		return exc
	}
	s.overflow.WithLabelValues("exception").Inc()
	return overflowValue
}

// reserveException takes one of the task name's exception label values for exc, unless the cap
// is reached.
func (s *EventSource) reserveException(name, exc string) bool {
	seen := s.exceptions[name]
	if seen == nil {
		seen = map[string]struct{}{}
		s.exceptions[name] = seen
	}
	if _, ok := seen[exc]; ok {
		return true
	}
	if len(seen) >= s.opts.MaxExceptionsPerTask {
		return false
	}
	seen[exc] = struct{}{}
	return true
}

func (s *EventSource) applyWorker(ev *event.Event, now time.Time) {
	if s.workerHostLabel(ev.Hostname) == overflowValue {
		return // past the worker cap: counted, not tracked
	}
	s.series(mSeen, "", ev.Hostname, "", "") // at 0 from the worker's first event, as processed
	if ev.Type == event.WorkerHeartbeat && ev.HasCounts && ev.Active == 0 {
		s.workerIdle(ev.Hostname, now)
	}

	lastTask := s.lastTaskEvent[ev.Hostname]
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.workers[ev.Hostname]
	if w == nil {
		w = &workerState{freq: 2, eventsEnabled: true}
		s.workers[ev.Hostname] = w
	}
	if ev.Type == event.WorkerOffline {
		w.offline, w.offlineAt = true, now
		return
	}
	w.offline = false
	w.lastSeen = now
	if ev.SWVer != "" {
		w.swIdent, w.swVer, w.swSys = ev.SWIdent, ev.SWVer, ev.SWSys
	}
	// The heartbeat the `heartbeat` control command triggers (every `celery events` or Flower
	// start) carries freq 5 and no counts: it proves life but must not change the rest.
	if !ev.HasCounts {
		return
	}
	if ev.Freq > 0 {
		w.freq = ev.Freq
	}
	// Each process's count is compared with its own last one: two workers sharing a nodename
	// made the counter jump by the difference of their counts at every alternation.
	p, clash := w.process(ev.PID)
	if clash {
		w.clashes++
	}
	switch delta := ev.Processed - p.processed; {
	case !w.hasCounts:
		// First sight: what the worker processed before we ran is not ours to count.
	case !p.hasCounts:
		// A new process under a known hostname (a restart): all it processed happened since.
		w.processedTotal += float64(ev.Processed)
	case delta >= 0:
		w.processedTotal += float64(delta)
	default: // the worker restarted without a new pid (a container's pid 1)
		w.processedTotal += float64(ev.Processed)
	}
	p.processed, p.hasCounts = ev.Processed, true
	w.hasCounts, w.active, w.processed, w.loadavg = true, ev.Active, ev.Processed, ev.LoadAvg
	s.estimateLost(ev, w)
	if ev.Type == event.WorkerHeartbeat {
		older, last := w.hb[0], w.hb[1]
		if !older.at.IsZero() && last.processed > older.processed {
			// Tasks were accepted between those two heartbeats: their task events, if the worker
			// sends any, have had a whole interval to arrive.
			w.eventsEnabled = !lastTask.Before(older.at.Add(-time.Duration(w.freq * float64(time.Second))))
		}
		w.hb[0], w.hb[1] = last, heartbeatMark{at: now, processed: ev.Processed}
	}
}

// alive is the liveness rule: up while now < last heartbeat + 2×freq + timeout, on the
// exporter's own clock (sender clocks and utcoffset play no part); worker-offline ends it at once.
func (s *EventSource) alive(w *workerState, now time.Time) bool {
	return !w.offline && now.Before(s.deadline(w))
}

func (s *EventSource) deadline(w *workerState) time.Time {
	return w.lastSeen.Add(time.Duration(2*w.freq*float64(time.Second)) + s.opts.WorkerTimeout)
}

// purgeWorkers drops every series of workers down for longer than PurgeAfter.
func (s *EventSource) purgeWorkers(now time.Time) {
	var gone []string
	s.mu.Lock()
	for h, w := range s.workers {
		if s.alive(w, now) {
			continue
		}
		down := s.deadline(w)
		if w.offline {
			down = w.offlineAt
		}
		if now.Sub(down) >= s.opts.PurgeAfter {
			delete(s.workers, h)
			gone = append(gone, h)
		}
	}
	s.mu.Unlock()
	s.dropHostSeries(gone)
	s.purgeTaskOnlyHosts(now)
}

// dropHostSeries removes every series and cache entry of the hostnames.
func (s *EventSource) dropHostSeries(gone []string) {
	for _, h := range gone {
		level.Info(s.logger).Log("msg", "purged worker series", "hostname", h)
		match := prometheus.Labels{"hostname": h}
		for _, v := range []*prometheus.CounterVec{s.received, s.started, s.succeeded, s.rejected, s.failed, s.retried, s.revoked, s.seen} {
			v.DeletePartialMatch(match)
		}
		s.runtime.DeletePartialMatch(match)
		for k := range s.counters {
			if k.metric != mSent && k.b == h {
				delete(s.counters, k)
			}
		}
		for k := range s.observers {
			if k.metric == mRuntime && k.b == h {
				delete(s.observers, k)
			}
		}
		for k := range s.combos {
			if k.host == h {
				delete(s.combos, k)
			}
		}
		delete(s.hosts, h)
		delete(s.hostSeen, h)
		delete(s.lastTaskEvent, h)
		s.forgetWorkerTasks(h)
	}
}

// WorkerNames lists the workers heartbeating now and those not yet purged.
func (s *EventSource) WorkerNames() (alive, known []string) {
	now := s.clk.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for h, w := range s.workers {
		known = append(known, h)
		if s.alive(w, now) {
			alive = append(alive, h)
		}
	}
	sort.Strings(alive)
	sort.Strings(known)
	return alive, known
}

// WorkerSystem is the sw_sys of a worker's heartbeats ("Linux", "Darwin"), which decides the
// unit of its rusage.maxrss in remote-control stats.
func (s *EventSource) WorkerSystem(hostname string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.workers[hostname]; w != nil && w.swSys != "" {
		return w.swSys, true
	}
	return "", false
}

// TaskSentAt returns when a tracked task was sent.
func (s *EventSource) TaskSentAt(uuid string) (time.Time, bool) {
	at, ok := s.cache.SentAt(uuid)
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(0, int64(at*1e9)), true
}

var (
	workerUpDesc        = desc("worker_up", "1 while the worker heartbeats (within 2×freq + --worker.timeout), 0 once it stopped or went offline.", "hostname")
	workerActiveDesc    = desc("worker_tasks_active", "Tasks the worker is executing, from its last heartbeat.", "hostname")
	workerProcessedDesc = desc("worker_tasks_processed_total", "Tasks the worker accepted, from heartbeats (works without task events).", "hostname")
	workerLastHBDesc    = desc("worker_last_heartbeat_timestamp_seconds", "When the exporter last heard the worker's heartbeat.", "hostname")
	workerFreqDesc      = desc("worker_heartbeat_interval_seconds", "The worker's heartbeat interval (freq).", "hostname")
	workerLoadDesc      = desc("worker_load_average", "The worker host's load average.", "hostname", "period")
	workerInfoDesc      = desc("worker_info", "Worker software, always 1.", "hostname", "sw_ident", "sw_ver", "sw_sys")
	workerClashDesc     = desc("worker_hostname_clashes_total", "Heartbeats from a process of this hostname after another process of it had spoken: two workers share the nodename (their counts are kept apart; start them with distinct -n names).", "hostname")
	hostsEvictedDesc    = desc("exporter_hostnames_evicted_total", "Hostnames seen only in task events whose series were dropped at the hostname cap to make room for a heartbeating worker.")
	workerEventsDesc    = desc("worker_task_events_enabled", "0 when the worker's processed count grows but none of its task events arrive.", "hostname")
	subUpDesc           = desc("exporter_subscription_up", "1 while the event subscription is established.")
	lastEventDesc       = desc("exporter_last_event_timestamp_seconds", "When the last event arrived, on the exporter's clock.")
	reconnectsDesc      = desc("exporter_subscription_reconnects_total", "Times the event subscription was lost.")
	trackedDesc         = desc("exporter_tracked_tasks", "Tasks held in the task cache.")
	evictedDesc         = desc("exporter_tracked_tasks_evicted_total", "Tasks dropped from the task cache for capacity or age before they finished.")
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

// Name implements Scraper.
func (s *EventSource) Name() string { return "events" }

// Scrape implements Scraper. It fails while the subscription is down; the metrics kept so far are
// still reported.
func (s *EventSource) Scrape(_ context.Context, ch chan<- prometheus.Metric) error {
	now := s.clk.Now()
	down := map[string]bool{}
	s.mu.Lock()
	for h, w := range s.workers {
		up := 0.0
		if s.alive(w, now) {
			up = 1
		} else {
			down[h] = true
		}
		ch <- prometheus.MustNewConstMetric(workerUpDesc, prometheus.GaugeValue, up, h)
		ch <- prometheus.MustNewConstMetric(workerLastHBDesc, prometheus.GaugeValue, float64(w.lastSeen.UnixNano())/1e9, h)
		ch <- prometheus.MustNewConstMetric(workerFreqDesc, prometheus.GaugeValue, w.freq, h)
		if w.swIdent != "" || w.swVer != "" {
			ch <- prometheus.MustNewConstMetric(workerInfoDesc, prometheus.GaugeValue, 1, h, w.swIdent, w.swVer, w.swSys)
		}
		if w.hasCounts {
			ch <- prometheus.MustNewConstMetric(workerClashDesc, prometheus.CounterValue, w.clashes, h)
			ch <- prometheus.MustNewConstMetric(workerActiveDesc, prometheus.GaugeValue, float64(w.active), h)
			ch <- prometheus.MustNewConstMetric(workerProcessedDesc, prometheus.CounterValue, w.processedTotal, h)
			for i, p := range []string{"1m", "5m", "15m"} {
				ch <- prometheus.MustNewConstMetric(workerLoadDesc, prometheus.GaugeValue, w.loadavg[i], h, p)
			}
		}
		enabled := 0.0
		if w.eventsEnabled {
			enabled = 1
		}
		ch <- prometheus.MustNewConstMetric(workerEventsDesc, prometheus.GaugeValue, enabled, h)
	}
	s.collectLost(ch)
	s.mu.Unlock()
	s.collectRunning(ch, now, down)

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
