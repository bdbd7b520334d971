package integration

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// The series the alert rules need so that every first event pages, a hung task shows,
// lost task events are measured, and a failed source is the one that reads unhealthy.

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: real redis-server, Celery workers and the exporter binary")
	}
	harness.RequirePython(t, "celery")
}

// The first hard time limit of a task on a prefork worker lands on a series that already read 0:
// increase() sees it. Before the change the series was born at 1, which increase() reads as no
// change.
func TestFirstFailureSeriesExistAtZero(t *testing.T) {
	besideTheDemo(t)
	skipShort(t)
	r := harness.StartRedis(t)
	url := r.URL(0)
	exp := harness.StartExporter(t, "--broker.url="+url, "--control.disabled")
	exp.WaitReady(t, 15*time.Second)
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "prefork", Concurrency: 1,
		Queues: []string{"limits"}, Events: true})

	// Before anything happened: the exporter's own error counters and its start time.
	m := exp.MustScrape(t)
	for _, s := range []struct{ name, label, value string }{
		{"celery_exporter_event_errors_total", "reason", "buffer_full"},
		{"celery_exporter_event_errors_total", "reason", "invalid_json"},
		{"celery_exporter_label_overflow_total", "label", "exception"},
		{"celery_exporter_label_overflow_total", "label", "name"},
		{"celery_exporter_label_overflow_total", "label", "hostname"},
	} {
		if v, ok := m.Value(s.name, map[string]string{s.label: s.value}); !ok || v != 0 {
			t.Errorf("%s{%s=%q} = %v (present %v), want 0 from the start", s.name, s.label, s.value, v, ok)
		}
	}
	if v, ok := m.Value("celery_exporter_start_time_seconds", nil); !ok || v > float64(time.Now().Unix())+1 || v < float64(time.Now().Add(-5*time.Minute).Unix()) {
		t.Errorf("celery_exporter_start_time_seconds = %v (present %v)", v, ok)
	}

	// The ETA holds the task in the worker for 10 s after its task-received: the zero series exist
	// for that long before the failure.
	harness.Produce(t, url, nil, []harness.Send{{Task: "hard_limited", Args: []any{3}, Queue: "limits", Countdown: 10}})
	series := func(extra ...string) map[string]string {
		l := map[string]string{"name": "celeryapp.app.hard_limited", "hostname": w.NodeName, "queue_name": "limits"}
		for i := 0; i+1 < len(extra); i += 2 {
			l[extra[i]] = extra[i+1]
		}
		return l
	}
	failed := func(exc string) harness.Sample {
		return harness.Sample{Name: "celery_task_failed_total", Labels: series("exception", exc)}
	}
	zero := []harness.Sample{
		failed("SoftTimeLimitExceeded"), failed("TimeLimitExceeded"), failed("WorkerLostError"),
		{Name: "celery_task_succeeded_total", Labels: series()},
		{Name: "celery_task_rejected_total", Labels: series()},
		{Name: "celery_task_received_total", Labels: series(), Value: 1},
	}
	agree(t, exp, 20*time.Second, zero, "celery_task_failed_total", "celery_task_succeeded_total", "celery_task_rejected_total")

	after := append([]harness.Sample(nil), zero...)
	after[1].Value = 1 // TimeLimitExceeded
	after = append(after, harness.Sample{Name: "celery_task_started_total", Labels: series(), Value: 1})
	agree(t, exp, 60*time.Second, after, "celery_task_failed_total", "celery_task_succeeded_total", "celery_task_rejected_total",
		"celery_task_started_total", "celery_task_received_total")
}

