package collector

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/rules/bundle"
)

var update = flag.Bool("update", false, "rewrite testdata/metrics.golden from what the sources expose now")

const goldenFile = "testdata/metrics.golden"

const goldenHeader = `# The /metrics of every source fed with the fixture traffic of test/fixtures/capture-5.2.6
# (TestGolden in collector/golden_test.go). A changed metric shows here; regenerate with
#   go test ./collector -run TestGolden -update
# and review the diff. celery_exporter_collector_duration_seconds values are set to 0 (timing).
`

// TestGolden replays the fixture traffic through every source and compares the exposition with
// the golden file, as node_exporter's e2e-output.txt does: a renamed metric, label or help text
// shows as a diff. The file also passes promtool check metrics, and every collector metric of the
// rules' contract is in it.
func TestGolden(t *testing.T) {
	got := goldenExposition(t)
	if *update {
		if err := os.WriteFile(goldenFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(goldenFile)
	if err != nil {
		t.Fatalf("%v (create it with -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("/metrics differs from %s; if the change is meant, run go test ./collector -run TestGolden -update\n%s",
			goldenFile, lineDiff(string(want), string(got)))
	}
}

// The golden file is valid exposition by Prometheus' own linter.
func TestGoldenPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found (Debian package prometheus)")
		}
		t.Skip("SKIPPED: promtool not found (Debian package prometheus); install it to lint the golden file")
	}
	f, err := os.Open(goldenFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = f
	out, err := cmd.CombinedOutput()
	if err == nil {
		return
	}
	// Names the field already uses: danihodovic/celery-exporter's queue gauges (docs/migrating.md).
	// promtool's lint reports them; anything else fails.
	known := map[string]bool{
		`celery_active_process_count non-histogram and non-summary metrics should not have "_count" suffix`: true,
		`celery_active_worker_count non-histogram and non-summary metrics should not have "_count" suffix`:  true,
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 { // 3: lint problems only, the file parsed
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !known[strings.TrimSpace(l)] {
			t.Errorf("promtool check metrics: %s", l)
		}
	}
}

// Every exporter metric the rules and dashboards may read (rules/bundle.ContractMetrics) is in the
// golden file with exactly the contract's labels, so renaming a metric on either side fails.
func TestGoldenCoversRulesContract(t *testing.T) {
	f, err := os.Open(goldenFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(f)
	if err != nil {
		t.Fatal(err)
	}
	exposed := map[string][]string{} // series name -> sorted label names
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName())
			}
			slices.Sort(labels)
			switch {
			case m.Histogram != nil:
				exposed[name+"_bucket"] = append(slices.Clone(labels), "le")
				exposed[name+"_sum"] = labels
				exposed[name+"_count"] = labels
			default:
				exposed[name] = labels
			}
		}
	}
	// Not from collector/'s sources: Prometheus' own series, build_info from client_golang's
	// version collector and the config reloader's metrics (internal/config, tested there), both
	// registered by the command, and cAdvisor's container memory.
	elsewhere := map[string]bool{
		"up": true, "ALERTS": true, "celery_exporter_build_info": true,
		"celery_exporter_config_last_reload_successful": true, "container_memory_working_set_bytes": true,
	}
	for name, want := range bundle.ContractMetrics {
		if elsewhere[name] {
			continue
		}
		got, ok := exposed[name]
		if !ok {
			t.Errorf("contract metric %s is not exposed by the collector (golden file)", name)
			continue
		}
		want = slices.Sorted(slices.Values(want))
		if strings.HasSuffix(name, "_bucket") {
			slices.Sort(got)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s has labels %v, the contract says %v", name, got, want)
		}
	}
}

