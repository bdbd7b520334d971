package event

import (
	"bufio"
	"encoding/json"
	"errors"
	"math"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
)

type sample struct {
	Label   string   `json:"label"`
	Command string   `json:"command"`
	Args    []string `json:"args"`
}

func eventSamples(t testing.TB) []sample {
	t.Helper()
	f, err := os.Open("../../test/fixtures/celery-wire-samples.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []sample
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var s sample
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Fatal(err)
		}
		if s.Command == "PUBLISH" && strings.Contains(s.Args[0], "celeryev") {
			out = append(out, s)
		}
	}
	return out
}

// Every event record of the capture decodes, into as many events as the capture's independent
// decoding found, with their types.
func TestDecodeEveryCapturedEvent(t *testing.T) {
	var env kombu.EnvelopeDecoder
	d := NewDecoder(NewInterner(100))
	samples := eventSamples(t)
	if len(samples) < 40 {
		t.Fatalf("only %d event samples", len(samples))
	}
	for _, s := range samples {
		body, err := env.Decode([]byte(s.Args[1]))
		if err != nil {
			t.Fatalf("%s: %v", s.Label, err)
		}
		var generic any
		_ = json.Unmarshal(body, &generic)
		var wantTypes []string
		switch g := generic.(type) {
		case []any:
			for _, e := range g {
				wantTypes = append(wantTypes, e.(map[string]any)["type"].(string))
			}
		case map[string]any:
			wantTypes = []string{g["type"].(string)}
		}
		var got []string
		err = d.Decode(body, func(e *Event) {
			if e.Type == Unknown {
				t.Errorf("%s: unknown type", s.Label)
			}
			got = append(got, e.Type.String())
		}, func(err error) { t.Errorf("%s: %v", s.Label, err) })
		if err != nil {
			t.Fatalf("%s: %v", s.Label, err)
		}
		if strings.Join(got, ",") != strings.Join(wantTypes, ",") {
			t.Errorf("%s: decoded %v, want %v", s.Label, got, wantTypes)
		}
	}
}

func decodeOne(t *testing.T, payload string) Event {
	t.Helper()
	d := NewDecoder(NewInterner(100))
	var out []Event
	if err := d.Decode([]byte(payload), func(e *Event) { out = append(out, *e) }, func(err error) { t.Fatal(err) }); err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 {
		t.Fatalf("%d events", len(out))
	}
	return out[0]
}

func TestDecodeFields(t *testing.T) {
	e := decodeOne(t, `{"hostname": "gen1@h", "utcoffset": -1, "pid": 1, "clock": 3, "uuid": "u1", "root_id": "u1",
		"parent_id": null, "name": "tasks.add", "args": "(2, 3)", "kwargs": "{}", "retries": 0,
		"eta": "2026-11-28T16:00:30.500000+00:00", "expires": null, "queue": "chat", "exchange": "", "routing_key": "chat",
		"timestamp": 1795879446.5, "type": "task-sent"}`)
	if e.Type != TaskSent || e.UUID != "u1" || e.Name != "tasks.add" || e.Queue != "chat" || e.Hostname != "gen1@h" ||
		e.Timestamp != 1795879446.5 || e.ETA != 1795881630.5 {
		t.Errorf("task-sent: %+v", e)
	}
	e = decodeOne(t, `{"hostname": "celery@w1", "freq": 2.0, "active": 3, "processed": 41, "loadavg": [0.5, 0.25, 0.13],
		"sw_ident": "py-celery", "sw_ver": "5.2.6", "sw_sys": "Linux", "timestamp": 10.0, "type": "worker-heartbeat"}`)
	if e.Type != WorkerHeartbeat || !e.HasCounts || e.Active != 3 || e.Processed != 41 || e.LoadAvg != [3]float64{0.5, 0.25, 0.13} ||
		e.Freq != 2 || e.SWVer != "5.2.6" {
		t.Errorf("heartbeat: %+v", e)
	}
	// The heartbeat the `heartbeat` control command triggers has no counts.
	e = decodeOne(t, `{"hostname": "celery@w1", "freq": 5, "sw_ident": "py-celery", "sw_ver": "5.2.6", "sw_sys": "Linux", "timestamp": 10.0, "type": "worker-heartbeat"}`)
	if e.HasCounts || e.Freq != 5 {
		t.Errorf("remote heartbeat: %+v", e)
	}
	e = decodeOne(t, `{"uuid": "u", "terminated": true, "signum": 15, "expired": false, "hostname": "celery@w", "type": "task-revoked"}`)
	if !e.Terminated || e.Expired {
		t.Errorf("revoked: %+v", e)
	}
}

