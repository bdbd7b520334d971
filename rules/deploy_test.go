package rules_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

const alertmanagerFile = "deploy/alertmanager/alertmanager.yml"

func TestAlertmanagerConfigIsValid(t *testing.T) {
	harness.Require(t, "amtool")
	out, err := runTool(t, "amtool", "check-config", alertmanagerFile)
	if err != nil {
		t.Fatalf("amtool check-config: %v\n%s", err, out)
	}
	if !strings.Contains(out, "SUCCESS") || !strings.Contains(out, "2 receivers") {
		t.Errorf("unexpected amtool output:\n%s", out)
	}
}

// TestAlertmanagerRoutesEveryAlert proves with amtool where each alert of the rule file goes:
// critical to the on-call receiver, warning to chat.
func TestAlertmanagerRoutesEveryAlert(t *testing.T) {
	harness.Require(t, "amtool")
	want := map[string]string{"critical": "oncall", "warning": "chat"}
	rf := readRuleFile(t, filepath.Join(root, bundle.RulesFile))
	alerts := alertsByName(rf)
	for _, name := range bundle.AlertNames() {
		r := alerts[name]
		sev := r.Labels["severity"]
		t.Run(name, func(t *testing.T) {
			out, err := runTool(t, "amtool", "config", "routes", "test", "--config.file="+alertmanagerFile,
				"--verify.receivers="+want[sev], "alertname="+name, "severity="+sev, "job=celery", "queue_name=chat")
			if err != nil {
				t.Errorf("%s (severity %s) does not route to %s: %v\n%s", name, sev, want[sev], err, out)
			}
		})
	}
	// The checks above must be able to fail: a warning never reaches on-call.
	out, err := runTool(t, "amtool", "config", "routes", "test", "--config.file="+alertmanagerFile,
		"--verify.receivers=oncall", "alertname=CeleryQueueBacklog", "severity=warning")
	if err == nil {
		t.Errorf("a warning routed to oncall:\n%s", out)
	}
}

type amMatcher struct {
	label, op, value string
}

func (m amMatcher) matches(labels map[string]string) bool {
	v := labels[m.label]
	switch m.op {
	case "=":
		return v == m.value
	case "!=":
		return v != m.value
	case "=~":
		return regexp.MustCompile("^(?:" + m.value + ")$").MatchString(v)
	case "!~":
		return !regexp.MustCompile("^(?:" + m.value + ")$").MatchString(v)
	}
	return false
}

var amMatcherRE = regexp.MustCompile(`^(\w+)(=~|!~|!=|=)"(.*)"$`)

func parseMatchers(t *testing.T, ms []string) []amMatcher {
	t.Helper()
	var out []amMatcher
	for _, m := range ms {
		p := amMatcherRE.FindStringSubmatch(m)
		if p == nil {
			t.Fatalf("matcher %q not in the form label<op>\"value\"", m)
		}
		out = append(out, amMatcher{p[1], p[2], p[3]})
	}
	return out
}

func matchAll(ms []amMatcher, labels map[string]string) bool {
	for _, m := range ms {
		if !m.matches(labels) {
			return false
		}
	}
	return true
}

// TestAlertmanagerInhibitsBelowOutages checks that a broker or exporter outage silences every
// other alert of the bundle for the same job, and nothing else.
func TestAlertmanagerInhibitsBelowOutages(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, alertmanagerFile))
	if err != nil {
		t.Fatal(err)
	}
	var am struct {
		Inhibit []struct {
			Source []string `yaml:"source_matchers"`
			Target []string `yaml:"target_matchers"`
			Equal  []string `yaml:"equal"`
		} `yaml:"inhibit_rules"`
	}
	if err := yaml.Unmarshal(b, &am); err != nil {
		t.Fatal(err)
	}
	inhibited := func(source, target string) bool {
		for _, r := range am.Inhibit {
			if matchAll(parseMatchers(t, r.Source), map[string]string{"alertname": source}) &&
				matchAll(parseMatchers(t, r.Target), map[string]string{"alertname": target}) {
				if !slices.Contains(r.Equal, "job") {
					t.Errorf("inhibit rule %v does not require the same job", r.Source)
				}
				return true
			}
		}
		return false
	}
	for _, target := range bundle.AlertNames() {
		if got, want := inhibited("CeleryExporterDown", target), target != "CeleryExporterDown"; got != want {
			t.Errorf("CeleryExporterDown inhibits %s: %v, want %v", target, got, want)
		}
		want := target != "CeleryExporterDown" && target != "CeleryBrokerUnreachable"
		if got := inhibited("CeleryBrokerUnreachable", target); got != want {
			t.Errorf("CeleryBrokerUnreachable inhibits %s: %v, want %v", target, got, want)
		}
	}
	if !inhibited("CeleryQueueBacklogCritical", "CeleryQueueBacklog") || inhibited("CeleryQueueBacklog", "CeleryQueueBacklogCritical") {
		t.Error("a critical backlog must silence the warning of the same queue, not the other way round")
	}
	if inhibited("CeleryWorkersBelowExpected", "CeleryQueueBacklog") {
		t.Error("only outages inhibit other alerts")
	}
}

