package harness

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// PromConfig is a small Prometheus configuration for tests (see PrometheusConfig).
type PromConfig struct {
	ScrapeInterval     time.Duration       // default 1s
	EvaluationInterval time.Duration       // default 1s
	Jobs               map[string][]string // job name -> host:port targets
	Alertmanagers      []string            // host:port
	ExternalLabels     map[string]string
	// DropMetrics are metric names every job drops at scrape time (metric_relabel_configs), e.g.
	// to show the rules a target without one of its series.
	DropMetrics []string
}

// PrometheusConfig renders c as prometheus.yml text.
func PrometheusConfig(c PromConfig) string {
	if c.ScrapeInterval == 0 {
		c.ScrapeInterval = time.Second
	}
	if c.EvaluationInterval == 0 {
		c.EvaluationInterval = time.Second
	}
	global := map[string]any{
		"scrape_interval":     promDuration(c.ScrapeInterval),
		"scrape_timeout":      promDuration(c.ScrapeInterval),
		"evaluation_interval": promDuration(c.EvaluationInterval),
	}
	if len(c.ExternalLabels) > 0 {
		global["external_labels"] = c.ExternalLabels
	}
	cfg := map[string]any{"global": global}
	var scrapes []any
	for job, targets := range c.Jobs {
		sc := map[string]any{
			"job_name":       job,
			"static_configs": []any{map[string]any{"targets": targets}},
		}
		if len(c.DropMetrics) > 0 {
			sc["metric_relabel_configs"] = []any{map[string]any{
				"source_labels": []string{"__name__"}, "regex": strings.Join(c.DropMetrics, "|"), "action": "drop",
			}}
		}
		scrapes = append(scrapes, sc)
	}
	if scrapes != nil {
		cfg["scrape_configs"] = scrapes
	}
	if len(c.Alertmanagers) > 0 {
		cfg["alerting"] = map[string]any{"alertmanagers": []any{
			map[string]any{"static_configs": []any{map[string]any{"targets": c.Alertmanagers}}},
		}}
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		panic(err) // plain maps of strings: cannot fail
	}
	return string(out)
}

// promDuration formats a duration the way Prometheus' config wants it ("1s", "500ms").
func promDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", int(d/time.Second))
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}

// Prometheus is a running Debian prometheus server.
type Prometheus struct {
	URL string
	Dir string
	p   *proc
}

// StartPrometheus runs prometheus with configYAML (rule files are appended to its rule_files as
// absolute paths), tmp storage and a free port, and waits for /-/ready.
func StartPrometheus(t testing.TB, configYAML string, ruleFiles ...string) *Prometheus {
	t.Helper()
	Require(t, "prometheus")
	dir := t.TempDir()
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(configYAML), &cfg); err != nil {
		t.Fatalf("prometheus config: %v", err)
	}
	if cfg == nil {
		cfg = map[string]any{}
	}
	if len(ruleFiles) > 0 {
		existing, _ := cfg["rule_files"].([]any)
		for _, f := range ruleFiles {
			abs, err := filepath.Abs(f)
			if err != nil {
				t.Fatal(err)
			}
			existing = append(existing, abs)
		}
		cfg["rule_files"] = existing
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, out, 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	p := &Prometheus{URL: "http://" + addr, Dir: dir}
	p.p = startProc(t, "prometheus", dir, os.Environ(), "prometheus",
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		// Firing alerts are re-sent every second, not every minute: the first send can happen
		// before the Alertmanager target is discovered.
		"--rules.alert.resend-delay=1s",
		"--log.level=warn")
	waitHTTP(t, "prometheus", p.p, p.URL+"/-/ready", 30*time.Second)
	return p
}

