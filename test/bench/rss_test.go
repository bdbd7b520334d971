package bench

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// The RSS benchmarks run the real binary (CELERY_EXPORTER_BIN, as make bench sets it) against a
// real redis-server under the loads and report its peak resident memory (VmHWM) as
// peak-RSS-MiB. They measure the whole process as deployed, so a figure is comparable between
// binaries: run them with CELERY_EXPORTER_BIN pointing at an older build for "before".

// peakRSS reads VmHWM of pid, in MiB.
func peakRSS(b *testing.B, pid int) float64 {
	b.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb / 1024
		}
	}
	b.Fatal("no VmHWM")
	return 0
}

// eventMessage wraps events in a kombu envelope, as a worker publishes them.
func eventMessage(events ...map[string]any) string {
	var body any = events
	if len(events) == 1 {
		body = events[0]
	}
	raw, _ := json.Marshal(body)
	env, _ := json.Marshal(map[string]any{
		"body": base64.StdEncoding.EncodeToString(raw), "content-encoding": "utf-8", "content-type": "application/json",
		"headers":    map[string]any{"hostname": "celery@w"},
		"properties": map[string]any{"delivery_mode": 1, "body_encoding": "base64", "delivery_tag": "x", "priority": 0},
	})
	return string(env)
}

// publishAll publishes msgs in pipelines of 1000, pacing so the exporter's subscription (and its
// 32 MB Redis output buffer) is not the thing measured.
func publishAll(b *testing.B, c *redis.Client, msgs func(i int) string, n int) {
	b.Helper()
	ctx := context.Background()
	for i := 0; i < n; {
		pipe := c.Pipeline()
		for j := 0; j < 1000 && i < n; j, i = j+1, i+1 {
			pipe.Publish(ctx, "/0.celeryev/task.multi", msgs(i))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startRSSWorld(b *testing.B) (*harness.Redis, *redis.Client, *harness.Exporter) {
	b.Helper()
	harness.Require(b, "redis-server")
	r := harness.StartRedis(b)
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	b.Cleanup(func() { c.Close() })
	exp := harness.StartExporter(b, "--broker.url="+r.URL(0), "--control.disabled")
	exp.WaitReady(b, 20*time.Second)
	return r, c, exp
}

// waitEvents waits until the exporter has counted the events of n messages of per events each
// (applied, or dropped on a full buffer).
func waitEvents(b *testing.B, exp *harness.Exporter, n, per float64) {
	b.Helper()
	exp.WaitFor(b, 5*time.Minute, func(m harness.Metrics) bool {
		return m.Sum("celery_exporter_events_total", nil)+per*m.Sum("celery_exporter_event_errors_total", map[string]string{"reason": "buffer_full"}) >= n*per
	})
}

// BenchmarkRSSHostileFlood: 200,000 task lives, each on its own queue name, with 200-byte uuids
// and 50 task names of over 1 KiB, then one scrape.
func BenchmarkRSSHostileFlood(b *testing.B) {
	const tasks = 200000
	for i := 0; i < b.N; i++ {
		_, c, exp := startRSSWorld(b)
		long := strings.Repeat("x", 1024)
		publishAll(b, c, func(i int) string {
			id := fmt.Sprintf("%d-%s", i, long[:190])
			return eventMessage(
				map[string]any{"type": "task-sent", "uuid": id, "name": fmt.Sprintf("t.%d.%s", i%50, long), "queue": fmt.Sprintf("q%d", i), "hostname": "gen1@p", "timestamp": 1},
				map[string]any{"type": "task-received", "uuid": id, "hostname": "celery@w", "timestamp": 1},
				map[string]any{"type": "task-succeeded", "uuid": id, "hostname": "celery@w", "runtime": 0.1, "timestamp": 1},
			)
		}, tasks)
		waitEvents(b, exp, tasks, 3)
		start := time.Now()
		exp.MustScrape(b)
		b.ReportMetric(time.Since(start).Seconds(), "scrape-s")
		b.ReportMetric(peakRSS(b, exp.PID()), "peak-RSS-MiB")
	}
}

// BenchmarkRSSScrapeStorm: a legitimate large /metrics (1000 task names × 20 workers, a full
// task life each) scraped by 20 clients at once, 5 times over.
func BenchmarkRSSScrapeStorm(b *testing.B) {
	const names, workers = 1000, 20
	for i := 0; i < b.N; i++ {
		_, c, exp := startRSSWorld(b)
		publishAll(b, c, func(i int) string {
			id := strconv.Itoa(i)
			host := fmt.Sprintf("celery@w%d", i%workers)
			return eventMessage(
				map[string]any{"type": "task-sent", "uuid": id, "name": fmt.Sprintf("app.tasks.t%d", (i/workers)%names), "queue": "default", "hostname": "gen1@p", "timestamp": 1},
				map[string]any{"type": "task-received", "uuid": id, "hostname": host, "timestamp": 1},
				map[string]any{"type": "task-started", "uuid": id, "hostname": host, "timestamp": 1},
				map[string]any{"type": "task-succeeded", "uuid": id, "hostname": host, "runtime": 0.1, "timestamp": 2},
			)
		}, names*workers)
		waitEvents(b, exp, names*workers, 4)
		var size int64
		var failed int
		var mu sync.Mutex
		start := time.Now()
		for round := 0; round < 5; round++ {
			var wg sync.WaitGroup
			for j := 0; j < 20; j++ {
				wg.Go(func() {
					resp, err := (&http.Client{Timeout: 2 * time.Minute}).Get(exp.URL + "/metrics")
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						failed++
						return
					}
					defer resp.Body.Close()
					n, _ := io.Copy(io.Discard, resp.Body)
					if resp.StatusCode != http.StatusOK {
						failed++
						return
					}
					size = n
				})
			}
			wg.Wait()
		}
		b.ReportMetric(time.Since(start).Seconds()/5, "round-s")
		b.ReportMetric(float64(size)/(1<<20), "metrics-MiB")
		b.ReportMetric(float64(failed), "failed-scrapes")
		b.ReportMetric(peakRSS(b, exp.PID()), "peak-RSS-MiB")
	}
}