func TestDecodeBadInput(t *testing.T) {
	tests := []struct {
		payload string
		events  int
		reasons []string
		fatal   bool
	}{
		{payload: `[]`, events: 0},
		{payload: `[1, "x", {"type": "task-started", "uuid": "u"}]`, events: 1, reasons: []string{ReasonNotObject, ReasonNotObject}},
		{payload: `{"uuid": "u"}`, reasons: []string{ReasonNoType}},
		{payload: `{"type": "task-started"}`, reasons: []string{ReasonNoUUID}},
		{payload: `{"type": "worker-heartbeat"}`, reasons: []string{ReasonNoHost}},
		{payload: `{"type": "task-teleported", "uuid": "u"}`, events: 1},
		{payload: `{"type": "task-started", "uuid": "u", "timestamp": "soon"}`, events: 1, reasons: []string{ReasonWrongType}},
		{payload: `not json`, fatal: true},
		{payload: ``, fatal: true},
	}
	d := NewDecoder(NewInterner(10))
	for _, tt := range tests {
		var n int
		var reasons []string
		err := d.Decode([]byte(tt.payload), func(*Event) { n++ }, func(err error) { reasons = append(reasons, ReasonOf(err)) })
		if (err != nil) != tt.fatal || n != tt.events || strings.Join(reasons, ",") != strings.Join(tt.reasons, ",") {
			t.Errorf("%q: err %v, %d events, reasons %v", tt.payload, err, n, reasons)
		}
	}
	if ReasonOf(errors.New("x")) != ReasonInvalidJSON {
		t.Error("default reason")
	}
}

func TestExceptionClass(t *testing.T) {
	tests := []struct{ repr, tb, want string }{
		{"ValueError('boom')", "Traceback...\nValueError: boom\n", "ValueError"},
		{"KeyError('again')", "", "KeyError"},
		{"SoftTimeLimitExceeded()", "...\nbilliard.exceptions.SoftTimeLimitExceeded: SoftTimeLimitExceeded()\n", "SoftTimeLimitExceeded"},
		{"ExceptionWithTraceback()", "Traceback (most recent call last):\n  File \"x\"\nbilliard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1.5,)\n", "TimeLimitExceeded"},
		{"ExceptionWithTraceback()", "Traceback:\nbilliard.exceptions.WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL) Job: 12.\n", "WorkerLostError"},
		{"TimeLimitExceeded(180)", "", "TimeLimitExceeded"},
		{"NotRegistered('tasks.nope')", "", "NotRegistered"},
		{"myapp.errors.ZepError('x')", "", "ZepError"},
		{"<object at 0x7f>", "Traceback\nmyapp.Custom: bad\n", "Custom"},
		{"", "", "unknown"},
		{"ExceptionWithTraceback()", "", "ExceptionWithTraceback"},
		{"'quoted'(x)", "", "unknown"},
		{"Retry(Retry(...), KeyError('again'), 0)", "", "KeyError"},
		{"Retry(Retry(...), RuntimeError('transient'), 1)", "", "RuntimeError"},
		{"Retry('Retry in 5s')", "", "Retry"},
	}
	for _, tt := range tests {
		if got := string(ExceptionClass([]byte(tt.repr), []byte(tt.tb))); got != tt.want {
			t.Errorf("ExceptionClass(%q, %q) = %q, want %q", tt.repr, tt.tb, got, tt.want)
		}
	}
}

