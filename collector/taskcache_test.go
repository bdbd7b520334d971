package collector

import (
	"fmt"
	"strings"
	"testing"

	"github.com/celery-exporter/celery_exporter/internal/state"
)

// Tasks whose events are held waiting for a task-sent that never comes, each with long values,
// stay within the cache's byte budget: the least recently used are evicted (counted), and their
// held events still count, under the fallback queue.
func TestEventSourceTaskCacheBytesBounded(t *testing.T) {
	const budget = 512 << 10
	src, _ := newTestSourceModel(EventOptions{}, state.Options{MaxTasks: 1_000_000, MaxTaskBytes: budget})
	long := strings.Repeat("x", 300) // cut to 256 bytes
	const tasks, perTask = 800, 8
	for i := 0; i < tasks; i++ {
		id := fmt.Sprintf("%036d", i)
		var evs []map[string]any
		evs = append(evs, taskEv("task-received", id, "celery@w", 1, "name", "t.a"))
		for j := 1; j < perTask; j++ {
			evs = append(evs, taskEv("task-retried", id, "celery@w", 1, "exception", "E"+long))
		}
		src.HandlePayload(payload(evs...))
		if b := src.cache.Bytes(); b > budget {
			t.Fatalf("after task %d: %d bytes in the task cache, budget %d", i, b, budget)
		}
	}
	tracked := src.cache.Len()
	if tracked == 0 || tracked > budget/(perTask*256) {
		t.Fatalf("%d tasks tracked within %d bytes, each holding %d events of 256-byte values", tracked, budget, perTask)
	}
	got := samples(t, AsCollector(src))
	expectSamples(t, got, map[string]float64{
		`celery_exporter_tracked_tasks{}`:               float64(tracked),
		`celery_exporter_tracked_tasks_evicted_total{}`: float64(tasks - tracked),
		// Every evicted task's held events were applied with the fallback queue.
		`celery_task_received_total{hostname="celery@w",name="t.a",queue_name="celery"}`: float64(tasks - tracked),
	})
	if src.pending != tracked*perTask {
		t.Errorf("%d events held, want %d (the tracked tasks')", src.pending, tracked*perTask)
	}
}
