package tasks

import (
	"fmt"
	"testing"
	"time"
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