func TestInternerMakesValidUTF8(t *testing.T) {
	in := NewInterner(1)
	for i := 0; i < 2; i++ { // remembered, then past the cap
		if got := in.Bytes([]byte("celery@h\xff\xfe")); got != "celery@h\uFFFD" {
			t.Fatalf("got %q", got)
		}
	}
	if got := in.Bytes([]byte("x\xc3")); got != "x\uFFFD" {
		t.Fatalf("past the cap: %q", got)
	}
}

func TestInternerIsBounded(t *testing.T) {
	in := NewInterner(2)
	a, b := in.Bytes([]byte("a")), in.Bytes([]byte("a"))
	if a != b {
		t.Fatal("same value")
	}
	in.Bytes([]byte("b"))
	in.Bytes([]byte("c"))
	if len(in.m) != 2 || in.Bytes([]byte("c")) != "c" {
		t.Fatalf("interner grew past its cap: %d", len(in.m))
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range eventSamples(f) {
		var env kombu.EnvelopeDecoder
		if body, err := env.Decode([]byte(s.Args[1])); err == nil {
			f.Add(append([]byte(nil), body...))
		}
	}
	for _, h := range hostileValues {
		f.Add([]byte(h.payload))
	}
	d := NewDecoder(NewInterner(100))
	f.Fuzz(func(t *testing.T, payload []byte) {
		_ = d.Decode(payload, func(e *Event) { checkBounded(t, e) }, func(error) {})
	})
}

// checkBounded fails unless every value of e is one the exporter can use as is: finite numbers
// within their ranges, label values within MaxLabelBytes (+2 for a U+FFFD replacing a cut byte).
func checkBounded(t *testing.T, e *Event) {
	t.Helper()
	for name, v := range map[string]float64{"timestamp": e.Timestamp, "eta": e.ETA, "runtime": e.Runtime, "freq": e.Freq,
		"load0": e.LoadAvg[0], "load1": e.LoadAvg[1], "load2": e.LoadAvg[2]} {
		if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v) > MaxTimestamp {
			t.Fatalf("%s = %v", name, v)
		}
	}
	if e.Freq != 0 && (e.Freq < MinFreq || e.Freq > MaxFreq) {
		t.Fatalf("freq = %v", e.Freq)
	}
	if e.Active < 0 || e.Processed < 0 {
		t.Fatalf("active %d, processed %d", e.Active, e.Processed)
	}
	for _, s := range []string{e.Hostname, e.Name, e.Queue, e.Exception, e.SWIdent, e.SWVer, e.SWSys} {
		if len(s) > MaxLabelBytes+2 {
			t.Fatalf("label value of %d bytes", len(s))
		}
	}
	if len(e.UUID) > MaxUUIDBytes {
		t.Fatalf("uuid of %d bytes", len(e.UUID))
	}
	if (e.Type == TaskFailed || e.Type == TaskRetried) && e.Exception == "" {
		t.Fatal("task-failed without an exception label")
	}
}

var long = strings.Repeat("é", MaxLabelBytes) // 2 bytes a rune: a cut may fall inside one

