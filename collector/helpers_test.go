package collector

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/event"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/pidbox/pidboxtest"
	"github.com/celery-exporter/celery_exporter/internal/state"
	"github.com/celery-exporter/celery_exporter/internal/tasks"
)

// Helpers shared by the package's tests: building sources and the model on fakes, feeding them,
// and reading what they expose. Every reading goes through samples, which gathers a source in a
// pedantic registry: tests compare its exposition lines (collectText, compare, nonZero, waitFor)
// or check series in its map (expectSamples, expectAbsent, only). HELP texts are checked once,
// by the golden file (golden_test.go).

// t0 is the fake clocks' start: a moment of the captured traffic.
var t0 = time.Unix(1795879460, 0)

// emptyModel is the model of a source alone: no worker, no task sent time, no remote-control round.
func emptyModel() *state.Model {
	m, _ := newTestModel(state.Options{})
	return m
}

// newTestModel returns a model on a fake clock at t0; a zero WorkerTimeout takes the default
// (the constructor keeps a zero there), the other zero fields the constructor's defaults.
func newTestModel(mo state.Options) (*state.Model, *clock.Fake) {
	clk := clock.NewFake(t0)
	mo.Clock = clk
	if mo.WorkerTimeout == 0 {
		mo.WorkerTimeout = DefaultModelOptions().WorkerTimeout
	}
	return NewModel(mo), clk
}

// newTestSource returns an event source on its own model (see newTestModel).
func newTestSource(opts EventOptions) (*EventSource, *clock.Fake) {
	return newTestSourceModel(opts, state.Options{})
}

// newTestSourceModel is newTestSource with the model's options.
func newTestSourceModel(opts EventOptions, mo state.Options) (*EventSource, *clock.Fake) {
	// The constructor defaults the rest; these two keep a zero there.
	d := DefaultEventOptions()
	for _, p := range []struct{ v, def *time.Duration }{{&opts.PurgeAfter, &d.PurgeAfter}, {&opts.SentWait, &d.SentWait}} {
		if *p.v == 0 {
			*p.v = *p.def
		}
	}
	m, clk := newTestModel(mo)
	return NewEventSource(log.NewNopLogger(), nil, opts, m), clk
}

// setWorkers makes the model's workers what the event stream would say: alive heartbeat now
// (with their sw_sys from systems), the rest of known went offline (down, not yet purged), and
// every other worker is purged.
func setWorkers(m *state.Model, alive, known []string, systems map[string]string) {
	now := m.Clock().Now()
	_, was := m.Workers.Names()
	for _, h := range was {
		if !slices.Contains(alive, h) {
			m.Workers.Apply(&event.Event{Type: event.WorkerOffline, Hostname: h}, now, time.Time{})
		}
	}
	m.Workers.Purge(now, 0)
	for _, h := range known {
		if !slices.Contains(alive, h) {
			m.Workers.Apply(&event.Event{Type: event.WorkerOffline, Hostname: h}, now, time.Time{})
		}
	}
	for _, h := range alive {
		ev := event.Event{Type: event.WorkerHeartbeat, Hostname: h}
		if sys, ok := systems[h]; ok {
			ev.SWIdent, ev.SWVer, ev.SWSys = "py-celery", "5.2.6", sys
		}
		m.Workers.Apply(&ev, now, time.Time{})
	}
}

// setSentAt records task-sent times in the model's task cache, as the event source does.
func setSentAt(m *state.Model, sent map[string]time.Time) {
	now := m.Clock().Now()
	for id, at := range sent {
		m.Tasks.GetOrCreate(id, now)
		m.Tasks.Update(id, func(t *tasks.Task) { t.SentAt = float64(at.UnixNano()) / 1e9 })
	}
}

// payload wraps events the way a worker publishes them: a kombu envelope with a base64 body; one
// event alone, several as a task.multi list.
func payload(events ...map[string]any) string {
	var body any = events
	if len(events) == 1 {
		body = events[0]
	}
	b, _ := json.Marshal(body)
	return rawPayload(string(b))
}

// rawPayload wraps a JSON body as written by Python (NaN, Infinity) in a kombu envelope.
func rawPayload(body string) string {
	env, _ := json.Marshal(map[string]any{
		"body": base64.StdEncoding.EncodeToString([]byte(body)), "content-encoding": "utf-8", "content-type": "application/json",
		"headers":    map[string]any{"hostname": "celery@w1"},
		"properties": map[string]any{"delivery_mode": 1, "body_encoding": "base64", "delivery_tag": "x", "priority": 0},
	})
	return string(env)
}

