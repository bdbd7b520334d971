package rules_test

import (
	"bufio"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
	"github.com/celery-exporter/celery_exporter/rules/bundle/bundletest"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

// issueAlerts is the alert table with the seed's defaults: name, severity, `for`, and
// what the expression must contain (thresholds, selectors, windows).
var issueAlerts = []struct {
	name, severity, forDur string
	exprHas                []string
}{
	{"CeleryExporterDown", "critical", "2m", []string{`up{job="celery"} == 0`, `max by (job) (up{job="celery"}) == 0`, `absent(up{job="celery"})`}},
	{"CeleryBrokerUnreachable", "critical", "2m", []string{`celery_up{job="celery"}) == 0`}},
	{"CeleryEventsStale", "warning", "1m", []string{"celery:exporter_last_event_age:seconds > 300", `up{job="celery"} == 1`}},
	{"CeleryWorkersBelowExpected", "critical", "2m", []string{"celery:workers_up:count < 3", `absent(up{job="celery"})`}},
	{"CeleryWorkerUnresponsive", "critical", "5m", []string{"celery:worker_up:max == 1", "celery_worker_ping_ok", ") == 0"}},
	{"CeleryQueueWithoutConsumers", "critical", "5m", []string{"celery:queue_length:max > 0", `queue_name=~"chat|default|background|notifications|dlq"`, "celery:queue_consumers:max == 0"}},
	{"CeleryQueueBacklog", "warning", "10m", []string{"celery:queue_length:max >= 5"}},
	{"CeleryQueueBacklogCritical", "critical", "15m", []string{"celery:queue_length:max >= 10"}},
	{"CeleryTaskFailureRateHigh", "warning", "", []string{"celery:task_failure:ratio > 0.05"}},
	{"CeleryTaskTimeLimitExceeded", "warning", "", []string{`exception=~"SoftTimeLimitExceeded|TimeLimitExceeded"`, "[15m]",
		`time() - celery_exporter_start_time_seconds{job="celery"} < 900`, `sum_over_time(up{job="celery"}[15m])`}},
	{"CeleryWorkerLost", "warning", "", []string{`exception="WorkerLostError"`, "celery_task_rejected_total", "[15m]"}},
	{"CeleryTaskSlow", "warning", "10m", []string{"celery:task_runtime_seconds:p95 > 120"}},
	{"CeleryTaskEventsDisabled", "warning", "10m", []string{"celery_worker_task_events_enabled", ") == 0", "celery:worker_up:max == 1"}},
	{"CeleryWorkerHighMemory", "warning", "15m", []string{"celery:worker_memory_bytes:max > 524288000"}},
	{"ZepCallErrors", "warning", "", []string{`event="zep_call_error"`, "[15m]"}},
	{"ZepMemoryDegraded", "warning", "1m", []string{`celery:breaker_open:max{breaker="zep"} == 1`}},
	{"PreferenceExtractionFailing", "warning", "", []string{`name=~"(.+[.])?extract_preferences_async"`, `event="preferences_extract_failed"`, "[15m]"}},
	// Watch the watchers, stuck tasks, lost task events.
	{"CeleryExporterCollectorFailing", "warning", "5m", []string{`celery_exporter_collector_success{job="celery"} == 0`}},
	{"CeleryExporterConfigReloadFailed", "warning", "", []string{`celery_exporter_config_last_reload_successful{job="celery"} == 0`}},
	{"CeleryExporterEventsDropped", "warning", "", []string{`reason="buffer_full"`, "celery_exporter_label_overflow_total", "[15m]"}},
	{"CeleryLogFilesMissing", "warning", "5m", []string{"celery_log_files_watched", ") == 0", "celery_log_events_total", "timestamp(celery_log_last_poll_timestamp_seconds", "increase(celery_log_read_errors_total"}},
	{"CeleryBreakerUnreadable", "warning", "5m", []string{`max by (job, breaker) (celery_breaker_read_ok{job="celery"}) == 0`}},
	{"CeleryTaskEventsLost", "warning", "5m", []string{"celery:task_events_lost:ratio > 0.1", "celery_worker_task_events_enabled"}},
	{"CeleryTaskStuck", "warning", "", []string{`max by (job, queue_name, name) (celery_task_running_oldest_age_seconds{job="celery"}) > 180`}},
}

// TestCountersNeedNoHistory: the first-event alerts may not depend on Prometheus having scraped
// the same instance a whole window ago (with `up offset W`, the first events after a
// Prometheus start or a pod restart never paged). Behaviour: rules/tests/first_events.yml.
func TestCountersNeedNoHistory(t *testing.T) {
	rf := readRuleFile(t, filepath.Join(root, bundle.RulesFile))
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if strings.Contains(r.Expr, " offset ") {
				t.Errorf("%s%s reads history with offset:\n%s", r.Record, r.Alert, r.Expr)
			}
		}
	}
}