// goldenExposition feeds every source from the fixtures on a fake clock and returns /metrics.
func goldenExposition(t *testing.T) []byte {
	t.Helper()
	// Events: the captured pub/sub traffic of a Celery 5.2.6 worker.
	events, clk := newTestSource(EventOptions{})
	fed := replayCapture(t, events, clk)
	if fed == 0 {
		t.Fatal("no event fed from the capture")
	}
	// What the capture lacks: a revoked task.
	events.HandlePayload(payload(taskEv("task-revoked", "9a2c0e64-3d7b-4b9f-8882-8f26c137bb7a", "probe@localhost",
		1795879470, "terminated", true)))
	// ... and a task still running at the end (its final event not yet sent).
	events.HandlePayload(payload(
		sent("5d0c1e2f-7a51-4c8e-9d13-2b8f0c6e4a77", "app.tasks.long", "chat", 1795879470),
		taskEv("task-received", "5d0c1e2f-7a51-4c8e-9d13-2b8f0c6e4a77", "probe@localhost", 1795879471, "name", "app.tasks.long"),
		taskEv("task-started", "5d0c1e2f-7a51-4c8e-9d13-2b8f0c6e4a77", "probe@localhost", 1795879472),
		withPID(heartbeat("probe@localhost", 2, 1, 9), 13498))) // the capture's worker process

	// Broker: the capture's queues, with the three background tasks nobody consumed still waiting
	// (so their age comes from their task-sent), one message unacked, and the worker's bindings.
	b := newMiniBroker(t, kombu.DefaultOptions())
	for _, id := range []string{"102966bc-95e0-439b-ad71-827179729d08", "ce5cb641-f7b2-4524-850e-5af65452a11c", "9a2c0e64-3d7b-4b9f-8882-8f26c137bb7a"} {
		b.mr.Lpush("background", taskMessage(t, id))
	}
	b.mr.HSet("unacked", "t1", unackedEntry(t, "", "chat"))
	b.mr.SetAdd("_kombu.binding.chat", "chat\x06\x16\x06\x16chat")
	b.mr.SetAdd("_kombu.binding.background", "background\x06\x16\x06\x16background")
	b.mr.SetAdd("_kombu.binding.celeryev", "worker.#\x06\x16\x06\x16celeryev.5f1d")

	// Remote control: the worker answers as Celery 5.2.6 does.
	b.worker(t, "probe@localhost", replies(t, map[string]string{
		"ping": `{"ok": "pong"}`, "active_queues": queuesReply("chat"), "stats": preforkStats,
		"active": `[{"id": "5d0c1e2f-7a51-4c8e-9d13-2b8f0c6e4a77", "name": "app.tasks.long", "time_start": 1795879472.0, "delivery_info": {"routing_key": "chat"}}]`,
	}))
	// The workers it expects are those the events made known, in the model they share.
	control := NewControlSource(log.NewNopLogger(), b.rdb, b.ks, ControlOptions{Timeout: 10 * time.Second}, events.model)
	if err := control.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	brokerOpts := DefaultBrokerOptions()
	brokerOpts.StaticQueues = []string{"celery"}
	broker := NewBrokerScraper(log.NewNopLogger(), b.rdb, b.ks, brokerOpts, events.model)
	broker.clock = clk

	// App signals: the seed app's breaker and a counter it keeps, in the broker's Redis.
	breakers := NewBreakerScraper(log.NewNopLogger(), kombu.Dial, b.rdb)
	t.Cleanup(func() { breakers.Close() })
	breakers.now = func() time.Time { return time.Unix(1795879513, 0).Add(10 * time.Second) }
	b.mr.Set(":1:mem:mode:forced:v1", forcedModeFixture)
	b.mr.Set(":1:mem:read:consec_failures", "2")

	// Logs: the worker's log lines, appended to a watched file.
	logFile := filepath.Join(t.TempDir(), "worker.log")
	if err := os.WriteFile(logFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	logs := NewLogScraper(nil)
	logNow := clk.Now() // the log sources' polls happen at the fake clock's time
	logs.now = func() time.Time { return logNow }
	t.Cleanup(func() { logs.Close() })
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
breakers:
  - {name: memory, key: ":1:mem:mode:forced:v1"}
app_values:
  - {name: read_consecutive_failures, key: ":1:mem:read:consec_failures", default: 0}
logs:
  - {paths: [%q], poll_interval: 10ms, events: [call_error]}
`, logFile)), "golden.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := breakers.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if err := logs.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	lastPoll := fmt.Sprintf("celery_log_last_poll_timestamp_seconds{} %g", float64(logNow.UnixNano())/1e9)
	waitFor(t, logs, "celery_log_files_watched{} 1\n"+lastPoll)
	f, err := os.OpenFile(logFile, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, `{"level":"ERROR","message":"call_error"}`)
	fmt.Fprintln(f, `{"level":"INFO","message":"task done"}`)
	f.Close()
	waitFor(t, logs, `celery_log_events_total{event="call_error",level="error"} 1
celery_log_files_watched{} 1
`+lastPoll+`
celery_log_lines_total{level="error"} 1
celery_log_lines_total{level="info"} 1`)

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewExporter(log.NewNopLogger(), 30*time.Second, events, control, broker, breakers, logs), NewStartTime(t0))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.WriteString(goldenHeader)
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if mf.GetName() == "celery_exporter_collector_duration_seconds" {
			for _, m := range mf.GetMetric() {
				m.GetGauge().Value = new(float64)
			}
		}
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	w, g := in(want), in(got)
	var out []string
	for _, l := range strings.Split(want, "\n") {
		if !g[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if !w[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// withPID gives a synthetic event the pid of a worker process.
func withPID(e ev, pid int) ev {
	e["pid"] = pid
	return e
}
