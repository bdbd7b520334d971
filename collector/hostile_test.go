package collector

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/internal/state"
)

// Non-finite and absurd numbers never reach a histogram sum, a
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
		`celery_exporter_event_errors_total{reason="non_finite_number"}`:                                     2,
		`celery_exporter_event_errors_total{reason="number_out_of_range"}`:                                   2,
		`celery_exporter_event_errors_total{reason="wrong_type"}`:                                            1,
		`celery_exporter_event_errors_total{reason="missing_hostname"}`:                                      1,
		`celery_exporter_event_errors_total{reason="invalid_json"}`:                                          0,
	})
	expectAbsent(t, got, `celery_task_failed_total{exception="",hostname="celery@w",name="unknown",queue_name=""}`)
}

// A heartbeat with a negative or lower processed count never makes the
// counter go down; an absurd freq is clamped, so a worker that stops is reported down within the
// clamped interval and a huge freq does not overflow into "never down".
func TestEventSourceWorkerCountersAndFreqStaySane(t *testing.T) {
	src, _ := newTestSource(EventOptions{})
	src.HandlePayload(payload(heartbeat("celery@a", 2, 0, 100)))
	src.HandlePayload(payload(heartbeat("celery@a", 2, 0, 110)))
	src.HandlePayload(payload(heartbeat("celery@a", 2, 0, -1000)))
	got := samples(t, AsCollector(src))
	if v := got[`celery_worker_tasks_processed_total{hostname="celery@a"}`]; v < 10 {
		t.Errorf("processed_total = %v after a negative processed, want >= 10", v)
	}
	for _, freq := range []float64{1e9, 1e12} {
		src, clk := newTestSource(EventOptions{})
		src.HandlePayload(payload(heartbeat("celery@b", freq, 0, 1)))
		clk.Add(2*time.Hour + time.Minute) // past 2×3600s + timeout
		expectSamples(t, samples(t, AsCollector(src)), map[string]float64{
			`celery_worker_up{hostname="celery@b"}`:                         0,
			`celery_worker_heartbeat_interval_seconds{hostname="celery@b"}`: 3600,
		})
	}
}

// Hostnames only task events named (a producer's gen<pid>@host, a worker
// whose heartbeats never come) neither lock a heartbeating worker out at the cap nor stay for
// ever: the worker takes the place of the least recently seen one, the rest age out after
// --worker.purge-after.
func TestEventSourceTaskOnlyHostnamesAgeOutAndYield(t *testing.T) {
	src, clk := newTestSource(EventOptions{MaxWorkers: 3, PurgeAfter: time.Hour})
	for i, h := range []string{"gen1@p", "gen2@p", "gen3@p"} {
		id := fmt.Sprint(i)
		src.HandlePayload(payload(sent(id, "t.a", "q", 1), taskEv("task-received", id, h, 1)))
		clk.Add(time.Second)
	}
	src.HandlePayload(payload(heartbeat("celery@w", 2, 0, 0)))
	got := samples(t, AsCollector(src))
	expectSamples(t, got, map[string]float64{
		`celery_worker_up{hostname="celery@w"}`:                                   1,
		`celery_task_received_total{hostname="gen2@p",name="t.a",queue_name="q"}`: 1,
		`celery_exporter_hostnames_evicted_total{}`:                               1,
		`celery_exporter_label_overflow_total{label="hostname"}`:                  0,
	})
	expectAbsent(t, got, `celery_task_received_total{hostname="gen1@p",name="t.a",queue_name="q"}`) // the oldest gave way
	// An hour later, with the worker heartbeating: the task-only hostnames are gone, the
	// worker stays.
	for i := 0; i < 75; i++ {
		clk.Add(time.Minute)
		src.HandlePayload(payload(heartbeat("celery@w", 2, 0, 0)))
		src.Tick()
	}
	got = samples(t, AsCollector(src))
	expectSamples(t, got, map[string]float64{
		`celery_worker_up{hostname="celery@w"}`: 1,
	})
	expectAbsent(t, got, `celery_task_received_total{hostname="gen2@p",name="t.a",queue_name="q"}`,
		`celery_task_received_total{hostname="gen3@p",name="t.a",queue_name="q"}`)
	for _, h := range []string{"gen4@p", "gen5@p"} { // room again
		src.HandlePayload(payload(sent(h, "t.a", "q", 1), taskEv("task-received", h, h, 1)))
	}
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{
		`celery_task_received_total{hostname="gen5@p",name="t.a",queue_name="q"}`: 1,
	})
}

