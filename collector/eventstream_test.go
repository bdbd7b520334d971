package collector

import (
	"context"
	"testing"

	"github.com/go-kit/log"
)

// rawStream is an EventStream whose messages are bare event bodies, as on AMQP.
type rawStream struct{ out chan string }

func (r rawStream) Run(context.Context) {}
func (r rawStream) Out() <-chan string  { return r.out }
func (r rawStream) Up() bool            { return true }
func (r rawStream) Ready() bool         { return true }
func (r rawStream) Reconnects() uint64  { return 0 }
func (r rawStream) Dropped() uint64     { return 0 }
func (r rawStream) RawBodies() bool     { return true }

// TestEventSourceRawBodies: on a stream of bare bodies (AMQP) a single event and a task.multi
// list count as they do inside kombu envelopes (Redis); a message the stream skipped is counted
// under the envelope decoder's reason.
func TestEventSourceRawBodies(t *testing.T) {
	s := NewEventSource(log.NewNopLogger(), rawStream{}, EventOptions{SentWait: -1}, NewModel(DefaultModelOptions()))
	s.HandlePayload(`{"type": "task-sent", "uuid": "u1", "name": "add", "queue": "q", "timestamp": 1}`)
	s.HandlePayload(`[{"type": "task-received", "uuid": "u1", "name": "add", "hostname": "w@h", "timestamp": 2},
		{"type": "task-succeeded", "uuid": "u1", "hostname": "w@h", "runtime": 0.5, "timestamp": 3}]`)
	s.HandlePayload(`not json`)
	s.CountEventError("unsupported_content_type")
	got := samples(t, s.succeeded)
	if v := got[`celery_task_succeeded_total{hostname="w@h",name="add",queue_name="q"}`]; v != 1 || len(got) != 1 {
		t.Errorf("succeeded = %v, want 1 for add on q", got)
	}
	errs := samples(t, s.eventErrors)
	if errs[`celery_exporter_event_errors_total{reason="invalid_json"}`] != 1 || errs[`celery_exporter_event_errors_total{reason="unsupported_content_type"}`] != 1 {
		t.Errorf("event errors = %v, want one invalid_json and one unsupported_content_type", errs)
	}
}
