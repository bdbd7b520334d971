package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// The worker, producer and recorder together, without the exporter: the test app behaves as the
// exporter's integration tests assume (time limits, every revoke reason, retries, queues), and the
// recorder sees it.
func TestWorkerProducerRecorder(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts redis-server and a Celery worker")
	}
	redis := StartRedis(t)
	rec := RecordRedis(t, redis, 0)
	w := StartWorker(t, WorkerOptions{
		BrokerURL: redis.URL(0), Queues: []string{"celery", "limits"}, Pool: "prefork",
		Concurrency: 2, NodeName: "pre@harness-test", HeartbeatInterval: time.Second,
	})
	plan := []Send{
		{Task: "add", Args: []any{2, 3}},
		{Task: "fail", Args: []any{"x"}},
		{Task: "retry_once"},
		{Task: "soft_limited", Args: []any{3}, Queue: "limits"},
		{Task: "hard_limited", Args: []any{3}, Queue: "limits"},
		{Task: "revokable", Args: []any{0.1}, Countdown: 3, RevokeAfter: 1},
		{Task: "revokable", Args: []any{10}, RevokeAfter: 1.5, Terminate: true},
		{Task: "add", Args: []any{1, 1}, Countdown: 2, Expires: 1},
		{Task: "add", Args: []any{5, 5}, Priority: Prio(9)},
		{Task: "assistant.tasks.send_whatsapp_message_task", Queue: "celery"},
	}
	ids := Produce(t, redis.URL(0), nil, plan)
	if len(ids) != len(plan) {
		t.Fatalf("%d ids for %d sends", len(ids), len(plan))
	}
	rec.WaitFinished(t, 45*time.Second, ids...)

	type outcome struct{ final, detail string }
	want := []outcome{
		{"task-succeeded", ""},
		{"task-failed", "ValueError"},
		{"task-succeeded", "retried RuntimeError"},
		{"task-failed", "SoftTimeLimitExceeded"},
		{"task-failed", "TimeLimitExceeded"},
		{"task-revoked", "revoked"},
		{"task-revoked", "terminated"},
		{"task-revoked", "expired"},
		{"task-succeeded", ""},
		{"task-succeeded", ""},
	}
	tasks := rec.Tasks()
	for i, id := range ids {
		var got outcome
		for _, e := range rec.Task(id) {
			switch e.Type {
			case "task-retried":
				got.detail = "retried " + ExceptionClass(e.Str("exception"), e.Str("traceback"))
			case "task-succeeded":
				got.final = e.Type
			case "task-failed":
				got.final, got.detail = e.Type, ExceptionClass(e.Str("exception"), e.Str("traceback"))
			case "task-revoked":
				got.final, got.detail = e.Type, RevokeReason(e)
			}
			if strings.HasPrefix(e.Type, "task-") && e.Type != "task-sent" && e.Hostname != w.NodeName {
				t.Errorf("%s of %s from %q, want %q", e.Type, plan[i].Task, e.Hostname, w.NodeName)
			}
		}
		if got != want[i] {
			t.Errorf("%s (%s): got %+v, want %+v", plan[i].Task, id, got, want[i])
		}
		wantQueue := plan[i].Queue
		if wantQueue == "" {
			wantQueue = "celery"
		}
		if tasks[id].Queue != wantQueue {
			t.Errorf("%s: queue %q, want %q", plan[i].Task, tasks[id].Queue, wantQueue)
		}
	}
	if errs := rec.Errors(); len(errs) > 0 {
		t.Errorf("undecodable messages: %v", errs)
	}

	var queues []string
	for _, q := range InspectJSON(t, redis.URL(0), "active_queues")[w.NodeName].([]any) {
		queues = append(queues, q.(map[string]any)["name"].(string))
	}
	sort.Strings(queues)
	if strings.Join(queues, ",") != "celery,limits" {
		t.Errorf("inspect active_queues: %v", queues)
	}

	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, 5*time.Second, "worker-offline", func(r *Recorder) bool {
		return len(r.Find(func(e Event) bool { return e.Type == "worker-offline" && e.Hostname == w.NodeName })) == 1
	})
	if hb, ok := rec.LastHeartbeat(w.NodeName); !ok || hb.Fields["freq"] != 1.0 {
		t.Errorf("heartbeat freq: %v (found %v), want 1", hb.Fields["freq"], ok)
	}
}

// SIGKILL is a crash: no worker-offline, heartbeats stop.
func TestWorkerKill(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts redis-server and a Celery worker")
	}
	redis := StartRedis(t)
	rec := RecordRedis(t, redis, 0)
	w := StartWorker(t, WorkerOptions{BrokerURL: redis.URL(0), Pool: "solo", HeartbeatInterval: time.Second,
		Env: []string{"CELERY_TASK_EVENTS=0"}})
	rec.WaitFor(t, 10*time.Second, "a heartbeat", func(r *Recorder) bool {
		return len(r.Find(func(e Event) bool { return e.Type == "worker-heartbeat" && e.Hostname == w.NodeName })) > 0
	})
	w.Kill()
	if !w.Exited() {
		t.Fatal("worker still running after Kill")
	}
	killed := time.Now()
	time.Sleep(2500 * time.Millisecond)
	for _, e := range rec.Events() {
		if e.Type == "worker-offline" {
			t.Errorf("worker-offline after SIGKILL: %v", e.Fields)
		}
		if e.Received.After(killed.Add(200 * time.Millisecond)) {
			t.Errorf("%s received %v after the kill", e.Type, e.Received.Sub(killed))
		}
	}
}