func TestAlertsMatchTheIssueTable(t *testing.T) {
	rf := readRuleFile(t, filepath.Join(root, bundle.RulesFile))
	alerts := alertsByName(rf)
	if len(alerts) != len(issueAlerts) {
		t.Errorf("rule file has %d alerts, the issue table %d", len(alerts), len(issueAlerts))
	}
	for _, want := range issueAlerts {
		t.Run(want.name, func(t *testing.T) {
			got, ok := alerts[want.name]
			if !ok {
				t.Fatalf("alert missing from %s", bundle.RulesFile)
			}
			if got.Labels["severity"] != want.severity {
				t.Errorf("severity = %q, want %q", got.Labels["severity"], want.severity)
			}
			if got.For != want.forDur {
				t.Errorf("for = %q, want %q", got.For, want.forDur)
			}
			for _, s := range want.exprHas {
				if !strings.Contains(got.Expr, s) {
					t.Errorf("expr lacks %q:\n%s", s, got.Expr)
				}
			}
		})
	}
}

func TestEveryAlertHasLabelsAndAnnotations(t *testing.T) {
	cfg := loadSeedConfig(t)
	anchors := runbookAnchors(t)
	rf := readRuleFile(t, filepath.Join(root, bundle.RulesFile))
	var dashPaths []string
	for _, d := range bundle.Dashboards() {
		dashPaths = append(dashPaths, cfg.DashboardURL(d)+"?")
	}
	for name, r := range alertsByName(rf) {
		t.Run(name, func(t *testing.T) {
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("severity %q, want critical or warning", s)
			}
			for _, a := range []string{"summary", "description", "runbook_url", "dashboard_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("annotation %s missing", a)
				}
			}
			if len(r.Annotations) != 4 {
				t.Errorf("annotations %v, want exactly summary, description, runbook_url, dashboard_url", slices.Sorted(maps.Keys(r.Annotations)))
			}
			if d := r.Annotations["description"]; !strings.Contains(d, "{{ $value") && !strings.Contains(d, "{{ $labels.") {
				t.Errorf("description shows neither the value nor labels: %q", d)
			}
			wantRunbook := cfg.URLs.Runbooks + "#" + strings.ToLower(name)
			if r.Annotations["runbook_url"] != wantRunbook {
				t.Errorf("runbook_url = %q, want %q", r.Annotations["runbook_url"], wantRunbook)
			}
			if !anchors[strings.ToLower(name)] {
				t.Errorf("docs/runbooks.md has no section %q (anchor #%s)", name, strings.ToLower(name))
			}
			du := r.Annotations["dashboard_url"]
			if !slices.ContainsFunc(dashPaths, func(p string) bool { return strings.HasPrefix(du, p) }) {
				t.Errorf("dashboard_url %q points at none of the dashboards %v", du, dashPaths)
			}
			if !strings.Contains(du, "var-job={{ $labels.job | urlquery }}") {
				t.Errorf("dashboard_url %q does not select the alert's job", du)
			}
		})
	}
}

