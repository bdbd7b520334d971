package rules_test

import (
	"bytes"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
	"github.com/celery-exporter/celery_exporter/rules/bundle/bundletest"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

func TestRenderedFilesAreUpToDate(t *testing.T) {
	files, err := loadSeedConfig(t).Files()
	if err != nil {
		t.Fatal(err)
	}
	stale, err := bundle.Check(root, files)
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) > 0 {
		t.Errorf("committed files differ from a fresh render; run `make rules`:\n  %s", strings.Join(stale, "\n  "))
	}
	want := []string{
		"dashboards/celery-app-signals.json", "dashboards/celery-success-criteria.json",
		"dashboards/celery-tasks.json", "dashboards/celery-workers-queues.json",
		"deploy/kubernetes/base/dashboards/celery-app-signals.yaml",
		"deploy/kubernetes/base/dashboards/celery-success-criteria.yaml",
		"deploy/kubernetes/base/dashboards/celery-tasks.yaml",
		"deploy/kubernetes/base/dashboards/celery-workers-queues.yaml",
		"deploy/kubernetes/base/dashboards/kustomization.yaml",
		"deploy/kubernetes/base/prometheusrule.yaml",
		"rules/celery.rules.yml",
	}
	got := slices.Sorted(maps.Keys(files))
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rendered files = %v, want %v", got, want)
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	cfg := loadSeedConfig(t)
	a, err := cfg.Files()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		b, err := cfg.Files()
		if err != nil {
			t.Fatal(err)
		}
		for p := range a {
			if !bytes.Equal(a[p], b[p]) {
				t.Fatalf("render %d of %s differs from the first", i, p)
			}
		}
	}
}

// shortConfig is the kind of variant an end-to-end test renders: short `for`, short windows, a
// fast evaluation interval and another job.
func shortConfig(t *testing.T) *bundle.Config {
	t.Helper()
	seed := loadSeedConfig(t)
	cfg := seed.Shortened(bundle.Duration(5*time.Second), bundle.Duration(20*time.Second),
		bundle.Duration(time.Minute), bundle.Duration(30*time.Second))
	if seed.For["CeleryQueueBacklog"] != bundle.Duration(10*time.Minute) || seed.Windows[bundle.WindowTimeLimit] != bundle.Duration(15*time.Minute) {
		t.Fatal("Shortened modified the seed config")
	}
	cfg.Selector = `job="celery-e2e"`
	cfg.URLs.Grafana = "http://grafana.test:3000/"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("short config invalid: %v", err)
	}
	return cfg
}

func TestRenderVariantIntoTempDir(t *testing.T) {
	dir, files := writeRender(t, shortConfig(t))
	rf := readRuleFile(t, filepath.Join(dir, bundle.RulesFile))
	for _, g := range rf.Groups {
		if g.Interval != "5s" {
			t.Errorf("group %s interval %q, want 5s", g.Name, g.Interval)
		}
		for _, r := range g.Rules {
			if strings.Contains(r.Expr, `job="celery"`) {
				t.Errorf("%s%s still selects the seed job: %s", r.Record, r.Alert, r.Expr)
			}
			if strings.Contains(r.Expr, "15m") || strings.Contains(r.Expr, "10m") {
				t.Errorf("%s%s keeps a seed window: %s", r.Record, r.Alert, r.Expr)
			}
			bundletest.CheckExpr(t, "variant "+r.Record+r.Alert, r.Expr)
		}
	}
	alerts := alertsByName(rf)
	if got := alerts["CeleryQueueBacklog"].For; got != "20s" {
		t.Errorf("CeleryQueueBacklog for = %q, want 20s", got)
	}
	if got := alerts["ZepCallErrors"].For; got != "" {
		t.Errorf("ZepCallErrors for = %q, want none", got)
	}
	if got := alerts["CeleryEventsStale"].Expr; !strings.Contains(got, "> 30\n") {
		t.Errorf("CeleryEventsStale does not use the 30s threshold: %s", got)
	}
	if got := alerts["ZepCallErrors"].Expr; !strings.Contains(got, `celery_exporter_start_time_seconds{job="celery-e2e"} < 60`) || !strings.Contains(got, "[1m]") {
		t.Errorf("ZepCallErrors does not use the 1m window: %s", got)
	}
	if got := alerts["CeleryQueueBacklog"].Annotations["dashboard_url"]; !strings.HasPrefix(got, "http://grafana.test:3000/d/celery-workers-queues/") {
		t.Errorf("dashboard_url %q ignores the Grafana URL (or keeps its trailing slash)", got)
	}
	stale, err := bundle.Check(dir, files)
	if err != nil || len(stale) > 0 {
		t.Errorf("fresh variant reported stale: %v %v", stale, err)
	}

	harness.Require(t, "promtool")
	out, err := runTool(t, "promtool", "check", "rules", filepath.Join(dir, bundle.RulesFile))
	if err != nil {
		t.Errorf("promtool check rules on the variant: %v\n%s", err, out)
	}
}

