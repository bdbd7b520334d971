package state

import (
	"sync"
	"time"
)

// ActiveTask is one task of a worker's `inspect active` reply.
type ActiveTask struct {
	ID, Name string
	// Queue is the queue the worker got it from, "" when the reply does not tell.
	Queue string
	// Started is the reply's time_start: epoch seconds on the worker's clock, 0 when unknown.
	Started float64
}

// ActiveSnapshot is what one remote-control round learnt about running tasks.
type ActiveSnapshot struct {
	// Sent is when the round's request was published, on the exporter's clock: a worker's reply
	// lists every task it accepted before then that still runs.
	Sent time.Time
	// Hosts holds the reply of every worker that answered `active`.
	Hosts map[string][]ActiveTask
}

// Active hands the running tasks of a remote-control round to the event source, whose goroutine
// merges them with the task events. Only the newest snapshot is kept.
type Active struct {
	mu      sync.Mutex
	pending *ActiveSnapshot
}

// Put replaces the snapshot waiting to be taken.
func (a *Active) Put(s ActiveSnapshot) {
	a.mu.Lock()
	a.pending = &s
	a.mu.Unlock()
}

// Take returns the waiting snapshot, if any, and clears it.
func (a *Active) Take() *ActiveSnapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.pending
	a.pending = nil
	return s
}
