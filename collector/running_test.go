package collector

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/go-kit/log"

	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

// now0 is t0 in event timestamps.
var now0 = float64(t0.Unix())

func running(name, queue string) string {
	return fmt.Sprintf(`celery_task_running{name=%q,queue_name=%q}`, name, queue)
}

func oldest(name, queue string) string {
	return fmt.Sprintf(`celery_task_running_oldest_age_seconds{name=%q,queue_name=%q}`, name, queue)
}

func startTask(src *EventSource, id, name, queue, host string, ts float64) {
	src.HandlePayload(payload(sent(id, name, queue, ts-1), taskEv("task-received", id, host, ts-1, "name", name), taskEv("task-started", id, host, ts)))
}

// A task runs from task-started to its final event; the oldest age is measured from the start.
func TestRunningTasksFromEvents(t *testing.T) {
	tests := []struct {
		name string
		feed func(src *EventSource, clk *clock.Fake)
		want map[string]float64
		// absent are series that must not exist.
		absent []string
	}{
		{
			name: "started, not finished",
			feed: func(src *EventSource, clk *clock.Fake) {
				startTask(src, "a", "t.hang", "chat", "celery@w1", now0-100)
				startTask(src, "b", "t.hang", "chat", "celery@w2", now0-30)
				startTask(src, "c", "t.other", "default", "celery@w1", now0-5)
			},
			want: map[string]float64{
				running("t.hang", "chat"): 2, oldest("t.hang", "chat"): 100,
				running("t.other", "default"): 1, oldest("t.other", "default"): 5,
			},
		},
		{
			name: "every final event ends it, and so do retries and requeues",
			feed: func(src *EventSource, clk *clock.Fake) {
				for i, end := range []ev{
					taskEv("task-succeeded", "0", "celery@w1", now0, "runtime", 1.0),
					taskEv("task-failed", "1", "celery@w1", now0, "exception", "KeyError()"),
					taskEv("task-revoked", "2", "celery@w1", now0, "terminated", true),
					taskEv("task-retried", "3", "celery@w1", now0, "exception", "KeyError()"),
					taskEv("task-rejected", "4", "celery@w1", now0, "requeue", true),
				} {
					startTask(src, fmt.Sprint(i), "t.a", "q", "celery@w1", now0-10)
					src.HandlePayload(payload(end))
				}
			},
			absent: []string{running("t.a", "q"), oldest("t.a", "q")},
		},
		{
			name: "a down worker's tasks do not count, a purged worker's are forgotten",
			feed: func(src *EventSource, clk *clock.Fake) {
				src.HandlePayload(payload(heartbeat("celery@w1", 2, 1, 0)))
				startTask(src, "a", "t.a", "q", "celery@w1", now0)
				clk.Add(10 * time.Second) // past 2×freq + 5s
			},
			want:   map[string]float64{`celery_worker_up{hostname="celery@w1"}`: 0},
			absent: []string{running("t.a", "q")},
		},
		{
			name: "a heartbeat with no active task ends tasks whose final event was lost",
			feed: func(src *EventSource, clk *clock.Fake) {
				src.HandlePayload(payload(heartbeat("celery@w1", 2, 1, 0)))
				startTask(src, "lost", "t.a", "q", "celery@w1", now0)
				startTask(src, "other", "t.a", "q", "celery@w2", now0)
				clk.Add(2 * time.Second)
				src.HandlePayload(payload(heartbeat("celery@w1", 2, 0, 1)))
			},
			want: map[string]float64{running("t.a", "q"): 1},
		},
		{
			name: "a heartbeat right after task-started leaves it alone",
			feed: func(src *EventSource, clk *clock.Fake) {
				startTask(src, "new", "t.a", "q", "celery@w1", now0)
				clk.Add(500 * time.Millisecond)
				src.HandlePayload(payload(heartbeat("celery@w1", 2, 0, 1)))
			},
			want: map[string]float64{running("t.a", "q"): 1},
		},
		{
			name: "held for its task-sent, then counted with its queue",
			feed: func(src *EventSource, clk *clock.Fake) {
				src.HandlePayload(payload(taskEv("task-received", "h", "celery@w1", now0-3, "name", "t.a"), taskEv("task-started", "h", "celery@w1", now0-2)))
				src.HandlePayload(payload(sent("h", "t.a", "chat", now0-4)))
			},
			want: map[string]float64{running("t.a", "chat"): 1, oldest("t.a", "chat"): 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, clk := newTestSource(EventOptions{})
			tt.feed(src, clk)
			got := samples(t, AsCollector(src))
			expectSamples(t, got, tt.want)
			expectAbsent(t, got, tt.absent...)
			for k := range only(got, "celery_task_running") {
				if _, ok := tt.want[k]; !ok {
					t.Errorf("unexpected %s", k)
				}
			}
		})
	}
}

func TestRunningTasksPurgedWorker(t *testing.T) {
	src, clk := newTestSource(EventOptions{PurgeAfter: time.Minute})
	src.HandlePayload(payload(heartbeat("celery@w1", 2, 1, 0)))
	startTask(src, "a", "t.a", "q", "celery@w1", now0)
	clk.Add(2 * time.Minute)
	src.Tick()
	src.HandlePayload(payload(heartbeat("celery@w1", 2, 1, 0))) // back, with no word of task a
	expectAbsent(t, samples(t, AsCollector(src)), running("t.a", "q"))
}

