package collector

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A counter born at its first event reads 1 to Prometheus, and increase() over it reads 0: the
// first event never pages. These series exist at 0 before anything happened.
func TestEventSourceHealthCountersStartAtZero(t *testing.T) {
	src, _ := newTestSource(EventOptions{})
	got := samples(t, AsCollector(src))
	var want []string
	for _, r := range []string{"invalid_envelope", "invalid_base64", "unsupported_content_type", "compressed", "invalid_json",
		"not_an_object", "missing_type", "missing_uuid", "missing_hostname", "unknown_type", "buffer_full"} {
		want = append(want, `celery_exporter_event_errors_total{reason="`+r+`"}`)
	}
	for _, l := range []string{"name", "hostname", "exception"} {
		want = append(want, `celery_exporter_label_overflow_total{label="`+l+`"}`)
	}
	for _, k := range want {
		if v, ok := got[k]; !ok || v != 0 {
			t.Errorf("%s = %v (present %v), want 0 before any event", k, v, ok)
		}
	}
	// 11 reasons of skipped messages and events, 5 of refused values.
	if n := len(only(got, "celery_exporter_event_errors_total")); n != 16 {
		t.Errorf("%d reasons, want 16", n)
	}
}

func TestStartTime(t *testing.T) {
	start := time.Unix(1795879460, 250e6)
	if err := testutil.CollectAndCompare(NewStartTime(start), strings.NewReader(`
# HELP celery_exporter_start_time_seconds When the exporter process started counting, in unix time: every counter it exposes started at 0 then.
# TYPE celery_exporter_start_time_seconds gauge
celery_exporter_start_time_seconds 1.79587946025e+09
`)); err != nil {
		t.Fatal(err)
	}
}

// The first failure of a configured exception class is an increase: its series, and the
// outcome counters of the failure ratio, exist at 0 from the first event of the task name on a
// worker and queue. The pre-created series count against the exception cap and never overflow it.
func TestEventSourceInitialExceptions(t *testing.T) {
	initial := []string{"SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLostError"}
	const w1 = `hostname="celery@w1",name="t.a",queue_name="q"`
	tests := []struct {
		name    string
		opts    EventOptions
		feed    []ev
		want    map[string]float64
		absent  []string // series that must not exist
		nFailed int
	}{
		{
			name: "received creates the zero series",
			opts: EventOptions{InitialExceptions: initial},
			feed: []ev{sent("u1", "t.a", "q", 1), taskEv("task-received", "u1", "celery@w1", 1, "name", "t.a")},
			want: map[string]float64{
				`celery_task_received_total{` + w1 + `}`:                                 1,
				`celery_task_succeeded_total{` + w1 + `}`:                                0,
				`celery_task_rejected_total{` + w1 + `}`:                                 0,
				`celery_task_failed_total{exception="SoftTimeLimitExceeded",` + w1 + `}`: 0,
				`celery_task_failed_total{exception="TimeLimitExceeded",` + w1 + `}`:     0,
				`celery_task_failed_total{exception="WorkerLostError",` + w1 + `}`:       0,
				`celery_exporter_label_overflow_total{label="exception"}`:                0,
			},
			absent:  []string{`celery_task_started_total{` + w1 + `}`, `celery_task_received_total{hostname="celery@w1",name="t.a",queue_name="r"}`},
			nFailed: 3,
		},
		{
			name: "the first failure adds to a zero series",
			opts: EventOptions{InitialExceptions: initial},
			feed: []ev{sent("u1", "t.a", "q", 1), taskEv("task-received", "u1", "celery@w1", 1, "name", "t.a"),
				taskEv("task-started", "u1", "celery@w1", 2),
				taskEv("task-failed", "u1", "celery@w1", 3, "exception", "WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL).')")},
			want: map[string]float64{
				`celery_task_failed_total{exception="WorkerLostError",` + w1 + `}`:   1,
				`celery_task_failed_total{exception="TimeLimitExceeded",` + w1 + `}`: 0,
				`celery_task_succeeded_total{` + w1 + `}`:                            0,
			},
			nFailed: 3,
		},
		{
			name: "the cap holds: only what fits is pre-created, nothing overflows",
			opts: EventOptions{InitialExceptions: initial, MaxExceptionsPerTask: 2},
			feed: []ev{sent("u1", "t.a", "q", 1), taskEv("task-received", "u1", "celery@w1", 1, "name", "t.a"),
				taskEv("task-failed", "u1", "celery@w1", 3, "exception", "KeyError('x')")},
			want: map[string]float64{
				`celery_task_failed_total{exception="SoftTimeLimitExceeded",` + w1 + `}`: 0,
				`celery_task_failed_total{exception="TimeLimitExceeded",` + w1 + `}`:     0,
				`celery_task_failed_total{exception="other",` + w1 + `}`:                 1,
				`celery_exporter_label_overflow_total{label="exception"}`:                1, // the KeyError, not the pre-creation
			},
			absent:  []string{`celery_task_failed_total{exception="WorkerLostError",` + w1 + `}`},
			nFailed: 3,
		},
		{
			name:    "empty list: no failed series before a failure",
			opts:    EventOptions{},
			feed:    []ev{sent("u1", "t.a", "q", 1), taskEv("task-received", "u1", "celery@w1", 1, "name", "t.a")},
			want:    map[string]float64{`celery_task_succeeded_total{` + w1 + `}`: 0},
			nFailed: 0,
		},
		{
			name: "each worker and queue of a name has its own",
			opts: EventOptions{InitialExceptions: initial[:1]},
			feed: []ev{sent("u1", "t.a", "q", 1), taskEv("task-received", "u1", "celery@w1", 1, "name", "t.a"),
				sent("u2", "t.a", "r", 1), taskEv("task-received", "u2", "celery@w2", 1, "name", "t.a")},
			want: map[string]float64{
				`celery_task_failed_total{exception="SoftTimeLimitExceeded",` + w1 + `}`:                                     0,
				`celery_task_failed_total{exception="SoftTimeLimitExceeded",hostname="celery@w2",name="t.a",queue_name="r"}`: 0,
			},
			nFailed: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, _ := newTestSource(tt.opts)
			for _, e := range tt.feed {
				src.HandlePayload(payload(e))
			}
			got := samples(t, AsCollector(src))
			expectSamples(t, got, tt.want)
			expectAbsent(t, got, tt.absent...)
			if n := len(only(got, "celery_task_failed_total")); n != tt.nFailed {
				t.Errorf("%d failed series, want %d: %v", n, tt.nFailed, only(got, "celery_task_failed_total"))
			}
		})
	}
}

