package rules_test

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
)

// defaultAppWords are the default config's example app (\b: humanizePercentage holds "zeP"),
// which a second app's render must not hold.
var defaultAppWords = regexp.MustCompile(`(?i)\bzep|preference`)

// TestExamplePayments renders the second example app (rules/examples/payments) into a temporary
// directory: every file is free of the default config's example app, every expression parses,
// the disabled app alert is left out, and promtool proves each app alert kind with its tests.yml.
func TestExamplePayments(t *testing.T) {
	dir := filepath.Join(root, "rules", "examples", "payments")
	cfg, err := bundle.LoadConfig(filepath.Join(dir, "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := cfg.Files()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("nothing rendered")
	}
	for name, b := range files {
		if m := defaultAppWords.Find(b); m != nil {
			t.Errorf("%s holds %q of the default config's app", name, m)
		}
	}
	var alerts []string
	for _, g := range cfg.RuleGroups() {
		for _, r := range g.Rules {
			if r.Alert != "" {
				alerts = append(alerts, r.Alert)
			}
		}
	}
	for _, want := range []string{"StripeUnavailable", "PaymentWebhookFailed", "ChargeCardFailing", "PaymentRetryBacklog"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("app alert %s not rendered", want)
		}
	}
	for _, off := range []string{"ChargeCardDeclined", "CeleryTaskEventsLost"} {
		if slices.Contains(alerts, off) {
			t.Errorf("%s is turned off but rendered", off)
		}
	}
	if !slices.Equal(alerts, cfg.AlertNames()) {
		t.Errorf("rendered alerts %v, AlertNames %v", alerts, cfg.AlertNames())
	}
	promtoolVariant(t, cfg, filepath.Join(dir, "tests.yml"))

	tests, err := os.ReadFile(filepath.Join(dir, "tests.yml"))
	if err != nil {
		t.Fatal(err)
	}
	// Every app alert of the example has a case where it fires.
	for _, a := range []string{"StripeUnavailable", "PaymentWebhookFailed", "ChargeCardFailing", "PaymentRetryBacklog"} {
		if !bytes.Contains(tests, []byte("alertname: "+a+"\n        exp_alerts:\n          - exp_labels")) {
			t.Errorf("tests.yml: no case where %s fires", a)
		}
	}
}

// TestNoAppAlerts: a config without app alerts (nor app log events) renders, without the app group.
func TestNoAppAlerts(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "rules", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start, end := strings.Index(s, "\napp:\n"), strings.Index(s, "\n# Ranges of the rate/increase")
	if start < 0 || end < start {
		t.Fatal("rules/config.yaml: app and app_alerts sections not found")
	}
	cfg, err := bundle.ParseConfig([]byte(s[:start] + "\n" + s[end:]))
	if err != nil {
		t.Fatalf("config without app alerts: %v", err)
	}
	for _, g := range cfg.RuleGroups() {
		if g.Name == "celery.app" {
			t.Errorf("group celery.app rendered without app alerts: %v", g.Rules)
		}
	}
	if _, err := cfg.Files(); err != nil {
		t.Errorf("render without app alerts: %v", err)
	}
}

// TestExampleKubernetes renders the Kubernetes profile (rules/examples/kubernetes) and runs its
// tests.yml with promtool: two apps with the same job and the same worker pod name in two
// namespaces keep their own memory figures and alerts.
func TestExampleKubernetes(t *testing.T) {
	dir := filepath.Join(root, "rules", "examples", "kubernetes")
	cfg, err := bundle.LoadConfig(filepath.Join(dir, "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.AggregationLabels, []string{"namespace", "job"}) || cfg.Workers.Memory.Source != bundle.MemoryCAdvisor {
		t.Fatalf("the profile is aggregation_labels %v, memory source %s", cfg.AggregationLabels, cfg.Workers.Memory.Source)
	}
	promtoolVariant(t, cfg, filepath.Join(dir, "tests.yml"))
}
