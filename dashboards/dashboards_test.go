package dashboards_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
	"github.com/celery-exporter/celery_exporter/rules/bundle/bundletest"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

type obj = map[string]any

// wantDashboards are the stable uids and titles: alerts' dashboard_url and the links between
// dashboards depend on them.
var wantDashboards = map[string]string{
	"celery-success-criteria": "Celery / Success criteria",
	"celery-tasks":            "Celery / Tasks",
	"celery-workers-queues":   "Celery / Workers and queues",
	"celery-app-signals":      "Celery / App signals",
}

func loadDashboards(t *testing.T) map[string]obj {
	t.Helper()
	files, err := filepath.Glob("*.json")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]obj{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d obj
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		uid, _ := d["uid"].(string)
		if _, dup := out[uid]; dup {
			t.Errorf("uid %q used twice", uid)
		}
		if f != uid+".json" {
			t.Errorf("%s holds uid %q; name files after their uid", f, uid)
		}
		out[uid] = d
	}
	return out
}

func TestDashboardsHaveStableUIDsAndTitles(t *testing.T) {
	ds := loadDashboards(t)
	if len(ds) != len(wantDashboards) {
		t.Errorf("%d dashboards, want %d", len(ds), len(wantDashboards))
	}
	for uid, title := range wantDashboards {
		d, ok := ds[uid]
		if !ok {
			t.Errorf("dashboard %s missing", uid)
			continue
		}
		if d["title"] != title {
			t.Errorf("%s: title %q, want %q", uid, d["title"], title)
		}
		// Grafana 10.4 writes schema 39; older schemas get migrated, newer ones do not load.
		if v, _ := d["schemaVersion"].(float64); v != 39 {
			t.Errorf("%s: schemaVersion %v, want 39", uid, d["schemaVersion"])
		}
		if _, has := d["id"]; has {
			t.Errorf("%s: a numeric id would clash on import; only the uid identifies it", uid)
		}
	}
}

func TestDashboardsHaveTheRequiredVariables(t *testing.T) {
	for uid, d := range loadDashboards(t) {
		vars := map[string]obj{}
		tl, _ := d["templating"].(obj)
		list, _ := tl["list"].([]any)
		for _, v := range list {
			vm := v.(obj)
			vars[vm["name"].(string)] = vm
		}
		want := []string{"datasource", "job", "instance", "queue"}
		if uid == "celery-tasks" {
			want = append(want, "task")
		}
		for _, name := range want {
			v, ok := vars[name]
			if !ok {
				t.Errorf("%s: variable %s missing", uid, name)
				continue
			}
			if name == "datasource" {
				if v["type"] != "datasource" || v["query"] != "prometheus" {
					t.Errorf("%s: datasource variable %v", uid, v)
				}
				continue
			}
			if v["type"] != "query" || !strings.HasPrefix(v["definition"].(string), "label_values(") {
				t.Errorf("%s: %s is not a label_values query variable: %v", uid, name, v)
			}
		}
		for name, q := range bundle.VariableQueries(d) {
			// label_values(selector, label): the selector must parse and follow the contract.
			inner := strings.TrimSuffix(strings.TrimPrefix(q, "label_values("), ")")
			sel := inner[:strings.LastIndex(inner, ",")]
			bundletest.CheckExpr(t, uid+": variable "+name, bundle.ExpandVars(sel, bundle.DefaultVarValues()))
		}
	}
}

var leftoverVar = regexp.MustCompile(`\$\w|\$\{|\[\[`)

// TestEveryPanelQueryParses parses every panel query with Prometheus' parser after replacing the
// Grafana variables with stand-ins, and checks its selectors against the metric contract.
func TestEveryPanelQueryParses(t *testing.T) {
	total := 0
	for uid, d := range loadDashboards(t) {
		qs := bundle.PanelQueries(d)
		if len(qs) == 0 {
			t.Errorf("%s: no queries", uid)
		}
		for _, q := range qs {
			total++
			where := uid + " / " + q.Panel + " / " + q.RefID
			expr := bundle.ExpandVars(q.Expr, bundle.DefaultVarValues())
			if leftoverVar.MatchString(expr) {
				t.Errorf("%s: unknown variable left in %q", where, expr)
			}
			bundletest.CheckExpr(t, where, expr)
		}
	}
	if total < 60 {
		t.Errorf("only %d panel queries; a dashboard lost its panels?", total)
	}
}