// runbookAnchors are the GitHub anchors of the level-2 headings of docs/runbooks.md.
func runbookAnchors(t *testing.T) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "docs", "runbooks.md"))
	if err != nil {
		t.Fatalf("open runbooks: %v", err)
	}
	defer f.Close()
	punct := regexp.MustCompile(`[^a-z0-9 _-]`)
	anchors := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if h, ok := strings.CutPrefix(sc.Text(), "## "); ok {
			anchors[strings.ReplaceAll(punct.ReplaceAllString(strings.ToLower(strings.TrimSpace(h)), ""), " ", "-")] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read runbooks: %v", err)
	}
	return anchors
}

func TestEveryExpressionParsesAndFollowsTheContract(t *testing.T) {
	for _, path := range []string{bundle.RulesFile} {
		rf := readRuleFile(t, filepath.Join(root, path))
		n := 0
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				bundletest.CheckExpr(t, path+": "+r.Record+r.Alert, r.Expr)
				n++
			}
		}
		if n != len(loadSeedConfig(t).AlertNames())+len(bundle.RecordedMetrics) {
			t.Errorf("%s: %d rules, want %d alerts and %d recording rules", path, n, len(loadSeedConfig(t).AlertNames()), len(bundle.RecordedMetrics))
		}
	}
}

func TestRecordingRulesKeepJob(t *testing.T) {
	// Alerts, inhibition (equal: [job]) and the dashboards' $job filter need `job` on every
	// recorded series: every aggregation in a recording rule must keep it.
	rf := readRuleFile(t, filepath.Join(root, bundle.RulesFile))
	by := regexp.MustCompile(`(?:sum|max|min|count) by \(([^)]*)\)`)
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record == "" {
				continue
			}
			for _, m := range by.FindAllStringSubmatch(r.Expr, -1) {
				if !slices.Contains(strings.Split(m[1], ", "), "job") {
					t.Errorf("%s aggregates by (%s), dropping job", r.Record, m[1])
				}
			}
		}
	}
}

func TestPrometheusRuleHasTheSameGroups(t *testing.T) {
	rf := readRuleFile(t, filepath.Join(root, bundle.RulesFile))
	b, err := os.ReadFile(filepath.Join(root, bundle.PrometheusRuleFile))
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name   string            `yaml:"name"`
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Spec ruleFile `yaml:"spec"`
	}
	if err := yaml.Unmarshal(b, &pr); err != nil {
		t.Fatalf("decode PrometheusRule: %v", err)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" || pr.Metadata.Name != "celery-exporter" {
		t.Errorf("header = %s %s %s, want monitoring.coreos.com/v1 PrometheusRule celery-exporter", pr.APIVersion, pr.Kind, pr.Metadata.Name)
	}
	if pr.Metadata.Labels["app.kubernetes.io/name"] != "celery-exporter" {
		t.Errorf("labels = %v", pr.Metadata.Labels)
	}
	if !reflect.DeepEqual(pr.Spec.Groups, rf.Groups) {
		t.Errorf("PrometheusRule groups differ from %s", bundle.RulesFile)
	}
}

func TestPromtoolCheckRules(t *testing.T) {
	harness.Require(t, "promtool")
	out, err := runTool(t, "promtool", "check", "rules", bundle.RulesFile)
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	want := len(loadSeedConfig(t).AlertNames()) + len(bundle.RecordedMetrics)
	if !strings.Contains(out, "SUCCESS: "+strconv.Itoa(want)+" rules found") {
		t.Errorf("promtool found a different number of rules than %d:\n%s", want, out)
	}
}

func TestPromtoolUnitTests(t *testing.T) {
	harness.Require(t, "promtool")
	files, err := filepath.Glob(filepath.Join(root, "rules", "tests", "*.yml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no promtool tests found: %v", err)
	}
	args := []string{"test", "rules"}
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		args = append(args, rel)
	}
	out, err := runTool(t, "promtool", args...)
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	if got := strings.Count(out, "SUCCESS"); got != len(files) {
		t.Errorf("%d of %d test files succeeded:\n%s", got, len(files), out)
	}
}

