package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// Kubernetes' recommended labels, on every object of both the kustomize and the Helm world.
var recommendedLabels = []string{
	"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
	"app.kubernetes.io/component", "app.kubernetes.io/part-of",
}

const chartDir = "deploy/helm/celery-exporter"

// k8sObjects decodes a multi-document YAML stream, keyed by kind/name (a configMapGenerator's
// hash suffix removed).
func k8sObjects(t *testing.T, what string, out []byte) map[string]map[string]any {
	t.Helper()
	objs := map[string]map[string]any{}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var o map[string]any
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: decode: %v", what, err)
		}
		if o == nil {
			continue
		}
		meta, _ := o["metadata"].(map[string]any)
		objs[o["kind"].(string)+"/"+hashSuffix.ReplaceAllString(meta["name"].(string), "")] = o
	}
	if len(objs) == 0 {
		t.Fatalf("%s: no object", what)
	}
	return objs
}

var hashSuffix = regexp.MustCompile(`-[a-z0-9]{10}$`)

// comparableView strips what legitimately differs between the worlds: labels (checked on their own),
// the pod template's annotations (Helm's config checksums),
// selectors (Helm's include the release), Helm's imagePullPolicy, kustomize's hash suffixes.
func comparableView(o map[string]any) any {
	b, _ := json.Marshal(o)
	b = regexp.MustCompile(`"(celery-exporter-config)-[a-z0-9]{10}"`).ReplaceAll(b, []byte(`"$1"`))
	var v any
	_ = json.Unmarshal(b, &v)
	spec, _ := v.(map[string]any)["spec"].(map[string]any)
	if tmpl, ok := spec["template"].(map[string]any); ok {
		if meta, ok := tmpl["metadata"].(map[string]any); ok {
			delete(meta, "annotations")
		}
	}
	var strip func(any) any
	strip = func(x any) any {
		switch x := x.(type) {
		case map[string]any:
			for _, k := range []string{"labels", "selector", "labelSelector", "imagePullPolicy"} {
				delete(x, k)
			}
			for k, e := range x {
				x[k] = strip(e)
			}
		case []any:
			for i, e := range x {
				x[i] = strip(e)
			}
		}
		return x
	}
	return strip(v)
}

// tenantLabels are the labels the Kubernetes profile (rules/examples/kubernetes) aggregates by
// besides job: prometheus-operator puts namespace on every target of a ServiceMonitor, and a
// cluster label comes from Prometheus' external labels or the user's relabelings.
var tenantLabels = []string{"namespace", "cluster"}

// keepsTenantLabels fails when a ServiceMonitor's relabelings would drop or overwrite a tenant
// label: two apps in two namespaces would then merge however the rules were rendered.
func keepsTenantLabels(t *testing.T, what string, sm map[string]any) {
	t.Helper()
	spec, _ := sm["spec"].(map[string]any)
	endpoints, _ := spec["endpoints"].([]any)
	if len(endpoints) == 0 {
		t.Errorf("%s: no endpoint", what)
	}
	for _, e := range endpoints {
		ep, _ := e.(map[string]any)
		if ep["honorLabels"] == true {
			t.Errorf("%s: honorLabels lets scraped labels override the target's namespace", what)
		}
		for _, field := range []string{"relabelings", "metricRelabelings"} {
			rs, _ := ep[field].([]any)
			for _, r := range rs {
				rc, _ := r.(map[string]any)
				action, _ := rc["action"].(string)
				regex, _ := rc["regex"].(string)
				target, _ := rc["targetLabel"].(string)
				for _, l := range tenantLabels {
					re, err := regexp.Compile("^(?:" + regex + ")$")
					matches := err == nil && re.MatchString(l)
					switch strings.ToLower(action) {
					case "labeldrop":
						if matches {
							t.Errorf("%s: %s %v drops %s", what, field, rc, l)
						}
					case "labelkeep":
						if !matches {
							t.Errorf("%s: %s %v drops %s", what, field, rc, l)
						}
					default:
						if target == l {
							t.Errorf("%s: %s %v overwrites %s", what, field, rc, l)
						}
					}
				}
			}
		}
	}
}