func TestDashboardsLinkToEachOther(t *testing.T) {
	ds := loadDashboards(t)
	for uid, d := range ds {
		links, _ := d["links"].([]any)
		var urls []string
		for _, l := range links {
			lm := l.(obj)
			urls = append(urls, lm["url"].(string))
			if strings.HasPrefix(lm["url"].(string), "/d/") && (lm["keepTime"] != true || lm["includeVars"] != true) {
				t.Errorf("%s: link %v drops the time range or variables", uid, lm["url"])
			}
		}
		for other, od := range ds {
			if other == uid {
				continue
			}
			want := "/d/" + other + "/"
			if !slices.ContainsFunc(urls, func(u string) bool { return strings.HasPrefix(u, want) }) {
				t.Errorf("%s does not link to %s (%s); links: %v", uid, other, od["title"], urls)
			}
		}
		if !slices.ContainsFunc(urls, func(u string) bool { return strings.HasSuffix(u, "docs/runbooks.md") }) {
			t.Errorf("%s does not link to the runbooks", uid)
		}
	}
}

// TestPanelsLayout checks ids, data sources and the grid: unique ids, every panel on the
// $datasource variable, inside 24 columns and not overlapping another panel.
func TestPanelsLayout(t *testing.T) {
	for uid, d := range loadDashboards(t) {
		ids := map[float64]bool{}
		type rect struct{ x, y, w, h float64 }
		var placed []rect
		for _, p := range d["panels"].([]any) {
			pm := p.(obj)
			id := pm["id"].(float64)
			if ids[id] {
				t.Errorf("%s: panel id %v twice", uid, id)
			}
			ids[id] = true
			g := pm["gridPos"].(obj)
			r := rect{g["x"].(float64), g["y"].(float64), g["w"].(float64), g["h"].(float64)}
			if r.x < 0 || r.w <= 0 || r.x+r.w > 24 || r.h <= 0 {
				t.Errorf("%s: panel %q outside the grid: %+v", uid, pm["title"], r)
			}
			for _, o := range placed {
				if r.x < o.x+o.w && o.x < r.x+r.w && r.y < o.y+o.h && o.y < r.y+r.h {
					t.Errorf("%s: panel %q overlaps another at %+v", uid, pm["title"], r)
				}
			}
			placed = append(placed, r)
			if pm["type"] == "row" {
				continue
			}
			if ds, _ := pm["datasource"].(obj); ds["uid"] != "${datasource}" {
				t.Errorf("%s: panel %q data source %v, want ${datasource}", uid, pm["title"], pm["datasource"])
			}
			if title, _ := pm["title"].(string); title == "" {
				t.Errorf("%s: panel %v without a title", uid, id)
			}
		}
	}
}