// A task hung on a threads worker (which enforces no time limit) shows in the running-task gauges,
// also when the exporter started after the task did: remote control's `inspect active` tells.
func TestHungTaskShowsAsRunning(t *testing.T) {
	skipShort(t)
	r := harness.StartRedis(t)
	url := r.URL(0)
	rec := harness.RecordRedis(t, r, 0)
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "threads", Concurrency: 2,
		Queues: []string{"threads"}, Events: true, HeartbeatInterval: time.Second})
	t.Cleanup(w.Kill) // a warm shutdown would wait for the hung task
	ids := harness.Produce(t, url, nil, []harness.Send{{Task: "sleep", Args: []any{600}, Queue: "threads"}})
	var started float64
	rec.WaitFor(t, 30*time.Second, "the task's task-started", func(r *harness.Recorder) bool {
		for _, e := range r.Task(ids[0]) {
			if e.Type == "task-started" {
				started, _ = e.Num("timestamp")
				return true
			}
		}
		return false
	})

	exp := harness.StartExporter(t, "--broker.url="+url, "--control.interval=1s", "--worker.timeout=2s")
	labels := map[string]string{"name": "celeryapp.app.sleep", "queue_name": "threads"}
	exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		v, ok := m.Value("celery_task_running", labels)
		return ok && v == 1
	})
	before := float64(time.Now().UnixNano()) / 1e9
	m := exp.MustScrape(t)
	after := float64(time.Now().UnixNano()) / 1e9
	if got := m.Series("celery_task_running"); len(got) != 1 {
		t.Errorf("running series %v, want only %v", got, labels)
	}
	age, ok := m.Value("celery_task_running_oldest_age_seconds", labels)
	// time_start and the task-started timestamp are the worker's clock at acceptance: the same
	// host's clock, within the event's own send delay.
	if !ok || age < before-started-1 || age > after-started+1 {
		t.Errorf("oldest age %v (present %v), want %.1f..%.1f (since task-started at %.3f)", age, ok, before-started, after-started, started)
	}
	if v, _ := m.Value("celery_task_running", labels); v != 1 {
		t.Errorf("celery_task_running %v, want 1", v)
	}

	// The worker dies: its task no longer counts.
	w.Kill()
	exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		return !m.Has("celery_task_running") && !m.Has("celery_task_running_oldest_age_seconds")
	})
}

// Task events lost between worker and exporter show as the gap between the tasks the heartbeats
// say the worker accepted and the task-started events that arrived. Here the worker sends no task
// events for part of the run (enable_events, disable_events, enable_events over remote control).
func TestLostTaskEventsAreMeasured(t *testing.T) {
	besideTheDemo(t)
	skipShort(t)
	r := harness.StartRedis(t)
	url := r.URL(0)
	rec := harness.RecordRedis(t, r, 0)
	exp := harness.StartExporter(t, "--broker.url="+url, "--control.disabled")
	exp.WaitReady(t, 15*time.Second)
	// Started without task events: Celery 5.2's disable_events only removes the "task" group that
	// enable_events added (a worker started with -E has no groups and keeps sending).
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "prefork", Concurrency: 2,
		Queues: []string{"celery"}, Env: []string{"CELERY_TASK_EVENTS=0"}, HeartbeatInterval: time.Second})
	host := map[string]string{"hostname": w.NodeName}
	counts := func(seen, processed float64) func(harness.Metrics) bool {
		return func(m harness.Metrics) bool {
			s, ok1 := m.Value("celery_worker_tasks_seen_total", host)
			p, ok2 := m.Value("celery_worker_tasks_processed_total", host)
			return ok1 && ok2 && s == seen && p == processed
		}
	}
	send := func(n int) []string {
		plan := make([]harness.Send, n)
		for i := range plan {
			plan[i] = harness.Send{Task: "add", Args: []any{i, 1}}
		}
		return harness.Produce(t, url, nil, plan)
	}
	waitAccepted := func(total int) {
		t.Helper()
		rec.WaitFor(t, 60*time.Second, fmt.Sprintf("heartbeat processed=%d", total), func(r *harness.Recorder) bool {
			hb, ok := r.LastHeartbeat(w.NodeName)
			p, _ := hb.Num("processed")
			return ok && int(p) == total
		})
	}

	exp.WaitFor(t, 30*time.Second, counts(0, 0))
	harness.Control(t, url, "enable_events", "-d", w.NodeName)
	rec.WaitFinished(t, 60*time.Second, send(5)...)
	waitAccepted(5)
	exp.WaitFor(t, 30*time.Second, counts(5, 5))

	harness.Control(t, url, "disable_events", "-d", w.NodeName)
	send(4)
	waitAccepted(9)
	harness.Control(t, url, "enable_events", "-d", w.NodeName)
	rec.WaitFinished(t, 60*time.Second, send(3)...)
	waitAccepted(12)
	m := exp.WaitFor(t, 30*time.Second, counts(8, 12))
	seen, _ := m.Value("celery_worker_tasks_seen_total", host)
	processed, _ := m.Value("celery_worker_tasks_processed_total", host)
	if lost := 1 - seen/processed; math.Abs(lost-4.0/12) > 1e-9 {
		t.Errorf("lost share %v, want 1/3", lost)
	}
	if n := len(rec.Find(func(e harness.Event) bool { return e.Type == "task-started" })); n != 8 {
		t.Errorf("the wire carried %d task-started events, want 8: the test did not disable events", n)
	}
}

