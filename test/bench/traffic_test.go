package bench

import (
	"strings"
	"testing"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/celery-exporter/celery_exporter/collector"
	"github.com/celery-exporter/celery_exporter/internal/event"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
)

// The generated traffic is what the documentation says it is, and the exporter counts every event
// of it under the right labels.
func TestTraffic(t *testing.T) {
	const n = 20000
	g := NewTraffic(7, 1, Options{})
	var env kombu.EnvelopeDecoder
	dec := event.NewDecoder(event.NewInterner(1000))
	src := collector.NewEventSource(log.NewNopLogger(), nil, collector.EventOptions{SentWait: 2e9}, collector.NewModel(collector.DefaultModelOptions()))

	type life struct{ sent, received, started, done int }
	tasks := map[string]*life{}
	get := func(uuid string) *life {
		l := tasks[uuid]
		if l == nil {
			l = &life{}
			tasks[uuid] = l
		}
		return l
	}
	sizes := map[int]int{}
	var events, batches, late, failed, heartbeats int
	seq := 0
	ts := 1795879467.0
	var buf []byte
	for range n {
		ts += 0.0001
		var m Message
		buf, m = g.Next(ts, buf[:0])
		src.HandlePayload(string(buf))
		body, err := env.Decode(buf)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		got := 0
		err = dec.Decode(body, func(e *event.Event) {
			got++
			seq++
			if want := strings.TrimPrefix(m.Channel, "/0.celeryev/"); e.Type.IsTask() && want != "task.multi" && want != "task."+strings.TrimPrefix(e.Type.String(), "task-") {
				t.Errorf("%s on %s", e.Type, m.Channel)
			}
			switch e.Type {
			case event.TaskSent:
				if e.Queue != g.QueueOf(e.Name) || e.Queue == "" {
					t.Errorf("task-sent of %s on queue %q", e.Name, e.Queue)
				}
				l := get(e.UUID)
				l.sent++
				if l.received > 0 {
					late++
				}
			case event.TaskReceived:
				get(e.UUID).received++
			case event.TaskStarted:
				get(e.UUID).started++
			case event.TaskSucceeded:
				get(e.UUID).done++
			case event.TaskFailed:
				get(e.UUID).done++
				failed++
				if e.Exception != "ValueError" {
					t.Errorf("exception %q", e.Exception)
				}
			case event.WorkerHeartbeat:
				heartbeats++
				if !e.HasCounts || e.Freq != 2 {
					t.Errorf("heartbeat %+v", e)
				}
			default:
				t.Errorf("unexpected %s", e.Type)
			}
		}, func(err error) { t.Errorf("bad event: %v", err) })
		if err != nil || got != m.Events {
			t.Fatalf("message %d on %s: %d events, want %d (err %v)", seq, m.Channel, got, m.Events, err)
		}
		events += got
		if m.Channel == "/0.celeryev/task.multi" {
			sizes[got]++
			batches++
		}
	}

	// Each task's events once each, in their order within the worker's stream.
	finished := 0
	for uuid, l := range tasks {
		if l.sent > 1 || l.received > 1 || l.started != l.received || l.done > l.started {
			t.Errorf("%s: %+v", uuid, *l)
		}
		if l.done == 1 && l.sent == 1 {
			finished++
		}
	}
	if finished < len(tasks)*9/10 {
		t.Errorf("only %d of %d tasks ran their whole life", finished, len(tasks))
	}
	// Batches: 1-24 events, mostly 2-4, some empty.
	twoToFour := sizes[2] + sizes[3] + sizes[4]
	if twoToFour*2 < batches || sizes[0] == 0 || sizes[1] == 0 || sizes[24] == 0 {
		t.Errorf("batch sizes %v of %d batches", sizes, batches)
	}
	for s := range sizes {
		if s > 24 {
			t.Errorf("batch of %d events: Celery's buffer_limit is 24", s)
		}
	}
	if frac := float64(late) / float64(len(tasks)); frac < 0.07 || frac > 0.13 {
		t.Errorf("%.3f of tasks had task-sent after task-received, want about 0.1", frac)
	}
	if frac := float64(failed) / float64(finished); frac < 0.01 || frac > 0.03 {
		t.Errorf("%.3f of tasks failed, want about 0.02", frac)
	}
	// A round of one heartbeat per worker every hbEvery messages; the last may still be queued.
	if want := (n/hbEvery - 1) * 8; heartbeats != want && heartbeats != want+8 {
		t.Errorf("%d heartbeats, want %d or %d", heartbeats, want, want+8)
	}
	if perMsg := float64(events) / n; perMsg < 2 || perMsg > 3 {
		t.Errorf("%.2f events per message", perMsg)
	}
	t.Logf("%d messages, %d events (%.2f per message), %d tasks, batch sizes %v", n, events, float64(events)/n, len(tasks), sizes)

	// The exporter counts every event, none as an error, each task under its task-sent's queue.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector.AsCollector(src))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counted := 0.0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch mf.GetName() {
			case "celery_exporter_events_total":
				counted += m.GetCounter().GetValue()
			case "celery_exporter_event_errors_total":
				if v := m.GetCounter().GetValue(); v != 0 {
					t.Errorf("event errors %v: %v", labels, v)
				}
			case "celery_task_received_total", "celery_task_succeeded_total", "celery_task_failed_total":
				if labels["queue_name"] != g.QueueOf(labels["name"]) {
					t.Errorf("%s %v: wrong queue", mf.GetName(), labels)
				}
			}
		}
	}
	if counted != float64(events) {
		t.Errorf("exporter counted %v events, generated %d", counted, events)
	}
}

// BenchmarkTraffic is the publisher's cost of making a message, which shares the CPU with the
// exporter in the ingest benchmark.
func BenchmarkTraffic(b *testing.B) {
	g := NewTraffic(1, 1, Options{})
	var buf []byte
	events := 0
	b.ReportAllocs()
	for b.Loop() {
		var m Message
		buf, m = g.Next(1795879467.0, buf[:0])
		events += m.Events
	}
	b.ReportMetric(float64(events)/float64(b.N), "events/msg")
}