// TestSuccessCriteriaStats checks the one-screen dashboard: a stat per success criterion of the
// seed, turning red (or green) exactly at the threshold the alerts use.
func TestSuccessCriteriaStats(t *testing.T) {
	d := loadDashboards(t)["celery-success-criteria"]
	type threshold struct {
		base, at string
		value    float64
	}
	want := map[string]threshold{
		"Max queue depth":                       {"green", "red", 5},
		"Workers up":                            {"red", "green", 3},
		"Queues without consumer":               {"green", "red", 1},
		"Unresponsive workers":                  {"green", "red", 1},
		"Broker reachable":                      {"red", "green", 1},
		"Exporter up":                           {"red", "green", 1},
		"Worst task failure ratio":              {"green", "red", 0.05},
		"Worst task p95 runtime":                {"green", "red", 120},
		"Oldest running task":                   {"green", "red", 180},
		"Lost or requeued tasks in 15m":         {"green", "red", 1},
		"Time limits hit in 15m":                {"green", "red", 1},
		"Seconds since last event":              {"green", "red", 300},
		"Workers without task events":           {"green", "red", 1},
		"zep_call_error in 15m":                 {"green", "red", 1},
		"Breaker zep":                           {"green", "red", 1},
		"Preference extraction failures in 15m": {"green", "red", 1},
		"Max worker memory":                     {"green", "red", 500 * 1024 * 1024},
		"Max worker CPU":                        {"green", "red", 0.5},
		"Celery alerts firing":                  {"green", "red", 1},
	}
	seen := map[string]bool{}
	for _, p := range d["panels"].([]any) {
		pm := p.(obj)
		if pm["type"] != "stat" {
			continue
		}
		title := pm["title"].(string)
		seen[title] = true
		w, ok := want[title]
		if !ok {
			t.Errorf("unexpected stat %q", title)
			continue
		}
		steps := pm["fieldConfig"].(obj)["defaults"].(obj)["thresholds"].(obj)["steps"].([]any)
		if len(steps) != 2 {
			t.Errorf("%s: %d threshold steps, want base and one limit", title, len(steps))
			continue
		}
		b, l := steps[0].(obj), steps[1].(obj)
		if b["color"] != w.base || b["value"] != nil || l["color"] != w.at || l["value"] != w.value {
			t.Errorf("%s: thresholds %v → %v at %v, want %s → %s at %v", title, b["color"], l["color"], l["value"], w.base, w.at, w.value)
		}
		if pm["options"].(obj)["colorMode"] != "background" {
			t.Errorf("%s: not coloured", title)
		}
	}
	for title := range want {
		if !seen[title] {
			t.Errorf("stat %q missing", title)
		}
	}
}

// TestContentOfTheDetailDashboards checks that each dashboard shows the panels its purpose needs.
func TestContentOfTheDetailDashboards(t *testing.T) {
	ds := loadDashboards(t)
	want := map[string][]string{
		"celery-tasks": {
			"celery_task_succeeded_total", "celery_task_failed_total", "exception", "celery:task_failure:ratio",
			"histogram_quantile(0.95, sum by (name, le) (rate(celery_task_runtime_seconds_bucket",
			"celery_task_queue_wait_seconds_bucket",
		},
		"celery-workers-queues": {
			"celery_queue_length", "celery_queue_priority_length", "celery_queue_consumers", "celery_queue_unacked",
			"celery_queue_oldest_message_age_seconds", "celery_worker_up", "time() - celery_worker_last_heartbeat_timestamp_seconds",
			"celery_worker_tasks_active", "celery_worker_max_rss_bytes", "celery_worker_cpu_seconds_total", "celery_worker_queue_info",
		},
		"celery-app-signals": {
			"celery_breaker_open", "celery_breaker_info", "celery_log_events_total",
		},
	}
	for uid, needles := range want {
		var all strings.Builder
		types := map[string]bool{}
		for _, q := range bundle.PanelQueries(ds[uid]) {
			all.WriteString(q.Expr + "\n")
		}
		for _, p := range ds[uid]["panels"].([]any) {
			types[p.(obj)["type"].(string)] = true
		}
		for _, n := range needles {
			if !strings.Contains(all.String(), n) {
				t.Errorf("%s: no query with %q", uid, n)
			}
		}
		if uid == "celery-tasks" && !types["heatmap"] {
			t.Errorf("%s: no heatmap", uid)
		}
		if uid == "celery-workers-queues" && !types["table"] {
			t.Errorf("%s: no worker → queue table", uid)
		}
		if uid == "celery-app-signals" && !types["state-timeline"] {
			t.Errorf("%s: no breaker state timeline", uid)
		}
	}
}