func waitHTTP(t testing.TB, name string, p *proc, u string, timeout time.Duration) {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if p.exited() {
			t.Fatalf("%s exited at start (%v):\n%s", name, p.waitErr, Tail(p.log(), 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s not 200 within %v:\n%s", name, u, timeout, Tail(p.log(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func getJSON(u string, into any) error {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, into); err != nil {
		return fmt.Errorf("GET %s: %w: %s", u, err, b)
	}
	return nil
}

// QuerySample is one element of an instant query's result (a scalar has no labels).
type QuerySample struct {
	Labels map[string]string
	Value  float64
}

// Query runs an instant query now. Vectors and scalars are supported.
func (p *Prometheus) Query(expr string) ([]QuerySample, error) {
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := getJSON(p.URL+"/api/v1/query?query="+url.QueryEscape(expr), &r); err != nil {
		return nil, fmt.Errorf("query %q: %w", expr, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %q: %s", expr, r.Error)
	}
	switch r.Data.ResultType {
	case "vector":
		var v []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(r.Data.Result, &v); err != nil {
			return nil, err
		}
		out := make([]QuerySample, 0, len(v))
		for _, s := range v {
			f, err := promValue(s.Value[1])
			if err != nil {
				return nil, err
			}
			out = append(out, QuerySample{Labels: s.Metric, Value: f})
		}
		return out, nil
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(r.Data.Result, &v); err != nil {
			return nil, err
		}
		f, err := promValue(v[1])
		return []QuerySample{{Value: f}}, err
	}
	return nil, fmt.Errorf("query %q: result type %s not supported", expr, r.Data.ResultType)
}

func promValue(v any) (float64, error) {
	s, ok := v.(string)
	if !ok {
		return 0, fmt.Errorf("sample value %v is not a string", v)
	}
	return strconv.ParseFloat(s, 64)
}

// WaitForQuery polls expr until cond holds on its result; fails the test after timeout.
func (p *Prometheus) WaitForQuery(t testing.TB, expr string, timeout time.Duration, cond func([]QuerySample) bool) []QuerySample {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		res, err := p.Query(expr)
		if err == nil && cond(res) {
			return res
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: %q did not meet the condition within %v (last: %v, %v)", expr, timeout, res, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Alert is an alert from Prometheus' /api/v1/alerts (state pending or firing) or Alertmanager's
// /api/v2/alerts (state active, suppressed, unprocessed).
type Alert struct {
	Labels      map[string]string
	Annotations map[string]string
	State       string
	ActiveAt    time.Time
	Value       string
}

// Name is the alertname label.
func (a Alert) Name() string { return a.Labels["alertname"] }

// Alerts returns the pending and firing alerts.
func (p *Prometheus) Alerts() ([]Alert, error) {
	var r struct {
		Data struct {
			Alerts []struct {
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
				State       string            `json:"state"`
				ActiveAt    time.Time         `json:"activeAt"`
				Value       string            `json:"value"`
			} `json:"alerts"`
		} `json:"data"`
	}
	if err := getJSON(p.URL+"/api/v1/alerts", &r); err != nil {
		return nil, err
	}
	out := make([]Alert, 0, len(r.Data.Alerts))
	for _, a := range r.Data.Alerts {
		out = append(out, Alert{Labels: a.Labels, Annotations: a.Annotations, State: a.State, ActiveAt: a.ActiveAt, Value: a.Value})
	}
	return out, nil
}

// WaitForAlert waits until an alert named name is in state ("pending" or "firing") and returns it.
func (p *Prometheus) WaitForAlert(t testing.TB, name, state string, timeout time.Duration) Alert {
	t.Helper()
	return waitAlert(t, "prometheus", p.Alerts, name, state, timeout)
}

func waitAlert(t testing.TB, who string, list func() ([]Alert, error), name, state string, timeout time.Duration) Alert {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last []Alert
	var err error
	for {
		last, err = list()
		for _, a := range last {
			if a.Name() == name && (state == "" || a.State == state) {
				return a
			}
		}
		if time.Now().After(deadline) {
			var have []string
			for _, a := range last {
				have = append(have, a.Name()+"/"+a.State)
			}
			t.Fatalf("%s: alert %s (state %q) not there within %v; alerts: [%s] %v", who, name, state, timeout, strings.Join(have, " "), err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// AlertmanagerBinary is Debian's name for it.
const AlertmanagerBinary = "prometheus-alertmanager"

// Alertmanager is a running alertmanager (single node, no clustering).
type Alertmanager struct {
	Addr string // host:port, for Prometheus' alerting config
	URL  string
	Dir  string
	p    *proc
}

// StartAlertmanager runs Debian's alertmanager with configYAML on a free port and waits for
// /-/ready.
func StartAlertmanager(t testing.TB, configYAML string) *Alertmanager {
	t.Helper()
	Require(t, AlertmanagerBinary)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfgPath, []byte(configYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	am := &Alertmanager{Addr: addr, URL: "http://" + addr, Dir: dir}
	am.p = startProc(t, "alertmanager", dir, os.Environ(), AlertmanagerBinary,
		"--config.file="+cfgPath,
		"--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--cluster.listen-address=", // no gossip port
		"--log.level=warn")
	waitHTTP(t, "alertmanager", am.p, am.URL+"/-/ready", 30*time.Second)
	return am
}

// Alerts returns the alerts Alertmanager holds (state: active, suppressed, unprocessed).
func (am *Alertmanager) Alerts() ([]Alert, error) {
	var r []struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
		StartsAt    time.Time         `json:"startsAt"`
		Status      struct {
			State string `json:"state"`
		} `json:"status"`
	}
	if err := getJSON(am.URL+"/api/v2/alerts", &r); err != nil {
		return nil, err
	}
	out := make([]Alert, 0, len(r))
	for _, a := range r {
		out = append(out, Alert{Labels: a.Labels, Annotations: a.Annotations, State: a.Status.State, ActiveAt: a.StartsAt})
	}
	return out, nil
}

// WaitForAlert waits until Alertmanager holds an alert named name in state ("" for any).
func (am *Alertmanager) WaitForAlert(t testing.TB, name, state string, timeout time.Duration) Alert {
	t.Helper()
	return waitAlert(t, "alertmanager", am.Alerts, name, state, timeout)
}