// runIn runs a tool in dir and returns its standard output; a failure ends the test with both
// outputs (helm warns on stderr about the chart's files/ links, which must not reach the YAML).
func runIn(t *testing.T, dir, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s%s", filepath.Base(name), args, err, out, stderr.String())
	}
	return out
}

// TestHelmChartMatchesKustomize lints the chart and renders it with its defaults and with
// values-ha.yaml: the objects are those of deploy/kubernetes/base and /ha (kustomize build), field
// by field, and every object of both worlds carries the recommended labels with the VERSION file
// as version. The PrometheusRule and dashboards are read from the rendered files through the
// chart's files/ links, so the comparison also proves they cannot drift.
func TestHelmChartMatchesKustomize(t *testing.T) {
	root := harness.ModuleRoot(t)
	helm := harness.GoTool(t, "helm")
	kustomize := harness.GoTool(t, "kustomize")
	version := strings.TrimSpace(string(readFile(t, root, "VERSION")))
	var chart struct {
		Version    string `yaml:"version"`
		AppVersion string `yaml:"appVersion"`
	}
	decodeYAML(t, &chart, root, chartDir, "Chart.yaml")
	if chart.AppVersion != version || chart.Version != version {
		t.Errorf("Chart.yaml version %q, appVersion %q; want the VERSION file's %q", chart.Version, chart.AppVersion, version)
	}
	run := func(name string, args ...string) []byte {
		t.Helper()
		return runIn(t, root, name, args...)
	}
	for _, world := range []struct {
		name, overlay string
		values        []string
	}{
		{"base", "deploy/kubernetes/base", nil},
		{"ha", "deploy/kubernetes/ha", []string{"-f", chartDir + "/values-ha.yaml"}},
	} {
		t.Run(world.name, func(t *testing.T) {
			lint := string(run(helm, append([]string{"lint", "--strict", chartDir}, world.values...)...))
			if !strings.Contains(lint, "0 chart(s) failed") {
				t.Errorf("helm lint:\n%s", lint)
			}
			kust := k8sObjects(t, "kustomize build "+world.overlay, run(kustomize, "build", world.overlay))
			chartOut := k8sObjects(t, "helm template", run(helm, append([]string{"template", "celery-exporter", chartDir}, world.values...)...))
			for key, ko := range kust {
				ho, ok := chartOut[key]
				if !ok {
					t.Errorf("%s: the chart renders no %s", world.name, key)
					continue
				}
				if k, h := comparableView(ko), comparableView(ho); !reflect.DeepEqual(k, h) {
					kj, _ := json.MarshalIndent(k, "", " ")
					hj, _ := json.MarshalIndent(h, "", " ")
					t.Errorf("%s: %s differs between kustomize and helm:\nkustomize: %.3000s\nhelm:      %.3000s", world.name, key, kj, hj)
				}
			}
			for key := range chartOut {
				if _, ok := kust[key]; !ok {
					t.Errorf("%s: the chart renders %s, kustomize does not", world.name, key)
				}
			}
			for what, objs := range map[string]map[string]map[string]any{"kustomize": kust, "helm": chartOut} {
				for key, o := range objs {
					if o["kind"] == "ServiceMonitor" {
						keepsTenantLabels(t, what+" "+key, o)
					}
					labels, _ := o["metadata"].(map[string]any)["labels"].(map[string]any)
					for _, l := range recommendedLabels {
						if v, _ := labels[l].(string); v == "" {
							t.Errorf("%s %s: no %s label", what, key, l)
						}
					}
					if labels["app.kubernetes.io/version"] != version {
						t.Errorf("%s %s: app.kubernetes.io/version %v, want %s", what, key, labels["app.kubernetes.io/version"], version)
					}
				}
			}
		})
	}

	// The web config: a Secret mounted and passed as --web.config.file.
	out := string(run(helm, "template", "x", chartDir, "--set", "webConfig.enabled=true",
		"--set-string", "webConfig.content=basic_auth_users:\n  prometheus: $2y$10$abc"))
	for _, want := range []string{"kind: Secret", "name: x-celery-exporter-web-config", "--web.config.file=/etc/celery_exporter/web/web-config.yml", "secretName: x-celery-exporter-web-config"} {
		if !strings.Contains(out, want) {
			t.Errorf("helm template with webConfig: no %q", want)
		}
	}
}