// inspect active adds what the events missed (tasks started before the exporter) and ends what
// a lost final event left running.
func TestRunningTasksMergedWithActive(t *testing.T) {
	src, clk := newTestSource(EventOptions{DefaultQueue: "celery", MaxTaskNames: 3})
	src.HandlePayload(payload(heartbeat("celery@w1", 2, 3, 0), heartbeat("celery@w2", 2, 1, 0)))
	startTask(src, "ended", "t.a", "q", "celery@w1", now0-60) // its task-succeeded was lost
	startTask(src, "listed", "t.a", "q", "celery@w1", now0-50)
	startTask(src, "w2", "t.a", "q", "celery@w2", now0-40) // w2 did not answer
	clk.Add(time.Second)
	sentAt := clk.Now()
	clk.Add(time.Second)
	startTask(src, "late", "t.a", "q", "celery@w1", now0) // started after the request went out
	src.model.Active.Put(state.ActiveSnapshot{Sent: sentAt, Hosts: map[string][]state.ActiveTask{
		"celery@w1": {
			{ID: "listed", Name: "t.a", Queue: "q", Started: now0 - 50},
			{ID: "before", Name: "t.old", Queue: "chat", Started: now0 - 3600},  // started before the exporter
			{ID: "anon", Name: "t.new", Started: now0 - 10},                     // no queue: the default
			{ID: "capped", Name: "t.capped", Queue: "chat", Started: now0 - 10}, // past the name cap
		},
	}})
	src.Tick()
	want := map[string]float64{
		running("t.a", "q"): 3, oldest("t.a", "q"): 52, // listed, w2, late
		running("t.old", "chat"): 1, oldest("t.old", "chat"): 3602,
		running("t.new", "celery"): 1,
		running("other", "chat"):   1,
	}
	got := samples(t, AsCollector(src))
	expectSamples(t, got, want)
	if n := len(only(got, "celery_task_running")); n != len(want)-2 {
		t.Errorf("running series %v", only(got, "celery_task_running"))
	}

	// A task only control knows leaves when no reply lists it for ActiveTTL.
	clk.Add(defaultActiveTTL - time.Second)
	src.HandlePayload(payload(heartbeat("celery@w1", 2, 3, 0)))
	src.Tick()
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{running("t.old", "chat"): 1})
	clk.Add(10 * time.Second)
	src.HandlePayload(payload(heartbeat("celery@w1", 2, 3, 0), heartbeat("celery@w2", 2, 1, 0)))
	src.Tick()
	got = samples(t, AsCollector(src))
	expectSamples(t, got, map[string]float64{running("t.a", "q"): 3})
	expectAbsent(t, got, running("t.old", "chat"))
}

// The running set is bounded by the task cache's capacity, whatever control reports.
func TestRunningTasksBounded(t *testing.T) {
	src, clk := newTestSourceModel(EventOptions{}, state.Options{MaxTasks: 10})
	var list []state.ActiveTask
	for i := range 100 {
		list = append(list, state.ActiveTask{ID: fmt.Sprint(i), Name: "t.a", Queue: "q", Started: now0})
	}
	src.model.Active.Put(state.ActiveSnapshot{Sent: clk.Now(), Hosts: map[string][]state.ActiveTask{"celery@w1": list}})
	src.Tick()
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{running("t.a", "q"): 10})
}

// Each control round asks `active` and hands the replies to the event source through the model,
// with the queue each task came from.
func TestControlRoundReportsActiveTasks(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	activeW1 := `[{"id": "u1", "name": "t.hang", "time_start": 1795879000.5, "acknowledged": true,
		"delivery_info": {"exchange": "", "routing_key": "chat", "priority": 0, "redelivered": false}, "worker_pid": 7},
		{"id": "u2", "name": "t.x", "time_start": null, "delivery_info": {"routing_key": "elsewhere"}},
		{"name": "no id"}, 5]`
	b.worker(t, "celery@w1", replies(t, map[string]string{"ping": `{"ok":"pong"}`, "active_queues": queuesReply("chat", "default"), "active": activeW1}))
	b.worker(t, "celery@w2", replies(t, map[string]string{"ping": `{"ok":"pong"}`, "active_queues": queuesReply("background"),
		"active": `[{"id": "u3", "name": "t.y", "time_start": 1795879400, "delivery_info": {"routing_key": "x"}}]`}))
	b.worker(t, "celery@old", replies(t, map[string]string{"ping": `{"ok":"pong"}`, "active": `{"error": "KeyError('active')"}`}))
	m, clk := newTestModel(state.Options{})
	setWorkers(m, []string{"celery@w1", "celery@w2", "celery@old"}, []string{"celery@w1", "celery@w2", "celery@old"}, nil)
	c := NewControlSource(log.NewNopLogger(), b.rdb, b.ks, ControlOptions{Timeout: 300 * time.Millisecond}, m)
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := m.Active.Take()
	if got == nil {
		t.Fatal("no snapshot")
	}
	if !got.Sent.Equal(clk.Now()) {
		t.Errorf("Sent %v, want the round's start %v", got.Sent, clk.Now())
	}
	want := map[string][]state.ActiveTask{
		"celery@w1": {{ID: "u1", Name: "t.hang", Queue: "chat", Started: 1795879000.5}, {ID: "u2", Name: "t.x"}},
		"celery@w2": {{ID: "u3", Name: "t.y", Queue: "background", Started: 1795879400}},
	}
	if !reflect.DeepEqual(got.Hosts, want) {
		t.Errorf("hosts %+v, want %+v", got.Hosts, want)
	}
	for _, w := range b.mr.Keys() {
		t.Errorf("key left: %s", w)
	}

	// A failed round tells nothing: no snapshot, so nothing ends.
	b.mr.SetError("LOADING")
	_ = c.Round(context.Background())
	if m.Active.Take() != nil {
		t.Errorf("a failed round sent a snapshot")
	}
}
