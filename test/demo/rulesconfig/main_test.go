package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
)

func TestMerge(t *testing.T) {
	base := `selector: job="celery"
windows: {a: 10m, b: 15m}
for: {X: 2m, Y: 0s}
queues: {expected: [chat, default], backlog_warning: 5}
alert_labels: {}
`
	tests := []struct {
		name      string
		overrides string
		want      string // YAML of the merged document
		err       string
	}{
		{"nested maps merge key by key", "for: {X: 15s}\nwindows: {b: 5m}",
			"selector: job=\"celery\"\nwindows: {a: 10m, b: 5m}\nfor: {X: 15s, Y: 0s}\nqueues: {expected: [chat, default], backlog_warning: 5}\nalert_labels: {}", ""},
		{"lists are replaced, not appended", "queues: {expected: [dlq]}",
			"selector: job=\"celery\"\nwindows: {a: 10m, b: 15m}\nfor: {X: 2m, Y: 0s}\nqueues: {expected: [dlq], backlog_warning: 5}\nalert_labels: {}", ""},
		{"open maps take new keys", "alert_labels: {team: demo}",
			"selector: job=\"celery\"\nwindows: {a: 10m, b: 15m}\nfor: {X: 2m, Y: 0s}\nqueues: {expected: [chat, default], backlog_warning: 5}\nalert_labels: {team: demo}", ""},
		{"empty overrides keep the base", "",
			"selector: job=\"celery\"\nwindows: {a: 10m, b: 15m}\nfor: {X: 2m, Y: 0s}\nqueues: {expected: [chat, default], backlog_warning: 5}\nalert_labels: {}", ""},
		{"an unknown top-level field is an error", "windw: {a: 1m}", "", "field windw is not in the base config"},
		{"bad YAML is an error", "for: [", "", "parse"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bp, op := filepath.Join(dir, "base.yaml"), filepath.Join(dir, "over.yaml")
			if err := os.WriteFile(bp, []byte(base), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(op, []byte(tc.overrides), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := mergeFiles(bp, op)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var gotDoc, wantDoc any
			if err := yaml.Unmarshal(got, &gotDoc); err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal([]byte(tc.want), &wantDoc); err != nil {
				t.Fatal(err)
			}
			g, _ := yaml.Marshal(gotDoc)
			w, _ := yaml.Marshal(wantDoc)
			if string(g) != string(w) {
				t.Errorf("merged:\n%s\nwant:\n%s", g, w)
			}
		})
	}
}

// TestDemoOverrides renders the demo's real variant: the committed overrides must fit the
// current rules/config.yaml and give the short durations the fault buttons rely on.
func TestDemoOverrides(t *testing.T) {
	merged, err := mergeFiles("../../../rules/config.yaml", "../rules-overrides.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := bundle.ParseConfig(merged)
	if err != nil {
		t.Fatalf("the merged demo config is not a valid rules config: %v", err)
	}
	// Each fault button's alert fires within two minutes of the fault.
	for alert, limit := range map[string]string{
		"CeleryWorkersBelowExpected": "15s", "CeleryQueueWithoutConsumers": "45s",
		"CeleryQueueBacklog": "75s", "ZepMemoryDegraded": "10s", "ZepCallErrors": "0s",
	} {
		want, _ := bundle.ParseDuration(limit)
		if got := cfg.For[alert]; got != want {
			t.Errorf("for.%s = %v, want %v", alert, got, want)
		}
	}
	// Production's order, so the shipped inhibitions hold the later alerts back: a dead worker's
	// alert fires before its queues' consumer alert, which fires before their backlogs.
	order := []string{"CeleryWorkersBelowExpected", "CeleryQueueWithoutConsumers", "CeleryQueueBacklog", "CeleryQueueBacklogCritical"}
	for i := 1; i < len(order); i++ {
		if cfg.For[order[i-1]] >= cfg.For[order[i]] {
			t.Errorf("for.%s (%v) is not shorter than for.%s (%v)", order[i-1], cfg.For[order[i-1]], order[i], cfg.For[order[i]])
		}
	}
	if _, err := cfg.Files(); err != nil {
		t.Errorf("render: %v", err)
	}
}
