package collector

// The event source's series: each counter and histogram series is resolved once and kept in a
// map (WithLabelValues hashes every label on every call, which the hot path cannot afford), and
// every label value from the stream passes a bounded labelSet first.

import (
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/celery-exporter/celery_exporter/internal/event"
)

// seriesKey names one series of the event source: the metric and up to four label values, in
// the metric's label order.
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
		if s.exceptionSet(name).Add(e) {
			s.series(mFailed, name, host, q, e)
		}
	}
}

// inc adds one to a counter.
func (s *EventSource) inc(metric uint8, a, b, c, d string) { s.series(metric, a, b, c, d).Inc() }

// series resolves a counter's series once.
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

// exceptionSet is the bounded set of exception label values of one task name label value (so
// the map is bounded by the name cap).
func (s *EventSource) exceptionSet(name string) *labelSet {
	set := s.exceptions[name]
	if set == nil {
		set = newLabelSet(s.opts.MaxExceptionsPerTask, event.MaxLabelBytes, s.overflow.WithLabelValues("exception"))
		s.exceptions[name] = set
	}
	return set
}

func (s *EventSource) exceptionLabel(name, exc string) string { return s.exceptionSet(name).Value(exc) }

// dropHostSeries removes every series and cache entry of the hostnames.
func (s *EventSource) dropHostSeries(gone []string) {
	for _, h := range gone {
		level.Info(s.logger).Log("msg", "purged worker series", "hostname", h)
		delete(s.lost.marks, h)
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
		s.hosts.Delete(h)
		delete(s.hostSeen, h)
		delete(s.lastTaskEvent, h)
		s.forgetWorkerTasks(h)
	}
}
