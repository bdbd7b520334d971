package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/rules/bundle"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

// The port every deploy world uses (the popular Python exporter's, so scrape configs
// carry over).
const exporterPort = 9808

// --- the shipped files, decoded -------------------------------------------------------------

type composeService struct {
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	User        string            `yaml:"user"`
	ReadOnly    bool              `yaml:"read_only"`
	CapDrop     []string          `yaml:"cap_drop"`
}

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type k8sProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type k8sContainer struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Env   []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type k8sDeployment struct {
	Kind string `yaml:"kind"`
	Spec struct {
		Template struct {
			Spec struct {
				SecurityContext struct {
					RunAsNonRoot bool `yaml:"runAsNonRoot"`
					RunAsUser    int  `yaml:"runAsUser"`
				} `yaml:"securityContext"`
				Containers []k8sContainer `yaml:"containers"`
				Volumes    []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name string `yaml:"name"`
					} `yaml:"configMap"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type kustomization struct {
	Resources          []string `yaml:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `yaml:"name"`
		Files []string `yaml:"files"`
	} `yaml:"configMapGenerator"`
	Images []struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
	} `yaml:"images"`
	Patches []struct {
		Patch string `yaml:"patch"`
	} `yaml:"patches"`
}

func readFile(t *testing.T, parts ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(parts...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeYAML(t *testing.T, into any, parts ...string) {
	t.Helper()
	if err := yaml.Unmarshal(readFile(t, parts...), into); err != nil {
		t.Fatalf("%s: %v", filepath.Join(parts...), err)
	}
}

func composeOf(t *testing.T, root string) composeFile {
	t.Helper()
	var c composeFile
	decodeYAML(t, &c, root, "deploy/docker-compose/docker-compose.yml")
	if _, ok := c.Services["celery_exporter"]; !ok {
		t.Fatalf("docker-compose.yml: no celery_exporter service")
	}
	return c
}

func deploymentOf(t *testing.T, root string) (k8sDeployment, k8sContainer) {
	t.Helper()
	var d k8sDeployment
	decodeYAML(t, &d, root, "deploy/kubernetes/base/deployment.yaml")
	if d.Kind != "Deployment" || len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("deployment.yaml: kind %q with %d containers, want a Deployment with one", d.Kind, len(d.Spec.Template.Spec.Containers))
	}
	return d, d.Spec.Template.Spec.Containers[0]
}

// haArgs are the arguments the HA overlay's JSON patch appends to the container.
func haArgs(t *testing.T, root string) []string {
	t.Helper()
	var k kustomization
	decodeYAML(t, &k, root, "deploy/kubernetes/ha/kustomization.yaml")
	var args []string
	for _, p := range k.Patches {
		var ops []struct {
			Op    string `yaml:"op"`
			Path  string `yaml:"path"`
			Value any    `yaml:"value"`
		}
		if err := yaml.Unmarshal([]byte(p.Patch), &ops); err != nil {
			t.Fatalf("ha/kustomization.yaml: patch: %v", err)
		}
		for _, op := range ops {
			if op.Path == "/spec/template/spec/containers/0/args/-" {
				args = append(args, fmt.Sprint(op.Value))
			}
		}
	}
	return args
}

// envFile reads KEY=VALUE lines; commented-out settings (#KEY=VALUE) are returned too, as they
// are documentation a user uncomments.
func envFile(t *testing.T, root string) (set, commented map[string]string) {
	t.Helper()
	set, commented = map[string]string{}, map[string]string{}
	re := regexp.MustCompile(`^(#?)([A-Z][A-Z0-9_]*)=(.*)$`)
	for _, line := range strings.Split(string(readFile(t, root, "deploy/systemd/celery_exporter.env")), "\n") {
		m := re.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		if m[1] == "#" {
			commented[m[2]] = m[3]
		} else {
			set[m[2]] = m[3]
		}
	}
	return set, commented
}

// demoExporterArgs are the flags on run.sh's exporter command line (the continuation lines after
// `start_proc exporter`).
func demoExporterArgs(t *testing.T, root string) []string {
	t.Helper()
	lines := strings.Split(string(readFile(t, root, "test/demo/run.sh")), "\n")
	var args []string
	in := false
	for _, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "start_proc exporter ") {
			in = true
		}
		if !in {
			continue
		}
		for _, f := range strings.Fields(l) {
			if strings.HasPrefix(f, "--") {
				args = append(args, strings.Trim(f, `\`))
			}
		}
		if !strings.HasSuffix(strings.TrimSpace(l), `\`) {
			break
		}
	}
	if len(args) == 0 {
		t.Fatal("test/demo/run.sh: no `start_proc exporter` command line found")
	}
	return args
}

var (
	helpFlagRE  = regexp.MustCompile(`(?m)^\s+(?:-\w, )?--(?:\[no-\])?([a-z][a-z0-9.-]*)`)
	helpEnvarRE = regexp.MustCompile(`\(\$(CELERY_EXPORTER_[A-Z0-9_]+)\)`)
	argFlagRE   = regexp.MustCompile(`^--(?:no-)?([a-z][a-z0-9.-]*)`)
)

// exporterHelp runs `celery_exporter --help` and returns its flags (names without dashes), its
// environment variables and the whole text.
func exporterHelp(t *testing.T) (flags, envars map[string]bool, text string) {
	t.Helper()
	out, err := exec.Command(harness.ExporterBinary(t), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("celery_exporter --help: %v\n%s", err, out)
	}
	flags, envars = map[string]bool{}, map[string]bool{}
	for _, m := range helpFlagRE.FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	for _, m := range helpEnvarRE.FindAllStringSubmatch(string(out), -1) {
		envars[m[1]] = true
	}
	if !flags["broker.url"] || !envars["CELERY_EXPORTER_BROKER_URL"] {
		t.Fatalf("celery_exporter --help: cannot find --broker.url and its variable in:\n%s", out)
	}
	return flags, envars, string(out)
}

// renderBundle is what `make rules` renders now from rules/config.yaml, by repository path.
func renderBundle(t *testing.T, root string) (*bundle.Config, map[string][]byte) {
	t.Helper()
	cfg, err := bundle.LoadConfig(filepath.Join(root, "rules/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rendered, err := cfg.Files()
	if err != nil {
		t.Fatal(err)
	}
	return cfg, rendered
}

// --- tests ----------------------------------------------------------------------------------

// TestDeployFilesParse decodes every YAML and JSON file shipped for deployment, the rules and
// the dashboards, and the demo's templates.
func TestDeployFilesParse(t *testing.T) {
	root := harness.ModuleRoot(t)
	var files []string
	for _, dir := range []string{"deploy", "dashboards", "rules", "test/demo"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			name := d.Name()
			if d.IsDir() && p == filepath.Join(root, "deploy/helm/celery-exporter/templates") {
				return filepath.SkipDir // Go templates, checked by helm lint and helm template (TestHelmChartMatchesKustomize)
			}
			if !d.IsDir() && (strings.HasSuffix(name, ".yml") || strings.HasSuffix(name, ".yaml") ||
				strings.HasSuffix(name, ".yml.in") || strings.HasSuffix(name, ".json")) {
				rel, _ := filepath.Rel(root, p)
				files = append(files, filepath.ToSlash(rel))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The files this package ships must be among them: a walk that finds nothing cannot pass.
	for _, must := range []string{
		"deploy/docker-compose/docker-compose.yml", "deploy/docker-compose/example-app.yml",
		"deploy/docker-compose/prometheus.yml", "deploy/docker-compose/grafana-datasource.yaml",
		"deploy/kubernetes/base/kustomization.yaml", "deploy/kubernetes/base/deployment.yaml",
		"deploy/kubernetes/base/service.yaml", "deploy/kubernetes/base/servicemonitor.yaml",
		"deploy/kubernetes/base/celery_exporter.yml", "deploy/kubernetes/ha/kustomization.yaml",
		"deploy/kubernetes/ha/poddisruptionbudget.yaml", "test/demo/celery_exporter.yml.in",
		"test/demo/prometheus.yml.in", "test/demo/rules-overrides.yaml",
	} {
		if !slices.Contains(files, must) {
			t.Errorf("%s is missing", must)
		}
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			b := readFile(t, root, f)
			if strings.HasSuffix(f, ".json") {
				var v map[string]any
				if err := json.Unmarshal(b, &v); err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				return
			}
			dec := yaml.NewDecoder(bytes.NewReader(b))
			docs := 0
			for {
				var v any
				err := dec.Decode(&v)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("%s: document %d: %v", f, docs+1, err)
				}
				docs++
			}
			if docs == 0 {
				t.Fatalf("%s: no YAML document", f)
			}
		})
	}
	// The exporter config files must also be valid for the exporter.
	for _, f := range []string{"deploy/kubernetes/base/celery_exporter.yml", "deploy/celery_exporter.yml"} {
		if _, err := config.Load(filepath.Join(root, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	demoCfg := strings.NewReplacer("@REDIS_PORT@", "6379", "@DEMO_DIR@", t.TempDir()).
		Replace(string(readFile(t, root, "test/demo/celery_exporter.yml.in")))
	if _, err := config.Parse([]byte(demoCfg), "test/demo/celery_exporter.yml.in"); err != nil {
		t.Errorf("the demo's exporter config: %v", err)
	}
}

// TestDeployFlagsExist checks every flag and CELERY_EXPORTER_* variable the deploy files, the
// demo and docs/deploy.md use against `celery_exporter --help`.
func TestDeployFlagsExist(t *testing.T) {
	root := harness.ModuleRoot(t)
	flags, envars, _ := exporterHelp(t)
	_, container := deploymentOf(t, root)
	compose := composeOf(t, root).Services["celery_exporter"]
	set, commented := envFile(t, root)

	uses := map[string][]string{ // where -> flags (with dashes and values) or variables
		"docker-compose.yml command":     compose.Command,
		"kubernetes deployment args":     container.Args,
		"kubernetes ha patch":            haArgs(t, root),
		"test/demo/run.sh exporter args": demoExporterArgs(t, root),
	}
	var composeEnv, k8sEnv, envNames []string
	for k := range compose.Environment {
		composeEnv = append(composeEnv, k)
	}
	for _, e := range container.Env {
		k8sEnv = append(k8sEnv, e.Name)
	}
	for k := range set {
		envNames = append(envNames, k)
	}
	for k := range commented {
		envNames = append(envNames, k)
	}
	vars := map[string][]string{
		"docker-compose.yml environment": composeEnv,
		"kubernetes deployment env":      k8sEnv,
		"systemd celery_exporter.env":    envNames,
	}
	// The systemd unit's ExecStart arguments, if any.
	for _, l := range strings.Split(string(readFile(t, root, "deploy/systemd/celery_exporter.service")), "\n") {
		if rest, ok := strings.CutPrefix(l, "ExecStart="); ok {
			uses["systemd ExecStart"] = strings.Fields(rest)[1:]
		}
	}
	// docs/deploy.md: dotted flags (the exporter's; other tools' flags there have no dot) and the
	// exporter's variables.
	docs := string(readFile(t, root, "docs/deploy.md"))
	uses["docs/deploy.md"] = regexp.MustCompile(`--[a-z]+\.[a-z.-]+[a-z]`).FindAllString(docs, -1)
	vars["docs/deploy.md"] = regexp.MustCompile(`CELERY_EXPORTER_[A-Z0-9_]*[A-Z0-9]`).FindAllString(docs, -1)

	for where, args := range uses {
		for _, a := range args {
			m := argFlagRE.FindStringSubmatch(a)
			if m == nil {
				t.Errorf("%s: %q is not a flag", where, a)
				continue
			}
			if !flags[m[1]] {
				t.Errorf("%s: --%s is not a flag of celery_exporter (see --help)", where, m[1])
			}
		}
	}
	for where, names := range vars {
		if len(names) == 0 {
			t.Errorf("%s: no CELERY_EXPORTER_* variable found", where)
		}
		for _, n := range names {
			if !envars[n] {
				t.Errorf("%s: %s is not a variable of celery_exporter (see --help)", where, n)
			}
		}
	}
}

// TestDeployArgsStartExporter starts the real exporter with each world's exact flags and
// environment (the config file from the repository where the world mounts it) against a real
// redis-server: it must get ready and load the config.
func TestDeployArgsStartExporter(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts redis-server and the exporter")
	}
	harness.Require(t, "redis-server")
	root := harness.ModuleRoot(t)
	r := harness.StartRedis(t)
	broker := r.URL(1)
	d, container := deploymentOf(t, root)
	compose := composeOf(t, root).Services["celery_exporter"]
	set, _ := envFile(t, root)

	// compose mounts deploy/celery_exporter.yml; kubernetes the generated ConfigMap's file.
	composeCfg := resolveComposeMount(t, root, compose.Volumes, "/etc/celery_exporter/celery_exporter.yml")
	k8sCfg := filepath.Join(root, "deploy/kubernetes/base/celery_exporter.yml")
	if len(d.Spec.Template.Spec.Containers[0].VolumeMounts) != 1 {
		t.Fatalf("deployment: want one volume mount (the config), got %v", container.VolumeMounts)
	}
	// The shipped file with the app's Redis (redis://redis:6379) pointed at the test's.
	localConfig := func(args []string, shipped string) []string {
		local := filepath.Join(t.TempDir(), filepath.Base(shipped))
		b := bytes.ReplaceAll(readFile(t, shipped), []byte("redis://redis:6379"), []byte(strings.TrimSuffix(r.URL(0), "/0")))
		if err := os.WriteFile(local, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out := make([]string, 0, len(args))
		for _, a := range args {
			if strings.HasPrefix(a, "--config.file=") {
				a = "--config.file=" + local
			}
			out = append(out, a)
		}
		return out
	}
	envOf := func(m map[string]string) []string {
		var out []string
		for k, v := range m {
			if k == "CELERY_EXPORTER_BROKER_URL" {
				v = broker
			}
			out = append(out, k+"="+v)
		}
		sort.Strings(out)
		return out
	}
	worlds := []struct {
		name       string
		args       []string
		env        []string
		wantConfig bool // a --config.file with the zep breaker is loaded
	}{
		{"docker-compose", localConfig(compose.Command, composeCfg), envOf(compose.Environment), true},
		{"kubernetes", localConfig(container.Args, k8sCfg), []string{"CELERY_EXPORTER_BROKER_URL=" + broker}, true},
		{"kubernetes-ha", localConfig(append(slices.Clone(container.Args), haArgs(t, root)...), k8sCfg), []string{"CELERY_EXPORTER_BROKER_URL=" + broker}, true},
		// The unit's --web.listen-address (:9808) is overridden by the harness' free port.
		{"systemd", nil, envOf(set), false},
	}
	for _, w := range worlds {
		t.Run(w.name, func(t *testing.T) {
			e := harness.StartExporterEnv(t, w.env, w.args...)
			e.WaitReady(t, 20*time.Second)
			m := e.WaitFor(t, 20*time.Second, func(m harness.Metrics) bool {
				v, ok := m.Value("celery_up", nil)
				return ok && v == 1
			})
			// The config's breaker and app value read from its Redis: closed, 0.
			want := []harness.Sample{
				{Name: "celery_breaker_read_ok", Labels: map[string]string{"breaker": "zep"}, Value: 1},
				{Name: "celery_breaker_open", Labels: map[string]string{"breaker": "zep"}, Value: 0},
				{Name: "celery_app_value", Labels: map[string]string{"name": "zep_read_consecutive_failures"}, Value: 0},
			}
			if !w.wantConfig {
				want = nil
			}
			if diffs := harness.DiffSamples(m, want, "celery_breaker_read_ok", "celery_app_value"); len(diffs) > 0 {
				t.Errorf("config file not loaded as expected:\n%s", strings.Join(diffs, "\n"))
			}
			// --celery.queues makes every seed queue reported, empty or not.
			if slices.ContainsFunc(w.args, func(a string) bool { return strings.HasPrefix(a, "--celery.queues=") }) ||
				slices.ContainsFunc(w.env, func(a string) bool { return strings.HasPrefix(a, "CELERY_EXPORTER_CELERY_QUEUES=") }) {
				for _, q := range []string{"chat", "default", "background", "notifications", "dlq"} {
					if v, ok := m.Value("celery_queue_length", map[string]string{"queue_name": q}); !ok || v != 0 {
						t.Errorf("celery_queue_length{queue_name=%q} = %v (present %v), want 0", q, v, ok)
					}
				}
			}
		})
	}
}

// resolveComposeMount returns the repository file the compose service mounts at target, with
// ${CELERY_MONITORING_ROOT:-../..} resolved from deploy/docker-compose.
func resolveComposeMount(t *testing.T, root string, volumes []string, target string) string {
	t.Helper()
	for _, v := range volumes {
		if src, dst := splitVolume(v); dst == target {
			return composeSource(root, src)
		}
	}
	t.Fatalf("docker-compose.yml: nothing mounted at %s (volumes %v)", target, volumes)
	return ""
}

// splitVolume splits a short volume syntax SRC:DST[:MODE] after expanding the variables with
// defaults (${VAR:-default}) to their defaults, as compose does when they are unset.
func splitVolume(v string) (src, dst string) {
	v = regexp.MustCompile(`\$\{[A-Z_]+:-([^}]*)\}`).ReplaceAllString(v, "$1")
	parts := strings.Split(v, ":")
	if len(parts) < 2 {
		return parts[0], ""
	}
	return parts[0], parts[1]
}

func composeSource(root, src string) string {
	if filepath.IsAbs(src) {
		return src
	}
	return filepath.Join(root, "deploy/docker-compose", src)
}

// TestDeployPorts checks that every world serves and scrapes the exporter on 9808.
func TestDeployPorts(t *testing.T) {
	root := harness.ModuleRoot(t)
	_, _, help := exporterHelp(t)
	_, container := deploymentOf(t, root)
	compose := composeOf(t, root)
	set, _ := envFile(t, root)
	var svc struct {
		Spec struct {
			Ports []struct {
				Name       string `yaml:"name"`
				Port       int    `yaml:"port"`
				TargetPort any    `yaml:"targetPort"`
			} `yaml:"ports"`
		} `yaml:"spec"`
	}
	decodeYAML(t, &svc, root, "deploy/kubernetes/base/service.yaml")
	var sm struct {
		Spec struct {
			Endpoints []struct {
				Port string `yaml:"port"`
				Path string `yaml:"path"`
			} `yaml:"endpoints"`
		} `yaml:"spec"`
	}
	decodeYAML(t, &sm, root, "deploy/kubernetes/base/servicemonitor.yaml")
	var prom struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	decodeYAML(t, &prom, root, "deploy/docker-compose/prometheus.yml")
	celeryTargets := ""
	for _, sc := range prom.ScrapeConfigs {
		if sc.JobName == "celery" && len(sc.StaticConfigs) == 1 {
			celeryTargets = strings.Join(sc.StaticConfigs[0].Targets, ",")
		}
	}
	containerPort, containerPortName := 0, ""
	if len(container.Ports) == 1 {
		containerPort, containerPortName = container.Ports[0].ContainerPort, container.Ports[0].Name
	}
	svcPort, svcPortName, svcTarget := 0, "", any(nil)
	if len(svc.Spec.Ports) == 1 {
		svcPort, svcPortName, svcTarget = svc.Spec.Ports[0].Port, svc.Spec.Ports[0].Name, svc.Spec.Ports[0].TargetPort
	}
	smPort := ""
	if len(sm.Spec.Endpoints) == 1 {
		smPort = sm.Spec.Endpoints[0].Port
	}
	dockerfile := string(readFile(t, root, "deploy/Dockerfile"))
	lib := string(readFile(t, root, "test/demo/lib.sh"))
	p := fmt.Sprint(exporterPort)
	tests := []struct {
		what      string
		got, want any
	}{
		{"exporter's default --web.listen-address", strings.Contains(help, `--web.listen-address=:`+p), true},
		{"Dockerfile EXPOSE", regexp.MustCompile(`(?m)^EXPOSE ` + p + `$`).MatchString(dockerfile), true},
		{"compose celery_exporter ports", compose.Services["celery_exporter"].Ports, []string{"127.0.0.1:" + p + ":" + p}},
		{"compose prometheus.yml celery job targets", celeryTargets, "celery_exporter:" + p},
		{"kubernetes containerPort", containerPort, exporterPort},
		{"kubernetes Service port", svcPort, exporterPort},
		{"kubernetes Service targetPort names the container port", svcTarget, containerPortName},
		{"ServiceMonitor endpoint port names the Service port", smPort, svcPortName},
		{"liveness probe port", container.LivenessProbe.HTTPGet.Port, containerPortName},
		{"readiness probe port", container.ReadinessProbe.HTTPGet.Port, containerPortName},
		{"systemd listen address", set["CELERY_EXPORTER_WEB_LISTEN_ADDRESS"], ":" + p},
		{"demo default exporter port", strings.Contains(lib, "DEMO_EXPORTER_PORT=${DEMO_EXPORTER_PORT:-"+p+"}"), true},
	}
	for _, tc := range tests {
		if fmt.Sprint(tc.got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: got %v, want %v", tc.what, tc.got, tc.want)
		}
	}
}

// TestDeployKubernetes checks the base's wiring: every resource exists, the rendered files are
// what `make rules` renders now, the config map, image tag and job label match.
func TestDeployKubernetes(t *testing.T) {
	root := harness.ModuleRoot(t)
	base := filepath.Join(root, "deploy/kubernetes/base")
	var k kustomization
	decodeYAML(t, &k, base, "kustomization.yaml")
	for _, dir := range []string{base, filepath.Join(root, "deploy/kubernetes/ha")} {
		var kk kustomization
		decodeYAML(t, &kk, dir, "kustomization.yaml")
		for _, r := range kk.Resources {
			st, err := os.Stat(filepath.Join(dir, r))
			switch {
			case err != nil:
				t.Errorf("%s: resource %s: %v", dir, r, err)
			case st.IsDir():
				if _, err := os.Stat(filepath.Join(dir, r, "kustomization.yaml")); err != nil {
					t.Errorf("%s: resource directory %s has no kustomization.yaml", dir, r)
				}
			}
		}
	}
	for _, want := range []string{"deployment.yaml", "service.yaml", "servicemonitor.yaml", "prometheusrule.yaml", "dashboards"} {
		if !slices.Contains(k.Resources, want) {
			t.Errorf("base/kustomization.yaml: resources %v lack %s", k.Resources, want)
		}
	}

	// The rendered files it references are the current render of rules/config.yaml.
	cfg, rendered := renderBundle(t, root)
	refs := []string{bundle.PrometheusRuleFile, bundle.ConfigMapsDir + "/kustomization.yaml"}
	var dk kustomization
	decodeYAML(t, &dk, root, bundle.ConfigMapsDir, "kustomization.yaml")
	if len(dk.Resources) == 0 {
		t.Errorf("%s/kustomization.yaml lists no dashboard", bundle.ConfigMapsDir)
	}
	for _, r := range dk.Resources {
		refs = append(refs, bundle.ConfigMapsDir+"/"+r)
	}
	for _, ref := range refs {
		want, ok := rendered[ref]
		if !ok {
			t.Errorf("%s is referenced but the renderer does not produce it", ref)
			continue
		}
		if got := readFile(t, root, ref); !bytes.Equal(got, want) {
			t.Errorf("%s differs from a fresh render: run `make rules`", ref)
		}
	}

	d, c := deploymentOf(t, root)
	// The config: generated ConfigMap -> volume -> mount -> --config.file.
	if len(k.ConfigMapGenerator) != 1 || len(k.ConfigMapGenerator[0].Files) != 1 {
		t.Fatalf("base/kustomization.yaml: want one configMapGenerator with one file, got %+v", k.ConfigMapGenerator)
	}
	gen := k.ConfigMapGenerator[0]
	var cfgVolume, mountPath string
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == gen.Name {
			cfgVolume = v.Name
		}
	}
	for _, m := range c.VolumeMounts {
		if m.Name == cfgVolume {
			mountPath = m.MountPath
		}
	}
	wantArg := "--config.file=" + path.Join(mountPath, gen.Files[0])
	if cfgVolume == "" || !slices.Contains(c.Args, wantArg) {
		t.Errorf("config: volume of ConfigMap %s = %q, mounted at %q; args %v lack %s", gen.Name, cfgVolume, mountPath, c.Args, wantArg)
	}
	// The image tag is the version the Dockerfile stamps.
	version := strings.TrimSpace(string(readFile(t, root, "VERSION")))
	if len(k.Images) != 1 || k.Images[0].Name != c.Image || k.Images[0].NewTag != version {
		t.Errorf("images: %+v for container image %q, want newTag %q (the VERSION file)", k.Images, c.Image, version)
	}
	// The broker URL comes from a Secret, never from the manifest.
	for _, e := range c.Env {
		if e.Name == "CELERY_EXPORTER_BROKER_URL" && (e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			t.Errorf("CELERY_EXPORTER_BROKER_URL must come from a secretKeyRef")
		}
	}
	// Hardening and probes.
	checks := []struct {
		what      string
		got, want any
	}{
		{"runAsNonRoot", d.Spec.Template.Spec.SecurityContext.RunAsNonRoot, true},
		{"runAsUser is not root", d.Spec.Template.Spec.SecurityContext.RunAsUser != 0, true},
		{"readOnlyRootFilesystem", c.SecurityContext.ReadOnlyRootFilesystem, true},
		{"allowPrivilegeEscalation", c.SecurityContext.AllowPrivilegeEscalation != nil && !*c.SecurityContext.AllowPrivilegeEscalation, true},
		{"capabilities dropped", c.SecurityContext.Capabilities.Drop, []string{"ALL"}},
		{"liveness path", c.LivenessProbe.HTTPGet.Path, "/-/healthy"},
		{"readiness path", c.ReadinessProbe.HTTPGet.Path, "/-/ready"},
		{"requests set", c.Resources.Requests["cpu"] != "" && c.Resources.Requests["memory"] != "", true},
		{"memory limit set", c.Resources.Limits["memory"] != "", true},
	}
	for _, tc := range checks {
		if fmt.Sprint(tc.got) != fmt.Sprint(tc.want) {
			t.Errorf("deployment %s: got %v, want %v", tc.what, tc.got, tc.want)
		}
	}

	// Prometheus must label the target job="celery", the rules' selector, in every world.
	wantJob := regexp.MustCompile(`job="([^"]+)"`).FindStringSubmatch(cfg.Selector)
	if wantJob == nil {
		t.Fatalf("rules/config.yaml selector %q has no job matcher", cfg.Selector)
	}
	var sm struct {
		Spec struct {
			Endpoints []struct {
				Relabelings []struct {
					TargetLabel string `yaml:"targetLabel"`
					Replacement string `yaml:"replacement"`
				} `yaml:"relabelings"`
			} `yaml:"endpoints"`
		} `yaml:"spec"`
	}
	decodeYAML(t, &sm, base, "servicemonitor.yaml")
	job := ""
	for _, e := range sm.Spec.Endpoints {
		for _, r := range e.Relabelings {
			if r.TargetLabel == "job" {
				job = r.Replacement
			}
		}
	}
	if job != wantJob[1] {
		t.Errorf("ServiceMonitor sets job=%q, the rules select job=%q", job, wantJob[1])
	}
}

// TestDeployCompose checks the compose overlay's mounts: every repository file it mounts exists,
// the rules and dashboards are the rendered ones, and Prometheus and Grafana find them where
// their configs look.
func TestDeployCompose(t *testing.T) {
	root := harness.ModuleRoot(t)
	c := composeOf(t, root)
	for name, s := range c.Services {
		for _, v := range s.Volumes {
			src, _ := splitVolume(v)
			if !strings.Contains(src, "/") || strings.Contains(v, "ALERTMANAGER_SECRETS_DIR") || src == "/var/lib/docker/containers" {
				continue // named volumes, the user's secrets, the host's Docker logs
			}
			if _, err := os.Stat(composeSource(root, src)); err != nil {
				t.Errorf("service %s mounts %s: %v", name, src, err)
			}
		}
	}
	_, rendered := renderBundle(t, root)
	prom := c.Services["prometheus"]
	rulesTarget := "/etc/prometheus/rules/celery.rules.yml"
	if got := resolveComposeMount(t, root, prom.Volumes, rulesTarget); got != filepath.Join(root, bundle.RulesFile) {
		t.Errorf("prometheus mounts %s at %s, want the rendered %s", got, rulesTarget, bundle.RulesFile)
	}
	if !bytes.Equal(readFile(t, root, bundle.RulesFile), rendered[bundle.RulesFile]) {
		t.Errorf("%s differs from a fresh render: run `make rules`", bundle.RulesFile)
	}
	var pc struct {
		RuleFiles []string `yaml:"rule_files"`
	}
	decodeYAML(t, &pc, root, "deploy/docker-compose/prometheus.yml")
	if !slices.Equal(pc.RuleFiles, []string{rulesTarget}) {
		t.Errorf("compose prometheus.yml rule_files = %v, want [%s]", pc.RuleFiles, rulesTarget)
	}

	// Grafana: the dashboards directory is mounted where the provider looks, and holds exactly
	// the rendered dashboards.
	var provider struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	decodeYAML(t, &provider, root, "deploy/grafana/provisioning/dashboards/celery.yaml")
	if len(provider.Providers) != 1 {
		t.Fatalf("deploy/grafana/provisioning/dashboards/celery.yaml: want one provider")
	}
	dashDir := resolveComposeMount(t, root, c.Services["grafana"].Volumes, provider.Providers[0].Options.Path)
	if dashDir != filepath.Join(root, bundle.DashboardsDir) {
		t.Errorf("grafana mounts %s at the provider's path, want %s", dashDir, bundle.DashboardsDir)
	}
	n := 0
	for p, want := range rendered {
		if !strings.HasPrefix(p, bundle.DashboardsDir+"/") {
			continue
		}
		n++
		if !bytes.Equal(readFile(t, root, p), want) {
			t.Errorf("%s differs from a fresh render: run `make rules`", p)
		}
	}
	if n == 0 {
		t.Error("the renderer produced no dashboard")
	}
	var ds struct {
		Datasources []struct {
			URL string `yaml:"url"`
		} `yaml:"datasources"`
	}
	decodeYAML(t, &ds, root, "deploy/docker-compose/grafana-datasource.yaml")
	if len(ds.Datasources) != 1 || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Errorf("compose Grafana data source = %+v, want http://prometheus:9090 (the prometheus service)", ds.Datasources)
	}

	// promtool accepts the compose Prometheus config with the rendered rules in place.
	harness.Require(t, "promtool") // fails under CI=true, skips loudly elsewhere
	dir := t.TempDir()
	pcfg := strings.ReplaceAll(string(readFile(t, root, "deploy/docker-compose/prometheus.yml")), rulesTarget, filepath.Join(root, bundle.RulesFile))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(pcfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "check", "config", filepath.Join(dir, "prometheus.yml")).CombinedOutput(); err != nil {
		t.Errorf("promtool check config (compose prometheus.yml): %v\n%s", err, out)
	}
}

