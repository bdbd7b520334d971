package collector

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"testing"
	"time"
)

// rawPayload wraps a JSON body as written by Python (NaN, Infinity) in a kombu envelope.
func rawPayload(body string) string {
	env, _ := json.Marshal(map[string]any{
		"body": base64.StdEncoding.EncodeToString([]byte(body)), "content-encoding": "utf-8", "content-type": "application/json",
		"headers":    map[string]any{"hostname": "celery@w1"},
		"properties": map[string]any{"delivery_mode": 1, "body_encoding": "base64", "delivery_tag": "x", "priority": 0},
	})
	return string(env)
}

// Issue 11, findings 8 and 10: non-finite and absurd numbers never reach a histogram sum, a
// task.multi with Python's Infinity still counts its events, wrong JSON types and task-failed
// without exception are counted, each by reason.
func TestEventSourceRefusesHostileNumbers(t *testing.T) {
	src, _ := newTestSource(EventOptions{SentWait: -1})
	src.HandlePayload(payload(sent("a", "t.a", "q", 1), sent("b", "t.a", "q", 1), sent("c", "t.a", "q", 1)))
	src.HandlePayload(rawPayload(`[{"type": "task-succeeded", "uuid": "a", "hostname": "celery@w", "runtime": NaN, "timestamp": 2},
		{"type": "task-succeeded", "uuid": "b", "hostname": "celery@w", "runtime": Infinity, "timestamp": 2},
		{"type": "task-succeeded", "uuid": "c", "hostname": "celery@w", "runtime": 1e308, "timestamp": 1e308}]`))
	src.HandlePayload(rawPayload(`{"type": "task-failed", "uuid": "d", "hostname": "celery@w", "timestamp": 3}`))
	src.HandlePayload(rawPayload(`{"type": "worker-heartbeat", "hostname": {"nested": "object"}, "timestamp": 3}`))
	got := samples(t, AsCollector(src))
	sum := got[`celery_task_runtime_seconds_sum{hostname="celery@w",name="t.a",queue_name="q",state="succeeded"}`]
	if math.IsNaN(sum) || math.IsInf(sum, 0) || sum > 1e6 {
		t.Errorf("runtime sum poisoned: %v", sum)
	}
	expectSamples(t, got, map[string]float64{
		`celery_task_succeeded_total{hostname="celery@w",name="t.a",queue_name="q"}`:                         3,
		`celery_task_runtime_seconds_count{hostname="celery@w",name="t.a",queue_name="q",state="succeeded"}`: 3,
		`celery_task_failed_total{exception="unknown",hostname="celery@w",name="unknown",queue_name=""}`:     1,
		`celery_task_failed_total{exception="",hostname="celery@w",name="unknown",queue_name=""}`:            -1,
		`celery_exporter_event_errors_total{reason="non_finite_number"}`:                                     2,
		`celery_exporter_event_errors_total{reason="number_out_of_range"}`:                                   2,
		`celery_exporter_event_errors_total{reason="wrong_type"}`:                                            1,
		`celery_exporter_event_errors_total{reason="missing_hostname"}`:                                      1,
		`celery_exporter_event_errors_total{reason="invalid_json"}`:                                          0,
	})
}

// Issue 11, finding 9: a heartbeat with a negative or lower processed count never makes the
// counter go down; an absurd freq is clamped, so a worker that stops is reported down within the
// clamped interval and a huge freq does not overflow into "never down".
func TestEventSourceWorkerCountersAndFreqStaySane(t *testing.T) {
	src, clk := newTestSource(EventOptions{})
	src.HandlePayload(payload(heartbeat("celery@a", 2, 0, 100)))
	src.HandlePayload(payload(heartbeat("celery@a", 2, 0, 110)))
	src.HandlePayload(payload(heartbeat("celery@a", 2, 0, -1000)))
	got := samples(t, AsCollector(src))
	if v := got[`celery_worker_tasks_processed_total{hostname="celery@a"}`]; v < 10 {
		t.Errorf("processed_total = %v after a negative processed, want >= 10", v)
	}
	for _, freq := range []float64{1e9, 1e12} {
		src, clk = newTestSource(EventOptions{})
		src.HandlePayload(payload(heartbeat("celery@b", freq, 0, 1)))
		clk.Add(2*time.Hour + time.Minute) // past 2×3600s + timeout
		expectSamples(t, samples(t, AsCollector(src)), map[string]float64{
			`celery_worker_up{hostname="celery@b"}`:                         0,
			`celery_worker_heartbeat_interval_seconds{hostname="celery@b"}`: 3600,
		})
	}
}
