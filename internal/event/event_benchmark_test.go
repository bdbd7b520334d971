package event

import (
	"strings"
	"testing"
)

// Event bodies as Celery 5.2.6 writes them (json.dumps: ", " and ": " separators, every field of
// the capture, not only the ones the decoder keeps), so the parser skips what it really skips.
const (
	benchUUID = "bc2cffec-f766-4cb7-9385-bfe028877234"
	benchHost = "celery@worker-3"
)

func benchSent() string {
	return `{"hostname": "gen13535@web-2", "utcoffset": 0, "pid": 13535, "clock": 1, "uuid": "` + benchUUID +
		`", "root_id": "` + benchUUID + `", "parent_id": null, "name": "app.tasks.send_notification", ` +
		`"args": "(2, 3)", "kwargs": "{'channel': 'email'}", "retries": 0, "eta": null, "expires": null, ` +
		`"queue": "chat", "exchange": "", "routing_key": "chat", "timestamp": 1795879467.8389633, "type": "task-sent"}`
}

func benchReceived() string {
	return `{"hostname": "` + benchHost + `", "utcoffset": 0, "pid": 13498, "clock": 10, "uuid": "` + benchUUID +
		`", "name": "app.tasks.send_notification", "args": "(2, 3)", "kwargs": "{'channel': 'email'}", "root_id": "` +
		benchUUID + `", "parent_id": null, "retries": 0, "eta": null, "expires": null, ` +
		`"timestamp": 1795879467.8398354, "type": "task-received"}`
}

func benchStarted() string {
	return `{"hostname": "` + benchHost + `", "utcoffset": 0, "pid": 13498, "clock": 11, "uuid": "` + benchUUID +
		`", "timestamp": 1795879467.839885, "type": "task-started"}`
}

func benchSucceeded() string {
	return `{"hostname": "` + benchHost + `", "utcoffset": 0, "pid": 13498, "clock": 12, "uuid": "` + benchUUID +
		`", "result": "5", "runtime": 0.20026184900001454, "timestamp": 1795879468.0404563, "type": "task-succeeded"}`
}

// benchFailed carries the traceback of the capture: the decoder must scan past it.
func benchFailed() string {
	return `{"hostname": "` + benchHost + `", "utcoffset": 0, "pid": 13498, "clock": 15, "uuid": "` + benchUUID +
		`", "exception": "ValueError('boom from probe')", "traceback": "Traceback (most recent call last):\n` +
		`  File \"/usr/lib/python3/dist-packages/celery/app/trace.py\", line 451, in trace_task\n` +
		`    R = retval = fun(*args, **kwargs)\n                 ^^^^^^^^^^^^^^^^^^^^\n` +
		`  File \"/usr/lib/python3/dist-packages/celery/app/trace.py\", line 734, in __protected_call__\n` +
		`    return self.run(*args, **kwargs)\n           ^^^^^^^^^^^^^^^^^^^^^^^^^\n` +
		`  File \"/tmp/celeryapp/app.py\", line 33, in fail_task\n    raise ValueError(\"boom from probe\")\n` +
		`ValueError: boom from probe\n", "timestamp": 1795879469.1684794, "type": "task-failed"}`
}

func benchHeartbeat() string {
	return `{"hostname": "` + benchHost + `", "utcoffset": 0, "pid": 13498, "clock": 2, "freq": 2.0, "active": 3, ` +
		`"processed": 1042, "loadavg": [0.89, 0.55, 0.22], "sw_ident": "py-celery", "sw_ver": "5.2.6", ` +
		`"sw_sys": "Linux", "timestamp": 1795879461.1658206, "type": "worker-heartbeat"}`
}

// benchBodies are the payloads benchmarked, with the number of events each holds.
var benchBodies = []struct {
	name   string
	body   string
	events int
}{
	{"task-sent", benchSent(), 1},
	{"task-received", benchReceived(), 1},
	{"task-started", benchStarted(), 1},
	{"task-succeeded", benchSucceeded(), 1},
	{"task-failed", benchFailed(), 1},
	{"worker-heartbeat", benchHeartbeat(), 1},
	{"task.multi-4", "[" + strings.Join([]string{benchReceived(), benchStarted(), benchSucceeded(), benchReceived()}, ", ") + "]", 4},
}

// The bodies are what the decoder expects: a benchmark of a payload that fails to decode would
// measure the error path.
func TestBenchBodiesDecode(t *testing.T) {
	d := NewDecoder(NewInterner(100))
	for _, c := range benchBodies {
		var types []string
		err := d.Decode([]byte(c.body), func(e *Event) { types = append(types, e.Type.String()) },
			func(err error) { t.Errorf("%s: bad event: %v", c.name, err) })
		if err != nil || len(types) != c.events {
			t.Errorf("%s: %d events, err %v", c.name, len(types), err)
		}
		if c.events == 1 && types[0] != c.name {
			t.Errorf("%s decoded as %v", c.name, types)
		}
	}
	var exc string
	_ = d.Decode([]byte(benchFailed()), func(e *Event) { exc = e.Exception }, func(error) {})
	if exc != "ValueError" {
		t.Errorf("exception %q, want ValueError", exc)
	}
}

// BenchmarkDecode measures decoding one payload (the body inside the kombu envelope) into events;
// ns/op is per payload, events/s counts every event of it.
func BenchmarkDecode(b *testing.B) {
	for _, c := range benchBodies {
		b.Run(c.name, func(b *testing.B) {
			d := NewDecoder(NewInterner(1000))
			body := []byte(c.body)
			n := 0
			fn := func(*Event) { n++ }
			bad := func(err error) { b.Fatal(err) }
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if err := d.Decode(body, fn, bad); err != nil {
					b.Fatal(err)
				}
			}
			if n != b.N*c.events {
				b.Fatalf("decoded %d events, want %d", n, b.N*c.events)
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkExceptionClass measures resolving the exception label, the one string scan of the
// failure path.
func BenchmarkExceptionClass(b *testing.B) {
	for _, c := range []struct{ name, repr, tb, want string }{
		{"repr", "ValueError('boom from probe')", "", "ValueError"},
		{"retry", "Retry(Retry(...), RuntimeError('transient'), 1)", "", "RuntimeError"},
		{"with-traceback", "ExceptionWithTraceback()", strings.Repeat("  File \"x.py\", line 1, in f\n", 8) +
			"billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1.5,)\n", "TimeLimitExceeded"},
	} {
		b.Run(c.name, func(b *testing.B) {
			repr, tb := []byte(c.repr), []byte(c.tb)
			b.ReportAllocs()
			var out []byte
			for b.Loop() {
				out = ExceptionClass(repr, tb)
			}
			if string(out) != c.want {
				b.Fatalf("class %q of %q, want %s", out, c.repr, c.want)
			}
		})
	}
}
