package harness

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Prometheus scrapes, evaluates a rule, and hands the alert to Alertmanager.
func TestPrometheusAndAlertmanager(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts prometheus and alertmanager")
	}
	am := StartAlertmanager(t, "route:\n  receiver: blackhole\n  group_wait: 0s\nreceivers:\n  - name: blackhole\n")
	rules := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(rules, []byte(`groups:
  - name: harness
    rules:
      - alert: HarnessAlwaysFiring
        expr: vector(1)
        labels: {severity: warning}
        annotations: {summary: "always"}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	prom := StartPrometheus(t, PrometheusConfig(PromConfig{
		Jobs:          map[string][]string{"alertmanager": {am.Addr}},
		Alertmanagers: []string{am.Addr},
	}), rules)
	res := prom.WaitForQuery(t, `up{job="alertmanager"}`, 20*time.Second, func(r []QuerySample) bool {
		return len(r) == 1 && r[0].Value == 1
	})
	if res[0].Labels["instance"] != am.Addr {
		t.Errorf("up labels %v", res[0].Labels)
	}
	a := prom.WaitForAlert(t, "HarnessAlwaysFiring", "firing", 20*time.Second)
	if a.Labels["severity"] != "warning" || a.Annotations["summary"] != "always" {
		t.Errorf("alert %+v", a)
	}
	am.WaitForAlert(t, "HarnessAlwaysFiring", "active", 30*time.Second)
	if r, err := prom.Query("1 + 1"); err != nil || len(r) != 1 || r[0].Value != 2 {
		t.Errorf("scalar query: %v %v", r, err)
	}
	if _, err := prom.Query("sum("); err == nil {
		t.Error("bad expression gave no error")
	}
}