// The producer's plan format: pauses, link_error, and the seed's routes.
func TestProduceRoutesAndLinkError(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts redis-server")
	}
	redis := StartRedis(t)
	rec := RecordRedis(t, redis, 0)
	prefixed := StartRecorder(t, RecorderOptions{Addr: redis.Addr(), GlobalKeyPrefix: "pfx:"})
	ids := Produce(t, redis.URL(0), map[string]any{"global_keyprefix": "pfx:"}, []Send{
		{Task: "assistant.tasks.process_chat_message", Kwargs: map[string]any{"message": "hi"}},
		{Sleep: 0.1},
		{Task: "assistant.tasks.extract_preferences_async", LinkError: "assistant.tasks.log_preference_extraction_failure"},
		{Task: "assistant.tasks.process_incoming_media_task", Priority: Prio(0)},
		{Task: "assistant.tasks.send_whatsapp_message_task"},
		{Task: "assistant.tasks.dead_letter_queue"},
	})
	if len(ids) != 5 {
		t.Fatalf("ids: %v", ids)
	}
	// global_keyprefix: the events went to pfx:/0.celeryev/*, which a recorder without the prefix
	// does not see (Redis delivered them to both subscribers at once)...
	prefixed.WaitFor(t, 5*time.Second, "5 task-sent", func(r *Recorder) bool { return len(r.Events()) == 5 })
	if n := len(rec.Events()); n != 0 {
		t.Fatalf("recorder without the prefix saw %d events", n)
	}
	// ...and the messages sit in the prefixed queue lists, by the seed's routes.
	for key, want := range map[string]string{"pfx:chat": "1", "pfx:default": "1", "pfx:background": "1", "pfx:notifications": "1", "pfx:dlq": "1", "chat": "0"} {
		got, err := redis.Do("LLEN", key)
		if err != nil || got != ":"+want {
			t.Errorf("LLEN %s = %q, %v; want %s", key, got, err, want)
		}
	}
}

// The events of the prefixed transport reach a recorder with the same prefix.
func TestRecorderGlobalKeyPrefix(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts redis-server")
	}
	redis := StartRedis(t)
	rec := StartRecorder(t, RecorderOptions{Addr: redis.Addr(), DB: 3, GlobalKeyPrefix: "pfx:"})
	ids := Produce(t, redis.URL(3), map[string]any{"global_keyprefix": "pfx:"}, []Send{{Task: "add", Args: []any{1, 2}, Queue: "q"}})
	rec.WaitFor(t, 5*time.Second, "task-sent", func(r *Recorder) bool { return len(r.Events()) == 1 })
	e := rec.Events()[0]
	if e.Channel != "pfx:/3.celeryev/task.sent" {
		t.Errorf("channel %q, want pfx:/3.celeryev/task.sent", e.Channel)
	}
	if e.Type != "task-sent" || e.UUID != ids[0] || e.Str("queue") != "q" || e.Str("name") != "celeryapp.app.add" {
		t.Errorf("event %+v", e.Fields)
	}
}

// The app's JSON log lines (the demo's zep_call_error) go to CELERYAPP_LOG_FILE.
func TestSeedTaskLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts redis-server and a Celery worker")
	}
	redis := StartRedis(t)
	rec := RecordRedis(t, redis, 0)
	logFile := filepath.Join(t.TempDir(), "app.jsonl")
	StartWorker(t, WorkerOptions{BrokerURL: redis.URL(0), Pool: "threads", Concurrency: 2,
		Queues: []string{"chat", "default"}, Env: []string{"CELERYAPP_LOG_FILE=" + logFile}})
	ids := Produce(t, redis.URL(0), nil, []Send{
		{Task: "assistant.tasks.process_chat_message", Kwargs: map[string]any{"seconds": 0, "zep_error": true}},
		{Task: "assistant.tasks.extract_preferences_async", Kwargs: map[string]any{"fail": true},
			LinkError: "assistant.tasks.log_preference_extraction_failure"},
	})
	// The errback is a task of its own on "default", sent by the worker.
	rec.WaitFor(t, 20*time.Second, "the errback task", func(r *Recorder) bool {
		return len(r.Find(func(e Event) bool {
			return e.Type == "task-sent" && e.Str("name") == "assistant.tasks.log_preference_extraction_failure" && e.Str("queue") == "default"
		})) == 1
	})
	deadline := time.Now().Add(20 * time.Second)
	var msgs []string
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(logFile)
		msgs = msgs[:0]
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil {
				msgs = append(msgs, fmt.Sprintf("%s %s %s", m["level"], m["logger"], m["message"]))
			}
		}
		if len(msgs) >= 2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	sort.Strings(msgs)
	want := []string{"ERROR assistant.memory.service zep_call_error", "ERROR assistant.tasks preferences_extract_failed"}
	if strings.Join(msgs, "|") != strings.Join(want, "|") {
		t.Errorf("log lines %q, want %q (ids %v)", msgs, want, ids)
	}
}
