package rules_test

// The checks of the ecosystem's linters that matter here, pinned as our own tests (pint and
// dashboard-linter do not install from the Go module proxy or npm):
//   - pint promql/regexp: no regexp matcher on a static string (`exception=~"WorkerLostError"`);
//   - dashboard-linter: every panel has a description; every query honours the instance variable
//     or the panel says why not; the job variable is multi-select; "All" is `.+`, not `.*`;
//     every query is scoped by the job variable.
//   - pint promql/counter: a counter used by its value (the born-counter rules) carries a reasoned
//     `# pint disable promql/counter` above its rule (TestLintCounters).
// pint's promql/series (a metric that may never exist) is answered by the exporter: the counters
// the alerts read exist at 0 before their first event (collector tests of the zero series).

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
)

// regexpMeta is what makes a regexp more than a literal string.
var regexpMeta = regexp.MustCompile(`[.*+?()|\[\]{}^$\\]`)

// staticRegexp is a regexp matcher in a query's text; a value without meta characters (a Grafana
// variable has its $) is a static string.
var staticRegexp = regexp.MustCompile(`!?=~"((?:[^"\\]|\\.)*)"`)

// TestLintNoRegexpOnStaticString checks the rendered rules (default, the examples, the
// compatibility rules) and every dashboard query of those renders.
func TestLintNoRegexpOnStaticString(t *testing.T) {
	rules := map[string][]bundle.Rule{}
	dashboards := map[string][]byte{}
	for _, path := range []string{bundle.RulesFile, compatRules} {
		for _, g := range readRuleFile(t, filepath.Join(root, path)).Groups {
			rules[path] = append(rules[path], g.Rules...)
		}
	}
	for _, ex := range []string{"payments", "kubernetes"} {
		cfg, err := bundle.LoadConfig(filepath.Join(root, "rules", "examples", ex, "config.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range cfg.RuleGroups() {
			rules["rules/examples/"+ex] = append(rules["rules/examples/"+ex], g.Rules...)
		}
		files, err := cfg.Files()
		if err != nil {
			t.Fatal(err)
		}
		for p, b := range files {
			if strings.HasPrefix(p, bundle.DashboardsDir+"/") {
				dashboards["rules/examples/"+ex+" "+p] = b
			}
		}
	}
	defaults, _ := filepath.Glob(filepath.Join(root, bundle.DashboardsDir, "*.json"))
	for _, f := range defaults {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dashboards[f] = b
	}
	p := parser.NewParser(parser.Options{})
	for path, rs := range rules {
		for _, r := range rs {
			ast, err := p.ParseExpr(r.Expr)
			if err != nil {
				t.Fatalf("%s %s%s: %v", path, r.Record, r.Alert, err)
			}
			parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
				vs, ok := n.(*parser.VectorSelector)
				if !ok {
					return nil
				}
				for _, m := range vs.LabelMatchers {
					if (m.Type == labels.MatchRegexp || m.Type == labels.MatchNotRegexp) && !regexpMeta.MatchString(m.Value) {
						t.Errorf("%s %s%s: %s is a regexp on the static string %q: use = or !=", path, r.Record, r.Alert, m, m.Value)
					}
				}
				return nil
			})
		}
	}
	if len(dashboards) < 12 {
		t.Errorf("only %d dashboards checked", len(dashboards))
	}
	for name, b := range dashboards {
		var d map[string]any
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, q := range bundle.PanelQueries(d) {
			for _, m := range staticRegexp.FindAllStringSubmatch(q.Expr, -1) {
				if !regexpMeta.MatchString(m[1]) {
					t.Errorf("%s / %s: %s is a regexp on a static string", name, q.Panel, m[0])
				}
			}
		}
	}
}