func TestCheckListsStaleFiles(t *testing.T) {
	dir, files := writeRender(t, loadSeedConfig(t))
	edit := filepath.Join(dir, "rules", "celery.rules.yml")
	if err := os.WriteFile(edit, append(files[bundle.RulesFile], '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "dashboards", "celery-tasks.json")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dashboards", "old.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	stale, err := bundle.Check(dir, files)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"dashboards/celery-tasks.json (missing)",
		"dashboards/old.json (not generated any more)",
		"rules/celery.rules.yml (differs)",
	}
	if !reflect.DeepEqual(stale, want) {
		t.Errorf("stale = %q, want %q", stale, want)
	}
}

func TestConfigValidation(t *testing.T) {
	seed, err := os.ReadFile(filepath.Join(root, "rules", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, from, to, wantErr string
	}{
		{"typo in a field", "backlog_warning: 5", "backlog_warnin: 5", "field backlog_warnin not found"},
		{"bad duration", "stale_after: 5m", "stale_after: 5 minutes", `not a Prometheus duration: "5 minutes"`},
		{"unknown alert", "  CeleryTaskSlow: 10m", "  CeleryTaskSloww: 10m", "field for.CeleryTaskSlow: missing"},
		{"unknown alert under for", "  CeleryTaskSlow: 10m", "  CeleryTaskSlow: 10m\n  NoSuchAlert: 1m", "field for.NoSuchAlert: unknown alert"},
		{"expected queue ignored", "not an expected one.\n  ignore: []", "not an expected one.\n  ignore: [dlq]", `field queues.ignore: "dlq" is also expected`},
		{"empty ignored task", "Dashboards still show them.\n  ignore: []", "Dashboards still show them.\n  ignore: [\"\"]", "field tasks.ignore: empty task name"},
		{"aggregation without job", "aggregation_labels: [job]", "aggregation_labels: [namespace]", "field aggregation_labels: must hold job"},
		{"aggregation by instance", "aggregation_labels: [job]", "aggregation_labels: [job, instance]", `field aggregation_labels: "instance" is a label the rules aggregate by themselves`},
		{"unknown app alert kind", "kind: breaker_open", "kind: breaker_closed", "field app_alerts[1].kind: must be one of breaker_open, log_event, task_failures, app_value_above"},
		{"app alert without its breaker", "    breaker: zep\n", "", "field app_alerts[1].breaker: must name the breaker"},
		{"app alert without events", "    events: [zep_call_error]\n", "", "field app_alerts[0].events: must list at least one log event"},
		{"app alert with a field its kind ignores", "    events: [zep_call_error]\n", "    events: [zep_call_error]\n    threshold: 3\n", "field app_alerts[0].threshold: not read by kind log_event"},
		{"app alert without a task", "    task: extract_preferences_async\n", "", "field app_alerts[2].task: must name the task"},
		{"duplicate app alert", "alert: ZepMemoryDegraded", "alert: ZepCallErrors", "field app_alerts[1].alert: duplicate alert name ZepCallErrors"},
		{"app alert named like a built-in", "alert: ZepCallErrors", "alert: CeleryTaskSlow", "field app_alerts[0].alert: CeleryTaskSlow is a built-in alert"},
		{"app alert without severity", "    severity: warning\n    summary: The app", "    summary: The app", `field app_alerts[0].severity: must be a plain label value, got ""`},
		{"app alert without summary", "    summary: The app logged Zep call errors.\n", "", "field app_alerts[0]: summary and description must not be empty"},
		{"unknown window", "  time_limit: 15m", "  time_limits: 15m", "field windows.time_limit: must be a positive duration"},
		{"selector with braces", `selector: job="celery"`, `selector: '{job="celery"}'`, "field selector: label matchers without braces"},
		{"empty selector", `selector: job="celery"`, `selector: ""`, "field selector: must hold at least one label matcher"},
		{"critical below warning", "backlog_critical: 10", "backlog_critical: 4", "need 0 < backlog_warning <= backlog_critical, got 5 and 4"},
		{"ratio as percent", "failure_ratio: 0.05", "failure_ratio: 5", "field tasks.failure_ratio: must be in (0, 1), got 5"},
		{"no workers", "expected: 3", "expected: 0", "field workers.expected: must be at least 1, got 0"},
		{"severity in alert labels", "alert_labels: {}", "alert_labels: {severity: page}", `field alert_labels: "severity" is set by the rules`},
		{"instance in alert labels", "alert_labels: {}", "alert_labels: {instance: x}", `field alert_labels: "instance" is set by the rules`},
		{"relative runbook URL", "runbooks: https://github.com", "runbooks: docs", `field urls.runbooks: must be an http(s) URL`},
		{"override of an unknown alert", "alerts: {}", "alerts: {CeleryNope: {enabled: false}}", "field alerts.CeleryNope: not an alert of the bundle"},
		{"empty override", "alerts: {}", "alerts: {CeleryTaskSlow: {}}", "field alerts.CeleryTaskSlow: set enabled or severity"},
		{"bad severity", "alerts: {}", `alerts: {CeleryTaskSlow: {severity: "a b"}}`, "field alerts.CeleryTaskSlow.severity: must be a plain label value"},
		{"unknown memory source", "source: exporter", "source: ps", `field workers.memory.source: must be exporter or cadvisor, got "ps"`},
		{"stuck threshold", "stuck_seconds: 180", "stuck_seconds: 0", "field tasks.stuck_seconds: must be positive, got 0"},
		{"lost share as percent", "events_lost_ratio: 0.1", "events_lost_ratio: 10", "field tasks.events_lost_ratio: must be in (0, 1), got 10"},
	}
	// The cAdvisor settings are only checked when they are used.
	bad := bytes.Replace(seed, []byte("join_label: pod"), []byte("join_label: hostname"), 1)
	if _, err := bundle.ParseConfig(bad); err != nil {
		t.Errorf("cadvisor settings checked with source exporter: %v", err)
	}
	bad = bytes.Replace(bad, []byte("source: exporter"), []byte("source: cadvisor"), 1)
	bad = bytes.Replace(bad, []byte(`hostname_regex: '[^@]*@(.+)'`), []byte(`hostname_regex: '[^@]*@.+'`), 1)
	_, err = bundle.ParseConfig(bad)
	for _, want := range []string{"field workers.memory.cadvisor.hostname_regex: must be a regular expression with a capture group",
		"field workers.memory.cadvisor.join_label: must be a label name other than job and hostname"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("cadvisor config: error = %v, want one containing %q", err, want)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Contains(seed, []byte(tc.from)) {
				t.Fatalf("seed config lacks %q", tc.from)
			}
			_, err := bundle.ParseConfig(bytes.Replace(seed, []byte(tc.from), []byte(tc.to), 1))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	if _, err := bundle.ParseConfig(seed); err != nil {
		t.Errorf("seed config: %v", err)
	}
	if _, err := bundle.ParseConfig([]byte("selector: [")); err == nil {
		t.Error("broken YAML accepted")
	}
}

func TestDurations(t *testing.T) {
	for _, tc := range []struct {
		in, out string
		err     bool
	}{
		{"0", "0s", false}, {"", "0s", false}, {"0s", "0s", false}, {"30s", "30s", false},
		{"90s", "1m30s", false}, {"1h30m", "1h30m", false}, {"2d", "2d", false}, {"500ms", "500ms", false},
		{"1w", "1w", false}, {"5", "", true}, {"5 m", "", true}, {"-1m", "", true}, {"1m1h", "", true},
		{"99999999999999999999y", "", true}, {"293y", "", true},
		// Prometheus' own form: weeks only when whole.
		{"14d", "2w", false}, {"15d", "15d", false}, {"90m", "1h30m", false},
	} {
		d, err := bundle.ParseDuration(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("ParseDuration(%q) error = %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if !tc.err && d.String() != tc.out {
			t.Errorf("ParseDuration(%q) = %s, want %s", tc.in, d, tc.out)
		}
	}
}

// TestMemoryFromCAdvisor renders the bundle with workers.memory.source cadvisor and runs
// rules/tests/variants/memory_cadvisor.yml against it: the memory criterion then reads the worker
// container's working set (pool children included), joined to the worker by pod name.
func TestMemoryFromCAdvisor(t *testing.T) {
	cfg := loadSeedConfig(t)
	cfg.Workers.Memory.Source = bundle.MemoryCAdvisor
	promtoolVariant(t, cfg, filepath.Join(root, "rules", "tests", "variants", "memory_cadvisor.yml"))
}

// TestNamespacesStayApart renders the bundle with aggregation_labels [namespace, job] and runs
// rules/tests/variants/namespaces.yml: two apps with the same job in two namespaces keep their
// own recorded series and alerts.
func TestNamespacesStayApart(t *testing.T) {
	cfg := loadSeedConfig(t)
	cfg.AggregationLabels = []string{"namespace", "job"}
	promtoolVariant(t, cfg, filepath.Join(root, "rules", "tests", "variants", "namespaces.yml"))
}

// promtoolVariant validates cfg, renders its rule file into a temporary directory as
// celery.rules.yml, checks every expression and runs promtool test rules with the test file.
func promtoolVariant(t *testing.T, cfg *bundle.Config, testFile string) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	files, err := cfg.Files()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "celery.rules.yml"), files[bundle.RulesFile], 0o644); err != nil {
		t.Fatal(err)
	}
	rf := readRuleFile(t, filepath.Join(dir, "celery.rules.yml"))
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			bundletest.CheckExpr(t, filepath.Base(testFile)+" variant "+r.Record+r.Alert, r.Expr)
		}
	}
	test, err := os.ReadFile(testFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "test.yml"), test, 0o644); err != nil {
		t.Fatal(err)
	}
	harness.Require(t, "promtool")
	cmd := exec.Command("promtool", "test", "rules", "test.yml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Errorf("promtool test rules (%s): %v\n%s", filepath.Base(testFile), err, out)
	}
}

