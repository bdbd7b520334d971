package kombu

import (
	"encoding/base64"
	"strings"
	"testing"
)

// benchEnvelope wraps body the way a Celery 5.2.6 worker PUBLISHes an event: base64 body and the
// properties of the capture, key order included.
func benchEnvelope(body, routingKey string) string {
	return `{"body": "` + base64.StdEncoding.EncodeToString([]byte(body)) + `", "content-encoding": "utf-8", ` +
		`"content-type": "application/json", "headers": {"hostname": "celery@worker-3"}, "properties": ` +
		`{"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": "` + routingKey + `"}, ` +
		`"priority": 0, "body_encoding": "base64", "delivery_tag": "c00eafe8-6ca1-4bb7-81cb-5c120c0161a7"}}`
}

const benchEvent = `{"hostname": "celery@worker-3", "utcoffset": 0, "pid": 13498, "clock": 11, ` +
	`"uuid": "bc2cffec-f766-4cb7-9385-bfe028877234", "timestamp": 1795879467.839885, "type": "task-started"}`

// BenchmarkEnvelopeDecode measures unwrapping one pub/sub message: JSON parse of the envelope and
// base64 decode of the body, by body size (one event, a batch of 4, a full batch of 24).
func BenchmarkEnvelopeDecode(b *testing.B) {
	for _, c := range []struct {
		name string
		body string
	}{
		{"single", benchEvent},
		{"multi-4", "[" + strings.Repeat(benchEvent+", ", 3) + benchEvent + "]"},
		{"multi-24", "[" + strings.Repeat(benchEvent+", ", 23) + benchEvent + "]"},
	} {
		msg := benchEnvelope(c.body, "task.multi")
		b.Run(c.name+"/DecodeString", func(b *testing.B) {
			var d EnvelopeDecoder
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			var out []byte
			for b.Loop() {
				var err error
				if out, err = d.DecodeString(msg); err != nil {
					b.Fatal(err)
				}
			}
			if string(out) != c.body {
				b.Fatalf("decoded %q", out)
			}
		})
		b.Run(c.name+"/Decode", func(b *testing.B) {
			var d EnvelopeDecoder
			raw := []byte(msg)
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			var out []byte
			for b.Loop() {
				var err error
				if out, err = d.Decode(raw); err != nil {
					b.Fatal(err)
				}
			}
			if string(out) != c.body {
				b.Fatalf("decoded %q", out)
			}
		})
	}
}