// promtoolTests is the layout of a promtool unit test file, as far as coverage needs it.
type promtoolTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name      string `yaml:"name"`
		AlertTest []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `yaml:"exp_labels"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
		ExprTest []struct {
			Expr string `yaml:"expr"`
		} `yaml:"promql_expr_test"`
	} `yaml:"tests"`
}

func TestEveryRuleIsCoveredByPromtoolTests(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(root, "rules", "tests", "*.yml"))
	firing, quiet, recorded := map[string]int{}, map[string]int{}, map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var pt promtoolTests
		if err := yaml.Unmarshal(b, &pt); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !reflect.DeepEqual(pt.RuleFiles, []string{"../celery.rules.yml"}) {
			t.Errorf("%s tests %v, want the rendered ../celery.rules.yml", f, pt.RuleFiles)
		}
		for _, tc := range pt.Tests {
			for _, at := range tc.AlertTest {
				if len(at.ExpAlerts) == 0 {
					quiet[at.Alertname]++
					continue
				}
				firing[at.Alertname]++
				for _, a := range at.ExpAlerts {
					// Inhibition in Alertmanager matches on job: every alert must carry it.
					if a.ExpLabels["job"] == "" {
						t.Errorf("%s/%s: %s fires without a job label", filepath.Base(f), tc.Name, at.Alertname)
					}
				}
			}
			for _, et := range tc.ExprTest {
				recorded[strings.TrimSpace(et.Expr)]++
			}
		}
	}
	for _, a := range loadSeedConfig(t).AlertNames() {
		if firing[a] == 0 {
			t.Errorf("%s: no promtool case where it fires", a)
		}
		if quiet[a] == 0 {
			t.Errorf("%s: no promtool case where it stays quiet", a)
		}
	}
	for r := range bundle.RecordedMetrics {
		if recorded[r] == 0 {
			t.Errorf("recording rule %s: no promql_expr_test", r)
		}
	}
}

// pagesAfter is how long after its cause an alert pages with cfg: its `for`, plus the threshold
// for alerts whose threshold is itself a duration (CeleryEventsStale was once documented as
// 5m but pages after 6m).
func pagesAfter(cfg *bundle.Config, alert string) string {
	d := cfg.AlertFor(alert)
	switch alert {
	case "CeleryEventsStale":
		d += cfg.Events.StaleAfter
	case "CeleryTaskStuck":
		d += bundle.Duration(time.Duration(cfg.Tasks.StuckSeconds * float64(time.Second)))
	}
	if d == 0 {
		return "one evaluation"
	}
	return d.String()
}

// TestRunbookTableAgreesWithRules: docs/runbooks.md's table lists every alert once, with the
// delay the rules really page after, and every alert's section says when it is blind.
func TestRunbookTableAgreesWithRules(t *testing.T) {
	cfg := loadSeedConfig(t)
	b, err := os.ReadFile(filepath.Join(root, "docs", "runbooks.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	row := regexp.MustCompile("(?m)^\\| [^|]+ \\| `([A-Za-z]+)` \\| ([^|]+) \\| ([^|]+) \\| ([^|]+) \\|$")
	seen := map[string]int{}
	for _, m := range row.FindAllStringSubmatch(doc, -1) {
		alert, after := m[1], strings.TrimSpace(m[2])
		seen[alert]++
		if want := pagesAfter(cfg, alert); after != want {
			t.Errorf("runbook table: %s pages after %q, the rules say %q", alert, after, want)
		}
	}
	for _, a := range loadSeedConfig(t).AlertNames() {
		if seen[a] != 1 {
			t.Errorf("runbook table lists %s %d times, want once", a, seen[a])
		}
		start := strings.Index(doc, "\n## "+a+"\n")
		if start < 0 {
			continue // reported by TestEveryAlertHasLabelsAndAnnotations
		}
		section := doc[start+1:]
		if end := strings.Index(section, "\n## "); end >= 0 {
			section = section[:end]
		}
		if !strings.Contains(section, "**Blind when.**") {
			t.Errorf("runbook of %s does not say when it is blind (**Blind when.**)", a)
		}
	}
	if len(seen) != len(loadSeedConfig(t).AlertNames()) {
		t.Errorf("runbook table has %d alerts, the rules %d: %v", len(seen), len(loadSeedConfig(t).AlertNames()), seen)
	}
}
