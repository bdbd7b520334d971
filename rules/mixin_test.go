package rules_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
	"github.com/celery-exporter/celery_exporter/rules/bundle/bundletest"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

type mixinOut struct {
	Alerts     struct{ Groups []map[string]any } `json:"alerts"`
	Rules      struct{ Groups []map[string]any } `json:"rules"`
	Dashboards map[string]any                    `json:"dashboards"`
	Selector   string                            `json:"selector"`
}

// evalMixin evaluates mixin.libsonnet with go-jsonnet, the _config overrides given as jsonnet.
func evalMixin(t *testing.T, jsonnet, overrides string) mixinOut {
	t.Helper()
	code := `local m = (import "mixin.libsonnet") + { _config+:: ` + overrides + ` };
{ alerts: m.prometheusAlerts, rules: m.prometheusRules, dashboards: m.grafanaDashboards, selector: m._config.renderedSelector }`
	cmd := exec.Command(jsonnet, "-J", ".", "-e", code)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("jsonnet: %v\n%s", err, out)
	}
	var m mixinOut
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("jsonnet output: %v", err)
	}
	return m
}

// TestMixinMatchesRenderedFiles evaluates the mixin with its default _config: its recording and
// alerting groups are, in order, exactly the rendered rule file's, and its dashboards exactly
// the rendered dashboards/*.json; its selector is rules/config.yaml's.
func TestMixinMatchesRenderedFiles(t *testing.T) {
	jsonnet := harness.GoTool(t, "jsonnet")
	m := evalMixin(t, jsonnet, "{}")

	b, err := os.ReadFile(filepath.Join(root, "rules/celery.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rf struct{ Groups []any }
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatal(err)
	}
	got := bundletest.AsJSON(t, append(append([]map[string]any{}, m.Rules.Groups...), m.Alerts.Groups...))
	if want := bundletest.AsJSON(t, rf.Groups); !reflect.DeepEqual(got, want) {
		t.Errorf("prometheusRules.groups + prometheusAlerts.groups differ from rules/celery.rules.yml")
	}
	files, _ := filepath.Glob(filepath.Join(root, "dashboards", "*.json"))
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var want any
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(bundletest.AsJSON(t, m.Dashboards[filepath.Base(f)]), want) {
			t.Errorf("grafanaDashboards[%q] differs from dashboards/%s", filepath.Base(f), filepath.Base(f))
		}
	}
	var keys []string
	for k := range m.Dashboards {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if len(names) == 0 || !slices.Equal(keys, names) {
		t.Errorf("grafanaDashboards has %v, dashboards/ has %v", keys, names)
	}
	if cfg := loadSeedConfig(t); m.Selector != cfg.Selector {
		t.Errorf("mixin renderedSelector %q, rules/config.yaml selector %q", m.Selector, cfg.Selector)
	}
}

// TestMixinOverrides: _config's selector reaches every rule, an alert's severity, `for` and
// labels are set, a disabled alert is gone, the others are untouched.
func TestMixinOverrides(t *testing.T) {
	jsonnet := harness.GoTool(t, "jsonnet")
	def := evalMixin(t, jsonnet, "{}")
	m := evalMixin(t, jsonnet, `{
  selector: 'job="shop", namespace="prod"',
  alertLabels: { team: 'payments' },
  alerts+: {
    CeleryTaskSlow: { severity: 'critical', 'for': '20m', labels: { tier: 'backend' } },
    CeleryWorkerHighMemory: { enabled: false },
  },
}`)
	const newSel = `job="shop", namespace="prod"`
	// count returns the alerts by name and how many rules carry the default and the new selector.
	count := func(o mixinOut) (alerts map[string]map[string]any, oldSel, withNew int) {
		alerts = map[string]map[string]any{}
		for _, g := range append(append([]map[string]any{}, o.Rules.Groups...), o.Alerts.Groups...) {
			for _, r := range g["rules"].([]any) {
				r := r.(map[string]any)
				expr := r["expr"].(string)
				if strings.Contains(expr, def.Selector) {
					oldSel++
				}
				if strings.Contains(expr, newSel) {
					withNew++
				}
				if a, ok := r["alert"].(string); ok {
					alerts[a] = r
				}
			}
		}
		return alerts, oldSel, withNew
	}
	defAlerts, defSel, _ := count(def)
	alerts, left, withNew := count(m)
	if defSel == 0 || left != 0 || withNew != defSel {
		t.Errorf("selector: %d rules carry the default; after the override %d still do and %d carry the new one", defSel, left, withNew)
	}
	if _, ok := alerts["CeleryWorkerHighMemory"]; ok || len(alerts) != len(defAlerts)-1 {
		t.Errorf("disabled alert still there, or others gone: %d alerts, default %d", len(alerts), len(defAlerts))
	}
	slow := alerts["CeleryTaskSlow"]
	labels := slow["labels"].(map[string]any)
	if slow["for"] != "20m" || labels["severity"] != "critical" || labels["tier"] != "backend" || labels["team"] != "payments" {
		t.Errorf("CeleryTaskSlow overrides not applied: for %v, labels %v", slow["for"], labels)
	}
	for name, a := range alerts {
		if name == "CeleryTaskSlow" {
			continue
		}
		d := defAlerts[name]
		if a["for"] != d["for"] || a["labels"].(map[string]any)["severity"] != d["labels"].(map[string]any)["severity"] {
			t.Errorf("%s changed without an override", name)
		}
	}
}

// TestMixinMatchesRender: each _config setting that needs no render gives exactly the rule groups
// a render with the same setting gives (ignore lists, aggregation labels, selector), so a jsonnet
// user gets what rules/config.yaml's user gets.
func TestMixinMatchesRender(t *testing.T) {
	jsonnet := harness.GoTool(t, "jsonnet")
	for _, tc := range []struct {
		name      string
		overrides string
		apply     func(*bundle.Config)
	}{
		{"ignore lists", `{ ignoreTasks: ['refresh_rates', 'billing.tasks.sync_ledger'], ignoreQueues: ['reports', 'bulk.low'] }`,
			func(c *bundle.Config) {
				c.Tasks.Ignore = []string{"refresh_rates", "billing.tasks.sync_ledger"}
				c.Queues.Ignore = []string{"reports", "bulk.low"}
			}},
		{"namespace", `{ aggregationLabels: ['namespace', 'job'] }`,
			func(c *bundle.Config) { c.AggregationLabels = []string{"namespace", "job"} }},
		{"everything", `{ selector: 'job="shop"', aggregationLabels: ['cluster', 'namespace', 'job'], ignoreTasks: ['refresh_rates'], ignoreQueues: ['reports'] }`,
			func(c *bundle.Config) {
				c.Selector = `job="shop"`
				c.AggregationLabels = []string{"cluster", "namespace", "job"}
				c.Tasks.Ignore = []string{"refresh_rates"}
				c.Queues.Ignore = []string{"reports"}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := loadSeedConfig(t)
			tc.apply(cfg)
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			files, err := cfg.Files()
			if err != nil {
				t.Fatal(err)
			}
			var rf struct{ Groups []map[string]any }
			if err := yaml.Unmarshal(files[bundle.RulesFile], &rf); err != nil {
				t.Fatal(err)
			}
			m := evalMixin(t, jsonnet, tc.overrides)
			got := append(append([]map[string]any{}, m.Rules.Groups...), m.Alerts.Groups...)
			if len(got) != len(rf.Groups) {
				t.Fatalf("mixin has %d groups, the render %d", len(got), len(rf.Groups))
			}
			for i := range got {
				g, w := bundletest.AsJSON(t, got[i]), bundletest.AsJSON(t, rf.Groups[i])
				if reflect.DeepEqual(g, w) {
					continue
				}
				gr, wr := g.(map[string]any)["rules"].([]any), w.(map[string]any)["rules"].([]any)
				for j := range min(len(gr), len(wr)) {
					if !reflect.DeepEqual(gr[j], wr[j]) {
						gj, _ := json.MarshalIndent(gr[j], "", " ")
						wj, _ := json.MarshalIndent(wr[j], "", " ")
						t.Errorf("group %v rule %d:\nmixin:  %s\nrender: %s", rf.Groups[i]["name"], j, gj, wj)
					}
				}
				if len(gr) != len(wr) {
					t.Errorf("group %v: mixin %d rules, render %d", rf.Groups[i]["name"], len(gr), len(wr))
				}
			}
		})
	}
}

// TestMixinReadsAnotherRender points the mixin at a render of another config (the payments
// example, app alerts and all), as the mixin's header shows: its output is that render.
func TestMixinReadsAnotherRender(t *testing.T) {
	jsonnet := harness.GoTool(t, "jsonnet")
	cfg, err := bundle.LoadConfig(filepath.Join(root, "rules", "examples", "payments", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir, files := writeRender(t, cfg)
	var dash []string
	for _, d := range bundle.Dashboards() {
		dash = append(dash, fmt.Sprintf("%q: importstr %q", d.File(), filepath.Join(dir, bundle.DashboardsDir, d.File())))
	}
	m := evalMixin(t, jsonnet, fmt.Sprintf(`{ renderedSelector: %q, rulesYAML: importstr %q, dashboardsJSON: { %s } }`,
		cfg.Selector, filepath.Join(dir, bundle.RulesFile), strings.Join(dash, ", ")))
	var rf struct{ Groups []any }
	if err := yaml.Unmarshal(files[bundle.RulesFile], &rf); err != nil {
		t.Fatal(err)
	}
	if got := bundletest.AsJSON(t, append(append([]map[string]any{}, m.Rules.Groups...), m.Alerts.Groups...)); !reflect.DeepEqual(got, bundletest.AsJSON(t, rf.Groups)) {
		t.Errorf("the mixin's groups differ from the payments render's")
	}
	for _, d := range bundle.Dashboards() {
		var want any
		if err := json.Unmarshal(files[bundle.DashboardsDir+"/"+d.File()], &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(bundletest.AsJSON(t, m.Dashboards[d.File()]), want) {
			t.Errorf("grafanaDashboards[%q] differs from the payments render's", d.File())
		}
	}
	if m.Selector != cfg.Selector {
		t.Errorf("renderedSelector %q", m.Selector)
	}
}
