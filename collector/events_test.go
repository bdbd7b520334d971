package collector

import (
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

// The real traffic of a Celery 5.2.6 worker (test/fixtures/capture-5.2.6/psubscribe_raw.txt)
// produces exactly these task and event metrics.
func TestEventSourceReplaysCapture(t *testing.T) {
	src, clk := newTestSource(EventOptions{})
	fed := replayCapture(t, src, clk)
	if fed != 45 { // 8 task-sent, 7 task.multi batches, 30 worker events
		t.Fatalf("fed %d messages", fed)
	}
	got := samples(t, AsCollector(src))
	w := `hostname="probe@localhost"`
	want := map[string]float64{
		`celery_task_sent_total{name="app.chat_task",queue_name="chat"}`:                                        2,
		`celery_task_sent_total{name="app.fail_task",queue_name="chat"}`:                                        1,
		`celery_task_sent_total{name="app.retry_task",queue_name="chat"}`:                                       2,
		`celery_task_sent_total{name="app.bg_task",queue_name="background"}`:                                    3,
		`celery_task_received_total{` + w + `,name="app.chat_task",queue_name="chat"}`:                          2,
		`celery_task_received_total{` + w + `,name="app.fail_task",queue_name="chat"}`:                          1,
		`celery_task_received_total{` + w + `,name="app.retry_task",queue_name="chat"}`:                         2,
		`celery_task_started_total{` + w + `,name="app.chat_task",queue_name="chat"}`:                           2,
		`celery_task_started_total{` + w + `,name="app.retry_task",queue_name="chat"}`:                          2,
		`celery_task_succeeded_total{` + w + `,name="app.chat_task",queue_name="chat"}`:                         2,
		`celery_task_succeeded_total{` + w + `,name="app.retry_task",queue_name="chat"}`:                        1,
		`celery_task_failed_total{exception="ValueError",` + w + `,name="app.fail_task",queue_name="chat"}`:     1,
		`celery_task_retried_total{exception="RuntimeError",` + w + `,name="app.retry_task",queue_name="chat"}`: 1,
		`celery_task_runtime_seconds_count{` + w + `,name="app.chat_task",queue_name="chat",state="succeeded"}`: 2,
		`celery_task_runtime_seconds_count{` + w + `,name="app.fail_task",queue_name="chat",state="failed"}`:    1,
		`celery_task_queue_wait_seconds_count{name="app.chat_task",queue_name="chat"}`:                          2,
		`celery_exporter_events_total{type="worker-heartbeat"}`:                                                 28,
		`celery_exporter_events_total{type="task-sent"}`:                                                        8,
		`celery_exporter_events_total{type="task-received"}`:                                                    5,
		`celery_exporter_events_total{type="task-started"}`:                                                     5,
		`celery_exporter_events_total{type="task-succeeded"}`:                                                   3,
		`celery_exporter_events_total{type="task-failed"}`:                                                      1,
		`celery_exporter_events_total{type="task-retried"}`:                                                     1,
		`celery_exporter_events_total{type="worker-online"}`:                                                    1,
		`celery_exporter_events_total{type="worker-offline"}`:                                                   1,
		`celery_worker_up{` + w + `}`:                                                                           0,
		`celery_exporter_tracked_tasks{}`:                                                                       3, // the background tasks nobody consumed
	}
	expectSamples(t, got, want)
	// No label value was guessed: every task series has one of the two real queues.
	for k := range got {
		if strings.HasPrefix(k, "celery_task_") && !strings.Contains(k, `queue_name="chat"`) && !strings.Contains(k, `queue_name="background"`) {
			t.Errorf("unexpected queue label: %s", k)
		}
	}
	if n := len(only(got, "celery_task_failed_total")); n != 1 {
		t.Errorf("%d failed series", n)
	}
}

// The queue label comes from task-sent even when the worker's events arrive first, and from the
// documented fallbacks when task-sent never comes.
func TestEventSourceQueueAttribution(t *testing.T) {
	tests := []struct {
		name  string
		hints map[string]string // the only queue of a worker, from remote control
		feed  func(src *EventSource, clk *clock.Fake)
		want  map[string]float64
		// absent are series that must not exist.
		absent []string
	}{
		{
			name: "received before sent waits for sent",
			feed: func(src *EventSource, clk *clock.Fake) {
				src.HandlePayload(payload(taskEv("task-received", "u1", "celery@w1", 1, "name", "t.a"), taskEv("task-started", "u1", "celery@w1", 2)))
				clk.Add(500 * time.Millisecond)
				src.Tick()
				src.HandlePayload(payload(sent("u1", "t.a", "chat", 0.5)))
				src.HandlePayload(payload(taskEv("task-succeeded", "u1", "celery@w1", 3, "runtime", 1.0)))
			},
			want: map[string]float64{
				`celery_task_received_total{hostname="celery@w1",name="t.a",queue_name="chat"}`:                        1,
				`celery_task_started_total{hostname="celery@w1",name="t.a",queue_name="chat"}`:                         1,
				`celery_task_succeeded_total{hostname="celery@w1",name="t.a",queue_name="chat"}`:                       1,
				`celery_task_queue_wait_seconds_sum{name="t.a",queue_name="chat"}`:                                     1.5,
				`celery_task_runtime_seconds_sum{hostname="celery@w1",name="t.a",queue_name="chat",state="succeeded"}`: 1,
			},
			absent: []string{`celery_task_received_total{hostname="celery@w1",name="t.a",queue_name="celery"}`},
		},
		{
			name: "no task-sent: the queue task-sent showed for that name before",
			feed: func(src *EventSource, clk *clock.Fake) {
				src.HandlePayload(payload(sent("u0", "t.a", "chat", 1)))
				src.HandlePayload(payload(taskEv("task-received", "u1", "celery@w1", 1, "name", "t.a")))
				clk.Add(2 * time.Second)
				src.Tick()
			},
			want: map[string]float64{`celery_task_received_total{hostname="celery@w1",name="t.a",queue_name="chat"}`: 1},
		},
		{
			name:  "no task-sent: the only queue the worker consumes",
			hints: map[string]string{"celery@w1": "background"},
			feed: func(src *EventSource, clk *clock.Fake) {
				src.HandlePayload(payload(sent("u0", "t.a", "chat", 1)))
				src.HandlePayload(payload(taskEv("task-received", "u1", "celery@w1", 1, "name", "t.a")))
				clk.Add(2 * time.Second)
				src.Tick()
			},
			want: map[string]float64{`celery_task_received_total{hostname="celery@w1",name="t.a",queue_name="background"}`: 1},
		},
		{
			name: "nothing known: the default queue; still held until the wait is over",
			feed: func(src *EventSource, clk *clock.Fake) {
				src.HandlePayload(payload(taskEv("task-received", "u1", "celery@w1", 1, "name", "t.b")))
				clk.Add(1999 * time.Millisecond)
				src.Tick()
			},
			absent: []string{`celery_task_received_total{hostname="celery@w1",name="t.b",queue_name="default"}`},
		},
		{
			name: "nothing known: the default queue after the wait",
			feed: func(src *EventSource, clk *clock.Fake) {
				src.HandlePayload(payload(taskEv("task-received", "u1", "celery@w1", 1, "name", "t.b")))
				clk.Add(2 * time.Second)
				src.Tick()
			},
			want: map[string]float64{`celery_task_received_total{hostname="celery@w1",name="t.b",queue_name="default"}`: 1},
		},
		{
			name: "revoked on receipt without any name",
			feed: func(src *EventSource, clk *clock.Fake) {
				src.HandlePayload(payload(taskEv("task-revoked", "u9", "celery@w1", 1, "expired", true)))
				src.HandlePayload(payload(taskEv("task-revoked", "u8", "celery@w1", 1, "terminated", true, "signum", 15)))
				src.HandlePayload(payload(sent("u7", "t.c", "chat", 1), taskEv("task-revoked", "u7", "celery@w1", 1)))
				clk.Add(2 * time.Second)
				src.Tick()
			},
			want: map[string]float64{
				`celery_task_revoked_total{hostname="celery@w1",name="unknown",queue_name="default",reason="expired"}`:    1,
				`celery_task_revoked_total{hostname="celery@w1",name="unknown",queue_name="default",reason="terminated"}`: 1,
				`celery_task_revoked_total{hostname="celery@w1",name="t.c",queue_name="chat",reason="revoked"}`:           1,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, clk := newTestSource(EventOptions{DefaultQueue: "default"})
			if tt.hints != nil {
				round := state.QueueRound{At: clk.Now(), StaleAfter: time.Hour, Queues: map[string][]string{}}
				for h, q := range tt.hints {
					round.Queues[h] = []string{q}
				}
				src.model.Queues.Record(round)
			}
			tt.feed(src, clk)
			got := samples(t, AsCollector(src))
			expectSamples(t, got, tt.want)
			expectAbsent(t, got, tt.absent...)
		})
	}
}

func TestEventSourceTimesAndFailures(t *testing.T) {
	src, clk := newTestSource(EventOptions{})
	src.HandlePayload(payload(
		ev{"type": "task-sent", "uuid": "e1", "name": "t.eta", "queue": "q", "hostname": "gen1@h", "timestamp": 100.0,
			"eta": time.Unix(110, 0).UTC().Format("2006-01-02T15:04:05.000000+00:00")},
	))
	src.HandlePayload(payload(
		taskEv("task-received", "e1", "celery@w1", 100.5, "name", "t.eta"),
		taskEv("task-started", "e1", "celery@w1", 112), // waited 2 s past its ETA, not 12 s
		taskEv("task-failed", "e1", "celery@w1", 119.5, "exception", "ExceptionWithTraceback()",
			"traceback", "Traceback (most recent call last):\nbilliard.exceptions.TimeLimitExceeded: TimeLimitExceeded(180,)\n"),
	))
	// A clock skewed producer: started before sent; the wait is 0, never negative.
	src.HandlePayload(payload(sent("e2", "t.skew", "q", 200), taskEv("task-received", "e2", "celery@w1", 199, "name", "t.skew"),
		taskEv("task-started", "e2", "celery@w1", 199.5)))
	// acks_late + reject_on_worker_lost: a lost worker is a requeued rejection, not a failure.
	src.HandlePayload(payload(sent("e3", "t.lost", "q", 1), taskEv("task-rejected", "e3", "celery@w1", 2, "requeue", true)))
	clk.Add(time.Second)
	src.Tick()
	got := samples(t, AsCollector(src))
	expectSamples(t, got, map[string]float64{
		`celery_task_failed_total{exception="TimeLimitExceeded",hostname="celery@w1",name="t.eta",queue_name="q"}`: 1,
		`celery_task_runtime_seconds_sum{hostname="celery@w1",name="t.eta",queue_name="q",state="failed"}`:         7.5,
		`celery_task_queue_wait_seconds_sum{name="t.eta",queue_name="q"}`:                                          2,
		`celery_task_queue_wait_seconds_sum{name="t.skew",queue_name="q"}`:                                         0,
		`celery_task_queue_wait_seconds_count{name="t.skew",queue_name="q"}`:                                       1,
		`celery_task_rejected_total{hostname="celery@w1",name="t.lost",queue_name="q"}`:                            1,
		`celery_exporter_tracked_tasks{}`:                                                                          2, // e2 runs, e3 was requeued
	})
}

func TestEventSourceWorkerLiveness(t *testing.T) {
	src, clk := newTestSourceModel(EventOptions{PurgeAfter: time.Hour}, state.Options{WorkerTimeout: 5 * time.Second})
	src.HandlePayload(payload(ev{"type": "worker-online", "hostname": "celery@a", "freq": 2.0, "active": 0, "processed": 0}))
	src.HandlePayload(payload(heartbeat("celery@a", 2, 3, 10)))
	src.HandlePayload(payload(heartbeat("celery@b", 2, 1, 5)))
	src.HandlePayload(payload(sent("x", "t.a", "q", 1), taskEv("task-received", "x", "celery@b", 1, "name", "t.a")))
	up := func(host string) float64 {
		return samples(t, AsCollector(src))[`celery_worker_up{hostname="`+host+`"}`]
	}

	// The `heartbeat` control command's heartbeat: freq 5, no counts. It must not zero anything.
	src.HandlePayload(payload(ev{"type": "worker-heartbeat", "hostname": "celery@a", "freq": 5, "sw_ident": "py-celery", "timestamp": 2.0}))
	got := samples(t, AsCollector(src))
	expectSamples(t, got, map[string]float64{
		`celery_worker_up{hostname="celery@a"}`:                                                      1,
		`celery_worker_tasks_active{hostname="celery@a"}`:                                            3,
		`celery_worker_heartbeat_interval_seconds{hostname="celery@a"}`:                              2,
		`celery_worker_load_average{hostname="celery@a",period="5m"}`:                                0.4,
		`celery_worker_tasks_processed_total{hostname="celery@a"}`:                                   10,
		`celery_worker_info{hostname="celery@a",sw_ident="py-celery",sw_sys="Linux",sw_ver="5.2.6"}`: 1,
	})

	if sys, ok := src.model.Workers.System("celery@a"); !ok || sys != "Linux" {
		t.Errorf("Workers.System = %q %v", sys, ok)
	}
	clk.Add(2*2*time.Second + 5*time.Second - time.Millisecond)
	if up("celery@a") != 1 {
		t.Fatal("up until 2×freq + timeout")
	}
	src.HandlePayload(payload(heartbeat("celery@b", 2, 1, 7)))
	clk.Add(time.Millisecond)
	if up("celery@a") != 0 || up("celery@b") != 1 {
		t.Fatalf("a must be down (killed: no heartbeat), b up: a=%v b=%v", up("celery@a"), up("celery@b"))
	}
	// A graceful stop is at once.
	src.HandlePayload(payload(ev{"type": "worker-offline", "hostname": "celery@b", "freq": 2.0, "active": 0, "processed": 7}))
	if up("celery@b") != 0 {
		t.Fatal("worker-offline must make it 0 at once")
	}
	alive, known := src.model.Workers.Names()
	if len(alive) != 0 || strings.Join(known, ",") != "celery@a,celery@b" {
		t.Fatalf("alive %v known %v", alive, known)
	}
	// Down workers stay at 0 for PurgeAfter (long enough for a 15m alert), then every series goes.
	clk.Add(59 * time.Minute)
	src.Tick()
	if _, ok := samples(t, AsCollector(src))[`celery_worker_up{hostname="celery@b"}`]; !ok {
		t.Fatal("purged too early")
	}
	clk.Add(2 * time.Minute)
	src.Tick()
	clk.Add(2 * time.Minute) // expiry runs every 5 s of clock
	got = samples(t, AsCollector(src))
	for k := range got {
		if strings.Contains(k, "celery@") {
			t.Errorf("series left after purge: %s", k)
		}
	}
	if v := got[`celery_task_sent_total{name="t.a",queue_name="q"}`]; v != 1 {
		t.Errorf("task_sent has no hostname and stays: %v", v)
	}
	// A worker coming back starts from scratch; its counters count again.
	src.HandlePayload(payload(heartbeat("celery@b", 2, 0, 3)))
	if up("celery@b") != 1 {
		t.Fatal("back")
	}
}

func TestEventSourceProcessedSurvivesWorkerRestart(t *testing.T) {
	src, _ := newTestSource(EventOptions{})
	for _, p := range []int{100, 110, 120, 5, 8} { // restart between 120 and 5
		src.HandlePayload(payload(heartbeat("celery@a", 2, 0, p)))
	}
	// 100 was already processed before we saw it: 10 + 10 + 5 + 3.
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{`celery_worker_tasks_processed_total{hostname="celery@a"}`: 28})
}

