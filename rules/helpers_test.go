package rules_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
)

// root is the repository root, seen from this package's directory.
const root = ".."

type ruleFile struct {
	Groups []bundle.RuleGroup `yaml:"groups"`
}

func readRuleFile(t *testing.T, path string) ruleFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read rule file: %v", err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	return rf
}

func loadSeedConfig(t *testing.T) *bundle.Config {
	t.Helper()
	cfg, err := bundle.LoadConfig(filepath.Join(root, "rules", "config.yaml"))
	if err != nil {
		t.Fatalf("load config: %v", err)
	}
	return cfg
}

func alertsByName(rf ruleFile) map[string]bundle.Rule {
	out := map[string]bundle.Rule{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out[r.Alert] = r
			}
		}
	}
	return out
}

var promql = parser.NewParser(parser.Options{})

// checkSelectors parses expr and checks every selector against the metric contract: known
// metric names (or recorded ones) and only their labels in matchers.
func checkSelectors(t *testing.T, where, expr string) {
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
			if m.Name == "__name__" || slices.Contains(bundle.TargetLabels, m.Name) {
				continue
			}
			if !slices.Contains(labels, m.Name) {
				t.Errorf("%s: %s has no label %q (labels: %v)", where, vs.Name, m.Name, labels)
			}
		}
		return nil
	})
}

// runTool runs a command from the repository root and returns its combined output.
func runTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	return string(out), err
}
