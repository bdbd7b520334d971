package integration

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/rules/bundle"
	"github.com/celery-exporter/celery_exporter/rules/bundle/bundletest"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

// seedNames are the default config's example app: its Zep and preference names and its queues
// (chat, default, background, notifications, dlq) as a value, in a list or a matcher
// ("default" and "background" are also English and Grafana words: see notSeed).
var seedNames = regexp.MustCompile(`(?i)\bzep|preference|\bchat\b|\bnotifications\b|\bdlq\b|[=,"|]default\b|\bdefault[,|]|[=,"|]background\b|\bbackground[,|]`)

// notSeed is Grafana's stat colour mode, the one "background" that is no queue.
const notSeed = `"colorMode": "background"`

// TestExamplePaymentsDeploys deploys the second example app (rules/examples/payments) as a user
// would, without a line of the first app: its config rendered, then (1) the kustomize overlay
// rules/examples/payments built over a copy of deploy/kubernetes/base, and (2) the Helm chart
// with values.yaml, the render's values file (-helm-values) and the exporter config. Both
// outputs hold the render's rules and dashboards, the app's flags, job and exporter config, and
// none of the default config's names.
func TestExamplePaymentsDeploys(t *testing.T) {
	root := harness.ModuleRoot(t)
	helm := harness.GoTool(t, "helm")
	kustomize := harness.GoTool(t, "kustomize")
	example := filepath.Join(root, "rules", "examples", "payments")

	exporterCfg := readFile(t, example, "celery_exporter.yml")
	if _, err := config.Parse(exporterCfg, "celery_exporter.yml"); err != nil {
		t.Fatalf("the example's exporter config: %v", err)
	}

	// The overlay refers to the base as ../../../deploy/kubernetes/base and to render/: mirror
	// that layout in a temporary directory, so the test writes nothing into the repository.
	tmp := t.TempDir()
	overlay := filepath.Join(tmp, "rules", "examples", "payments")
	copyTree(t, filepath.Join(root, "deploy", "kubernetes", "base"), filepath.Join(tmp, "deploy", "kubernetes", "base"))
	for _, f := range []string{"kustomization.yaml", "celery_exporter.yml"} {
		copyTree(t, filepath.Join(example, f), filepath.Join(overlay, f))
	}
	cfg, err := bundle.LoadConfig(filepath.Join(example, "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := cfg.Files()
	if err != nil {
		t.Fatal(err)
	}
	if err := bundle.Write(filepath.Join(overlay, "render"), files); err != nil {
		t.Fatal(err)
	}
	values, err := bundle.HelmValues("rules/examples/payments/config.yaml", files)
	if err != nil {
		t.Fatal(err)
	}
	valuesFile := filepath.Join(tmp, "render-values.yaml")
	if err := os.WriteFile(valuesFile, values, 0o644); err != nil {
		t.Fatal(err)
	}

	run := func(name string, args ...string) []byte {
		t.Helper()
		return runIn(t, root, name, args...)
	}
	helmArgs := []string{"-f", filepath.Join(example, "values.yaml"), "-f", valuesFile,
		"--set-file", "config.content=" + filepath.Join(example, "celery_exporter.yml")}
	if lint := string(run(helm, append([]string{"lint", "--strict", chartDir}, helmArgs...)...)); !strings.Contains(lint, "0 chart(s) failed") {
		t.Errorf("helm lint:\n%s", lint)
	}
	outputs := map[string][]byte{
		"kustomize": run(kustomize, "build", overlay),
		"helm":      run(helm, append([]string{"template", "payments-celery", chartDir}, helmArgs...)...),
	}

	var wantRules any
	if err := yaml.Unmarshal(files[bundle.RulesFile], &wantRules); err != nil {
		t.Fatal(err)
	}
	for world, out := range outputs {
		if m := seedNames.FindAll([]byte(strings.ReplaceAll(string(out), notSeed, "")), 5); m != nil {
			t.Errorf("%s output holds the default config's app: %q", world, m)
		}
		objs := k8sObjects(t, world, out)
		var rules, dashboards, monitors int
		for key, o := range objs {
			spec, _ := o["spec"].(map[string]any)
			switch o["kind"] {
			case "PrometheusRule":
				rules++
				if !reflect.DeepEqual(bundletest.AsJSON(t, map[string]any{"groups": spec["groups"]}), bundletest.AsJSON(t, wantRules)) {
					t.Errorf("%s %s: groups differ from the render's rule file", world, key)
				}
			case "ConfigMap":
				data, _ := o["data"].(map[string]any)
				for file, v := range data {
					if file == "celery_exporter.yml" {
						if v != string(exporterCfg) {
							t.Errorf("%s %s: exporter config differs from the example's:\n%v", world, key, v)
						}
						continue
					}
					dashboards++
					if want := strings.TrimRight(string(files[bundle.DashboardsDir+"/"+file]), "\n"); v != want {
						t.Errorf("%s %s: dashboard %s differs from the render's", world, key, file)
					}
				}
			case "ServiceMonitor":
				monitors++
				b, _ := json.Marshal(spec)
				if !strings.Contains(string(b), `"replacement":"payments-celery","targetLabel":"job"`) {
					t.Errorf("%s %s: job not relabelled to payments-celery: %s", world, key, b)
				}
				keepsTenantLabels(t, world+" "+key, o)
			case "Deployment":
				b, _ := json.Marshal(spec)
				for _, want := range []string{"--celery.queues=payments,webhooks,reports", "--celery.default-queue=payments", `"name":"payments-celery-broker"`} {
					if !strings.Contains(string(b), want) {
						t.Errorf("%s %s: no %s", world, key, want)
					}
				}
			}
		}
		if rules != 1 || dashboards != len(bundle.Dashboards()) || monitors != 1 {
			t.Errorf("%s: %d PrometheusRules, %d dashboards, %d ServiceMonitors; want 1, %d, 1", world, rules, dashboards, monitors, len(bundle.Dashboards()))
		}
	}
}

// copyTree copies a file or a directory of regular files.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatalf("copy %s: %v", src, err)
	}
}