func TestEventSourceDetectsMissingTaskEvents(t *testing.T) {
	src, clk := newTestSource(EventOptions{})
	enabled := func() float64 {
		return samples(t, AsCollector(src))[`celery_worker_task_events_enabled{hostname="celery@a"}`]
	}
	hb := func(processed int) {
		src.HandlePayload(payload(heartbeat("celery@a", 2, 0, processed)))
		clk.Add(2 * time.Second)
	}
	hb(0)
	hb(0)
	hb(0)
	if enabled() != 1 {
		t.Fatal("an idle worker is not suspected")
	}
	// Work happens, its task events arrive.
	hb(5)
	src.HandlePayload(payload(taskEv("task-started", "z", "celery@a", 1)))
	hb(5)
	hb(5)
	if enabled() != 1 {
		t.Fatal("events arrived")
	}
	// Work goes on, no task events come (a worker without -E).
	hb(9)
	hb(12)
	hb(15)
	hb(15)
	if enabled() != 0 {
		t.Fatal("processed grew and no task event arrived")
	}
}

func TestEventSourceBadInputIsCountedNotFatal(t *testing.T) {
	src, _ := newTestSource(EventOptions{})
	for _, p := range []string{
		`not json`,
		`{"body": "!!", "properties": {"body_encoding": "base64"}}`,
		`{"body": "gAR9", "content-type": "application/x-python-serialize", "properties": {"body_encoding": "base64"}}`,
		`{"body": "bm90IGpzb24=", "properties": {"body_encoding": "base64"}}`,
		payload(ev{"uuid": "no-type"}),
		payload(ev{"type": "task-started"}),
		payload(ev{"type": "worker-heartbeat"}),
		payload(ev{"type": "task-teleported", "uuid": "u"}),
		payload(),
		// Invalid UTF-8 in a label value would make the scrape fail (client_golang refuses it).
		"{\"body\": \"{\\\"type\\\": \\\"worker-online\\\", \\\"hostname\\\": \\\"celery@bad\xff\\\", \\\"freq\\\": 2}\", \"properties\": {}}",
	} {
		src.HandlePayload(p)
	}
	src.HandlePayload(payload(heartbeat("celery@ok", 2, 0, 0)))
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{
		`celery_exporter_event_errors_total{reason="invalid_envelope"}`:         1,
		`celery_exporter_event_errors_total{reason="invalid_base64"}`:           1,
		`celery_exporter_event_errors_total{reason="unsupported_content_type"}`: 1,
		`celery_exporter_event_errors_total{reason="invalid_json"}`:             1,
		`celery_exporter_event_errors_total{reason="missing_type"}`:             1,
		`celery_exporter_event_errors_total{reason="missing_uuid"}`:             1,
		`celery_exporter_event_errors_total{reason="missing_hostname"}`:         1,
		`celery_exporter_events_total{type="unknown"}`:                          1,
		`celery_exporter_event_errors_total{reason="unknown_type"}`:             1,
		`celery_worker_up{hostname="celery@ok"}`:                                1,
		"celery_worker_up{hostname=\"celery@bad\uFFFD\"}":                       1,
	})
}

