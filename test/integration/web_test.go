package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// --web.config.file is exporter-toolkit's: basic auth guards every endpoint; the landing page
// links the metrics; --version prints the build.
func TestWebConfigBasicAuthAndLandingPage(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	redis := harness.StartRedis(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("scrape-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webCfg := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(webCfg, []byte(fmt.Sprintf("basic_auth_users:\n  prometheus: %s\n", hash)), 0o600); err != nil {
		t.Fatal(err)
	}
	// Not StartExporter: it waits for a 200 from /-/healthy, which basic auth guards too; get waits
	// for the listener instead.
	exp := harness.LaunchExporter(t, nil, "--broker.url="+redis.URL(0), "--control.disabled",
		"--web.config.file="+webCfg)

	get := func(path string, auth bool) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, exp.URL+path, nil)
		if auth {
			req.SetBasicAuth("prometheus", "scrape-pw")
		}
		var resp *http.Response
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err = http.DefaultClient.Do(req)
			if err == nil || exp.Exited() || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, path := range []string{"/metrics", "/", "/-/healthy", "/-/ready"} {
		if code, _ := get(path, false); code != http.StatusUnauthorized {
			t.Errorf("%s without credentials: %d, want 401", path, code)
		}
	}
	code, body := get("/metrics", true)
	if code != http.StatusOK || !strings.Contains(body, "celery_exporter_build_info{") {
		t.Errorf("/metrics with credentials: %d", code)
	}
	code, body = get("/", true)
	if code != http.StatusOK || !strings.Contains(body, `href="/metrics"`) {
		t.Errorf("landing page: %d %.200s", code, body)
	}
	out, err := exec.Command(harness.ExporterBinary(t), "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "celery_exporter, version") {
		t.Errorf("--version: %v %s", err, out)
	}
}

// An exporter set up for danihodovic/celery-exporter keeps working: its CE_BROKER_URL variable is
// read (with a warning) and its probe path /health answers as /-/healthy does. With no broker URL
// anywhere the exporter stops at start with a clear error instead of watching localhost.
func TestOldExporterNamesAndNoBrokerURL(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	redis := harness.StartRedis(t)
	exp := harness.StartExporterEnv(t, []string{"CE_BROKER_URL=" + redis.URL(0)}, "--control.disabled")
	exp.WaitReady(t, 30*time.Second) // subscribed to the events on the broker CE_BROKER_URL names
	for _, path := range []string{"/health", "/-/healthy"} {
		code, body, err := exp.Get(path)
		if err != nil || code != http.StatusOK || body != "Healthy\n" {
			t.Errorf("GET %s: %d %q %v, want 200 \"Healthy\\n\"", path, code, body, err)
		}
	}
	if log := exp.Log(); !strings.Contains(log, "broker URL taken from CE_BROKER_URL") || !strings.Contains(log, "level=warn") {
		t.Errorf("no warning about CE_BROKER_URL in the log:\n%s", harness.Tail(log, 20))
	}

	bare := harness.LaunchExporter(t, nil, "--control.disabled")
	deadline := time.Now().Add(15 * time.Second)
	for !bare.Exited() {
		if time.Now().After(deadline) {
			t.Fatalf("the exporter without a broker URL still runs after 15s:\n%s", harness.Tail(bare.Log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if log := bare.Log(); !strings.Contains(log, "no broker URL: set --broker.url") || strings.Contains(log, "starting celery_exporter") {
		t.Errorf("want an exit before start with the broker URL error:\n%s", harness.Tail(log, 20))
	}
}
