package collector

// Task correlation: a task's events name it and its queue only in task-sent (the queue) and
// task-received (the name), and they arrive in any order, so the rest wait for them here.

import (
	"time"

	"github.com/celery-exporter/celery_exporter/internal/event"
	"github.com/celery-exporter/celery_exporter/internal/tasks"
)

// maxPendingEvents bounds the task events waiting for their task-sent, all tasks together
// (about 250 bytes each: 16 MiB).
const maxPendingEvents = 65536

// unknownName labels task events whose name never reached the exporter (no task-sent or
// task-received seen, e.g. a task revoked on receipt).
const unknownName = "unknown"

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
	if s.hosts.Has(ev.Hostname) && ev.Type != event.TaskSent {
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
		queue = s.queues.Value(queue)
		t.Queue = queue
		name := s.names.Value(t.Name)
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

// fallbackQueue: the only queue the receiving worker consumes (remote control's answer, from the
// model); else the queue task-sent showed for this task name before; else the configured default
// queue.
func (s *EventSource) fallbackQueue(t *tasks.Task) string {
	if t.Hostname != "" {
		if q, ok := s.model.Queues.SingleQueue(t.Hostname); ok {
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
	name = s.names.Value(name)
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