// TestDeployDockerfile checks the image build: the Go version of go.mod, a static build, the
// Makefile's version stamps, a non-root user on a minimal base.
func TestDeployDockerfile(t *testing.T) {
	root := harness.ModuleRoot(t)
	df := string(readFile(t, root, "deploy/Dockerfile"))
	gomod := string(readFile(t, root, "go.mod"))
	makefile := string(readFile(t, root, "Makefile"))

	goVer := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(gomod)
	argVer := regexp.MustCompile(`(?m)^ARG GO_VERSION=(\S+)$`).FindStringSubmatch(df)
	froms := regexp.MustCompile(`(?m)^FROM (?:--platform=\S+ )?(\S+)`).FindAllStringSubmatch(df, -1)
	users := regexp.MustCompile(`(?m)^USER (\S+)$`).FindAllStringSubmatch(df, -1)
	if goVer == nil || argVer == nil || len(froms) != 2 || len(users) != 1 {
		t.Fatalf("cannot read go.mod's go version (%v), ARG GO_VERSION (%v), two FROM (%v) and one USER (%v)", goVer, argVer, froms, users)
	}
	pinned := regexp.MustCompile(`@sha256:[0-9a-f]{64}$`)
	// The tag of each digest-pinned base, in a comment line of its own before its FROM.
	tagComments := func(s string) []string {
		var out []string
		for _, m := range regexp.MustCompile(`(?m)^# (\S+:\S+)(?: \(.*\))?\n(?:#.*\n)*FROM `).FindAllStringSubmatch(s, -1) {
			out = append(out, m[1])
		}
		sort.Strings(out)
		return out
	}
	stamps := func(s string) []string {
		var out []string
		for _, m := range regexp.MustCompile(`-X \$\((?:PKG_VER)\)\.(\w+)=|-X \$\{pkg\}\.(\w+)=`).FindAllStringSubmatch(s, -1) {
			out = append(out, m[1]+m[2])
		}
		sort.Strings(out)
		return out
	}
	tests := []struct {
		what      string
		got, want any
	}{
		{"GO_VERSION is go.mod's", argVer[1], goVer[1]},
		{"builder image", strings.SplitN(froms[0][1], "@", 2)[0], "golang:${GO_VERSION}-bookworm"},
		{"builder pinned by digest", pinned.MatchString(froms[0][1]), true},
		{"final image pinned by digest", pinned.MatchString(froms[1][1]), true},
		{"tags beside the digests", tagComments(df), []string{"gcr.io/distroless/static-debian12:nonroot", "golang:" + goVer[1] + "-bookworm"}},
		{"multi-stage: builder named", strings.Contains(df, " AS build\n"), true},
		{"static build", strings.Contains(df, "CGO_ENABLED=0"), true},
		{"final image is minimal", strings.HasPrefix(froms[1][1], "gcr.io/distroless/static") || froms[1][1] == "scratch", true},
		{"non-root user", users[0][1] != "root" && !strings.HasPrefix(users[0][1], "0"), true},
		{"version stamps are the Makefile's", stamps(df), stamps(makefile)},
		{"version from the VERSION file", strings.Contains(df, "cat VERSION"), true},
		{"the binary is the entrypoint", strings.Contains(df, `ENTRYPOINT ["/bin/celery_exporter"]`), true},
	}
	for _, tc := range tests {
		if fmt.Sprint(tc.got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: got %v, want %v", tc.what, tc.got, tc.want)
		}
	}
	if len(stamps(makefile)) < 3 {
		t.Errorf("cannot find the Makefile's -X stamps (got %v)", stamps(makefile))
	}
}