// Remote control failing while the broker answers: control reads 0, broker 1, and the consumer
// series (reported by the broker source from control's answers) go after the stale window
// instead of vanishing under two healthy sources.
func TestControlDownBrokerUp(t *testing.T) {
	skipShort(t)
	r := harness.StartRedis(t)
	if _, err := r.Do("ACL", "SETUSER", "exporter", "on", ">pw", "~*", "&*", "+@all"); err != nil {
		t.Fatal(err)
	}
	url := r.URL(0)
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "threads", Concurrency: 2, Queues: []string{"chat"}})
	exp := harness.StartExporter(t, fmt.Sprintf("--broker.url=redis://exporter:pw@%s/0", r.Addr()),
		"--control.interval=500ms", "--control.timeout=300ms")
	chat := map[string]string{"queue_name": "chat"}
	source := func(m harness.Metrics, name string) float64 {
		v, ok := m.Value("celery_exporter_collector_success", map[string]string{"collector": name})
		if !ok {
			return -1
		}
		return v
	}
	exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		c, _ := m.Value("celery_queue_consumers", chat)
		info, _ := m.Value("celery_worker_queue_info", map[string]string{"hostname": w.NodeName, "queue_name": "chat"})
		return source(m, "control") == 1 && source(m, "broker") == 1 && c == 1 && info == 1
	})

	// The exporter's user may no longer publish the remote-control requests; reads still work.
	if _, err := r.Do("ACL", "SETUSER", "exporter", "-publish"); err != nil {
		t.Fatal(err)
	}
	failedAt := time.Now()
	m := exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		return source(m, "control") == 0 && !m.Has("celery_queue_consumers")
	})
	if b, up := source(m, "broker"), m.Has("celery_queue_length"); b != 1 || !up {
		t.Errorf("broker source %v, queue lengths served %v: want 1 and served", b, up)
	}
	if v, _ := m.Value("celery_up", nil); v != 1 {
		t.Errorf("celery_up %v, want 1", v)
	}
	for _, name := range []string{"celery_active_worker_count", "celery_active_process_count", "celery_worker_queue_info", "celery_worker_pool_max_concurrency"} {
		if m.Has(name) {
			t.Errorf("%s still served long after control failed", name)
		}
	}
	if last, ok := m.Value("celery_exporter_control_last_success_timestamp_seconds", nil); !ok || last > float64(failedAt.Unix())+1 {
		t.Errorf("last success %v (present %v), want before %v", last, ok, failedAt.Unix())
	}

	if _, err := r.Do("ACL", "SETUSER", "exporter", "+publish"); err != nil {
		t.Fatal(err)
	}
	exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		c, _ := m.Value("celery_queue_consumers", chat)
		return source(m, "control") == 1 && c == 1
	})
}