// Queue_name from task-sent is capped like task names, overflow counted.
func TestEventSourceQueueNamesCapped(t *testing.T) {
	src, _ := newTestSource(EventOptions{MaxQueues: 2, SentWait: -1})
	for i := 0; i < 5; i++ {
		id := fmt.Sprint(i)
		src.HandlePayload(payload(sent(id, "t.a", fmt.Sprintf("q%d", i), 1), taskEv("task-received", id, "celery@w", 1)))
	}
	got := samples(t, AsCollector(src))
	expectSamples(t, got, map[string]float64{
		`celery_task_sent_total{name="t.a",queue_name="q0"}`:                            1,
		`celery_task_sent_total{name="t.a",queue_name="q1"}`:                            1,
		`celery_task_sent_total{name="t.a",queue_name="other"}`:                         3,
		`celery_task_received_total{hostname="celery@w",name="t.a",queue_name="other"}`: 3,
		`celery_exporter_label_overflow_total{label="queue_name"}`:                      3,
	})
	expectAbsent(t, got, `celery_task_sent_total{name="t.a",queue_name="q2"}`)
}

// Two worker processes sharing one nodename are flagged, and their
// processed counts never mix (before, the counter jumped by their difference at every
// alternation).
func TestEventSourceHostnameClaimedByTwoProcesses(t *testing.T) {
	src, _ := newTestSource(EventOptions{})
	hb := func(pid, processed int) {
		e := heartbeat("celery@dup", 2, 0, processed)
		e["pid"] = pid
		src.HandlePayload(payload(e))
	}
	hb(100, 1000) // first sight: baseline
	hb(200, 5)    // a second process (or a restart): its 5 are new
	hb(100, 1002) // the first again: a clash; +2
	hb(200, 7)    // +2, a clash
	hb(100, 1003) // +1, a clash
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{
		`celery_worker_tasks_processed_total{hostname="celery@dup"}`:  10,
		`celery_worker_hostname_clashes_total{hostname="celery@dup"}`: 3,
	})
	// A plain restart (new pid, the old one never back) is no clash.
	src, _ = newTestSource(EventOptions{})
	hb(100, 50)
	hb(100, 60)
	hb(300, 3)
	hb(300, 4)
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{
		`celery_worker_tasks_processed_total{hostname="celery@dup"}`:  14,
		`celery_worker_hostname_clashes_total{hostname="celery@dup"}`: 0,
	})
}

// Task events waiting for their task-sent are bounded in all, not only per
// task: past maxPendingEvents they are applied at once with the fallback queue.
func TestEventSourcePendingEventsBounded(t *testing.T) {
	src, _ := newTestSourceModel(EventOptions{}, state.Options{MaxTasks: 2 * maxPendingEvents})
	for i := 0; i < maxPendingEvents+100; i++ {
		src.HandlePayload(payload(taskEv("task-received", fmt.Sprint(i), "celery@w", 1, "name", "t.a")))
	}
	if src.pending != maxPendingEvents {
		t.Fatalf("%d events held, want the cap %d", src.pending, maxPendingEvents)
	}
	got := samples(t, AsCollector(src))
	if v := got[`celery_task_received_total{hostname="celery@w",name="t.a",queue_name="celery"}`]; v != 100 {
		t.Errorf("received with the fallback queue = %v, want the 100 past the cap", v)
	}
}
