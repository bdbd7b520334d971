package state

import (
	"slices"
	"sync"
	"time"

	"github.com/celery-exporter/celery_exporter/internal/clock"
)

// Queues is which worker consumes which queue, from the workers' active_queues (and stats)
// replies to remote control.
type Queues struct {
	clk clock.Clock

	mu    sync.RWMutex
	last  *QueueRound           // the last successful round
	all   []string              // the queues its replies named, sorted
	hosts map[string]hostAnswer // each worker's last answer, kept while it is known
}

func newQueues(clk clock.Clock) *Queues {
	return &Queues{clk: clk, hosts: map[string]hostAnswer{}}
}

// QueueRound is what one successful remote-control round learnt about queues.
type QueueRound struct {
	// At is when the round ended.
	At time.Time
	// StaleAfter is how long its answers may be served.
	StaleAfter time.Duration
	// Alive and Known are the workers the event stream knew when the round began (Workers.Names).
	Alive, Known []string
	// Queues holds the queues of every worker whose active_queues reply could be read.
	Queues map[string][]string
	// Procs holds the pool size of every worker whose stats reply could be read (see
	// QueueUse.Processes).
	Procs map[string]int
}

// hostAnswer is what a worker last said about the queues it consumes.
type hostAnswer struct {
	at     time.Time
	queues []string
	procs  int
}

// QueueUse says who consumes a queue.
type QueueUse struct {
	// Workers that named the queue in their active_queues reply.
	Workers int
	// Processes is the sum of those workers' pool sizes: the number of pool processes for prefork
	// and solo (stats.pool.processes, as the Python celery-exporter counts), else the pool's
	// max-concurrency (threads, gevent, eventlet report no processes).
	Processes int
}

// Record keeps a successful round. A worker that missed it keeps its last answer while the event
// stream still knows it, so its events keep their queue through a slow reply.
func (q *Queues) Record(r QueueRound) {
	all := map[string]bool{}
	for _, qs := range r.Queues {
		for _, n := range qs {
			all[n] = true
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.last = &r
	q.all = q.all[:0:0]
	for n := range all {
		q.all = append(q.all, n)
	}
	slices.Sort(q.all)
	for h := range q.hosts {
		if _, answered := r.Queues[h]; !answered && !slices.Contains(r.Known, h) {
			delete(q.hosts, h)
		}
	}
	for h, qs := range r.Queues {
		a := hostAnswer{at: r.At, queues: qs, procs: q.hosts[h].procs}
		if p, ok := r.Procs[h]; ok {
			a.procs = p
		}
		q.hosts[h] = a
	}
}

// current is the last successful round while it is fresh (no older than its StaleAfter), else
// nil. The caller holds mu.
func (q *Queues) current() *QueueRound {
	if q.last == nil || q.clk.Now().Sub(q.last.At) > q.last.StaleAfter {
		return nil
	}
	return q.last
}

// SingleQueue returns the queue of a worker that consumes exactly one, from its last answer,
// however old: it decides the queue label of task events whose task-sent never came.
func (q *Queues) SingleQueue(hostname string) (string, bool) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	qs := q.hosts[hostname].queues
	if len(qs) != 1 {
		return "", false
	}
	return qs[0], true
}

// Names lists the queues named in the current round's active_queues replies; nil when no round
// succeeded within its StaleAfter.
func (q *Queues) Names() []string {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.current() == nil {
		return nil
	}
	return slices.Clone(q.all)
}

// Consumers returns, per queue, who consumes it: the workers that answered the current round (the
// last successful one, served for its StaleAfter), and the workers that missed it but were still
// heartbeating, with their answer of at most StaleAfter ago. One reply lost by a busy worker (a
// pool restarting its children) must not make its queues look abandoned. ok is false when no
// round succeeded for StaleAfter: nothing is known then, and the control source reports itself
// failed.
func (q *Queues) Consumers() (map[string]QueueUse, bool) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	r := q.current()
	if r == nil {
		return nil, false
	}
	out := map[string]QueueUse{}
	for h, a := range q.hosts {
		if _, answered := r.Queues[h]; !answered && (!slices.Contains(r.Alive, h) || r.At.Sub(a.at) > r.StaleAfter) {
			continue
		}
		for _, n := range a.queues {
			u := out[n]
			u.Workers++
			u.Processes += a.procs
			out[n] = u
		}
	}
	return out, true
}
