// Package tasks keeps what the exporter must remember about a task between its events: the name
// and queue (only task-sent and task-received carry them), the times that make queue wait and
// runtime, and the events held until the queue is known. The cache is bounded by a capacity and
// a TTL, least recently used first; evictions are counted.
package tasks

import (
	"sync"
	"time"

	"github.com/celery-exporter/celery_exporter/internal/event"
)

// Task is the state of one task uuid. One goroutine (the event pipeline) owns a task and may read
// its fields freely; a field that other goroutines read through the cache (SentAt) is written
// only inside Cache.Update, under the cache's lock.
type Task struct {
	UUID     string
	Name     string
	Queue    string // "" until resolved
	Hostname string // worker that received it
	// Epoch seconds from the events; 0 when not seen. SentAt: write only inside Cache.Update.
	SentAt, ETA, ReceivedAt, StartedAt float64
	// Pending holds events that arrived before the queue was known, in arrival order.
	Pending []event.Event
	// HoldUntil is when Pending is released with a fallback queue if task-sent never comes.
	HoldUntil time.Time

	touched    time.Time
	prev, next *Task
}

// Cache maps task uuids to Tasks. Its methods are safe for concurrent use (the broker scraper
// reads sent times while the event pipeline writes).
type Cache struct {
	mu       sync.Mutex
	m        map[string]*Task
	head     *Task // most recently used
	tail     *Task // least recently used
	capacity int
	ttl      time.Duration
	evicted  uint64
}

// NewCache returns a cache of at most capacity tasks, each forgotten ttl after its last event.
func NewCache(capacity int, ttl time.Duration) *Cache {
	if capacity < 1 {
		capacity = 1
	}
	return &Cache{m: make(map[string]*Task, min(capacity, 1<<16)), capacity: capacity, ttl: ttl}
}

// Get returns the task and marks it used, or nil.
func (c *Cache) Get(uuid string, now time.Time) *Task {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.m[uuid]
	if t != nil {
		c.touch(t, now)
	}
	return t
}

// GetOrCreate returns the task, creating it when absent. When that pushes the cache over its
// capacity the least recently used task is evicted and returned, so the caller can settle its
// held events.
func (c *Cache) GetOrCreate(uuid string, now time.Time) (t *Task, created bool, evicted *Task) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t = c.m[uuid]; t != nil {
		c.touch(t, now)
		return t, false, nil
	}
	t = &Task{UUID: uuid}
	c.m[uuid] = t
	c.touch(t, now)
	if len(c.m) > c.capacity {
		evicted = c.tail
		c.remove(evicted)
		c.evicted++
	}
	return t, true, evicted
}

// Update applies fn to the tracked task under the cache's lock, so readers on other goroutines
// (SentAt) see a consistent task, and reports whether the task is tracked. fn must not call back
// into the cache.
func (c *Cache) Update(uuid string, fn func(*Task)) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.m[uuid]
	if t == nil {
		return false
	}
	fn(t)
	return true
}

// Delete forgets a task (it finished). Not an eviction.
func (c *Cache) Delete(t *Task) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[t.UUID] == t {
		c.remove(t)
	}
}

// Expire evicts the tasks not used for ttl and returns them.
func (c *Cache) Expire(now time.Time) []*Task {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Task
	for c.tail != nil && now.Sub(c.tail.touched) > c.ttl {
		t := c.tail
		c.remove(t)
		c.evicted++
		out = append(out, t)
	}
	return out
}

// SentAt returns when the task was sent (its task-sent event), if known.
func (c *Cache) SentAt(uuid string) (float64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.m[uuid]; t != nil && t.SentAt > 0 {
		return t.SentAt, true
	}
	return 0, false
}

// Len is the number of tasks tracked.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Evicted is the number of tasks dropped for capacity or age since start.
func (c *Cache) Evicted() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.evicted
}

func (c *Cache) touch(t *Task, now time.Time) {
	t.touched = now
	if c.head == t {
		return
	}
	c.unlink(t)
	t.next = c.head
	if c.head != nil {
		c.head.prev = t
	}
	c.head = t
	if c.tail == nil {
		c.tail = t
	}
}

func (c *Cache) remove(t *Task) {
	c.unlink(t)
	delete(c.m, t.UUID)
}

func (c *Cache) unlink(t *Task) {
	if t.prev != nil {
		t.prev.next = t.next
	} else if c.head == t {
		c.head = t.next
	}
	if t.next != nil {
		t.next.prev = t.prev
	} else if c.tail == t {
		c.tail = t.prev
	}
	t.prev, t.next = nil, nil
}
