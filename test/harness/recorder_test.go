package harness

import (
	"bufio"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

// Real Celery 5.2.6 traffic, the capture the exporter's own decoders are tested on too.
const wireSamples = "../fixtures/celery-wire-samples.jsonl"

// Every event PUBLISH captured from real Celery 5.2.6 decodes to the events next to it.
func TestDecodeEventMessageFixtures(t *testing.T) {
	f, err := os.Open(wireSamples)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	n := 0
	for sc.Scan() {
		var rec struct {
			Label       string   `json:"label"`
			Command     string   `json:"command"`
			Args        []string `json:"args"`
			DecodedBody any      `json:"decoded_body"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Command != "PUBLISH" || !strings.Contains(rec.Args[0], "celeryev") {
			continue
		}
		n++
		t.Run(rec.Label, func(t *testing.T) {
			evs, err := DecodeEventMessage([]byte(rec.Args[1]))
			if err != nil {
				t.Fatal(err)
			}
			var want []any
			switch b := rec.DecodedBody.(type) {
			case []any:
				want = b
			default:
				want = []any{b}
			}
			if len(evs) != len(want) {
				t.Fatalf("got %d events, want %d", len(evs), len(want))
			}
			for i, e := range evs {
				w := want[i].(map[string]any)
				if !reflect.DeepEqual(e.Fields, w) {
					t.Errorf("event %d: got %v, want %v", i, e.Fields, w)
				}
				if e.Type != w["type"] || e.Hostname != w["hostname"] {
					t.Errorf("event %d: type %q hostname %q, want %v %v", i, e.Type, e.Hostname, w["type"], w["hostname"])
				}
				if u, ok := w["uuid"]; ok && e.UUID != u {
					t.Errorf("event %d: uuid %q, want %v", i, e.UUID, u)
				}
			}
		})
	}
	if n < 40 {
		t.Fatalf("only %d event records in %s: fixture changed?", n, wireSamples)
	}
}

func TestDecodeEventMessageBad(t *testing.T) {
	for _, tc := range []struct{ name, payload, err string }{
		{"not json", `nope`, "envelope"},
		{"bad base64", `{"body":"***","properties":{"body_encoding":"base64"}}`, "base64"},
		{"pickle", `{"body":"x","content-type":"application/x-python-serialize"}`, "not JSON"},
		{"body a number", `{"body":"1"}`, "not an event"},
		{"list of numbers", `{"body":"[1]"}`, "not an event"},
		{"no type", `{"body":"{\"uuid\":\"x\"}"}`, "without a type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeEventMessage([]byte(tc.payload))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one containing %q", err, tc.err)
			}
		})
	}
	// A plain (not base64) body and an empty list are fine.
	evs, err := DecodeEventMessage([]byte(`{"body":"[]","properties":{"body_encoding":"utf-8"}}`))
	if err != nil || len(evs) != 0 {
		t.Fatalf("empty list: %v %v", evs, err)
	}
	evs, err = DecodeEventMessage([]byte(`{"body":"{\"type\":\"task-started\",\"uuid\":\"u\",\"hostname\":\"w@h\",\"timestamp\":12.5}"}`))
	if err != nil || len(evs) != 1 || evs[0].UUID != "u" || evs[0].Time != 12.5 {
		t.Fatalf("plain body: %+v %v", evs, err)
	}
}

func TestExceptionClass(t *testing.T) {
	for _, tc := range []struct{ exc, tb, want string }{
		{"ValueError('boom!')", "Traceback...\nValueError: boom!\n", "ValueError"},
		{"SoftTimeLimitExceeded()", "", "SoftTimeLimitExceeded"},
		{"ExceptionWithTraceback()", "Traceback (most recent call last):\n  File \"x\", line 1\nbilliard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1.5,)\n", "TimeLimitExceeded"},
		{"ExceptionWithTraceback()", "...\nbilliard.exceptions.WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL) Job: 12.\n", "WorkerLostError"},
		{"ExceptionWithTraceback()", "...\nbilliard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)\n\"\"\"\n", "TimeLimitExceeded"},
		{"ExceptionWithTraceback()", "...\n    raise ValueError(\"boom!\")\nValueError: boom!\n", "ValueError"},
		{"Retry(Retry(...), KeyError('again'), 0)", "", "KeyError"},
		{"Retry(Retry(...), mod.Custom('x(y)'), 0)", "", "Custom"},
		{"celery.exceptions.Retry('Retry in 5s')", "", "Retry"},
		{"RuntimeError('transient')", "", "RuntimeError"},
		{"celery.exceptions.NotRegistered('x')", "", "NotRegistered"},
		{"TimeLimitExceeded(180)", "", "TimeLimitExceeded"},
		{"ExceptionWithTraceback()", "", "ExceptionWithTraceback"},
		{"", "", ""},
	} {
		if got := ExceptionClass(tc.exc, tc.tb); got != tc.want {
			t.Errorf("ExceptionClass(%q, %q) = %q, want %q", tc.exc, tc.tb, got, tc.want)
		}
	}
}

func ev(typ, host, uuid string, kv ...any) Event {
	f := map[string]any{"type": typ, "hostname": host}
	if uuid != "" {
		f["uuid"] = uuid
	}
	for i := 0; i+1 < len(kv); i += 2 {
		f[kv[i].(string)] = kv[i+1]
	}
	return Event{Fields: f, Type: typ, Hostname: host, UUID: uuid}
}

func TestExpectedTaskCounters(t *testing.T) {
	r := &Recorder{events: []Event{
		// received before sent: the queue still comes from task-sent
		ev("task-received", "w1@h", "a", "name", "app.add"),
		ev("task-sent", "gen1@h", "a", "name", "app.add", "queue", "q1"),
		ev("task-started", "w1@h", "a"),
		ev("task-succeeded", "w1@h", "a", "runtime", 0.1),
		// no task-sent for b: the queue of app.add's task-sent
		ev("task-received", "w1@h", "b", "name", "app.add"),
		ev("task-failed", "w1@h", "b", "exception", "ExceptionWithTraceback()",
			"traceback", "x\nbilliard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)\n"),
		// nothing known about c's queue: the default
		ev("task-received", "w2@h", "c", "name", "app.other"),
		ev("task-retried", "w2@h", "c", "exception", "RuntimeError('x')"),
		ev("task-revoked", "w2@h", "c", "terminated", true, "expired", false),
		ev("task-revoked", "w2@h", "d", "terminated", false, "expired", true),
		ev("task-rejected", "w2@h", "c", "requeue", true),
		ev("worker-heartbeat", "w2@h", ""),
	}}
	got := r.ExpectedTaskCounters("celery")
	want := []string{
		`celery_task_failed_total{exception="TimeLimitExceeded",hostname="w1@h",name="app.add",queue_name="q1"} 1`,
		`celery_task_received_total{hostname="w1@h",name="app.add",queue_name="q1"} 2`,
		`celery_task_received_total{hostname="w2@h",name="app.other",queue_name="celery"} 1`,
		`celery_task_rejected_total{hostname="w2@h",name="app.other",queue_name="celery"} 1`,
		`celery_task_retried_total{exception="RuntimeError",hostname="w2@h",name="app.other",queue_name="celery"} 1`,
		`celery_task_revoked_total{hostname="w2@h",name="",queue_name="celery",reason="expired"} 1`,
		`celery_task_revoked_total{hostname="w2@h",name="app.other",queue_name="celery",reason="terminated"} 1`,
		`celery_task_sent_total{name="app.add",queue_name="q1"} 1`,
		`celery_task_started_total{hostname="w1@h",name="app.add",queue_name="q1"} 1`,
		`celery_task_succeeded_total{hostname="w1@h",name="app.add",queue_name="q1"} 1`,
	}
	var gotS []string
	for _, s := range got {
		gotS = append(gotS, s.String())
	}
	if !reflect.DeepEqual(gotS, want) {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(gotS, "\n"), strings.Join(want, "\n"))
	}
	if c := r.CountByType(); c["task-received"] != 3 || c["task-revoked"] != 2 || c["worker-heartbeat"] != 1 {
		t.Fatalf("CountByType = %v", c)
	}
}

func TestReadRESP(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want any
	}{
		{"+OK\r\n", "OK"},
		{":42\r\n", int64(42)},
		{"$-1\r\n", nil},
		{"$5\r\nhe\r\no\r\n", "he\r\no"},
		{"*3\r\n$10\r\npsubscribe\r\n$3\r\na/*\r\n:1\r\n", []any{"psubscribe", "a/*", int64(1)}},
	} {
		got, err := readRESP(bufio.NewReader(strings.NewReader(tc.in)))
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("readRESP(%q) = %#v, %v; want %#v", tc.in, got, err, tc.want)
		}
	}
	if _, err := readRESP(bufio.NewReader(strings.NewReader("-ERR no\r\n"))); err == nil || !strings.Contains(err.Error(), "ERR no") {
		t.Errorf("error reply: %v", err)
	}
}

func TestParseMetricsAndDiff(t *testing.T) {
	text := `# TYPE celery_task_succeeded_total counter
celery_task_succeeded_total{hostname="w@h",name="add",queue_name="celery"} 3
celery_task_succeeded_total{hostname="w@h",name="fail",queue_name="celery"} 0
# TYPE celery_worker_up gauge
celery_worker_up{hostname="w@h"} 1
# TYPE celery_task_runtime_seconds histogram
celery_task_runtime_seconds_bucket{name="add",le="0.5"} 2
celery_task_runtime_seconds_bucket{name="add",le="+Inf"} 3
celery_task_runtime_seconds_sum{name="add"} 1.25
celery_task_runtime_seconds_count{name="add"} 3
# TYPE up untyped
up 1
`
	m, err := ParseMetrics([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
		found  bool
	}{
		{"celery_task_succeeded_total", map[string]string{"hostname": "w@h", "name": "add", "queue_name": "celery"}, 3, true},
		{"celery_task_succeeded_total", map[string]string{"name": "add"}, 0, false}, // exact label sets only
		{"celery_worker_up", map[string]string{"hostname": "w@h"}, 1, true},
		{"celery_task_runtime_seconds_count", map[string]string{"name": "add"}, 3, true},
		{"celery_task_runtime_seconds_sum", map[string]string{"name": "add"}, 1.25, true},
		{"celery_task_runtime_seconds_bucket", map[string]string{"name": "add", "le": "0.5"}, 2, true},
		{"celery_task_runtime_seconds_bucket", map[string]string{"name": "add", "le": "+Inf"}, 3, true},
		{"up", nil, 1, true},
		{"nope", nil, 0, false},
	} {
		got, found := m.Value(tc.name, tc.labels)
		if got != tc.want || found != tc.found {
			t.Errorf("Value(%s, %v) = %v, %v; want %v, %v", tc.name, tc.labels, got, found, tc.want, tc.found)
		}
	}
	if s := m.Sum("celery_task_succeeded_total", map[string]string{"hostname": "w@h"}); s != 3 {
		t.Errorf("Sum = %v", s)
	}
	if n := len(m.Series("celery_task_runtime_seconds_bucket")); n != 2 {
		t.Errorf("%d buckets, want 2", n)
	}
	if m.Type("celery_task_runtime_seconds") != "histogram" || m.Type("celery_worker_up") != "gauge" {
		t.Errorf("types: %v", m.types)
	}
	want := []Sample{{Name: "celery_task_succeeded_total", Labels: map[string]string{"hostname": "w@h", "name": "add", "queue_name": "celery"}, Value: 2}}
	diffs := DiffSamples(m, want, "celery_task_succeeded_total")
	wantDiffs := []string{
		`wrong value: celery_task_succeeded_total{hostname="w@h",name="add",queue_name="celery"} 2, got 3`,
		`unexpected: celery_task_succeeded_total{hostname="w@h",name="fail",queue_name="celery"} 0`,
	}
	if !reflect.DeepEqual(diffs, wantDiffs) {
		t.Errorf("diffs:\n%s", strings.Join(diffs, "\n"))
	}
}

func TestWithZeroSeries(t *testing.T) {
	l := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	w1 := []string{"name", "a", "hostname", "w1", "queue_name", "q"}
	in := []Sample{
		{Name: "celery_task_sent_total", Labels: l("name", "a", "queue_name", "q"), Value: 2},
		{Name: "celery_task_received_total", Labels: l(w1...), Value: 2},
		{Name: "celery_task_failed_total", Labels: l(append(w1, "exception", "WorkerLostError")...), Value: 1},
		{Name: "celery_task_succeeded_total", Labels: l(w1...), Value: 1},
	}
	var got []string
	for _, s := range WithZeroSeries(in, "TimeLimitExceeded", "WorkerLostError") {
		got = append(got, s.String())
	}
	want := []string{
		`celery_task_failed_total{exception="TimeLimitExceeded",hostname="w1",name="a",queue_name="q"} 0`,
		`celery_task_failed_total{exception="WorkerLostError",hostname="w1",name="a",queue_name="q"} 1`,
		`celery_task_received_total{hostname="w1",name="a",queue_name="q"} 2`,
		`celery_task_rejected_total{hostname="w1",name="a",queue_name="q"} 0`,
		`celery_task_sent_total{name="a",queue_name="q"} 2`,
		`celery_task_succeeded_total{hostname="w1",name="a",queue_name="q"} 1`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
