package state

import (
	"time"

	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/tasks"
)

// Options configure the Model. The command's defaults live in collector.DefaultModelOptions;
// New takes the values as given.
type Options struct {
	// WorkerTimeout is the slack after 2×freq past a worker's last heartbeat before it is down.
	WorkerTimeout time.Duration
	// MaxTasks bounds the task cache (and the running tasks the event source keeps).
	MaxTasks int
	// MaxTaskBytes bounds the task cache in bytes (uuids, labels and held events; see
	// tasks.Task.Size): past it the least recently used tasks are evicted. 0: no byte bound.
	MaxTaskBytes int64
	// TaskTTL is how long a task without any event is kept.
	TaskTTL time.Duration
	// Clock is the one clock every source reads (nil: the wall clock).
	Clock clock.Clock
}

// Model is the state the sources share. Its parts are safe for concurrent use.
type Model struct {
	clk clock.Clock

	// Workers is written by the event source (heartbeats) and read by it and by remote control.
	Workers *Workers
	// Tasks is written by the event source and read by the broker source (sent times).
	Tasks *Tasks
	// Queues is written by remote control and read by the event source (a worker's only queue)
	// and the broker source (queue names, consumers).
	Queues *Queues
	// Active carries remote control's running tasks to the event source.
	Active *Active
}

// New returns an empty Model.
func New(o Options) *Model {
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	cache := tasks.NewCache(o.MaxTasks, o.TaskTTL)
	if o.MaxTaskBytes > 0 {
		cache.SetMaxBytes(o.MaxTaskBytes)
	}
	return &Model{
		clk:     o.Clock,
		Workers: newWorkers(o.Clock, o.WorkerTimeout),
		Tasks:   &Tasks{Cache: cache, capacity: max(o.MaxTasks, 1)},
		Queues:  newQueues(o.Clock),
		Active:  &Active{},
	}
}

// Clock is the clock of the Model: liveness and freshness are judged on it, and the sources
// stamp what they write with it.
func (m *Model) Clock() clock.Clock { return m.clk }

// Tasks is the task cache (see internal/tasks for its rules: one goroutine owns the Task values,
// others read sent times through the cache's lock).
type Tasks struct {
	*tasks.Cache
	capacity int
}

// Capacity is the most tasks the cache holds.
func (t *Tasks) Capacity() int { return t.capacity }

// SentTime returns when a tracked task was sent (its task-sent event).
func (t *Tasks) SentTime(uuid string) (time.Time, bool) {
	at, ok := t.SentAt(uuid)
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(0, int64(at*1e9)), true
}
