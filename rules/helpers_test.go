package rules_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

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

// runTool runs a command from the repository root and returns its combined output.
func runTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// writeRender renders cfg into a temporary directory and returns it with the rendered files.
func writeRender(t *testing.T, cfg *bundle.Config) (string, map[string][]byte) {
	t.Helper()
	files, err := cfg.Files()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := bundle.Write(dir, files); err != nil {
		t.Fatal(err)
	}
	return dir, files
}
