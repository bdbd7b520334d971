package collector

import (
	"slices"
	"time"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

// The defaults of every source's options live here, and only here: the command's flags show them
// and the constructors fill unset fields with them, so the two cannot disagree.

// DefaultRuntimeBuckets fit long tasks and the usual time limits (120, 150, 180 s), not only the
// sub-10 s range of client_golang's defaults.
var DefaultRuntimeBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 100, 120, 150, 180, 300, 600, 1800, 3600}

// DefaultQueueWaitBuckets cover from a warm queue to a backlog of an hour.
var DefaultQueueWaitBuckets = []float64{0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// DefaultEventOptions returns the event source's defaults.
func DefaultEventOptions() EventOptions {
	return EventOptions{
		PurgeAfter:           time.Hour,
		RuntimeBuckets:       slices.Clone(DefaultRuntimeBuckets),
		QueueWaitBuckets:     slices.Clone(DefaultQueueWaitBuckets),
		SentWait:             2 * time.Second,
		DefaultQueue:         "celery",
		MaxTaskNames:         1000,
		MaxQueues:            1000,
		MaxExceptionsPerTask: 50,
		MaxWorkers:           1000,
		InitialExceptions:    []string{"SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLostError"},
	}
}

// withDefaults gives the fields that cannot meaningfully be zero their default: the caps (less
// than 1 would be no cap, and memory and series must stay bounded), the buckets and the default
// queue. The durations PurgeAfter and SentWait keep a zero: purge at once, no wait.
func (o EventOptions) withDefaults() EventOptions {
	d := DefaultEventOptions()
	if len(o.RuntimeBuckets) == 0 {
		o.RuntimeBuckets = d.RuntimeBuckets
	}
	if len(o.QueueWaitBuckets) == 0 {
		o.QueueWaitBuckets = d.QueueWaitBuckets
	}
	if o.DefaultQueue == "" {
		o.DefaultQueue = d.DefaultQueue
	}
	if o.ActiveTTL <= 0 {
		o.ActiveTTL = defaultActiveTTL // not a flag: how long a control-only running task is trusted
	}
	for _, c := range []struct{ v, def *int }{
		{&o.MaxTaskNames, &d.MaxTaskNames}, {&o.MaxQueues, &d.MaxQueues},
		{&o.MaxExceptionsPerTask, &d.MaxExceptionsPerTask}, {&o.MaxWorkers, &d.MaxWorkers},
	} {
		if *c.v < 1 {
			*c.v = *c.def
		}
	}
	return o
}

// DefaultModelOptions returns the defaults of the shared model (internal/state): the worker
// liveness slack and the task cache's bounds.
func DefaultModelOptions() state.Options {
	return state.Options{
		WorkerTimeout: 5 * time.Second,
		MaxTasks:      100000,
		MaxTaskBytes:  64 << 20,
		TaskTTL:       6 * time.Hour,
	}
}

// NewModel returns the model the sources share, with the defaults for the fields that cannot
// meaningfully be zero (the task cache's caps and TTL; a zero WorkerTimeout is no slack).
func NewModel(o state.Options) *state.Model {
	d := DefaultModelOptions()
	if o.MaxTasks < 1 {
		o.MaxTasks = d.MaxTasks
	}
	if o.MaxTaskBytes <= 0 {
		o.MaxTaskBytes = d.MaxTaskBytes
	}
	if o.TaskTTL <= 0 {
		o.TaskTTL = d.TaskTTL
	}
	return state.New(o)
}

// DefaultControlOptions returns the remote-control source's defaults.
func DefaultControlOptions() ControlOptions {
	return ControlOptions{
		Interval:        15 * time.Second,
		Timeout:         time.Second,
		Deadline:        10 * time.Second,
		ControlExchange: kombu.DefaultControlExchange,
	}
}

// DefaultBrokerOptions returns the broker source's defaults.
func DefaultBrokerOptions() BrokerOptions {
	return BrokerOptions{
		UnackedScanLimit:  1000,
		EventExchange:     kombu.DefaultEventExchange,
		ControlExchange:   kombu.DefaultControlExchange,
		DiscoveryInterval: 30 * time.Second,
	}
}
