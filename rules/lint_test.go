package rules_test

// The checks of the ecosystem's linters that matter here, pinned as our own tests (pint and
// dashboard-linter do not install from the Go module proxy or npm):
//   - pint promql/regexp: no regexp matcher on a static string (`exception=~"WorkerLostError"`);
//   - dashboard-linter: every panel has a description; every query honours the instance variable
//     or the panel says why not; the job variable is multi-select; "All" is `.+`, not `.*`;
//     every query is scoped by the job variable.
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

	"github.com/celery-exporter/celery_exporter/rules/bundle"
)

// regexpMeta is what makes a regexp more than a literal string.
var regexpMeta = regexp.MustCompile(`[.*+?()|\[\]{}^$\\]`)

func TestLintNoRegexpOnStaticString(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	for _, path := range []string{bundle.RulesFile, compatRules} {
		rf := readRuleFile(t, filepath.Join(root, path))
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
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
	}
}

func TestLintDashboards(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(root, bundle.DashboardsDir, "*.json"))
	if len(files) == 0 {
		t.Fatal("no dashboard")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d map[string]any
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(f)
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