func TestEventSourceCardinalityCaps(t *testing.T) {
	src, clk := newTestSource(EventOptions{MaxTaskNames: 2, MaxExceptionsPerTask: 1, MaxWorkers: 1})
	src.HandlePayload(payload(heartbeat("celery@a", 2, 0, 0))) // a worker: holds its place at the cap
	for i, name := range []string{"t.a", "t.b", "t.c", "t.d"} {
		id := fmt.Sprint(i)
		src.HandlePayload(payload(sent(id, name, "q", 1)))
	}
	src.HandlePayload(payload(sent("f1", "t.a", "q", 1), taskEv("task-failed", "f1", "celery@a", 1, "exception", "KeyError('x')")))
	src.HandlePayload(payload(sent("f2", "t.a", "q", 1), taskEv("task-failed", "f2", "celery@a", 1, "exception", "ValueError('x')")))
	src.HandlePayload(payload(heartbeat("celery@b", 2, 0, 0))) // second worker: past the cap
	clk.Add(time.Second)
	got := samples(t, AsCollector(src))
	expectSamples(t, got, map[string]float64{
		`celery_task_sent_total{name="t.a",queue_name="q"}`:                                            3,
		`celery_task_sent_total{name="other",queue_name="q"}`:                                          2,
		`celery_task_failed_total{exception="KeyError",hostname="celery@a",name="t.a",queue_name="q"}`: 1,
		`celery_task_failed_total{exception="other",hostname="celery@a",name="t.a",queue_name="q"}`:    1,
		`celery_exporter_label_overflow_total{label="name"}`:                                           2,
		`celery_exporter_label_overflow_total{label="exception"}`:                                      1,
		`celery_exporter_label_overflow_total{label="hostname"}`:                                       1,
	})
	expectAbsent(t, got, `celery_worker_up{hostname="celery@b"}`)
}

