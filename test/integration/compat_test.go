package integration

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// The series danihodovic/celery-exporter's celery-mixin (its three alerts and its dashboards
// celery-tasks-overview and celery-tasks-by-task) reads, by name: a fact about that mixin, listed
// here so that every one of them is checked to return data from this exporter.
var oldMixinReads = []string{
	"celery_queue_length",
	"celery_task_failed_total",
	"celery_task_received_total",
	"celery_task_rejected_total",
	"celery_task_retried_total",
	"celery_task_revoked_total",
	"celery_task_runtime_bucket",
	"celery_task_runtime_count",
	"celery_task_runtime_sum",
	"celery_task_sent_total",
	"celery_task_succeeded_total",
	"celery_worker_tasks_active",
	"celery_worker_up",
}

// The rest of that exporter's series, which its users' own dashboards may read.
var oldExporterOthers = []string{
	"celery_task_started_total",
	"celery_task_queue_wait_time_bucket",
	"celery_task_queue_wait_time_sum",
	"celery_task_queue_wait_time_count",
	"celery_active_consumer_count",
	"celery_active_worker_count",
	"celery_active_process_count",
}

// startExporterAndWorker starts redis, the exporter (ready) and, after before (if any), one
// prefork worker on the queue "celery"; it returns the broker URL and the exporter.
func startExporterAndWorker(t *testing.T, node string, before func(*harness.Exporter)) (string, *harness.Exporter) {
	t.Helper()
	url := harness.StartRedis(t).URL(0)
	exp := harness.StartExporter(t, "--broker.url="+url, "--control.interval=1s", "--control.timeout=300ms",
		"--celery.queues=celery")
	exp.WaitReady(t, 15*time.Second)
	if before != nil {
		before(exp)
	}
	harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "prefork", Concurrency: 2,
		Queues: []string{"celery"}, NodeName: node, Events: true, HeartbeatInterval: heartbeat})
	return url, exp
}

