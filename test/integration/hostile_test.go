package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// netOutput is what the Redis server has sent to its clients so far (INFO stats).
func netOutput(t *testing.T, c *redis.Client) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_net_output_bytes:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no total_net_output_bytes in INFO stats:\n%s", info)
	return 0
}

// A breaker or app value of 20 MB (a 100 MB one was read whole at every
// scrape, 2.1 GiB RSS under 10 scrapers) is refused after reading its first MiB: the real Redis
// sends a bounded amount per scrape, the read is counted as oversize.
func TestHostileOversizeAppValueIsNotFetched(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	harness.Require(t, "redis-server")
	r := harness.StartRedis(t)
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { c.Close() })
	const size = 20 << 20
	if err := c.Set(context.Background(), "flag", strings.Repeat("x", size), 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(context.Background(), "counter", strings.Repeat("7", size), 0).Err(); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "cfg.yml")
	if err := os.WriteFile(cfg, []byte("breakers:\n  - {name: big, key: flag, format: json}\napp_values:\n  - {name: big, key: counter}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	exp := harness.StartExporter(t, "--broker.url="+r.URL(0), "--config.file="+cfg, "--control.disabled")
	exp.MustScrape(t) // connections made
	before := netOutput(t, c)
	m := exp.MustScrape(t)
	sent := netOutput(t, c) - before
	if sent > 4<<20 {
		t.Errorf("Redis sent %d bytes for one scrape of two 20 MB values; want at most about 2 MiB", sent)
	}
	if v, ok := m.Value("celery_breaker_read_ok", map[string]string{"breaker": "big"}); !ok || v != 0 {
		t.Errorf("celery_breaker_read_ok{big} = %v (found %v), want 0", v, ok)
	}
	if m.Has("celery_app_value") {
		t.Errorf("an oversize app value must not be reported:\n%s", m.Text)
	}
	if v, _ := m.Value("celery_exporter_app_values_oversize_total", nil); v != 4 { // two values, two scrapes
		t.Errorf("celery_exporter_app_values_oversize_total = %v, want 4", v)
	}
}

// The broker back after an outage of 14s (the backoff had grown to 30s, so
// the exporter resubscribed 11s after the broker's return): subscribed again within seconds.
// While down, /-/ready answers 503 and the gap is counted.
func TestHostileResubscribesSoonAfterOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	harness.Require(t, "redis-server")
	port := harness.FreePort(t)
	r := harness.StartRedisOnPort(t, port)
	exp := harness.StartExporter(t, "--broker.url="+r.URL(0), "--control.disabled")
	exp.WaitReady(t, 20*time.Second)

	r.Stop()
	down := time.Now()
	exp.WaitFor(t, 20*time.Second, func(m harness.Metrics) bool {
		v, _ := m.Value("celery_exporter_subscription_up", nil)
		return v == 0
	})
	if code, _, _ := exp.Get("/-/ready"); code != 503 {
		t.Errorf("/-/ready = %d while the subscription is down, want 503", code)
	}
	for time.Since(down) < 14*time.Second { // the outage under test, not synchronisation
		time.Sleep(200 * time.Millisecond)
	}
	harness.StartRedisOnPort(t, port)
	back := time.Now()
	m := exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		v, _ := m.Value("celery_exporter_subscription_up", nil)
		return v == 1
	})
	// MaxBackoff 2s plus a busy machine's slack; the old 30s cap took 11s here.
	if took := time.Since(back); took > 6*time.Second {
		t.Errorf("resubscribed %v after the broker came back", took)
	}
	if v, _ := m.Value("celery_exporter_subscription_down_seconds_total", nil); v < 13 || v > 60 {
		t.Errorf("celery_exporter_subscription_down_seconds_total = %v after a 14s outage", v)
	}
	if code, _, _ := exp.Get("/-/ready"); code != 200 {
		t.Errorf("/-/ready = %d once subscribed again", code)
	}
}
