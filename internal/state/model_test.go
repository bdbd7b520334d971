package state

import (
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/event"
	"github.com/celery-exporter/celery_exporter/internal/tasks"
)

var t0 = time.Unix(1795879460, 0)

// Every part of the model is written and read by many goroutines at once, with many task uuids
// and many workers, as the event pipeline, remote control and concurrent scrapes do (go test
// -race reports any access outside a lock). The writers own disjoint uuids, as the single event
// goroutine owns every task; the final state is checked exactly.
func TestModelConcurrentWritersAndReaders(t *testing.T) {
	const (
		writers = 4
		perW    = 2000 // task uuids per writer
		workers = 64
	)
	clk := clock.NewFake(t0)
	m := New(Options{WorkerTimeout: time.Hour, MaxTasks: writers * perW, TaskTTL: time.Hour, Clock: clk})
	host := func(i int) string { return fmt.Sprintf("celery@w%02d", i%workers) }

	var (
		wg  sync.WaitGroup
		cur [writers]atomic.Int64 // the task each writer is on: readers poll it, where a race would be
	)
	stop := make(chan struct{})
	for w := range writers {
		wg.Go(func() { // the event pipeline: tasks and heartbeats
			for i := range perW {
				id := fmt.Sprintf("%d-%d", w, i)
				cur[w].Store(int64(i))
				now := clk.Now()
				tk, _, _ := m.Tasks.GetOrCreate(id, now)
				tk.Hostname = host(i) // the owner's field: no lock needed
				m.Tasks.Update(id, func(tk *tasks.Task) { tk.SentAt = float64(i) })
				m.Workers.Apply(&event.Event{Type: event.WorkerHeartbeat, Hostname: host(i), HasCounts: true,
					PID: int64(w), Processed: int64(i), Freq: 2, SWVer: "5.2.6", SWSys: "Linux"}, now, now)
				if i%2 == 1 {
					m.Tasks.Delete(tk)
				}
			}
		})
	}
	wg.Go(func() { // remote control: queue rounds and running tasks
		for i := range 200 {
			alive, known := m.Workers.Names()
			qs := map[string][]string{}
			procs := map[string]int{}
			for _, h := range alive {
				qs[h] = []string{"q" + h[len(h)-1:]}
				procs[h] = i % 4
			}
			m.Queues.Record(QueueRound{At: clk.Now(), StaleAfter: time.Minute, Alive: alive, Known: known, Queues: qs, Procs: procs})
			m.Active.Put(ActiveSnapshot{Sent: clk.Now(), Hosts: map[string][]ActiveTask{host(i): {{ID: fmt.Sprint(i)}}}})
		}
	})
	var readers sync.WaitGroup
	for r := range 4 {
		readers.Go(func() { // scrapes: the broker, the event source and control reading
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				w := (i + r) % writers
				m.Tasks.SentTime(fmt.Sprintf("%d-%d", w, cur[w].Load()))
				m.Tasks.Len()
				m.Workers.Snapshot(clk.Now())
				m.Workers.System(host(i))
				m.Workers.Has(host(i))
				m.Queues.SingleQueue(host(i))
				m.Queues.Names()
				m.Queues.Consumers()
				m.Active.Take()
				clk.Add(time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()

	if n := m.Tasks.Len(); n != writers*perW/2 {
		t.Errorf("%d tasks tracked, want %d (the even ones)", n, writers*perW/2)
	}
	for w := range writers {
		if at, ok := m.Tasks.SentTime(fmt.Sprintf("%d-%d", w, perW-2)); !ok || at != time.Unix(perW-2, 0) {
			t.Errorf("writer %d's last task: sent %v, %v", w, at, ok)
		}
		if _, ok := m.Tasks.SentTime(fmt.Sprintf("%d-%d", w, perW-1)); ok {
			t.Errorf("writer %d's deleted task still has a sent time", w)
		}
	}
	alive, known := m.Workers.Names()
	if len(alive) != workers || len(known) != workers {
		t.Errorf("%d alive, %d known workers, want %d", len(alive), len(known), workers)
	}
	for _, w := range m.Workers.Snapshot(clk.Now()) {
		if !w.Up || w.SWSys != "Linux" || !w.HasCounts {
			t.Errorf("worker %+v", w)
		}
	}
}

// Queues keeps remote control's semantics: a worker that misses a reply keeps its queues for
// StaleAfter while it still heartbeats, its only queue while the event stream knows it, and
// nothing is served once no round succeeded for StaleAfter.
func TestQueuesRetention(t *testing.T) {
	clk := clock.NewFake(t0)
	q := newQueues(clk)
	if got, ok := q.Consumers(); ok || got != nil || q.Names() != nil {
		t.Fatalf("before any round: %v %v %v", got, ok, q.Names())
	}
	both := []string{"a", "b"}
	round := func(alive, known []string, answered map[string][]string) {
		q.Record(QueueRound{At: clk.Now(), StaleAfter: 30 * time.Second, Alive: alive, Known: known, Queues: answered,
			Procs: map[string]int{"a": 2, "b": 4}})
	}
	check := func(stage string, want map[string]QueueUse) {
		t.Helper()
		if got, ok := q.Consumers(); !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: Consumers() = %v, %v; want %v", stage, got, ok, want)
		}
	}
	round(both, both, map[string][]string{"a": {"chat"}, "b": {"chat", "default"}})
	check("both answered", map[string]QueueUse{"chat": {2, 6}, "default": {1, 4}})
	if got := q.Names(); !reflect.DeepEqual(got, []string{"chat", "default"}) {
		t.Errorf("Names() = %v", got)
	}
	clk.Add(30 * time.Second)
	round(both, both, map[string][]string{"b": {"chat", "default"}})
	check("a missed a reply, heartbeating, answer 30 s old", map[string]QueueUse{"chat": {2, 6}, "default": {1, 4}})
	clk.Add(time.Second)
	round(both, both, map[string][]string{"b": {"chat", "default"}})
	check("a's answer past StaleAfter", map[string]QueueUse{"chat": {1, 4}, "default": {1, 4}})
	if got, ok := q.SingleQueue("a"); got != "chat" || !ok {
		t.Errorf("a is still known: SingleQueue = %q, %v", got, ok)
	}
	round([]string{"b"}, []string{"b"}, map[string][]string{"b": {"chat", "default"}})
	if _, ok := q.SingleQueue("a"); ok {
		t.Error("a was purged but keeps its queue")
	}
	clk.Add(31 * time.Second)
	if got, ok := q.Consumers(); ok || q.Names() != nil {
		t.Errorf("no round for StaleAfter: %v %v %v", got, ok, q.Names())
	}
}
