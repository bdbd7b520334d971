// Package bundletest holds the checks the rule and dashboard tests share.
package bundletest

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
)

var promql = parser.NewParser(parser.Options{})

// CheckExpr parses expr with Prometheus' parser and checks every selector against the metric
// contract: a known metric name (the exporter's, Prometheus' own or a recorded one) and, in its
// matchers, only that metric's labels or the target labels. Failures are reported on t, prefixed
// with where. extraTargetLabels are target labels the deployment adds besides job and instance
// (aggregation_labels such as namespace).
func CheckExpr(t testing.TB, where, expr string, extraTargetLabels ...string) {
	t.Helper()
	ast, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: does not parse: %v\n%s", where, err, expr)
		return
	}
	parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		labels, known := bundle.ContractMetrics[vs.Name]
		if !known {
			labels, known = bundle.RecordedMetrics[vs.Name]
		}
		if !known {
			t.Errorf("%s: metric %q is neither in the exporter's contract nor recorded", where, vs.Name)
			return nil
		}
		for _, m := range vs.LabelMatchers {
			if m.Name == "__name__" || slices.Contains(bundle.TargetLabels, m.Name) || slices.Contains(extraTargetLabels, m.Name) {
				continue
			}
			if !slices.Contains(labels, m.Name) {
				t.Errorf("%s: %s has no label %q (labels: %v)", where, vs.Name, m.Name, labels)
			}
		}
		return nil
	})
}

// AsJSON normalises a decoded YAML or JSON value (or a Go value) to what encoding/json makes of
// it, so documents decoded by different means compare with reflect.DeepEqual.
func AsJSON(t testing.TB, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
