package integration

import (
	"regexp"
	"strings"
	"testing"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// What danihodovic/celery-exporter offers (its src/cli.py options, their CE_ variables, its
// src/exporter.py metrics and its HTTP routes): facts docs/migrating.md must cover one by one.
var (
	oldExporterFlags = []string{
		"--broker-url", "--broker-transport-option", "--broker-ssl-option", "--accept-content",
		"--retry-interval", "--host", "--port", "--buckets", "--queue-wait-buckets", "--log-level",
		"--worker-timeout", "--purge-offline-worker-metrics", "--generic-hostname-task-sent-metric",
		"--generic-hostname-worker-task-metric", "--queues", "--metric-prefix", "--default-queue-name",
		"--static-label",
	}
	oldExporterMetrics = []string{
		"celery_task_sent_total", "celery_task_received_total", "celery_task_started_total",
		"celery_task_succeeded_total", "celery_task_failed_total", "celery_task_rejected_total",
		"celery_task_revoked_total", "celery_task_retried_total", "celery_task_runtime_bucket",
		"celery_task_queue_wait_time_bucket", "celery_worker_up", "celery_worker_tasks_active",
		"celery_queue_length", "celery_active_consumer_count", "celery_active_worker_count",
		"celery_active_process_count",
	}
	oldExporterEndpoints = []string{"/", "/metrics", "/health"}
)

// ceVariable is the click variable of an option under auto_envvar_prefix="CE".
func ceVariable(flag string) string {
	return "CE_" + strings.ToUpper(strings.ReplaceAll(strings.TrimPrefix(flag, "--"), "-", "_"))
}

// TestMigratingGuideIsComplete checks docs/migrating.md against the old exporter's surface and
// against this exporter's --help: every old flag, variable, metric and endpoint is named, and
// every flag and variable of ours it names exists.
func TestMigratingGuideIsComplete(t *testing.T) {
	root := harness.ModuleRoot(t)
	doc := string(readFile(t, root, "docs/migrating.md"))
	readme := string(readFile(t, root, "README.md"))
	named := func(s string) bool { return strings.Contains(doc, "`"+s+"`") || strings.Contains(doc, "`"+s+" ") }
	for _, f := range oldExporterFlags {
		if !named(f) {
			t.Errorf("docs/migrating.md does not name the old flag %s", f)
		}
		if v := ceVariable(f); !named(v) {
			t.Errorf("docs/migrating.md does not name the old variable %s", v)
		}
	}
	for _, m := range oldExporterMetrics {
		if !named(m) && !strings.Contains(doc, "`"+strings.TrimSuffix(m, "_bucket")+"_bucket`, `_sum`, `_count`") {
			t.Errorf("docs/migrating.md does not name the old metric %s", m)
		}
	}
	for _, e := range oldExporterEndpoints {
		if !named(e) {
			t.Errorf("docs/migrating.md does not name the old endpoint %s", e)
		}
	}

	flags, envars, _ := exporterHelp(t)
	for _, f := range regexp.MustCompile("`(--[a-z]+\\.[a-z.-]+[a-z])").FindAllStringSubmatch(doc, -1) {
		if strings.HasSuffix(f[1], ".*") {
			continue
		}
		if !flags[strings.TrimPrefix(f[1], "--")] {
			t.Errorf("docs/migrating.md names %s, not a flag of celery_exporter", f[1])
		}
	}
	for _, v := range regexp.MustCompile(`CELERY_EXPORTER_[A-Z0-9_]*[A-Z0-9]`).FindAllString(doc, -1) {
		if !envars[v] {
			t.Errorf("docs/migrating.md names %s, not a variable of celery_exporter", v)
		}
	}
	// Our metric names there are the README's (old-only and compatibility names aside).
	old := map[string]bool{}
	for _, m := range oldExporterMetrics {
		old[m] = true
	}
	for _, m := range regexp.MustCompile("`(celery_[a-z_]*[a-z])`").FindAllStringSubmatch(doc, -1) {
		name := m[1]
		if old[name] || strings.HasPrefix(name, "celery_task_runtime_") || strings.HasPrefix(name, "celery_task_queue_wait_time_") ||
			name == "celery_worker_prefetch_count" {
			continue
		}
		if base := regexp.MustCompile(`_(bucket|sum|count)$`).ReplaceAllString(name, ""); !strings.Contains(readme, name) && !strings.Contains(readme, "`"+base+"`") {
			t.Errorf("docs/migrating.md names %s, which the README's metric reference does not", name)
		}
	}
}