// TestLintDashboards lints the committed dashboards and those of the Kubernetes profile
// (rules/examples/kubernetes), whose tenant variables must follow the same rules.
func TestLintDashboards(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(root, bundle.DashboardsDir, "*.json"))
	if len(files) == 0 {
		t.Fatal("no dashboard")
	}
	docs := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs[filepath.Base(f)] = b
	}
	cfg, err := bundle.LoadConfig(filepath.Join(root, "rules", "examples", "kubernetes", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rendered, err := cfg.Files()
	if err != nil {
		t.Fatal(err)
	}
	for p, b := range rendered {
		if strings.HasPrefix(p, bundle.DashboardsDir+"/") {
			docs["kubernetes profile "+p] = b
		}
	}
	for name, b := range docs {
		var d map[string]any
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		var walk func([]any)
		walk = func(panels []any) {
			for _, p := range panels {
				p := p.(map[string]any)
				title, _ := p["title"].(string)
				if p["type"] == "row" {
					sub, _ := p["panels"].([]any)
					walk(sub)
					continue
				}
				descr, _ := p["description"].(string)
				if strings.TrimSpace(descr) == "" {
					t.Errorf("%s: panel %q has no description", name, title)
				}
				targets, _ := p["targets"].([]any)
				usesInstance := false
				for _, tg := range targets {
					expr, _ := tg.(map[string]any)["expr"].(string)
					if strings.Contains(expr, "$instance") {
						usesInstance = true
					}
					if !strings.Contains(expr, `job=~"$job"`) {
						t.Errorf("%s: panel %q: a query does not select job=~\"$job\": %s", name, title, expr)
					}
				}
				if len(targets) > 0 && !usesInstance && !strings.Contains(descr, "instance variable does not apply") {
					t.Errorf("%s: panel %q ignores the instance variable without saying why", name, title)
				}
			}
		}
		panels, _ := d["panels"].([]any)
		walk(panels)

		tl, _ := d["templating"].(map[string]any)
		list, _ := tl["list"].([]any)
		seenJob := false
		for _, v := range list {
			v := v.(map[string]any)
			if v["name"] == "job" {
				seenJob = true
				if v["multi"] != true || v["includeAll"] != true {
					t.Errorf("%s: the job variable is not multi-select with All", name)
				}
			}
			if v["includeAll"] == true && v["allValue"] != ".+" {
				t.Errorf("%s: variable %v: All is %v, want .+", name, v["name"], v["allValue"])
			}
		}
		if !seenJob {
			t.Errorf("%s: no job variable", name)
		}
	}
}

// counterSafe are the functions pint's promql/counter accepts a counter in: they read its
// increase, its resets or only whether it has samples, never its absolute value.
var counterSafe = map[string]bool{
	"rate": true, "irate": true, "increase": true, "resets": true, "changes": true,
	"count_over_time": true, "present_over_time": true, "absent": true, "absent_over_time": true,
}

// rawCounters lists the counters an expression uses by their absolute value (pint's
// promql/counter): a counter selector (…_total, a histogram's …_bucket) outside the safe
// functions, count and group aggregations, and the right-hand side of `and`/`unless` (which only
// reads labels).
func rawCounters(t *testing.T, expr string) []string {
	t.Helper()
	ast, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Fatalf("%v\n%s", err, expr)
	}
	var raw []string
	parser.Inspect(ast, func(n parser.Node, path []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok || (!strings.HasSuffix(vs.Name, "_total") && !strings.HasSuffix(vs.Name, "_bucket")) {
			return nil
		}
		child := parser.Node(vs)
		for i := len(path) - 1; i >= 0; i-- {
			switch p := path[i].(type) {
			case *parser.Call:
				if counterSafe[p.Func.Name] {
					return nil
				}
			case *parser.AggregateExpr:
				if p.Op == parser.COUNT || p.Op == parser.GROUP {
					return nil
				}
			case *parser.BinaryExpr:
				if (p.Op == parser.LAND || p.Op == parser.LUNLESS) && p.RHS == child {
					return nil
				}
			}
			child = path[i]
		}
		raw = append(raw, vs.Name)
		return nil
	})
	return raw
}

// TestLintCounters pins pint's promql/counter: a rule that uses a counter's absolute value carries
// a reasoned `# pint disable promql/counter` comment above it (the born-counter rules), and no
// rule carries one it does not need. The rendered examples are held to it too.
func TestLintCounters(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, bundle.RulesFile))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{bundle.RulesFile: b}
	for _, ex := range []string{"payments", "kubernetes"} {
		cfg, err := bundle.LoadConfig(filepath.Join(root, "rules", "examples", ex, "config.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		out, err := cfg.Files()
		if err != nil {
			t.Fatal(err)
		}
		files["rules/examples/"+ex] = out[bundle.RulesFile]
	}
	for name, b := range files {
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var groups struct {
			Groups []struct {
				Rules []yaml.Node `yaml:"rules"`
			} `yaml:"groups"`
		}
		if err := doc.Decode(&groups); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		disabled := 0
		for _, g := range groups.Groups {
			for _, n := range g.Rules {
				var r bundle.Rule
				if err := n.Decode(&r); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				raw := rawCounters(t, r.Expr)
				hasDisable := strings.Contains(n.HeadComment, "# pint disable promql/counter")
				reasoned := len(strings.Split(strings.TrimSpace(n.HeadComment), "\n")) >= 2
				switch {
				case len(raw) > 0 && !hasDisable:
					t.Errorf("%s %s%s: uses counters %v by value without a `# pint disable promql/counter` comment", name, r.Record, r.Alert, raw)
				case len(raw) == 0 && hasDisable:
					t.Errorf("%s %s%s: disables promql/counter but uses no counter by value", name, r.Record, r.Alert)
				case hasDisable && !reasoned:
					t.Errorf("%s %s%s: the disable does not say why: %q", name, r.Record, r.Alert, n.HeadComment)
				}
				if hasDisable {
					disabled++
				}
			}
		}
		if disabled == 0 {
			t.Errorf("%s: no born-counter rule found; is the check still reading the comments?", name)
		}
	}
}
