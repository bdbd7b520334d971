package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// While Redis keeps the exporter out (its ACL user switched off and its connections killed) a
// real worker processes tasks: their events are lost, and the exporter estimates how many from
// the worker's first heartbeat after the gap. The estimate of task-started events is exact when
// no task runs across the gap's edges, as here; that of heartbeats is within one of the
// heartbeats the worker published that the exporter did not receive.
func TestResilienceLostEventsEstimated(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	harness.Require(t, "redis-server")
	r := harness.StartRedis(t)
	if _, err := r.Do("ACL", "SETUSER", "exporter", "on", ">exporter-pw", "~*", "&*", "+@all"); err != nil {
		t.Fatal(err)
	}
	rec := harness.RecordRedis(t, r, 0)
	exp := harness.StartExporter(t, fmt.Sprintf("--broker.url=redis://exporter:exporter-pw@%s/0", r.Addr()), "--control.disabled")
	exp.WaitReady(t, 20*time.Second)
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: r.URL(0), Pool: "solo", NodeName: "lost@test",
		Events: true, HeartbeatInterval: time.Second})
	host := map[string]string{"hostname": w.NodeName}
	counts := func(m harness.Metrics) (processed, seen, lost float64) {
		processed, _ = m.Value("celery_worker_tasks_processed_total", host)
		seen, _ = m.Value("celery_worker_tasks_seen_total", host)
		lost, _ = m.Value("celery_exporter_events_lost_estimated_total", map[string]string{"type": "task-started"})
		return
	}

	// Before the gap: two tasks seen and counted by a heartbeat.
	ids := harness.Produce(t, r.URL(0), nil, []harness.Send{{Task: "add", Args: []any{1, 2}}, {Task: "add", Args: []any{3, 4}}})
	rec.WaitFinished(t, 60*time.Second, ids...)
	exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		p, s, _ := counts(m)
		return p == 2 && s == 2
	})

	// The gap: the exporter cannot subscribe again until its user is back.
	for _, cmd := range [][]string{{"ACL", "SETUSER", "exporter", "off"}, {"CLIENT", "KILL", "USER", "exporter"}} {
		if _, err := r.Do(cmd...); err != nil {
			t.Fatal(err)
		}
	}
	exp.WaitFor(t, 20*time.Second, func(m harness.Metrics) bool {
		up, _ := m.Value("celery_exporter_subscription_up", nil)
		return up == 0
	})
	const inGap = 5
	var plan []harness.Send
	for i := 0; i < inGap; i++ {
		plan = append(plan, harness.Send{Task: "add", Args: []any{i, i}})
	}
	ids = harness.Produce(t, r.URL(0), nil, plan)
	rec.WaitFinished(t, 60*time.Second, ids...)
	rec.WaitQuiet(t, "task-", 1500*time.Millisecond, 30*time.Second) // every task event flushed in the gap
	if _, err := r.Do("ACL", "SETUSER", "exporter", "on"); err != nil {
		t.Fatal(err)
	}

	m := exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		p, _, _ := counts(m)
		return p == 2+inGap
	})
	if p, s, lost := counts(m); lost != inGap || s != 2 {
		t.Errorf("processed %v, seen %v, task-started lost (estimated) %v; want %d lost, 2 seen", p, s, lost, inGap)
	}
	// Heartbeats: those the worker published less those the exporter received, within one
	// (a heartbeat may be on its way to either reader; the worker's timer drifts on a busy machine).
	var published, received, beats float64
	for deadline := time.Now().Add(20 * time.Second); ; {
		m := exp.MustScrape(t)
		received, _ = m.Value("celery_exporter_events_total", map[string]string{"type": "worker-heartbeat"})
		beats, _ = m.Value("celery_exporter_events_lost_estimated_total", map[string]string{"type": "worker-heartbeat"})
		published = float64(len(rec.Find(func(e harness.Event) bool {
			return e.Type == "worker-heartbeat" && e.Str("hostname") == w.NodeName
		})))
		if published == received+beats || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("heartbeats: %v published, %v received, %v estimated lost", published, received, beats)
	if d := received + beats - published; beats == 0 || d < -1 || d > 1 {
		t.Errorf("heartbeats: %v published, %v received, %v estimated lost", published, received, beats)
	}
}
