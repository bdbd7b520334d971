package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// A broker that is down when the exporter starts, comes up, then restarts: the exporter serves
// /metrics throughout with its health metrics telling the truth, recovers by itself, keeps its
// counters, logs once per change of state, and never shows the broker password.
func TestResilienceBrokerOutages(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	const password = "s3cret-pw-4711"
	port := harness.FreePort(t)
	url := fmt.Sprintf("redis://:%s@127.0.0.1:%d/0", password, port)
	exp := harness.StartExporter(t, "--broker.url="+url, "--control.interval=1s", "--control.timeout=300ms",
		"--worker.timeout=2s")

	// Down at start: served, not ready, every broker-backed source reports its failure.
	m := exp.WaitFor(t, 10*time.Second, func(m harness.Metrics) bool { return m.Has("celery_up") })
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"celery_exporter_subscription_up", nil, 0},
		{"celery_up", nil, 0},
		{"celery_exporter_collector_success", map[string]string{"collector": "broker"}, 0},
		{"celery_exporter_collector_success", map[string]string{"collector": "events"}, 0},
	} {
		if v, ok := m.Value(c.name, c.labels); !ok || v != c.want {
			t.Errorf("broker down: %s%v = %v (found %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if code, _, _ := exp.Get("/-/ready"); code != 503 {
		t.Errorf("/-/ready = %d before the first subscription, want 503", code)
	}
	if code, _, _ := exp.Get("/-/healthy"); code != 200 {
		t.Errorf("/-/healthy = %d", code)
	}

	// The broker comes up: the exporter resumes by itself.
	redis := harness.StartRedisOnPort(t, port, "--requirepass", password)
	exp.WaitFor(t, 40*time.Second, func(m harness.Metrics) bool {
		up, _ := m.Value("celery_exporter_subscription_up", nil)
		cu, _ := m.Value("celery_up", nil)
		return up == 1 && cu == 1
	})
	if code, _, _ := exp.Get("/-/ready"); code != 200 {
		t.Errorf("/-/ready = %d once subscribed", code)
	}
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Queues: []string{"q"}, Pool: "solo",
		NodeName: "resil@test", Events: true, HeartbeatInterval: time.Second})
	harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{1, 2}, Queue: "q"}})
	succeeded := map[string]string{"name": "celeryapp.app.add", "hostname": w.NodeName, "queue_name": "q"}
	exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		v, _ := m.Value("celery_task_succeeded_total", succeeded)
		return v == 1
	})

	// The broker restarts (an outage for everyone): the subscription comes back, counters stay.
	w.Kill() // Celery 5.2 workers may hang after a Redis restart; not what this test is about
	redis.Restart(t)
	m = exp.WaitFor(t, 40*time.Second, func(m harness.Metrics) bool {
		up, _ := m.Value("celery_exporter_subscription_up", nil)
		rc, _ := m.Value("celery_exporter_subscription_reconnects_total", nil)
		return up == 1 && rc >= 1
	})
	if v, _ := m.Value("celery_task_succeeded_total", succeeded); v != 1 {
		t.Errorf("counters must survive reconnects: succeeded = %v", v)
	}
	if v, _ := m.Value("celery_exporter_subscription_reconnects_total", nil); v != 1 {
		t.Errorf("celery_exporter_subscription_reconnects_total = %v after one lost subscription, want 1", v)
	}

	// The listener logs "subscribed" just after it reports the subscription up: give the line a
	// moment.
	log := exp.Log()
	for deadline := time.Now().Add(5 * time.Second); strings.Count(log, "subscribed to events") < 2 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		log = exp.Log()
	}
	if strings.Contains(log, password) {
		t.Errorf("the broker password is in the log")
	}
	if strings.Contains(exp.MustScrape(t).Text, password) {
		t.Errorf("the broker password is in /metrics")
	}
	// Once per change of state: two outages (start, restart), not once per retry; and two
	// recoveries.
	for _, c := range []struct {
		line string
		want int
	}{{"event subscription lost", 2}, {"subscribed to events", 2}} {
		if n := strings.Count(log, c.line); n != c.want {
			t.Errorf("%d %q lines for two outages, want %d:\n%s", n, c.line, c.want, log)
		}
	}
}