// Memory does not grow with the number of tasks: the cache holds at most MaxTracked and counts
// what it drops.
func TestEventSourceTaskCacheIsBounded(t *testing.T) {
	src, _ := newTestSourceModel(EventOptions{}, state.Options{MaxTasks: 100})
	for i := 0; i < 5000; i++ {
		src.HandlePayload(payload(sent(fmt.Sprint(i), "t.a", "q", 1), taskEv("task-received", fmt.Sprint(i), "celery@a", 1, "name", "t.a")))
	}
	got := samples(t, AsCollector(src))
	expectSamples(t, got, map[string]float64{
		`celery_exporter_tracked_tasks{}`:                                           100,
		`celery_exporter_tracked_tasks_evicted_total{}`:                             4900,
		`celery_task_received_total{hostname="celery@a",name="t.a",queue_name="q"}`: 5000,
	})
}

func TestScraperHealthMetrics(t *testing.T) {
	e := NewExporter(log.NewNopLogger(), time.Second, failing{})
	if err := testutil.CollectAndCompare(e, strings.NewReader(`
# HELP celery_exporter_collector_success Whether the source answered the last scrape (1) or failed (0).
# TYPE celery_exporter_collector_success gauge
celery_exporter_collector_success{collector="broken"} 0
`), "celery_exporter_collector_success"); err != nil {
		t.Fatal(err)
	}
}