// TestCompatRulesServeTheOldMixin runs real workers, the exporter and a real Prometheus loading
// rules/compat: every series the old exporter's mixin reads returns data, and the renamed ones
// carry the old meaning (the runtime histogram counts successful runs; the consumer count is
// the queue's live consumers).
func TestCompatRulesServeTheOldMixin(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: real redis-server, a Celery worker, the exporter and Prometheus")
	}
	harness.Require(t, "prometheus")
	root := harness.ModuleRoot(t)
	var prom *harness.Prometheus
	url, exp := startExporterAndWorker(t, "compat@e2e", func(exp *harness.Exporter) {
		prom = harness.StartPrometheus(t, harness.PrometheusConfig(harness.PromConfig{
			Jobs: map[string][]string{"celery": {exp.Addr}},
		}), filepath.Join(root, "rules/compat/danihodovic-celery-exporter.rules.yml"))
	})

	harness.Produce(t, url, nil, []harness.Send{
		{Task: "add", Args: []any{1, 2}},
		{Task: "add", Args: []any{3, 4}},
		{Task: "sleep", Args: []any{0.3}},
		{Task: "fail", Args: []any{"compat boom"}},
		{Task: "retry_once"},
		{Task: "revokable", Args: []any{0.1}, Countdown: 3, RevokeAfter: 1},
	})
	// add ×2, sleep, retry_once's second run; fail; the revoked ETA task.
	m := exp.WaitFor(t, 60*time.Second, func(m harness.Metrics) bool {
		return m.Sum("celery_task_succeeded_total", nil) == 4 && m.Sum("celery_task_failed_total", nil) == 1 &&
			m.Sum("celery_task_revoked_total", nil) == 1 && m.Sum("celery_task_retried_total", nil) == 1
	})
	succeededRuns := m.Sum("celery_task_runtime_seconds_count", map[string]string{"state": "succeeded"})
	if succeededRuns != 4 {
		t.Fatalf("celery_task_runtime_seconds_count{state=\"succeeded\"} = %v, want 4", succeededRuns)
	}
	var waits float64

	for _, name := range append(append([]string{}, oldMixinReads...), oldExporterOthers...) {
		prom.WaitForQuery(t, fmt.Sprintf(`count(%s{job="celery"})`, name), 60*time.Second, func(r []harness.QuerySample) bool {
			return len(r) == 1 && r[0].Value > 0
		})
	}
	// A second batch once Prometheus holds the series, so that increase() and rate() over them
	// see a change (a series' first sample is not one).
	harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{5, 6}}, {Task: "add", Args: []any{7, 8}}})
	m = exp.WaitFor(t, 60*time.Second, func(m harness.Metrics) bool {
		return m.Sum("celery_task_succeeded_total", nil) == 6
	})
	waits = m.Sum("celery_task_queue_wait_seconds_count", nil)
	exact := []struct {
		expr string
		want float64
	}{
		// The old histogram observed successful runs only.
		{`sum(celery_task_runtime_count{job="celery"})`, 6},
		{`sum(celery_task_runtime_bucket{job="celery",le="+Inf"})`, 6},
		{`count(celery_task_runtime_bucket{job="celery",name="celeryapp.app.add",le="+Inf"})`, 1},
		{`sum(celery_task_queue_wait_time_count{job="celery"})`, waits},
		{`celery_active_consumer_count{job="celery",queue_name="celery"}`, 1},
		// The shapes of the mixin's queries: a quantile and a mean from the recorded histogram,
		// a failure ratio from the counters.
		{`count(histogram_quantile(0.5, sum by (job, le) (increase(celery_task_runtime_bucket{job="celery"}[10m]))) >= 0)`, 1},
		{`count(sum by (name) (rate(celery_task_runtime_sum{job="celery"}[10m])) / sum by (name) (rate(celery_task_runtime_count{job="celery"}[10m])) > 0)`, 1},
		{`sum(celery_task_failed_total{job="celery"}) / (sum(celery_task_failed_total{job="celery"}) + sum(celery_task_succeeded_total{job="celery"}))`, 1.0 / 7},
	}
	for _, c := range exact {
		prom.WaitForQuery(t, c.expr, 30*time.Second, func(r []harness.QuerySample) bool {
			return len(r) == 1 && r[0].Value == c.want
		})
	}
}

// The findings `promtool check metrics` may report on a real /metrics: the names kept for
// danihodovic/celery-exporter's users (docs/migrating.md, "Names kept for compatibility").
var checkMetricsAllowed = map[string]bool{
	`celery_active_process_count non-histogram and non-summary metrics should not have "_count" suffix`: true,
	`celery_active_worker_count non-histogram and non-summary metrics should not have "_count" suffix`:  true,
}

// TestPromtoolCheckMetrics runs `promtool check metrics` on the /metrics of the exporter watching
// a real worker that ran tasks (so every family with labels has series): clean apart from the
// documented compatibility names.
func TestPromtoolCheckMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: real redis-server, a Celery worker and the exporter")
	}
	harness.Require(t, "promtool")
	url, exp := startExporterAndWorker(t, "lint@e2e", nil)
	harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{1, 2}}, {Task: "fail", Args: []any{"lint"}}, {Task: "retry_once"}})
	exp.WaitFor(t, 60*time.Second, func(m harness.Metrics) bool {
		return m.Sum("celery_task_succeeded_total", nil) == 2 && m.Sum("celery_task_failed_total", nil) == 1 &&
			m.Has("celery_worker_pool_max_concurrency") && m.Has("celery_task_queue_wait_seconds_count")
	})
	code, body, err := exp.Get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, _ := cmd.CombinedOutput() // exits 3 on lint findings; the findings are what matters
	var found []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		found = append(found, l)
		if !checkMetricsAllowed[l] {
			t.Errorf("promtool check metrics: %s", l)
		}
	}
	if len(found) != len(checkMetricsAllowed) {
		t.Errorf("promtool check metrics found %d findings, want exactly the %d documented ones:\n%s", len(found), len(checkMetricsAllowed), out)
	}
}