// TestConfigMapsCarryTheDashboards checks the Kubernetes wrappers for the Grafana sidecar.
func TestConfigMapsCarryTheDashboards(t *testing.T) {
	for uid := range wantDashboards {
		b, err := os.ReadFile(filepath.Join("..", "deploy", "kubernetes", "base", "dashboards", uid+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var cm struct {
			APIVersion, Kind string
			Metadata         struct {
				Name        string
				Labels      map[string]string
				Annotations map[string]string
			}
			Data map[string]string
		}
		if err := yaml.Unmarshal(b, &cm); err != nil {
			t.Fatalf("%s: %v", uid, err)
		}
		if cm.Kind != "ConfigMap" || cm.Metadata.Labels["grafana_dashboard"] != "1" || cm.Metadata.Annotations["grafana_folder"] != "Celery" {
			t.Errorf("%s: %s with labels %v annotations %v", uid, cm.Kind, cm.Metadata.Labels, cm.Metadata.Annotations)
		}
		js, err := os.ReadFile(uid + ".json")
		if err != nil {
			t.Fatal(err)
		}
		if got := cm.Data[uid+".json"]; got != strings.TrimRight(string(js), "\n") {
			t.Errorf("%s: ConfigMap data differs from dashboards/%s.json", uid, uid)
		}
	}
}

// TestSuccessStatsReadTwoReplicasAsOne evaluates stats of the success criteria dashboard with
// promtool on the rendered rules, once with one exporter and once with two replicas reporting the
// same broker and workers: every gauge-like criterion must read the same (two replicas must not
// double a worker's CPU or a queue's depth).
func TestSuccessStatsReadTwoReplicasAsOne(t *testing.T) {
	harness.Require(t, "promtool")
	want := map[string]float64{
		"Max queue depth":         7,
		"Workers up":              1,
		"Queues without consumer": 0,
		"Unresponsive workers":    0,
		"Broker reachable":        1,
		"Exporter up":             1,
		"Max worker memory":       1000,
		"Max worker CPU":          0.75, // user 0.5 + system 0.25 core
	}
	vals := bundle.DefaultVarValues()
	vals["__rate_interval"] = "5m"
	type sample struct {
		Labels string  `yaml:"labels"`
		Value  float64 `yaml:"value"`
	}
	type exprTest struct {
		Expr       string   `yaml:"expr"`
		EvalTime   string   `yaml:"eval_time"`
		ExpSamples []sample `yaml:"exp_samples"`
	}
	var exprs []exprTest
	for _, q := range bundle.PanelQueries(loadDashboards(t)["celery-success-criteria"]) {
		if v, ok := want[q.Panel]; ok {
			exprs = append(exprs, exprTest{bundle.ExpandVars(q.Expr, vals), "10m", []sample{{"{}", v}}})
			delete(want, q.Panel)
		}
	}
	for title := range want {
		t.Errorf("no stat %q on the success criteria dashboard", title)
	}
	type series struct {
		Series string `yaml:"series"`
		Values string `yaml:"values"`
	}
	type test struct {
		Name     string     `yaml:"name"`
		Interval string     `yaml:"interval"`
		Input    []series   `yaml:"input_series"`
		Exprs    []exprTest `yaml:"promql_expr_test"`
	}
	var tests []test
	for _, replicas := range [][]string{{"a:9808"}, {"a:9808", "b:9808"}} {
		tc := test{Name: fmt.Sprintf("%d replicas", len(replicas)), Interval: "1m", Exprs: exprs}
		for _, inst := range replicas {
			for _, s := range []series{
				{`up{%s}`, "1x10"},
				{`celery_up{%s}`, "1x10"},
				{`celery_queue_length{%s,queue_name="chat"}`, "7x10"},
				{`celery_queue_consumers{%s,queue_name="chat"}`, "1x10"},
				{`celery_worker_up{%s,hostname="celery@w1"}`, "1x10"},
				{`celery_worker_ping_ok{%s,hostname="celery@w1"}`, "1x10"},
				{`celery_worker_max_rss_bytes{%s,hostname="celery@w1"}`, "1000x10"},
				{`celery_worker_cpu_seconds_total{%s,hostname="celery@w1",mode="user"}`, "0+30x10"},
				{`celery_worker_cpu_seconds_total{%s,hostname="celery@w1",mode="system"}`, "0+15x10"},
			} {
				s.Series = fmt.Sprintf(s.Series, `job="celery",instance="`+inst+`"`)
				tc.Input = append(tc.Input, s)
			}
		}
		tests = append(tests, tc)
	}
	rules, err := filepath.Abs(filepath.Join("..", bundle.RulesFile))
	if err != nil {
		t.Fatal(err)
	}
	file := struct {
		RuleFiles  []string `yaml:"rule_files"`
		EvalEvery  string   `yaml:"evaluation_interval"`
		GroupOrder []string `yaml:"group_eval_order"`
		Tests      []test   `yaml:"tests"`
	}{[]string{rules}, "1m", []string{"celery.rules"}, tests}
	b, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "stats_test.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("promtool", "test", "rules", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}
