package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// The config file is reloaded by SIGHUP and POST /-/reload on the real binary; an invalid file is
// refused with its line named, keeps the running config, and shows in the reload metric.
func TestReloadConfigFile(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	redis := harness.StartRedis(t)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "app.log")
	if err := os.WriteFile(logPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "exporter.yml")
	writeCfg := func(events ...string) {
		t.Helper()
		cfg := fmt.Sprintf("breakers:\n  - name: zep\n    key: \":1:mem:mode:forced:v1\"\n    format: django-pickle\nlogs:\n  - paths: [%q]\n    format: json\n    from_beginning: true\n    events: [%s]\n",
			logPath, strings.Join(events, ", "))
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg("zep_call_error")
	exp := harness.StartExporter(t, "--broker.url="+redis.URL(0), "--control.disabled", "--config.file="+cfgPath)
	reloadOK := func(m harness.Metrics) float64 {
		v, _ := m.Value("celery_exporter_config_last_reload_successful", nil)
		return v
	}
	exp.WaitFor(t, 10*time.Second, func(m harness.Metrics) bool {
		_, ok := m.Value("celery_breaker_open", map[string]string{"breaker": "zep"})
		return ok && reloadOK(m) == 1
	})

	// An invalid file: refused, the running config stays (the zep breaker is still read).
	if err := os.WriteFile(cfgPath, []byte("breakers:\n  - name: zep\n    format: carrier-pigeon\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, body, err := exp.Post("/-/reload")
	if err != nil || code != 500 || !strings.Contains(body, ":3:") {
		t.Fatalf("POST /-/reload of an invalid file: %d %q %v (want 500 naming line 3)", code, body, err)
	}
	m := exp.MustScrape(t)
	if reloadOK(m) != 0 {
		t.Error("a failed reload must show in celery_exporter_config_last_reload_successful")
	}
	if _, ok := m.Value("celery_breaker_open", map[string]string{"breaker": "zep"}); !ok {
		t.Error("the running config must be kept after a failed reload")
	}

	// A valid file again, by SIGHUP: a new log event becomes a label value.
	writeCfg("zep_call_error", "zep_call_failure")
	if err := exp.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	exp.WaitFor(t, 10*time.Second, func(m harness.Metrics) bool {
		_, ok := m.Value("celery_log_events_total", map[string]string{"event": "zep_call_failure", "level": "warning"})
		return ok && reloadOK(m) == 1
	})
	if code, _, _ := exp.Post("/-/reload"); code != 200 {
		t.Errorf("POST /-/reload of a valid file: %d", code)
	}
	if code, _, _ := exp.Get("/-/reload"); code != 405 {
		t.Errorf("GET /-/reload: %d, want 405", code)
	}
}
