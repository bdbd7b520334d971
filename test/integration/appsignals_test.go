package integration

// Application signals: the seed app's circuit breaker written by the real library the
// app uses (Django's cache API over django-redis, Debian's python3-django-redis) into a real
// redis-server, and log files written, rotated and truncated while they are read. The scrapers
// run in-process behind collector.Exporter; expected values come from what the Python helper
// printed and from the lines the test wrote, never from the exporter's code.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/collector"
	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

const djangoCacheScript = "../appsignals/django_cache.py"

// appSignalsScrape collects once and parses the exposition like a Prometheus server would.
func appSignalsScrape(t *testing.T, c prometheus.Collector) harness.Metrics {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var text bytes.Buffer
	enc := expfmt.NewEncoder(&text, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	m, err := harness.ParseMetrics(text.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// djangoCache runs the helper that talks to Redis through Django's cache API.
func djangoCache(t *testing.T, location, pickleVersion string, args ...string) string {
	t.Helper()
	cmd := exec.Command(harness.Python, append([]string{djangoCacheScript, location, pickleVersion}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("django_cache.py %v: %v\n%s", args, err, stderr)
	}
	return strings.TrimSpace(string(out))
}

type forced struct {
	Key      string `json:"key"`
	Until    string `json:"until"`
	ForcedAt string `json:"forced_at"`
}

func force(t *testing.T, location, pickleVersion, key, reason string, ttl int) (until, forcedAt float64) {
	t.Helper()
	var f forced
	out := djangoCache(t, location, pickleVersion, "force", key, reason, strconv.Itoa(ttl))
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	if f.Key != ":1:"+key {
		t.Fatalf("Django stored %q under %q, want :1:%s", key, f.Key, key)
	}
	// Python's repr of a float round-trips: these are the exact doubles stored in the pickle.
	until, err1 := strconv.ParseFloat(f.Until, 64)
	forcedAt, err2 := strconv.ParseFloat(f.ForcedAt, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("helper output %q", out)
	}
	return until, forcedAt
}

func expectValue(t *testing.T, m harness.Metrics, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := m.Value(name, labels)
	if !ok {
		t.Errorf("%s%v: no series; want %v\n%s", name, labels, want, m.Text)
		return
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

func expectAbsent(t *testing.T, m harness.Metrics, name string, match map[string]string) {
	t.Helper()
	for _, s := range m.Series(name) {
		all := true
		for k, v := range match {
			if s[k] != v {
				all = false
			}
		}
		if all {
			t.Errorf("%s%v: unexpected series %v", name, match, s)
		}
	}
}

func bl(breaker string, kv ...string) map[string]string {
	l := map[string]string{"breaker": breaker}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return l
}

func TestAppSignalsDjangoBreaker(t *testing.T) {
	harness.RequirePython(t, "django", "django_redis")
	r := harness.StartRedis(t)
	cacheURL := r.URL(1) // the cache on another DB than the broker, as in the seed's deployment
	broker := redis.NewClient(&redis.Options{Addr: r.Addr(), DB: 0})
	t.Cleanup(func() { broker.Close() })
	cacheRaw := redis.NewClient(&redis.Options{Addr: r.Addr(), DB: 1})
	t.Cleanup(func() { cacheRaw.Close() })

	// The shipped configuration, pointed at this test's Redis.
	cfg, err := config.Load("../../deploy/celery_exporter.yml")
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Breakers {
		cfg.Breakers[i].RedisURL = cacheURL
	}
	for i := range cfg.AppValues {
		cfg.AppValues[i].RedisURL = cacheURL
	}
	for _, name := range []string{"proto2", "proto4", "proto5", "evil"} {
		cfg.Breakers = append(cfg.Breakers, config.Breaker{Name: name, RedisURL: cacheURL, Key: ":1:" + name, Format: config.FormatDjangoPickle})
	}
	// The binary's dial: redis_url is parsed as a kombu URL, like the broker's.
	bs := collector.NewBreakerScraper(log.NewNopLogger(), kombu.Dial, broker)
	if err := bs.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	exp := collector.NewExporter(log.NewNopLogger(), 5*time.Second, bs)
	ok := map[string]string{"collector": "breakers"}

	// Nothing set yet: closed, read fine, no trip, the counter's default.
	m := appSignalsScrape(t, exp)
	expectValue(t, m, "celery_exporter_collector_success", ok, 1)
	expectValue(t, m, "celery_breaker_open", bl("zep"), 0)
	expectValue(t, m, "celery_breaker_read_ok", bl("zep"), 1)
	expectValue(t, m, "celery_app_value", map[string]string{"name": "zep_read_consecutive_failures"}, 0)
	expectAbsent(t, m, "celery_breaker_trips_total", nil)
	expectAbsent(t, m, "celery_breaker_info", nil)

	// An integer counter and force_write_only("auth", 3), both through Django's cache. The
	// counter goes first: a Python start-up inside the breaker's 3 s would eat into the time the
	// checks below have while it is open.
	djangoCache(t, cacheURL, "default", "set_int", "mem:read:consec_failures", "2", "60")
	until, forcedAt := force(t, cacheURL, "default", "mem:mode:forced:v1", "auth", 3)
	if raw, err := cacheRaw.Get(t.Context(), ":1:mem:read:consec_failures").Result(); err != nil || raw != "2" {
		t.Errorf("django-redis stored the int as %q (%v), want the digits \"2\"", raw, err)
	}
	if pttl, err := cacheRaw.PTTL(t.Context(), ":1:mem:mode:forced:v1").Result(); err != nil || pttl <= 0 || pttl > 3*time.Second {
		t.Errorf("PTTL = %v (%v), want a TTL of at most 3s (SET ... PX)", pttl, err)
	}
	for i := 0; i < 10; i++ {
		m = appSignalsScrape(t, exp)
		expectValue(t, m, "celery_breaker_open", bl("zep"), 1)
		expectValue(t, m, "celery_breaker_info", bl("zep", "mode", "write_only", "reason", "auth"), 1)
		expectValue(t, m, "celery_breaker_open_until_timestamp_seconds", bl("zep"), until)
		expectValue(t, m, "celery_breaker_opened_timestamp_seconds", bl("zep"), forcedAt)
		expectValue(t, m, "celery_breaker_trips_total", bl("zep", "reason", "auth"), 1)
		expectValue(t, m, "celery_breaker_read_ok", bl("zep"), 1)
		expectValue(t, m, "celery_app_value", map[string]string{"name": "zep_read_consecutive_failures"}, 2)
		if t.Failed() {
			t.FailNow()
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The TTL runs out: closed; the trip stays counted once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m = appSignalsScrape(t, exp)
		expectValue(t, m, "celery_breaker_trips_total", bl("zep", "reason", "auth"), 1)
		if v, _ := m.Value("celery_breaker_open", bl("zep")); v == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("breaker still open 10s after a 3s TTL\n%s", m.Text)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if float64(time.Now().UnixNano())/1e9 < until {
		t.Errorf("reported closed before until (%v)", until)
	}
	expectAbsent(t, m, "celery_breaker_info", bl("zep"))
	expectAbsent(t, m, "celery_breaker_open_until_timestamp_seconds", bl("zep"))
	time.Sleep(200 * time.Millisecond)
	if n, _ := cacheRaw.Exists(t.Context(), ":1:mem:mode:forced:v1").Result(); n != 0 {
		t.Errorf("the key still exists after its TTL")
	}
	m = appSignalsScrape(t, exp)
	expectValue(t, m, "celery_breaker_open", bl("zep"), 0)
	expectValue(t, m, "celery_breaker_read_ok", bl("zep"), 1)

	// A second trip, another reason: counted again.
	until, forcedAt = force(t, cacheURL, "default", "mem:mode:forced:v1", "consecutive_failures", 300)
	for i := 0; i < 3; i++ {
		m = appSignalsScrape(t, exp)
	}
	expectValue(t, m, "celery_breaker_trips_total", bl("zep", "reason", "auth"), 1)
	expectValue(t, m, "celery_breaker_trips_total", bl("zep", "reason", "consecutive_failures"), 1)
	expectValue(t, m, "celery_breaker_info", bl("zep", "mode", "write_only", "reason", "consecutive_failures"), 1)
	expectValue(t, m, "celery_breaker_open_until_timestamp_seconds", bl("zep"), until)
	expectValue(t, m, "celery_breaker_opened_timestamp_seconds", bl("zep"), forcedAt)

	// Pickle protocols 2, 4 and 5 (django-redis's PICKLE_VERSION).
	wantUntil := map[string]float64{}
	for _, v := range []string{"2", "4", "5"} {
		name := "proto" + v
		wantUntil[name], _ = force(t, cacheURL, v, name, "manual", 300)
		raw, err := cacheRaw.Get(t.Context(), ":1:"+name).Bytes()
		if err != nil || len(raw) < 2 || raw[0] != 0x80 || strconv.Itoa(int(raw[1])) != v {
			t.Errorf("%s: stored %q (%v), want a protocol %s pickle", name, raw, err, v)
		}
	}

	// A pickle whose unpickling runs os.system: refused, counted, nothing run.
	touch := filepath.Join(t.TempDir(), "pwned")
	djangoCache(t, cacheURL, "default", "set_evil", "evil", touch)
	appSignalsScrape(t, exp)
	m = appSignalsScrape(t, exp)
	expectValue(t, m, "celery_exporter_collector_success", ok, 1)
	for _, name := range []string{"proto2", "proto4", "proto5"} {
		expectValue(t, m, "celery_breaker_open", bl(name), 1)
		expectValue(t, m, "celery_breaker_read_ok", bl(name), 1)
		expectValue(t, m, "celery_breaker_info", bl(name, "mode", "write_only", "reason", "manual"), 1)
		expectValue(t, m, "celery_breaker_open_until_timestamp_seconds", bl(name), wantUntil[name])
		expectValue(t, m, "celery_exporter_pickle_refused_total", bl(name), 0)
	}
	expectValue(t, m, "celery_breaker_read_ok", bl("evil"), 0)
	expectValue(t, m, "celery_exporter_pickle_refused_total", bl("evil"), 2)
	expectAbsent(t, m, "celery_breaker_open", bl("evil"))
	expectValue(t, m, "celery_breaker_read_ok", bl("zep"), 1)
	if _, err := os.Stat(touch); !os.IsNotExist(err) {
		t.Fatalf("%s exists: the payload ran (%v)", touch, err)
	}
	// Positive control: Django's own cache.get runs it, so the value really was armed.
	djangoCache(t, cacheURL, "default", "get", "evil")
	if _, err := os.Stat(touch); err != nil {
		t.Errorf("control: Django's cache.get did not run the payload, the test proves nothing: %v", err)
	}

	// Redis gone: the source fails, every breaker's read is 0, nothing crashes.
	r.Stop()
	m = appSignalsScrape(t, exp)
	expectValue(t, m, "celery_exporter_collector_success", ok, 0)
	expectValue(t, m, "celery_breaker_read_ok", bl("zep"), 0)
	expectValue(t, m, "celery_breaker_trips_total", bl("zep", "reason", "consecutive_failures"), 1)
}

// logFormat writes app lines in one of the configured formats.
type logFormat struct {
	format string
	glob   string // relative to the test's directory
	main   string // the file the app writes, relative
	other  string // a file created mid-burst that the glob also matches
	rotate string // where rename rotation moves main (must not match the glob)
	line   func(i int, event bool) string
	wrap   func(appLine string) []string // the file lines holding one app line
}

func plain(appLine string) []string { return []string{appLine} }

// dockerWrap is Docker's json-file driver: one JSON record per 16 KiB of message, the last
// ending in a newline.
func dockerWrap(appLine string) []string {
	msg := appLine + "\n"
	var out []string
	for len(msg) > 0 {
		n := min(len(msg), 16<<10)
		b, _ := json.Marshal(map[string]string{"log": msg[:n], "stream": "stdout", "time": "2025-01-01T10:00:00.000000001Z"})
		out = append(out, string(b))
		msg = msg[n:]
	}
	return out
}

var logFormats = []logFormat{
	{format: "json", glob: "*.log", main: "app.log", other: "other.log", rotate: "app.log.1",
		line: func(i int, event bool) string {
			if event {
				return fmt.Sprintf(`{"timestamp":"2025-01-01T10:00:00Z","level":"ERROR","logger":"assistant.memory.service","message":"zep_call_error","n":%d}`, i)
			}
			return fmt.Sprintf(`{"timestamp":"2025-01-01T10:00:00Z","level":"INFO","logger":"celery.app.trace","message":"task_done","n":%d}`, i)
		},
		wrap: plain},
	{format: "docker-json", glob: "*/*-json.log", main: "c1/c1-json.log", other: "c2/c2-json.log", rotate: "c1/c1-json.log.1",
		line: func(i int, event bool) string {
			pad := ""
			if i%97 == 0 {
				pad = strings.Repeat("p", 20000) // over Docker's 16 KiB split
			}
			if event {
				return fmt.Sprintf(`{"level":"ERROR","message":"zep_call_error","n":%d,"pad":"%s"}`, i, pad)
			}
			return fmt.Sprintf(`{"level":"INFO","message":"task_done","n":%d,"pad":"%s"}`, i, pad)
		},
		wrap: dockerWrap},
	{format: "logfmt", glob: "*.log", main: "app.log", other: "other.log", rotate: "app.log.1",
		line: func(i int, event bool) string {
			if event {
				return fmt.Sprintf(`ts=2025-01-01T10:00:00Z level=error message=zep_call_error n=%d err="boom x"`, i)
			}
			return fmt.Sprintf(`ts=2025-01-01T10:00:00Z level=info message=task_done n=%d`, i)
		},
		wrap: plain},
	{format: "text", glob: "*.log", main: "app.log", other: "other.log", rotate: "app.log.1",
		line: func(i int, event bool) string {
			if event {
				return fmt.Sprintf(`[2025-01-01 10:00:00,000: ERROR/ForkPoolWorker-1] zep_call_error n=%d`, i)
			}
			return fmt.Sprintf(`[2025-01-01 10:00:00,000: INFO/MainProcess] Task done n=%d`, i)
		},
		wrap: plain},
}

// openAppend opens path in append mode, as Python's logging and Docker do.
func openAppend(t *testing.T, path string) *os.File {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestAppSignalsLogs(t *testing.T) {
	for _, lf := range logFormats {
		t.Run(lf.format, func(t *testing.T) { testAppSignalsLogFormat(t, lf) })
	}
}

func testAppSignalsLogFormat(t *testing.T, lf logFormat) {
	dir := t.TempDir()
	main := filepath.Join(dir, lf.main)
	w := openAppend(t, main)
	defer func() { w.Close() }()
	// History written before the exporter starts is not counted.
	for _, fl := range lf.wrap(lf.line(-1, true)) {
		fmt.Fprintln(w, fl)
	}

	const maxLine = 65536
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
logs:
  - paths: [%q]
    format: %s
    events: [zep_call_error, zep_call_failure]
    max_line_bytes: %d
    poll_interval: 20ms
`, filepath.Join(dir, lf.glob), lf.format, maxLine)), "test.yml")
	if err != nil {
		t.Fatal(err)
	}
	ls := collector.NewLogScraper(log.NewNopLogger())
	if err := ls.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ls.Close)
	exp := collector.NewExporter(log.NewNopLogger(), 5*time.Second, ls)

	var mu sync.Mutex // exp is collected by the writer (catching up) and the test
	scrape := func() harness.Metrics {
		mu.Lock()
		defer mu.Unlock()
		return appSignalsScrape(t, exp)
	}
	linesRead := func() float64 { return scrape().Sum("celery_log_lines_total", nil) }

	const n = 1500
	written, events := 0, 0
	writeApp := func(f *os.File, i int) {
		event := i%10 == 0
		for _, fl := range lf.wrap(lf.line(i, event)) {
			if _, err := fmt.Fprintln(f, fl); err != nil {
				t.Fatal(err)
			}
		}
		written++
		if event {
			events++
		}
	}
	for i := 0; i < n; i++ {
		switch i {
		case 500:
			// Rename rotation; the app keeps writing to the old file for ten lines before it
			// reopens its log (as a WatchedFileHandler or Docker would).
			if err := os.Rename(main, filepath.Join(dir, lf.rotate)); err != nil {
				t.Fatal(err)
			}
		case 510:
			w.Close()
			w = openAppend(t, main)
		case 1000:
			// copytruncate. Lines written after the tailer's last read and before the truncation
			// are lost to any reader; a careful copytruncate (and this test) lets it catch up.
			deadline := time.Now().Add(10 * time.Second)
			for linesRead() < float64(written) && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			data, err := os.ReadFile(main)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(main+".bak", data, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(main, 0); err != nil {
				t.Fatal(err)
			}
		case 1200:
			// A new file that matches the glob is read from its first line.
			o := openAppend(t, filepath.Join(dir, lf.other))
			for j := 0; j < 50; j++ {
				writeApp(o, n+j)
			}
			o.Close()
		}
		writeApp(w, i)
		if i%25 == 0 {
			time.Sleep(2 * time.Millisecond)
		}
	}

	// A partial last line is held until its newline arrives.
	waitLogCounts(t, scrape, float64(written), float64(events), 0)
	partial := strings.Join(lf.wrap(lf.line(n+100, false)), "\n") + "\n"
	half := len(partial) / 2
	fmt.Fprint(w, partial[:half])
	time.Sleep(200 * time.Millisecond) // ten polls
	if got := linesRead(); got != float64(written) {
		t.Errorf("a partial line was counted: %v lines, want %d", got, written)
	}
	fmt.Fprint(w, partial[half:])
	written++

	// An over-long line is skipped and counted, and the next one is read.
	long := lf.line(n+101, true)
	long = long[:len(long)/2] + strings.Repeat("x", maxLine) + long[len(long)/2:]
	for _, fl := range lf.wrap(long) {
		fmt.Fprintln(w, fl)
	}
	writeApp(w, n+102)

	m := waitLogCounts(t, scrape, float64(written), float64(events), 1)
	expectValue(t, m, "celery_log_events_total", map[string]string{"event": "zep_call_error", "level": "error"}, float64(events))
	expectValue(t, m, "celery_log_events_total", map[string]string{"event": "zep_call_failure", "level": "error"}, 0)
	expectValue(t, m, "celery_log_lines_total", map[string]string{"level": "error"}, float64(events))
	expectValue(t, m, "celery_log_lines_total", map[string]string{"level": "info"}, float64(written-events))
	expectValue(t, m, "celery_log_lines_skipped_total", map[string]string{"reason": "too_long"}, 1)
	expectValue(t, m, "celery_log_lines_skipped_total", map[string]string{"reason": "malformed"}, 0)
	expectAbsent(t, m, "celery_log_events_total", map[string]string{"event": "task_done"})

	// The rotated file is closed once quiet: the app's file and the new one remain.
	deadline := time.Now().Add(5 * time.Second)
	for {
		m = scrape()
		if v, _ := m.Value("celery_log_files_watched", nil); v == 2 || time.Now().After(deadline) {
			expectValue(t, m, "celery_log_files_watched", nil, 2)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLogCounts waits until the line and event totals reach the expected values, then checks
// they stay there (nothing counted twice arrives late).
func waitLogCounts(t *testing.T, scrape func() harness.Metrics, lines, events, tooLong float64) harness.Metrics {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var m harness.Metrics
	for time.Now().Before(deadline) {
		m = scrape()
		if m.Sum("celery_log_lines_total", nil) >= lines && m.Sum("celery_log_events_total", nil) >= events {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(150 * time.Millisecond)
	m = scrape()
	if got := m.Sum("celery_log_lines_total", nil); got != lines {
		t.Errorf("lines counted = %v, want exactly %v", got, lines)
	}
	if got := m.Sum("celery_log_events_total", nil); got != events {
		t.Errorf("events counted = %v, want exactly %v", got, events)
	}
	if got, _ := m.Value("celery_log_lines_skipped_total", map[string]string{"reason": "too_long"}); got != tooLong {
		t.Errorf("too_long skips = %v, want %v", got, tooLong)
	}
	return m
}