// A purged worker's zero series go with it, and come back when it does.
func TestEventSourceInitialExceptionsAfterPurge(t *testing.T) {
	src, clk := newTestSource(EventOptions{InitialExceptions: []string{"WorkerLostError"}, PurgeAfter: time.Minute})
	src.HandlePayload(payload(heartbeat("celery@w1", 2, 0, 0)))
	src.HandlePayload(payload(sent("u1", "t.a", "q", 1), taskEv("task-received", "u1", "celery@w1", 1, "name", "t.a")))
	key := `celery_task_failed_total{exception="WorkerLostError",hostname="celery@w1",name="t.a",queue_name="q"}`
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{key: 0})
	clk.Add(2 * time.Minute)
	src.Tick()
	expectAbsent(t, samples(t, AsCollector(src)), key)
	src.HandlePayload(payload(heartbeat("celery@w1", 2, 0, 0)))
	src.HandlePayload(payload(sent("u2", "t.a", "q", 1), taskEv("task-received", "u2", "celery@w1", 1, "name", "t.a")))
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{key: 0})
}

// celery_worker_tasks_seen_total counts what the heartbeat's processed counts, when the events
// arrive: the gap between the two is the share of task events lost.
func TestEventSourceTasksSeen(t *testing.T) {
	src, clk := newTestSource(EventOptions{})
	src.HandlePayload(payload(heartbeat("celery@w1", 2, 0, 10)))
	const seen = `celery_worker_tasks_seen_total{hostname="celery@w1"}`
	const processed = `celery_worker_tasks_processed_total{hostname="celery@w1"}`
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{seen: 0, processed: 0})
	for i := range 4 {
		id := fmt.Sprint(i)
		src.HandlePayload(payload(sent(id, "t.a", "q", 1), taskEv("task-received", id, "celery@w1", 1, "name", "t.a")))
		if i != 2 { // task 2's task-started and task-succeeded were lost on the wire
			src.HandlePayload(payload(taskEv("task-started", id, "celery@w1", 2), taskEv("task-succeeded", id, "celery@w1", 3, "runtime", 1.0)))
		}
	}
	// A retried task is accepted again: processed counts it twice, so does seen.
	src.HandlePayload(payload(sent("r", "t.a", "q", 1), taskEv("task-started", "r", "celery@w1", 2),
		taskEv("task-retried", "r", "celery@w1", 3, "exception", "KeyError()"), taskEv("task-started", "r", "celery@w1", 4)))
	clk.Add(2 * time.Second)
	src.HandlePayload(payload(heartbeat("celery@w1", 2, 1, 16)))
	expectSamples(t, samples(t, AsCollector(src)), map[string]float64{seen: 5, processed: 6})
}
