package harness

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Exporter is a running celery_exporter binary.
type Exporter struct {
	Addr string // 127.0.0.1:port
	URL  string // http://127.0.0.1:port
	Args []string
	p    *proc
}

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// ExporterBinary is $CELERY_EXPORTER_BIN (set by `make test`) or, when unset, ./cmd/celery_exporter
// built once per test binary into a temp dir (removed by CleanupBuilds).
func ExporterBinary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("CELERY_EXPORTER_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("CELERY_EXPORTER_BIN=%s: %v (run `make build`)", bin, err)
		}
		return bin
	}
	root := ModuleRoot(t)
	buildOnce.Do(func() {
		removeStaleBuilds()
		buildDir, buildErr = os.MkdirTemp("", buildPrefix)
		if buildErr != nil {
			return
		}
		// The owner's pid lets a later run remove this dir if this one dies before CleanupBuilds.
		_ = os.WriteFile(filepath.Join(buildDir, "pid"), []byte(strconv.Itoa(os.Getpid())), 0o644)
		buildBin = filepath.Join(buildDir, "celery_exporter")
		cmd := exec.Command("go", "build", "-o", buildBin, "./cmd/celery_exporter")
		cmd.Dir = root
		cmd.Env = envWith(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/celery_exporter in %s: %v\n%s", root, err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

const buildPrefix = "celery_exporter-harness-"

// removeStaleBuilds deletes the build dirs of test binaries that are gone (killed by a timeout,
// say) without running CleanupBuilds.
func removeStaleBuilds() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), buildPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "pid"))
		if err != nil {
			continue // not ours to judge (or still being created)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// CleanupBuilds removes the binary ExporterBinary built, if any: call it from TestMain after m.Run.
func CleanupBuilds() {
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
}

// StartExporter runs the exporter with args plus --web.listen-address on a free 127.0.0.1 port
// (unless args has one) and waits until /-/healthy answers 200. It is killed in t.Cleanup.
func StartExporter(t testing.TB, args ...string) *Exporter {
	t.Helper()
	return StartExporterEnv(t, nil, args...)
}

// StartExporterEnv is StartExporter with extra KEY=VALUE environment variables. The test's own
// CELERY_* variables are never passed on, so a developer's shell cannot change what is tested.
func StartExporterEnv(t testing.TB, extraEnv []string, args ...string) *Exporter {
	t.Helper()
	e := LaunchExporter(t, extraEnv, args...)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if code, _, err := e.Get("/-/healthy"); err == nil && code == http.StatusOK {
			return e
		}
		if e.p.exited() {
			t.Fatalf("celery_exporter exited at start (%v):\n%s", e.p.waitErr, Tail(e.Log(), 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("celery_exporter: /-/healthy not 200 within 15s:\n%s", Tail(e.Log(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// LaunchExporter is StartExporterEnv without the wait for /-/healthy, for a test that cannot get
// a 200 there (basic auth, TLS) and waits its own way.
func LaunchExporter(t testing.TB, extraEnv []string, args ...string) *Exporter {
	t.Helper()
	bin := ExporterBinary(t)
	e := &Exporter{}
	listen := ""
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--web.listen-address="); ok {
			listen = v
		}
	}
	if listen == "" {
		listen = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		args = append(args, "--web.listen-address="+listen)
	}
	e.Addr, e.URL, e.Args = listen, "http://"+listen, args
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CELERY_") {
			env = append(env, kv)
		}
	}
	env = append(env, extraEnv...)
	e.p = startProc(t, "celery_exporter", t.TempDir(), env, bin, args...)
	return e
}

// WaitReady waits until /-/ready answers 200 (the exporter has subscribed to the events).
func (e *Exporter) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		code, body, err := e.Get("/-/ready")
		if err == nil && code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("celery_exporter: /-/ready not 200 within %v (last: %d %q %v):\n%s", timeout, code, body, err, Tail(e.Log(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Get fetches a path and returns status and body.
func (e *Exporter) Get(path string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(e.URL + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Post sends a POST with an empty body (e.g. /-/reload).
func (e *Exporter) Post(path string) (int, string, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Post(e.URL+path, "text/plain", nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Scrape fetches /metrics (the text format) and parses it.
func (e *Exporter) Scrape() (Metrics, error) {
	req, err := http.NewRequest(http.MethodGet, e.URL+"/metrics", nil)
	if err != nil {
		return Metrics{}, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return Metrics{}, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Metrics{}, fmt.Errorf("scrape: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return Metrics{}, fmt.Errorf("scrape: status %d: %s", resp.StatusCode, b)
	}
	return ParseMetrics(b)
}

// MustScrape is Scrape failing the test on error.
func (e *Exporter) MustScrape(t testing.TB) Metrics {
	t.Helper()
	m, err := e.Scrape()
	if err != nil {
		t.Fatalf("%v\n%s", err, Tail(e.Log(), 20))
	}
	return m
}

// WaitFor scrapes every 100ms until cond holds and returns that scrape; after timeout it fails
// the test (cond may t.Log why it is not there yet; only the last call's reason matters).
func (e *Exporter) WaitFor(t testing.TB, timeout time.Duration, cond func(Metrics) bool) Metrics {
	t.Helper()
	m, ok := e.Poll(timeout, cond)
	if !ok {
		t.Fatalf("celery_exporter: condition not met within %v; last scrape:\n%s", timeout, m.Text)
	}
	return m
}

// Poll is WaitFor without failing: it returns the last scrape and whether cond held.
func (e *Exporter) Poll(timeout time.Duration, cond func(Metrics) bool) (Metrics, bool) {
	deadline := time.Now().Add(timeout)
	for {
		m, err := e.Scrape()
		if err == nil && cond(m) {
			return m, true
		}
		if time.Now().After(deadline) {
			return m, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits.
func (e *Exporter) Stop() error { return e.p.stop(syscall.SIGTERM, 10*time.Second) }

// Kill sends SIGKILL.
func (e *Exporter) Kill() { e.p.kill() }

// Signal sends sig (e.g. SIGHUP) to the exporter.
func (e *Exporter) Signal(sig syscall.Signal) error { return e.p.cmd.Process.Signal(sig) }

// Exited tells whether the process is gone.
func (e *Exporter) Exited() bool { return e.p.exited() }

// Log is the exporter's combined stdout and stderr so far ("" for an Exporter the harness did not
// start, such as the demo's).
func (e *Exporter) Log() string {
	if e.p == nil {
		return ""
	}
	return e.p.log()
}

// Metrics is one parsed scrape.
type Metrics struct {
	// samples by series name: histograms are expanded into name_bucket (with "le"), name_sum and
	// name_count, summaries into name_sum and name_count.
	samples map[string][]Sample
	types   map[string]string // family name -> counter, gauge, histogram, ...
	Text    string            // the raw exposition, for failure messages
}

// ParseMetrics parses the Prometheus text format.
func ParseMetrics(text []byte) (Metrics, error) {
	m := Metrics{samples: map[string][]Sample{}, types: map[string]string{}, Text: string(text)}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return m, fmt.Errorf("parse /metrics: %w", err)
	}
	add := func(n string, labels map[string]string, v float64) {
		m.samples[n] = append(m.samples[n], Sample{Name: n, Labels: labels, Value: v})
	}
	for name, f := range fams {
		m.types[name] = strings.ToLower(f.GetType().String())
		for _, mt := range f.GetMetric() {
			l := map[string]string{}
			for _, lp := range mt.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			switch {
			case mt.Counter != nil:
				add(name, l, mt.GetCounter().GetValue())
			case mt.Gauge != nil:
				add(name, l, mt.GetGauge().GetValue())
			case mt.Untyped != nil:
				add(name, l, mt.GetUntyped().GetValue())
			case mt.Histogram != nil:
				h := mt.GetHistogram()
				add(name+"_count", l, float64(h.GetSampleCount()))
				add(name+"_sum", l, h.GetSampleSum())
				for _, b := range h.GetBucket() {
					bl := copyLabels(l)
					bl["le"] = model.SampleValue(b.GetUpperBound()).String()
					add(name+"_bucket", bl, float64(b.GetCumulativeCount()))
				}
				bl := copyLabels(l)
				bl["le"] = "+Inf"
				if _, ok := m.Value(name+"_bucket", bl); !ok {
					add(name+"_bucket", bl, float64(h.GetSampleCount()))
				}
			case mt.Summary != nil:
				add(name+"_count", l, float64(mt.GetSummary().GetSampleCount()))
				add(name+"_sum", l, mt.GetSummary().GetSampleSum())
			}
		}
	}
	for n := range m.samples {
		ss := m.samples[n]
		sort.Slice(ss, func(i, j int) bool { return ss[i].String() < ss[j].String() })
	}
	return m, nil
}

// Type is the metric family's type ("counter", "gauge", "histogram", ...; "" when absent).
func (m Metrics) Type(family string) string { return m.types[family] }

// Value returns the value of the series of name whose label set is exactly labels (nil = no
// labels). Histograms are reached as name_count, name_sum and name_bucket (with "le").
func (m Metrics) Value(name string, labels map[string]string) (float64, bool) {
	for _, s := range m.samples[name] {
		if sameLabels(s.Labels, labels) {
			return s.Value, true
		}
	}
	return 0, false
}

// Sum adds up every series of name whose labels include all of match.
func (m Metrics) Sum(name string, match map[string]string) float64 {
	sum := 0.0
	for _, s := range m.samples[name] {
		if hasLabels(s.Labels, match) {
			sum += s.Value
		}
	}
	return sum
}

// Has tells whether name has at least one series.
func (m Metrics) Has(name string) bool { return len(m.samples[name]) > 0 }

// Series lists the label sets of name, sorted by their text form.
func (m Metrics) Series(name string) []map[string]string {
	ss := m.samples[name]
	out := make([]map[string]string, len(ss))
	for i, s := range ss {
		out[i] = s.Labels
	}
	return out
}

// Samples returns every series of name with its value, sorted.
func (m Metrics) Samples(name string) []Sample {
	return append([]Sample(nil), m.samples[name]...)
}

func copyLabels(l map[string]string) map[string]string {
	c := make(map[string]string, len(l)+1)
	maps.Copy(c, l)
	return c
}

func sameLabels(a, b map[string]string) bool {
	return len(a) == len(b) && hasLabels(a, b)
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// DiffSamples compares want against the scrape: every wanted sample must exist with exactly that
// label set and value, and every series of the metrics named in exhaustive must be wanted. It
// returns one line per difference, none when they agree.
func DiffSamples(m Metrics, want []Sample, exhaustive ...string) []string {
	var diffs []string
	key := func(name string, l map[string]string) string { return Sample{Name: name, Labels: l}.String() }
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[key(w.Name, w.Labels)] = true
		got, ok := m.Value(w.Name, w.Labels)
		switch {
		case !ok:
			diffs = append(diffs, "missing: "+w.String())
		case got != w.Value:
			diffs = append(diffs, fmt.Sprintf("wrong value: %s, got %v", w.String(), got))
		}
	}
	for _, n := range exhaustive {
		for _, s := range m.samples[n] {
			if !wanted[key(s.Name, s.Labels)] {
				diffs = append(diffs, "unexpected: "+s.String())
			}
		}
	}
	return diffs
}

// PID is the exporter process's id (for /proc readings such as peak RSS).
func (e *Exporter) PID() int { return e.p.pid() }
