package dashboards_test

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
	"github.com/celery-exporter/celery_exporter/rules/bundle/bundletest"
)

// TestKubernetesProfile renders rules/examples/kubernetes (aggregation_labels [namespace, job]),
// and a variant of it across clusters ([cluster, namespace, job]): every dashboard gets the
// tenant variables, multi-select with All = .+, chained before job; every panel query selects
// them and keeps them in every grouping (a stat may reduce the selection to one number, a heatmap
// draws one distribution), every legend names them, stat links carry them, and every alert's
// dashboard link opens on the alert's tenant.
func TestKubernetesProfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		labels  []string
		tenants []string
	}{
		{"namespace", nil, []string{"namespace"}},
		{"cluster", []string{"cluster", "namespace", "job"}, []string{"cluster", "namespace"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := bundle.LoadConfig(filepath.Join("..", "rules", "examples", "kubernetes", "config.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if tc.labels != nil {
				cfg.AggregationLabels = tc.labels
				if err := cfg.Validate(); err != nil {
					t.Fatal(err)
				}
			}
			files, err := cfg.Files()
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range bundle.Dashboards() {
				var doc obj
				if err := json.Unmarshal(files[bundle.DashboardsDir+"/"+d.File()], &doc); err != nil {
					t.Fatalf("%s: %v", d.UID, err)
				}
				checkTenantVariables(t, d.UID, doc, tc.tenants)
				checkTenantQueries(t, d.UID, doc, tc.tenants)
			}
			for _, g := range cfg.RuleGroups() {
				for _, r := range g.Rules {
					if r.Alert == "" {
						continue
					}
					u := r.Annotations["dashboard_url"]
					for _, l := range append(slices.Clone(tc.tenants), "job") {
						if !strings.Contains(u, "var-"+l+"={{ $labels."+l+" | urlquery }}") {
							t.Errorf("%s: dashboard_url %s does not open on the alert's %s", r.Alert, u, l)
						}
					}
				}
			}
		})
	}
}

func checkTenantVariables(t *testing.T, uid string, doc obj, tenants []string) {
	t.Helper()
	var names []string
	vars := map[string]obj{}
	for _, v := range doc["templating"].(obj)["list"].([]any) {
		vm := v.(obj)
		names = append(names, vm["name"].(string))
		vars[vm["name"].(string)] = vm
	}
	want := append(append([]string{"datasource"}, tenants...), "job", "instance", "queue")
	if uid == "celery-tasks" {
		want = append(want, "task")
	}
	if !slices.Equal(names, want) {
		t.Errorf("%s: variables %v, want %v", uid, names, want)
	}
	for i, l := range tenants {
		v := vars[l]
		if v == nil {
			continue
		}
		if v["multi"] != true || v["includeAll"] != true || v["allValue"] != ".+" {
			t.Errorf("%s: %s is not multi-select with All = .+: %v", uid, l, v)
		}
		// Chained: each lists its values under the variables before it.
		wantDef := "label_values(celery_up, " + l + ")"
		if i > 0 {
			wantDef = "label_values(celery_up{" + strings.Join(tenantMatchers(tenants[:i]), ", ") + "}, " + l + ")"
		}
		if v["definition"] != wantDef {
			t.Errorf("%s: %s definition %v, want %s", uid, l, v["definition"], wantDef)
		}
	}
	for name, def := range bundle.VariableQueries(doc) {
		if slices.Contains(tenants, name) {
			continue
		}
		for _, m := range tenantMatchers(tenants) {
			if !strings.Contains(def, m) {
				t.Errorf("%s: variable %s (%s) is not chained to %s", uid, name, def, m)
			}
		}
	}
}

func tenantMatchers(tenants []string) []string {
	var ms []string
	for _, l := range tenants {
		ms = append(ms, l+`=~"$`+l+`"`)
	}
	return ms
}

// checkTenantQueries parses every panel query, with each tenant variable expanded to a value of
// its own, and checks its selectors, groupings, legend and links.
func checkTenantQueries(t *testing.T, uid string, doc obj, tenants []string) {
	t.Helper()
	vals := bundle.DefaultVarValues()
	for _, l := range tenants {
		vals[l] = "tenant_" + l
	}
	panels := map[string]obj{}
	for _, p := range doc["panels"].([]any) {
		pm := p.(obj)
		panels[pm["title"].(string)] = pm
		for _, l := range asList(pm["links"]) {
			u := l.(obj)["url"].(string)
			for _, tl := range tenants {
				if !strings.Contains(u, "${"+tl+":queryparam}") {
					t.Errorf("%s / %s: link %s drops %s", uid, pm["title"], u, tl)
				}
			}
		}
		for _, tg := range asList(pm["targets"]) {
			tm := tg.(obj)
			legend, _ := tm["legendFormat"].(string)
			if pm["type"] == "stat" || pm["type"] == "heatmap" || tm["format"] == "table" || legend == "__auto" {
				continue
			}
			for _, l := range tenants {
				if !strings.Contains(legend, "{{"+l+"}}") {
					t.Errorf("%s / %s: legend %q does not name the %s", uid, pm["title"], legend, l)
				}
			}
		}
	}
	n := 0
	for _, q := range bundle.PanelQueries(doc) {
		n++
		where := uid + " / " + q.Panel + " / " + q.RefID
		kind := panels[q.Panel]["type"]
		expr := bundle.ExpandVars(q.Expr, vals)
		bundletest.CheckExpr(t, where, expr, tenants...)
		ast, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
		if err != nil {
			continue // CheckExpr reported it
		}
		hasAll := func(ls []string) bool {
			for _, l := range tenants {
				if !slices.Contains(ls, l) {
					return false
				}
			}
			return true
		}
		parser.Inspect(ast, func(node parser.Node, path []parser.Node) error {
			switch e := node.(type) {
			case *parser.VectorSelector:
				for _, l := range tenants {
					if !slices.ContainsFunc(e.LabelMatchers, func(m *labels.Matcher) bool {
						return m.Name == l && m.Value == "tenant_"+l
					}) {
						t.Errorf("%s: %s does not select the %s variable", where, e, l)
					}
				}
			case *parser.AggregateExpr:
				switch {
				case e.Without:
					t.Errorf("%s: %s aggregates without", where, e.Op)
				case len(e.Grouping) == 0:
					// A stat reduces the whole selection to one number, on purpose.
					if kind != "stat" || insideAggregation(path) {
						t.Errorf("%s: %s(...) adds the tenants up", where, e.Op)
					}
				case slices.Equal(e.Grouping, []string{"le"}) && kind == "heatmap":
					// One distribution for the selection (said in the description).
				case !hasAll(e.Grouping):
					t.Errorf("%s: %s by (%s) adds the tenants up", where, e.Op, strings.Join(e.Grouping, ", "))
				}
			case *parser.BinaryExpr:
				if vm := e.VectorMatching; vm != nil && vm.On && len(vm.MatchingLabels) > 0 && !hasAll(vm.MatchingLabels) {
					t.Errorf("%s: on (%s) matches across tenants", where, strings.Join(vm.MatchingLabels, ", "))
				}
			}
			return nil
		})
	}
	if n == 0 {
		t.Errorf("%s: no queries", uid)
	}
}

// insideAggregation says whether a node sits inside an aggregation (path holds its parents).
func insideAggregation(path []parser.Node) bool {
	for _, p := range path {
		if _, ok := p.(*parser.AggregateExpr); ok {
			return true
		}
	}
	return false
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}
