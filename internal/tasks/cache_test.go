package tasks

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/internal/event"
)

func TestCacheCapacityEvictsLeastRecentlyUsed(t *testing.T) {
	c := NewCache(3, time.Hour)
	now := time.Unix(1000, 0)
	for _, id := range []string{"a", "b", "c"} {
		if _, created, ev := c.GetOrCreate(id, now); !created || ev != nil {
			t.Fatalf("%s: created %v evicted %v", id, created, ev)
		}
	}
	c.Get("a", now) // a is now the most recent; b the least
	_, _, ev := c.GetOrCreate("d", now)
	if ev == nil || ev.UUID != "b" {
		t.Fatalf("evicted %+v, want b", ev)
	}
	if c.Len() != 3 || c.Evicted() != 1 || c.Get("b", now) != nil {
		t.Fatalf("len %d evicted %d", c.Len(), c.Evicted())
	}
}

func TestCacheTTLAndDelete(t *testing.T) {
	c := NewCache(10, time.Minute)
	t0 := time.Unix(1000, 0)
	c.GetOrCreate("a", t0)
	if !c.Update("a", func(t *Task) { t.SentAt = 999 }) {
		t.Fatal("Update: a is tracked")
	}
	if c.Update("x", func(*Task) { t.Fatal("fn called for an untracked task") }) {
		t.Fatal("Update: x is not tracked")
	}
	c.GetOrCreate("b", t0.Add(30*time.Second))
	if at, ok := c.SentAt("a"); !ok || at != 999 {
		t.Fatalf("SentAt %v %v", at, ok)
	}
	if _, ok := c.SentAt("b"); ok {
		t.Fatal("b has no sent time")
	}
	got := c.Expire(t0.Add(61 * time.Second))
	if len(got) != 1 || got[0].UUID != "a" || c.Evicted() != 1 || c.Len() != 1 {
		t.Fatalf("expired %v, evicted %d, len %d", got, c.Evicted(), c.Len())
	}
	b := c.Get("b", t0)
	c.Delete(b)
	if c.Len() != 0 || c.Evicted() != 1 {
		t.Fatalf("a finished task is not an eviction: len %d evicted %d", c.Len(), c.Evicted())
	}
}

// Memory stays bounded whatever the number of tasks processed.
func TestCacheStaysBounded(t *testing.T) {
	c := NewCache(1000, time.Hour)
	now := time.Unix(0, 0)
	for i := 0; i < 100000; i++ {
		c.GetOrCreate(fmt.Sprint(i), now)
	}
	if c.Len() != 1000 || c.Evicted() != 99000 {
		t.Fatalf("len %d evicted %d", c.Len(), c.Evicted())
	}
	n := 0
	for p := c.head; p != nil; p = p.next {
		n++
	}
	if n != 1000 {
		t.Fatalf("list has %d entries", n)
	}
}

// fill gives t a task-received's labels and n held events, every string its own copy (as under
// hostile input, whose values outgrow the interner), of label bytes each.
func fill(t *Task, i, n, label int) {
	val := func(kind string) string {
		return strings.Clone(fmt.Sprintf("%s%d-%s", kind, i, strings.Repeat("x", label))[:label])
	}
	t.Name, t.Hostname = val("name"), val("host")
	for j := 0; j < n; j++ {
		t.Pending = append(t.Pending, event.Event{Type: event.TaskReceived, Hostname: val("h"), Name: val("n"), Exception: val("e")})
	}
}

// Many tasks with big held events stay within the byte budget; the tasks dropped for it are
// returned to be settled and counted as evictions; the accounted bytes are the tracked tasks'.
func TestCacheByteBudget(t *testing.T) {
	const budget = 1 << 20
	c := NewCache(1_000_000, time.Hour) // the count cap is far away: only bytes bound it
	c.SetMaxBytes(budget)
	now := time.Unix(1000, 0)
	settled := 0
	const tasks = 5000
	for i := 0; i < tasks; i++ {
		task, created, ev := c.GetOrCreate(fmt.Sprintf("%036d", i), now)
		if !created {
			t.Fatalf("task %d not created", i)
		}
		if ev != nil {
			settled++
		}
		fill(task, i, 16, 256)
		settled += len(c.Account(task))
		if b := c.Bytes(); b > budget {
			t.Fatalf("after task %d: %d bytes accounted, budget %d", i, b, budget)
		}
	}
	var sum int64
	for p := c.head; p != nil; p = p.next {
		sum += p.Size()
	}
	perTask := sum / int64(c.Len())
	switch {
	case sum != c.Bytes():
		t.Fatalf("accounted %d bytes, the tracked tasks hold %d", c.Bytes(), sum)
	case perTask < 16*(eventSize+3*256):
		t.Fatalf("a task with 16 held events of 3 × 256-byte values counted %d bytes", perTask)
	case c.Bytes() < budget-perTask:
		t.Fatalf("%d bytes accounted: evicted more than needed (budget %d, a task %d)", c.Bytes(), budget, perTask)
	case uint64(settled) != c.Evicted() || c.Evicted() != uint64(tasks-c.Len()):
		t.Fatalf("evicted %d, returned %d, tracked %d of %d", c.Evicted(), settled, c.Len(), tasks)
	}
	// The most recent task is never evicted for its own growth, and leaving frees its bytes.
	last := c.head
	for c.Len() > 1 {
		c.Delete(c.tail)
	}
	fill(last, 0, 200, 256)
	if ev := c.Account(last); len(ev) != 0 || c.Len() != 1 || c.Bytes() != last.Size() {
		t.Fatalf("alone over the budget: evicted %d, len %d, bytes %d of %d", len(ev), c.Len(), c.Bytes(), last.Size())
	}
	c.Expire(now.Add(2 * time.Hour))
	if c.Len() != 0 || c.Bytes() != 0 {
		t.Fatalf("empty cache: len %d, %d bytes", c.Len(), c.Bytes())
	}
}

// Size is an upper bound of the heap a task really takes, and not a loose one: the budget is
// the memory it claims to be.
func TestCacheBytesBoundTheHeap(t *testing.T) {
	for _, tc := range []struct {
		name           string
		n, held, label int
	}{
		{"no held events, celery-sized labels", 10000, 0, 30},
		{"3 held events", 3000, 3, 30},
		{"16 held events of long values", 500, 16, 256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			n := tc.n
			c := NewCache(n, time.Hour) // its map is made for n tasks
			now := time.Unix(1000, 0)
			for i := 0; i < n; i++ {
				task, _, _ := c.GetOrCreate(fmt.Sprintf("%036d", i), now)
				fill(task, i, tc.held, tc.label)
				c.Account(task)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			t.Logf("heap %d bytes, accounted %d (%.2f)", heap, c.Bytes(), float64(heap)/float64(c.Bytes()))
			if heap > c.Bytes() || heap < c.Bytes()/2 {
				t.Fatalf("the cache takes %d bytes of heap, accounted %d", heap, c.Bytes())
			}
			runtime.KeepAlive(c)
		})
	}
}