// TestDeploySystemd checks the unit's hardening and, when systemd-analyze is there, that systemd
// accepts it without a warning.
func TestDeploySystemd(t *testing.T) {
	root := harness.ModuleRoot(t)
	unit := string(readFile(t, root, "deploy/systemd/celery_exporter.service"))
	settings := map[string][]string{}
	for _, l := range strings.Split(unit, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			settings[k] = append(settings[k], v)
		}
	}
	for _, tc := range []struct{ key, want string }{
		{"DynamicUser", "yes"}, {"NoNewPrivileges", "yes"}, {"ProtectSystem", "strict"},
		{"ProtectHome", "yes"}, {"PrivateTmp", "yes"}, {"PrivateDevices", "yes"},
		{"CapabilityBoundingSet", ""}, {"RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"},
		{"MemoryDenyWriteExecute", "yes"}, {"SystemCallFilter", "@system-service"},
		{"EnvironmentFile", "/etc/celery_exporter/celery_exporter.env"},
		{"ExecStart", "/usr/local/bin/celery_exporter"}, {"ExecReload", "/bin/kill -HUP $MAINPID"},
	} {
		if !slices.Contains(settings[tc.key], tc.want) {
			t.Errorf("%s=%q: got %q", tc.key, tc.want, settings[tc.key])
		}
	}

	harness.Require(t, "systemd-analyze") // fails under CI=true, skips loudly elsewhere
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal(err)
	}
	// verify needs ExecStart to exist: point it at the binary under test.
	dir := t.TempDir()
	u := strings.Replace(unit, "ExecStart=/usr/local/bin/celery_exporter", "ExecStart="+harness.ExporterBinary(t), 1)
	u = strings.Replace(u, "EnvironmentFile=/etc/celery_exporter/celery_exporter.env", "EnvironmentFile="+filepath.Join(root, "deploy/systemd/celery_exporter.env"), 1)
	p := filepath.Join(dir, "celery_exporter.service")
	if err := os.WriteFile(p, []byte(u), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sa, "verify", "--man=no", p)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	// systemd-analyze exits 0 on most warnings ("Unknown key ... ignoring"): any output fails.
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