// Scrapes, remote control and the broker source read while the pipeline writes (go test -race).
func TestEventSourceConcurrentReaders(t *testing.T) {
	src, clk := newTestSourceModel(EventOptions{}, state.Options{MaxTasks: 50})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 2000; i++ {
			id := fmt.Sprint(i)
			src.HandlePayload(payload(sent(id, "t.a", "q", 1), taskEv("task-received", id, "celery@a", 1, "name", "t.a"),
				taskEv("task-started", id, "celery@a", 1)))
			src.HandlePayload(payload(heartbeat("celery@a", 2, i%2, i)))
			if i%100 == 0 {
				clk.Add(6 * time.Second)
				src.Tick()
			}
		}
	}()
	for {
		select {
		case <-done:
			got := samples(t, AsCollector(src))
			if v := got[`celery_task_sent_total{name="t.a",queue_name="q"}`]; v != 2000 {
				t.Fatalf("sent = %v", v)
			}
			return
		default:
			_ = samples(t, AsCollector(src))
			src.model.Workers.Names()
			src.model.Tasks.SentTime("7")
			src.model.Workers.System("celery@a")
			src.model.Active.Put(state.ActiveSnapshot{Sent: t0, Hosts: map[string][]state.ActiveTask{"celery@a": {{ID: "x", Name: "t.b"}}}})
		}
	}
}

