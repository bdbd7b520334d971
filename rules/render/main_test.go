package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const seedConfig = "../config.yaml"

func TestRun(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer

	// Nothing rendered yet: -check fails and lists every file as missing.
	if code := run([]string{"-config", seedConfig, "-out", dir, "-check"}, &out, &errOut); code != 1 {
		t.Fatalf("check on an empty dir: exit %d, want 1; stderr:\n%s", code, errOut.String())
	}
	if !strings.Contains(errOut.String(), filepath.FromSlash("rules/celery.rules.yml")+" (missing)") {
		t.Errorf("check does not list the missing rule file:\n%s", errOut.String())
	}

	out.Reset()
	errOut.Reset()
	if code := run([]string{"-config", seedConfig, "-out", dir}, &out, &errOut); code != 0 {
		t.Fatalf("render: exit %d; stderr:\n%s", code, errOut.String())
	}
	if got := out.String(); got != "render: wrote 11 files under "+dir+"\n" {
		t.Errorf("render output %q", got)
	}

	out.Reset()
	errOut.Reset()
	if code := run([]string{"-config", seedConfig, "-out", dir, "-check"}, &out, &errOut); code != 0 {
		t.Fatalf("check after render: exit %d; stderr:\n%s", code, errOut.String())
	}
	if got := out.String(); got != "render: 11 rendered files are up to date\n" {
		t.Errorf("check output %q", got)
	}

	// A hand edit of a rendered file is caught.
	path := filepath.Join(dir, "deploy", "kubernetes", "base", "prometheusrule.yaml")
	if err := os.WriteFile(path, []byte("edited\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	errOut.Reset()
	if code := run([]string{"-config", seedConfig, "-out", dir, "-check"}, &out, &errOut); code != 1 {
		t.Fatalf("check after an edit: exit %d, want 1", code)
	}
	if !strings.Contains(errOut.String(), filepath.FromSlash("deploy/kubernetes/base/prometheusrule.yaml")+" (differs)") {
		t.Errorf("edit not reported:\n%s", errOut.String())
	}
}

func TestRunErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("selector: \"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		code    int
		wantErr string
	}{
		{"unknown flag", []string{"-nope"}, 2, "flag provided but not defined: -nope"},
		{"stray argument", []string{"extra"}, 2, `unexpected arguments ["extra"]`},
		{"missing config", []string{"-config", "/nonexistent.yaml"}, 1, "read rules config: open /nonexistent.yaml"},
		{"invalid config", []string{"-config", bad, "-out", t.TempDir()}, 1, "field selector: must hold at least one label matcher"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(tc.args, &out, &errOut); code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			if !strings.Contains(errOut.String(), tc.wantErr) {
				t.Errorf("stderr %q lacks %q", errOut.String(), tc.wantErr)
			}
		})
	}
}

// TestRunHelmValues: -helm-values writes the render's rule file and dashboards as chart values.
func TestRunHelmValues(t *testing.T) {
	dir := t.TempDir()
	values := filepath.Join(dir, "values.yaml")
	var out, errOut bytes.Buffer
	if code := run([]string{"-config", seedConfig, "-out", dir, "-helm-values", values}, &out, &errOut); code != 0 {
		t.Fatalf("render: exit %d; stderr:\n%s", code, errOut.String())
	}
	b, err := os.ReadFile(values)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		PrometheusRule struct{ Rules string } `yaml:"prometheusRule"`
		Dashboards     struct{ Files map[string]string }
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	rules, err := os.ReadFile(filepath.Join(dir, "rules", "celery.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if v.PrometheusRule.Rules != strings.TrimRight(string(rules), "\n") {
		t.Errorf("prometheusRule.rules is not the rendered rule file")
	}
	if len(v.Dashboards.Files) != 4 {
		t.Errorf("dashboards.files holds %d dashboards, want 4", len(v.Dashboards.Files))
	}
	for name, js := range v.Dashboards.Files {
		want, err := os.ReadFile(filepath.Join(dir, "dashboards", name))
		if err != nil || js != strings.TrimRight(string(want), "\n") {
			t.Errorf("dashboards.files[%s] is not dashboards/%s (%v)", name, name, err)
		}
	}
}