func TestAlertmanagerSecretsAndGrouping(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, alertmanagerFile))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, field := range []string{"routing_key_file:", "api_url_file:", "credentials_file:"} {
		if !strings.Contains(text, field) {
			t.Errorf("%s: no %s secret", alertmanagerFile, field)
		}
	}
	inline := regexp.MustCompile(`(?m)^\s*(routing_key|service_key|api_url|credentials|password|bearer_token):`)
	if m := inline.FindString(text); m != "" {
		t.Errorf("%s holds an inline secret: %q", alertmanagerFile, strings.TrimSpace(m))
	}
	var am struct {
		Route struct {
			GroupBy []string `yaml:"group_by"`
		} `yaml:"route"`
	}
	if err := yaml.Unmarshal(b, &am); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(am.Route.GroupBy, []string{"alertname", "queue_name"}) {
		t.Errorf("route groups by %v, want [alertname queue_name]", am.Route.GroupBy)
	}
}

func TestPrometheusConfig(t *testing.T) {
	const file = "deploy/prometheus/prometheus.yml"
	b, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		t.Fatal(err)
	}
	var pc struct {
		RuleFiles []string `yaml:"rule_files"`
		Alerting  struct {
			Alertmanagers []struct {
				StaticConfigs []struct {
					Targets []string `yaml:"targets"`
				} `yaml:"static_configs"`
			} `yaml:"alertmanagers"`
		} `yaml:"alerting"`
		Scrape []struct {
			Job           string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &pc); err != nil {
		t.Fatal(err)
	}
	if len(pc.Scrape) != 1 || pc.Scrape[0].Job != "celery" || !strings.HasSuffix(pc.Scrape[0].StaticConfigs[0].Targets[0], ":9808") {
		t.Errorf("scrape configs = %+v, want job celery on :9808", pc.Scrape)
	}
	if cfg := loadSeedConfig(t); cfg.Selector != `job="celery"` {
		t.Errorf("rules select %s but Prometheus scrapes job celery", cfg.Selector)
	}
	if !slices.Contains(pc.RuleFiles, "../../rules/celery.rules.yml") {
		t.Errorf("rule_files = %v, want the rendered rules", pc.RuleFiles)
	}
	if len(pc.Alerting.Alertmanagers) != 1 || pc.Alerting.Alertmanagers[0].StaticConfigs[0].Targets[0] != "localhost:9093" {
		t.Errorf("alertmanagers = %+v", pc.Alerting.Alertmanagers)
	}
	harness.Require(t, "promtool")
	out, err := runTool(t, "promtool", "check", "config", file)
	if err != nil || !strings.Contains(out, "SUCCESS: 1 rule files found") {
		t.Errorf("promtool check config: %v\n%s", err, out)
	}
}

func TestGrafanaProvisioning(t *testing.T) {
	var ds struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name, UID, Type, URL string
			IsDefault            bool `yaml:"isDefault"`
		} `yaml:"datasources"`
	}
	readYAML(t, "deploy/grafana/provisioning/datasources/prometheus.yaml", &ds)
	if ds.APIVersion != 1 || len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || !ds.Datasources[0].IsDefault {
		t.Errorf("datasources = %+v, want one default prometheus", ds)
	}
	var dp struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name, Folder, Type string
			Options            struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, "deploy/grafana/provisioning/dashboards/celery.yaml", &dp)
	if dp.APIVersion != 1 || len(dp.Providers) != 1 || dp.Providers[0].Type != "file" ||
		dp.Providers[0].Folder != "Celery" || !filepath.IsAbs(dp.Providers[0].Options.Path) {
		t.Errorf("dashboard providers = %+v", dp)
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
}
