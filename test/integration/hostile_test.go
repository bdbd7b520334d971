package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// A Redis that stops answering (CLIENT PAUSE: every client's commands wait) must not hold a
// scrape past --scrape.timeout: the scrape answers in time with the broker source failed, so
// Prometheus records celery_up 0, not a failed scrape (up 0).
func TestHostileScrapeTimeoutWithHangingRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	harness.Require(t, "redis-server")
	r := harness.StartRedis(t)
	exp := harness.StartExporter(t, "--broker.url="+r.URL(0), "--scrape.timeout=1s", "--control.disabled")
	exp.WaitReady(t, 20*time.Second)
	exp.WaitFor(t, 20*time.Second, func(m harness.Metrics) bool {
		v, _ := m.Value("celery_exporter_collector_success", map[string]string{"collector": "broker"})
		return v == 1
	})

	if _, err := r.Do("CLIENT", "PAUSE", "30000", "ALL"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = r.Do("CLIENT", "UNPAUSE") })
	for i := 0; i < 3; i++ { // abandoned reads of one scrape must not slow the next
		start := time.Now()
		m := exp.MustScrape(t)
		took := time.Since(start)
		// 1s deadline plus slack for a busy machine; go-redis alone waits 3s per command.
		if took > 2500*time.Millisecond {
			t.Errorf("scrape %d took %v with --scrape.timeout=1s", i, took)
		}
		if v, ok := m.Value("celery_exporter_collector_success", map[string]string{"collector": "broker"}); !ok || v != 0 {
			t.Errorf("scrape %d: collector_success{broker} = %v (found %v), want 0", i, v, ok)
		}
		if v, ok := m.Value("celery_up", nil); !ok || v != 0 {
			t.Errorf("scrape %d: celery_up = %v (found %v), want 0", i, v, ok)
		}
	}
}

// Every shipped scrape config leaves Prometheus' scrape_timeout at least 1s above the exporter's
// --scrape.timeout (its default, or the flag the demo passes), so a slow broker shows as a failed
// collector inside a scrape that arrives, never as up 0.
func TestDeployScrapeTimeoutMargin(t *testing.T) {
	root := harness.ModuleRoot(t)
	help, err := exec.Command(harness.ExporterBinary(t), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, help)
	}
	m := regexp.MustCompile(`--scrape\.timeout=(\S+)`).FindSubmatch(help)
	if m == nil {
		t.Fatalf("no --scrape.timeout default in --help:\n%s", help)
	}
	def, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	demoRun, err := os.ReadFile(filepath.Join(root, "test/demo/run.sh"))
	if err != nil {
		t.Fatal(err)
	}
	demo := def
	if m := regexp.MustCompile(`--scrape\.timeout=(\S+)`).FindSubmatch(demoRun); m != nil {
		if demo, err = time.ParseDuration(string(m[1])); err != nil {
			t.Fatal(err)
		}
	}
	timeoutRe := regexp.MustCompile(`(?m)^\s*(?:scrape_timeout|scrapeTimeout):\s*(\S+)`)
	for file, exporter := range map[string]time.Duration{
		"deploy/prometheus/prometheus.yml":           def,
		"deploy/docker-compose/prometheus.yml":       def,
		"deploy/kubernetes/base/servicemonitor.yaml": def,
		"test/demo/prometheus.yml.in":                demo,
	} {
		b, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		found := timeoutRe.FindAllSubmatch(b, -1)
		if len(found) == 0 {
			t.Errorf("%s: no scrape timeout set (Prometheus' default 10s then applies)", file)
		}
		for _, f := range found {
			prom, err := time.ParseDuration(string(f[1]))
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if prom-exporter < time.Second {
				t.Errorf("%s: scrape timeout %v leaves less than 1s above the exporter's --scrape.timeout %v", file, prom, exporter)
			}
		}
	}
}