// The broker scrape reads task sent times while the pipeline writes them. Many uuids, each
// received before it is sent (so the cached task exists when task-sent sets its time), with a
// reader polling the uuid being written: go test -race reports any write outside the cache's lock.
func TestEventSourceSentAtRace(t *testing.T) {
	src, _ := newTestSourceModel(EventOptions{}, state.Options{MaxTasks: 1000})
	var cur atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 3000; i++ {
			id := fmt.Sprint(i)
			cur.Store(int64(i))
			src.HandlePayload(payload(taskEv("task-received", id, "celery@a", 1, "name", "t.a")))
			src.HandlePayload(payload(sent(id, "t.a", "q", 2)))
		}
	}()
	for {
		select {
		case <-done:
			if at, ok := src.model.Tasks.SentTime("2999"); !ok || at.Unix() != 2 {
				t.Fatalf("SentTime(2999) = %v, %v", at, ok)
			}
			return
		default:
			i := cur.Load()
			src.model.Tasks.SentTime(fmt.Sprint(i))
			src.model.Tasks.SentTime(fmt.Sprint(i - 1))
		}
	}
}

// A zero cap, bucket list or default queue takes the default (a cap below 1 is never
// unbounded); zero durations stay zero, and no initial exceptions stays none. The same for the
// model: a zero task cap or TTL takes the default, a zero worker timeout stays zero.
func TestEventOptionsDefaults(t *testing.T) {
	s := NewEventSource(log.NewNopLogger(), nil, EventOptions{MaxTaskNames: -1, MaxWorkers: 7}, NewModel(state.Options{}))
	want := DefaultEventOptions()
	want.PurgeAfter, want.SentWait, want.MaxWorkers = 0, 0, 7
	want.InitialExceptions = nil
	want.ActiveTTL = defaultActiveTTL
	if !reflect.DeepEqual(s.opts, want) {
		t.Fatalf("options %+v\nwant %+v", s.opts, want)
	}
	if got, want := s.model.Tasks.Capacity(), DefaultModelOptions().MaxTasks; got != want {
		t.Errorf("task cache capacity %d, want %d", got, want)
	}
}