// Hostile values seen in the field or in the campaign: each is refused, clamped or
// cut, and counted by reason; the event itself still counts unless it cannot be used.
var hostileValues = []struct {
	payload string
	events  int
	reasons []string
}{
	{`{"type": "task-succeeded", "uuid": "u", "runtime": NaN}`, 1, []string{ReasonNonFinite}},
	{`[{"type": "task-succeeded", "uuid": "u", "runtime": Infinity}, {"type": "task-started", "uuid": "v", "timestamp": -Infinity}]`, 2, []string{ReasonNonFinite, ReasonNonFinite}},
	{`{"type": "task-succeeded", "uuid": "u", "runtime": 1e308, "timestamp": 1e308}`, 1, []string{ReasonOutOfRange, ReasonOutOfRange}},
	{`{"type": "task-succeeded", "uuid": "u", "runtime": 1e400}`, 1, []string{ReasonNonFinite}},
	{`{"type": "task-sent", "uuid": "u", "name": "Infinity is a \"Infinity\" word", "eta": "9999-12-31T00:00:00"}`, 1, nil},
	{`{"type": "worker-heartbeat", "hostname": {"a": 1}}`, 0, []string{ReasonWrongType, ReasonNoHost}},
	{`{"type": "worker-heartbeat", "hostname": "celery@w", "active": "many", "processed": -5, "loadavg": "high"}`, 1, []string{ReasonWrongType, ReasonOutOfRange, ReasonWrongType}},
	{`{"type": "worker-heartbeat", "hostname": "celery@w", "freq": 1e9, "processed": 1}`, 1, []string{ReasonOutOfRange}},
	{`{"type": "worker-heartbeat", "hostname": "celery@w", "freq": 1e12, "processed": 1}`, 1, []string{ReasonOutOfRange}},
	{`{"type": "worker-heartbeat", "hostname": "celery@w", "freq": 0.001, "processed": 1}`, 1, []string{ReasonOutOfRange}},
	{`{"type": "worker-heartbeat", "hostname": "celery@w", "loadavg": [NaN, 1e300, -1]}`, 1, []string{ReasonNonFinite, ReasonOutOfRange, ReasonOutOfRange}},
	{`{"type": "task-failed", "uuid": "u"}`, 1, nil},
	{`{"type": "task-failed", "uuid": "u", "exception": 42, "requeue": "yes"}`, 1, []string{ReasonWrongType, ReasonWrongType}},
	{`{"type": ["task-sent"], "uuid": "u"}`, 0, []string{ReasonWrongType, ReasonNoType}},
	{`{"type": "task-sent", "uuid": "` + strings.Repeat("u", MaxUUIDBytes+1) + `"}`, 0, []string{ReasonUUIDLong}},
	{`{"type": "task-sent", "uuid": "u", "name": "` + long + `", "queue": "` + long + `", "hostname": "x` + long + `"}`, 1,
		[]string{ReasonTruncated, ReasonTruncated, ReasonTruncated}},
	{`{"type": "task-failed", "uuid": "u", "exception": "` + strings.Repeat("E", MaxLabelBytes+1) + `('x')", "traceback": "` + strings.Repeat("T", MaxLabelBytes+1) + `: x"}`, 1, nil}, // class names past 200 bytes are not names: "unknown"
}

func TestDecodeHostileValues(t *testing.T) {
	d := NewDecoder(NewInterner(100))
	for _, tt := range hostileValues {
		var n int
		var reasons []string
		err := d.Decode([]byte(tt.payload), func(e *Event) { n++; checkBounded(t, e) }, func(err error) { reasons = append(reasons, ReasonOf(err)) })
		sort.Strings(reasons)
		want := append([]string(nil), tt.reasons...)
		sort.Strings(want)
		if err != nil || n != tt.events || strings.Join(reasons, ",") != strings.Join(want, ",") {
			t.Errorf("%.120s: err %v, %d events (want %d), reasons %v (want %v)", tt.payload, err, n, tt.events, reasons, want)
		}
	}
	e := decodeOne(t, `{"type": "task-failed", "uuid": "u"}`)
	if e.Exception != UnknownException {
		t.Errorf("task-failed without exception: %q", e.Exception)
	}
	_ = d.Decode([]byte(`{"type": "worker-heartbeat", "hostname": "celery@w", "freq": 1e12, "processed": 1}`), func(e *Event) {
		if e.Freq != MaxFreq {
			t.Errorf("freq 1e12 became %v, want %v", e.Freq, MaxFreq)
		}
	}, func(error) {})
	e = decodeOne(t, `{"type": "task-sent", "uuid": "u", "name": "Infinity is a \"Infinity\" word"}`)
	if e.Name != `Infinity is a "Infinity" word` {
		t.Errorf("strings must keep their Infinity: %q", e.Name)
	}
}
