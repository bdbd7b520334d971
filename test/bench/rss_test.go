package bench

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
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

// startRSSWorld starts a redis-server and the binary, with env (KEY=VALUE, or "") added to its
// environment.
func startRSSWorld(b *testing.B, env string) (*harness.Redis, *redis.Client, *harness.Exporter) {
	b.Helper()
	harness.Require(b, "redis-server")
	r := harness.StartRedis(b)
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	b.Cleanup(func() { c.Close() })
	var extra []string
	if env != "" {
		extra = []string{env}
	}
	exp := harness.StartExporterEnv(b, extra, "--broker.url="+r.URL(0), "--control.disabled")
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

// waitAll waits until the exporter has dealt with the n messages of per events each it could
// receive: applied, dropped on a full buffer, or lost when Redis dropped the subscription
// (past its output buffer limit), once its buffer is empty again.
func waitAll(b *testing.B, exp *harness.Exporter, n, per float64) harness.Metrics {
	b.Helper()
	return exp.WaitFor(b, 5*time.Minute, func(m harness.Metrics) bool {
		buffered, _ := m.Value("celery_exporter_event_buffer_messages", nil)
		up, _ := m.Value("celery_exporter_subscription_up", nil)
		done := m.Sum("celery_exporter_events_total", nil)+per*m.Sum("celery_exporter_event_errors_total", map[string]string{"reason": "buffer_full"}) >= n*per
		return done || (buffered == 0 && up == 1 && m.Sum("celery_exporter_subscription_reconnects_total", nil) > 0)
	})
}

// BenchmarkRSSHostileFlood: 200,000 task lives, each on its own queue name, with 200-byte uuids
// and 50 task names of over 1 KiB, then one scrape.
func BenchmarkRSSHostileFlood(b *testing.B) {
	const tasks = 200000
	for i := 0; i < b.N; i++ {
		_, c, exp := startRSSWorld(b, "")
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

var (
	flagStormNames    = flag.Int("rss.names", 200, "task names of the scrape storm's cluster")
	flagStormWorkers  = flag.Int("rss.workers", 20, "workers of the scrape storm's cluster (each runs every name)")
	flagStormScrapers = flag.Int("rss.scrapers", 50, "concurrent scrapers of the scrape storm")
	flagStormRounds   = flag.Int("rss.rounds", 3, "rounds of concurrent scrapes of the scrape storm")
)

// memoryLimits are the runs of each RSS benchmark: with no soft limit, and with the one the binary
// sets itself in a container of the shipped 256Mi limit (90%, --runtime.memory-limit-ratio), here
// through GOMEMLIMIT since the benchmark runs in no cgroup of its own.
var memoryLimits = []struct{ name, env string }{
	{"no-limit", ""},
	{"GOMEMLIMIT=230MiB", "GOMEMLIMIT=230MiB"},
}

// BenchmarkRSSScrapeStorm: a legitimate large /metrics (-rss.names task names × -rss.workers
// workers, a full task life each: 200 × 20 by default, 4000 combinations, which the sizing rule of
// docs/operations.md fits in 256Mi) scraped by -rss.scrapers clients at once (50), -rss.rounds
// times (3). Every scrape must succeed (none refused: the limit of concurrent requests is 64).
func BenchmarkRSSScrapeStorm(b *testing.B) {
	names, workers, scrapers, rounds := *flagStormNames, *flagStormWorkers, *flagStormScrapers, *flagStormRounds
	for _, lim := range memoryLimits {
		b.Run(lim.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				_, c, exp := startRSSWorld(b, lim.env)
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
				waitEvents(b, exp, float64(names*workers), 4)
				idle := peakRSS(b, exp.PID())
				var size int64
				var failed int
				var mu sync.Mutex
				start := time.Now()
				for round := 0; round < rounds; round++ {
					var wg sync.WaitGroup
					for j := 0; j < scrapers; j++ {
						wg.Go(func() {
							resp, err := (&http.Client{Timeout: 5 * time.Minute}).Get(exp.URL + "/metrics")
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
				if failed > 0 {
					b.Errorf("%d of %d scrapes failed", failed, scrapers*rounds)
				}
				b.ReportMetric(time.Since(start).Seconds()/float64(rounds), "round-s")
				b.ReportMetric(float64(size)/(1<<20), "metrics-MiB")
				b.ReportMetric(idle, "before-storm-peak-RSS-MiB")
				b.ReportMetric(peakRSS(b, exp.PID()), "peak-RSS-MiB")
			}
		})
	}
}

// BenchmarkRSSOverload: 100,000 messages published as fast as four connections can, with no
// pacing, far above what the exporter applies (see BenchmarkIngest): the hand-off buffer fills
// and drops (counted), and memory stays bounded by it and the task cache. Each message is a
// task.multi of 24 task-received events (Celery's buffer_limit) with long
// values, about 9 KiB, so the buffer's byte bound (32 MiB) is what holds it; the messages are
// built once and published in turn, so the publishers are not the limit.
func BenchmarkRSSOverload(b *testing.B) {
	const msgs, publishers, distinct = 100000, 4, 4096
	long := strings.Repeat("x", 200)
	built := make([]string, distinct)
	for i := range built {
		evs := make([]map[string]any, 24)
		for k := range evs {
			evs[k] = map[string]any{"type": "task-received", "uuid": fmt.Sprintf("%d-%d-%s", i, k, long[:30]), "name": "app.tasks." + long,
				"hostname": "celery@" + long, "timestamp": 1}
		}
		built[i] = eventMessage(evs...)
	}
	for _, lim := range memoryLimits {
		b.Run(lim.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				r, _, exp := startRSSWorld(b, lim.env)
				var wg sync.WaitGroup
				for p := 0; p < publishers; p++ {
					wg.Go(func() {
						c := redis.NewClient(&redis.Options{Addr: r.Addr()})
						defer c.Close()
						ctx := context.Background()
						for i := p; i < msgs; {
							pipe := c.Pipeline()
							for j := 0; j < 200 && i < msgs; j, i = j+1, i+publishers {
								pipe.Publish(ctx, "/0.celeryev/task.multi", built[i%distinct])
							}
							if _, err := pipe.Exec(ctx); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				m := waitAll(b, exp, msgs, 24)
				b.ReportMetric(m.Sum("celery_exporter_event_errors_total", map[string]string{"reason": "buffer_full"}), "dropped-msgs")
				b.ReportMetric(m.Sum("celery_exporter_subscription_reconnects_total", nil), "reconnects")
				b.ReportMetric(peakRSS(b, exp.PID()), "peak-RSS-MiB")
			}
		})
	}
}