type ev map[string]any

// samples gathers the source's metrics as "name{k="v",...}" → value; histograms as their _count
// and _sum.
func samples(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	mfs := gather(t, c)
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var pairs []string
			for _, l := range m.GetLabel() {
				pairs = append(pairs, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(pairs)
			key := mf.GetName() + "{" + strings.Join(pairs, ",") + "}"
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[strings.Replace(key, "{", "_count{", 1)] = float64(m.GetHistogram().GetSampleCount())
				out[strings.Replace(key, "{", "_sum{", 1)] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

// expectSamples checks that each series of want exists with its value.
func expectSamples(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("missing %s (want %v)", k, v)
		} else if g != v {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
}

// expectAbsent checks that none of the series exist.
func expectAbsent(t *testing.T, got map[string]float64, series ...string) {
	t.Helper()
	for _, k := range series {
		if g, ok := got[k]; ok {
			t.Errorf("%s = %v, want no such series", k, g)
		}
	}
}

// gather registers c alone in a pedantic registry (which checks every metric) and gathers it.
func gather(t *testing.T, c prometheus.Collector) []*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return mfs
}

// only returns the samples of the named metric.
func only(got map[string]float64, name string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range got {
		if strings.HasPrefix(k, name+"{") {
			out[k] = v
		}
	}
	return out
}

func sent(uuid, name, queue string, ts float64) ev {
	return ev{"type": "task-sent", "uuid": uuid, "name": name, "queue": queue, "hostname": "gen1@h", "timestamp": ts}
}

func taskEv(typ, uuid, host string, ts float64, extra ...any) ev {
	e := ev{"type": typ, "uuid": uuid, "hostname": host, "timestamp": ts}
	for i := 0; i+1 < len(extra); i += 2 {
		e[extra[i].(string)] = extra[i+1]
	}
	return e
}

func heartbeat(host string, freq float64, active, processed int) ev {
	return ev{"type": "worker-heartbeat", "hostname": host, "freq": freq, "active": active, "processed": processed,
		"loadavg": []float64{0.5, 0.4, 0.3}, "sw_ident": "py-celery", "sw_ver": "5.2.6", "sw_sys": "Linux", "timestamp": 1.0}
}

// taskMessage is a queued task message of protocol 2 (the id in the headers).
func taskMessage(t *testing.T, id string) string {
	t.Helper()
	m, err := kombu.NewMessage([]byte(`[[], {}, {}]`), "", "celery", map[string]any{"id": id, "task": "tasks.add", "lang": "py"})
	if err != nil {
		t.Fatal(err)
	}
	return string(m)
}

func unackedEntry(t *testing.T, exchange, routingKey string) string {
	t.Helper()
	b, _ := json.Marshal([]any{json.RawMessage(taskMessage(t, "u")), exchange, routingKey})
	return string(b)
}

// collectText is samples as sorted exposition lines, "name{k="v",...} value", of the named
// metrics (histograms: name_count and name_sum) or of all, with the scrape's error.
func collectText(t *testing.T, s Scraper, names ...string) (string, error) {
	t.Helper()
	c := &errCapturingCollector{s: s}
	got := samples(t, c)
	var lines []string
	for k, v := range got {
		name := k[:strings.IndexByte(k, '{')]
		if len(names) > 0 && !slices.Contains(names, name) &&
			!slices.Contains(names, strings.TrimSuffix(strings.TrimSuffix(name, "_count"), "_sum")) {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s %g\n", k, v))
	}
	sort.Strings(lines)
	return strings.Join(lines, ""), c.err
}

// errCapturingCollector lets testutil read a Scraper.
type errCapturingCollector struct {
	s   Scraper
	err error
}

func (c *errCapturingCollector) Describe(chan<- *prometheus.Desc) {}

func (c *errCapturingCollector) Collect(ch chan<- prometheus.Metric) {
	c.err = c.s.Scrape(context.Background(), ch)
}

type miniBroker struct {
	mr  *miniredis.Miniredis
	rdb *redis.Client
	ks  kombu.Keyspace
}

func newMiniBroker(t *testing.T, o kombu.Options) *miniBroker {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { rdb.Close() })
	return &miniBroker{mr: mr, rdb: rdb, ks: kombu.NewKeyspace(&kombu.Broker{Scheme: "redis", Addrs: []string{mr.Addr()}}, o)}
}

// worker starts a fake worker on its own connection (a pub/sub connection cannot send commands).
func (b *miniBroker) worker(t *testing.T, hostname string, h pidboxtest.Handler) *pidboxtest.Worker {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: b.mr.Addr(), Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return pidboxtest.Start(t, c, b.ks, "celery", hostname, h)
}

// replies builds a Handler from JSON replies per method.
func replies(t *testing.T, byMethod map[string]string) pidboxtest.Handler {
	return func(method string, _ map[string]any) (any, bool) {
		raw, ok := byMethod[method]
		if !ok {
			return nil, false
		}
		var v any
		if err := json.Unmarshal([]byte(raw), &v); err != nil {
			t.Errorf("bad test reply for %s: %v", method, err)
			return nil, false
		}
		return v, true
	}
}

func queuesReply(names ...string) string {
	qs := make([]map[string]any, len(names))
	for i, n := range names {
		qs[i] = map[string]any{"name": n, "exchange": map[string]any{"name": n, "type": "direct"}, "routing_key": n}
	}
	b, _ := json.Marshal(qs)
	return string(b)
}

// nonZero is collectText without the zero series every configured event starts with: the counts
// a test cares about.
func nonZero(t *testing.T, s Scraper) string {
	t.Helper()
	text, err := collectText(t, s)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if l != "" && !strings.HasSuffix(l, " 0") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// waitFor polls the scraper until its non-zero samples equal want.
func waitFor(t *testing.T, s Scraper, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got string
	for time.Now().Before(deadline) {
		if got = nonZero(t, s); got == want {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("got\n%s\nwant\n%s", got, want)
}

// compare checks the source's exposition lines (collectText) of the named metrics, or of all,
// against want in any order, and keeps the scrape's error in c.err.
func compare(t *testing.T, c *errCapturingCollector, want string, names ...string) {
	t.Helper()
	got, err := collectText(t, c.s, names...)
	c.err = err
	sorted := func(s string) string {
		lines := strings.Split(strings.TrimSpace(s), "\n")
		sort.Strings(lines)
		return strings.Join(lines, "\n")
	}
	if sorted(got) != sorted(want) {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// replayCapture feeds the capture's event messages (what the exporter's pattern receives) 10 ms
// apart, then lets the held events settle.
func replayCapture(t *testing.T, src *EventSource, clk interface{ Add(time.Duration) }) int {
	t.Helper()
	raw, err := os.ReadFile("../test/fixtures/capture-5.2.6/psubscribe_raw.txt")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	fed := 0
	for i := 0; i+3 < len(lines); i++ {
		if lines[i] != "pmessage" {
			continue
		}
		if strings.Contains(lines[i+2], "celeryev") {
			src.HandlePayload(lines[i+3])
			fed++
		}
		clk.Add(10 * time.Millisecond)
		i += 3
	}
	clk.Add(3 * time.Second)
	src.Tick()
	return fed
}

// failing is a source that always fails.
type failing struct{}

func (failing) Name() string { return "broken" }
func (failing) Scrape(_ context.Context, _ chan<- prometheus.Metric) error {
	return fmt.Errorf("down")
}

// The stats reply of a prefork worker, as Celery 5.2.6 sends it (shape of the captured one).
const preforkStats = `{"total": {"tasks.add": 3, "tasks.boom": 1}, "pid": 13410, "clock": "67", "uptime": 34,
 "pool": {"max-concurrency": 2, "processes": [13414, 13538], "max-tasks-per-child": "N/A",
          "put-guarded-by-semaphore": false, "timeouts": [0, 0], "writes": "N/A"},
 "broker": {"hostname": "127.0.0.1", "port": 6379, "transport": "redis", "virtual_host": "0"},
 "prefetch_count": 8,
 "rusage": {"utime": 0.163718, "stime": 0.045023, "maxrss": 45548, "ixrss": 0, "idrss": 0}}`

// A threads pool has no processes; rusage may be "N/A" (platforms without getrusage).
const threadsStats = `{"total": {}, "pid": 2, "clock": "3", "uptime": 7,
 "pool": {"max-concurrency": 4, "threads": 1}, "prefetch_count": 16, "rusage": "N/A"}`

const macStats = `{"total": {"tasks.add": 1}, "uptime": 9, "pool": {"max-concurrency": 1, "processes": [5]},
 "prefetch_count": 4, "rusage": {"utime": 1.5, "stime": 0.5, "maxrss": 1048576}}`
