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
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	bin := harness.ExporterBinary(t)
	// Not harness.StartExporter: it waits for /-/healthy, which basic auth guards too.
	cmd := exec.Command(bin, "--broker.url="+redis.URL(0), "--control.disabled",
		"--web.config.file="+webCfg, "--web.listen-address="+addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	get := func(path string, auth bool) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		if auth {
			req.SetBasicAuth("prometheus", "scrape-pw")
		}
		var resp *http.Response
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err = http.DefaultClient.Do(req)
			if err == nil || time.Now().After(deadline) {
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
	if code, _ := get("/metrics", false); code != http.StatusUnauthorized {
		t.Errorf("/metrics without credentials: %d, want 401", code)
	}
	code, body := get("/metrics", true)
	if code != http.StatusOK || !strings.Contains(body, "celery_exporter_build_info{") {
		t.Errorf("/metrics with credentials: %d", code)
	}
	code, body = get("/", true)
	if code != http.StatusOK || !strings.Contains(body, `href="/metrics"`) {
		t.Errorf("landing page: %d %.200s", code, body)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "celery_exporter, version") {
		t.Errorf("--version: %v %s", err, out)
	}
}