// TestAlertOverrides: a built-in alert can be turned off (it leaves the render, and a group left
// empty goes too) or given another severity; the render stays valid for promtool.
func TestAlertOverrides(t *testing.T) {
	cfg := loadSeedConfig(t)
	off, on := false, true
	groupOf := map[string]string{}
	for _, g := range cfg.RuleGroups() {
		for _, r := range g.Rules {
			groupOf[r.Alert] = g.Name
		}
	}
	var exporterGroup []string // every alert of CeleryExporterDown's group, all turned off
	for a, g := range groupOf {
		if g == groupOf["CeleryExporterDown"] && a != "" {
			exporterGroup = append(exporterGroup, a)
		}
	}
	cfg.Alerts = map[string]bundle.AlertOverride{
		"CeleryTaskSlow":     {Enabled: &off},
		"CeleryQueueBacklog": {Severity: "critical"},
		"CeleryWorkerLost":   {Enabled: &on, Severity: "page"},
	}
	for _, a := range exporterGroup {
		cfg.Alerts[a] = bundle.AlertOverride{Enabled: &off}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	got := map[string]bundle.Rule{}
	groups := map[string]bool{}
	for _, g := range cfg.RuleGroups() {
		groups[g.Name] = true
		for _, r := range g.Rules {
			if r.Alert != "" {
				got[r.Alert] = r
			}
		}
	}
	if _, ok := got["CeleryTaskSlow"]; ok {
		t.Error("CeleryTaskSlow is turned off but rendered")
	}
	if groups[groupOf["CeleryExporterDown"]] {
		t.Errorf("group %s has every alert turned off but is rendered", groupOf["CeleryExporterDown"])
	}
	if s := got["CeleryQueueBacklog"].Labels["severity"]; s != "critical" {
		t.Errorf("CeleryQueueBacklog severity %q, want critical", s)
	}
	if s := got["CeleryWorkerLost"].Labels["severity"]; s != "page" {
		t.Errorf("CeleryWorkerLost severity %q, want page", s)
	}
	if s := got["CeleryQueueBacklogCritical"].Labels["severity"]; s != "critical" || len(got) != len(loadSeedConfig(t).AlertNames())-1-len(exporterGroup) {
		t.Errorf("other alerts changed: %d rendered, backlog critical severity %q", len(got), s)
	}

	harness.Require(t, "promtool")
	files, err := cfg.Files()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "celery.rules.yml")
	if err := os.WriteFile(path, files[bundle.RulesFile], 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runTool(t, "promtool", "check", "rules", path); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}
