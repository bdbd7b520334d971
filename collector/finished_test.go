package collector

import (
	"fmt"
	"testing"
	"time"
)

// An event that arrives after its task's final one (the threads pool publishes a first attempt's
// task-retried after the retry's task-succeeded) keeps the task's name and queue; after
// finishedTTL, or once finishedCap later tasks have finished, the task is unknown again.
func TestEventAfterFinalEventKeepsLabels(t *testing.T) {
	tests := []struct {
		name      string
		wait      time.Duration
		others    int // tasks finishing in between
		wantName  string
		wantQueue string
	}{
		{"late retried", 0, 0, "t.a", "q"},
		{"after the TTL", finishedTTL + time.Second, 0, "unknown", "celery"},
		{"pushed out of the ring", 0, finishedCap, "unknown", "celery"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, clk := newTestSource(EventOptions{})
			src.HandlePayload(payload(sent("r", "t.a", "q", 1), taskEv("task-received", "r", "celery@w1", 2, "name", "t.a"),
				taskEv("task-started", "r", "celery@w1", 3), taskEv("task-succeeded", "r", "celery@w1", 4, "runtime", 1.0)))
			for i := range tt.others {
				id := fmt.Sprint("o", i)
				src.HandlePayload(payload(sent(id, "t.b", "q", 1), taskEv("task-received", id, "celery@w1", 2, "name", "t.b"),
					taskEv("task-succeeded", id, "celery@w1", 4, "runtime", 1.0)))
			}
			clk.Add(tt.wait)
			src.HandlePayload(payload(taskEv("task-retried", "r", "celery@w1", 5, "exception", "KeyError()")))
			clk.Add(3 * time.Second) // past --task.sent-wait: held events are released
			src.Tick()
			key := fmt.Sprintf(`celery_task_retried_total{exception="KeyError",hostname="celery@w1",name=%q,queue_name=%q}`, tt.wantName, tt.wantQueue)
			if got := samples(t, AsCollector(src))[key]; got != 1 {
				t.Errorf("%s = %v, want 1", key, got)
			}
		})
	}
}
