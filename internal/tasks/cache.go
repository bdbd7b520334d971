package tasks

import (
	"sync"
	"time"
	"unsafe"

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
	size       int64 // bytes accounted to this task in Cache.bytes
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
	// maxBytes bounds bytes, the sum of the tracked tasks' sizes (see Size); 0 is no bound.
	maxBytes int64
	bytes    int64
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
	c.resize(t)
	// One eviction at most (the caller settles one): a new task is small (its uuid), so the
	// byte budget is overshot by at most one entry until the next Account.
	if len(c.m) > c.capacity || (c.overBudget() && c.tail != t) {
		evicted = c.tail
		c.remove(evicted)
		c.evicted++
	}
	return t, true, evicted
}

// SetMaxBytes bounds the bytes of the tracked tasks (see Size); n <= 0 removes the bound. It
// evicts nothing by itself: the next GetOrCreate or Account does.
func (c *Cache) SetMaxBytes(n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxBytes = max(n, 0)
}

// Account measures t again after its owner changed its fields (names, held events) and, past
// the byte budget, evicts least recently used tasks other than t and returns them, so the caller
// can settle their held events. A task no longer tracked is ignored.
func (c *Cache) Account(t *Task) (evicted []*Task) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[t.UUID] != t {
		return nil
	}
	c.resize(t)
	for c.overBudget() && c.tail != t {
		e := c.tail
		c.remove(e)
		c.evicted++
		evicted = append(evicted, e)
	}
	return evicted
}

// Bytes is the sum of the tracked tasks' sizes as last measured.
func (c *Cache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// taskOverhead is what a task costs besides its strings and held events: the Task itself and its
// map entry (key header, pointer, and a share of the table at its load factor).
var taskOverhead = alloc(int64(unsafe.Sizeof(Task{}))) + 64

// eventSize is what one held event costs in its slice.
const eventSize = int64(unsafe.Sizeof(event.Event{}))

// alloc is an upper bound of the heap an allocation of n bytes takes: Go's allocator rounds a
// size up to its size class, which is at most 25% more (and a multiple of 16 bytes).
func alloc(n int64) int64 {
	if n == 0 {
		return 0
	}
	return (n + n/4 + 15) &^ 15
}

// Size is an upper bound of the memory a task holds: its own struct and map entry, its uuid and
// label values, and its held events with theirs, each rounded up as the allocator does. Label
// values are counted as if each were its own copy, though interned ones are shared, so the bound
// holds under hostile input, whose values outgrow the interner.
func (t *Task) Size() int64 {
	n := taskOverhead + alloc(int64(len(t.UUID))) + alloc(int64(len(t.Name))) + alloc(int64(len(t.Queue))) +
		alloc(int64(len(t.Hostname))) + alloc(int64(cap(t.Pending))*eventSize)
	for i := range t.Pending {
		e := &t.Pending[i]
		for _, v := range [...]string{e.Hostname, e.UUID, e.Name, e.Queue, e.Exception, e.SWIdent, e.SWVer, e.SWSys} {
			n += alloc(int64(len(v)))
		}
	}
	return n
}

func (c *Cache) resize(t *Task) {
	s := t.Size()
	c.bytes += s - t.size
	t.size = s
}

func (c *Cache) overBudget() bool { return c.maxBytes > 0 && c.bytes > c.maxBytes && c.tail != nil }

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
	c.resize(t)
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

// Evicted is the number of tasks dropped for capacity, bytes or age since start.
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
	c.bytes -= t.size
	t.size = 0
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
