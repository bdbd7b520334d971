package rules_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

const compatRules = "rules/compat/danihodovic-celery-exporter.rules.yml"

// TestCompatRulesPromtool checks the compatibility rules for danihodovic/celery-exporter's names
// with promtool and its unit tests, and that every recorded old name is tested and listed in
// docs/migrating.md. TestCompatRulesServeTheOldMixin (test/integration) runs them on real workers.
func TestCompatRulesPromtool(t *testing.T) {
	harness.Require(t, "promtool")
	if out, err := runTool(t, "promtool", "check", "rules", compatRules); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if out, err := runTool(t, "promtool", "test", "rules", "rules/compat/tests.yml"); err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}

	rf := readRuleFile(t, filepath.Join(root, compatRules))
	b, err := os.ReadFile(filepath.Join(root, "rules/compat/tests.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var pt promtoolTests
	if err := yaml.Unmarshal(b, &pt); err != nil {
		t.Fatal(err)
	}
	var tested []string
	for _, tc := range pt.Tests {
		for _, e := range tc.ExprTest {
			tested = append(tested, e.Expr)
		}
	}
	doc, err := os.ReadFile(filepath.Join(root, "docs/migrating.md"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			n++
			if r.Record == "" {
				t.Errorf("%s: only recording rules belong here, got alert %s", compatRules, r.Alert)
				continue
			}
			if !slices.Contains(tested, r.Record) {
				t.Errorf("%s: no promql_expr_test reads %s", "rules/compat/tests.yml", r.Record)
			}
			if !strings.Contains(string(doc), "`"+r.Record+"`") {
				t.Errorf("docs/migrating.md does not name %s", r.Record)
			}
		}
	}
	if n == 0 {
		t.Fatalf("%s has no rule", compatRules)
	}
}
