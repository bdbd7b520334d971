package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/celery-exporter/celery_exporter/collector"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

// The broker URL is required; the tests of other flags get one from the environment (those of the
// broker URL itself set and clear it per case).
func TestMain(m *testing.M) {
	os.Setenv("CELERY_EXPORTER_BROKER_URL", "redis://test:6379/0")
	os.Exit(m.Run())
}

func TestFlagsFromEnvironment(t *testing.T) {
	const deprecatedCE = "broker URL taken from CE_BROKER_URL (danihodovic/celery-exporter's variable); use CELERY_EXPORTER_BROKER_URL or --broker.url"
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    string
		warning string
		err     string
	}{
		{name: "none anywhere is an error, never localhost", err: "no broker URL: set --broker.url"},
		{name: "celery's variable when ours is unset", env: map[string]string{"CELERY_BROKER_URL": "redis://app:6379/1"}, want: "redis://app:6379/1"},
		{name: "ours wins", env: map[string]string{"CELERY_BROKER_URL": "redis://app:6379/1", "CELERY_EXPORTER_BROKER_URL": "redis://ours:6379/2"}, want: "redis://ours:6379/2"},
		{name: "the flag wins", env: map[string]string{"CELERY_BROKER_URL": "redis://app:6379/1"}, args: []string{"--broker.url=redis://flag/3"}, want: "redis://flag/3"},
		{name: "the old exporter's variable, with a warning", env: map[string]string{"CE_BROKER_URL": "redis://old:6379/4"}, want: "redis://old:6379/4", warning: deprecatedCE},
		{name: "celery's variable before the old exporter's", env: map[string]string{"CE_BROKER_URL": "redis://old:6379/4", "CELERY_BROKER_URL": "redis://app:6379/1"}, want: "redis://app:6379/1"},
		{name: "the old exporter's flag, with a warning", env: map[string]string{"CE_BROKER_URL": "redis://old:6379/4"}, args: []string{"--broker-url=redis://oldflag/5"}, want: "redis://oldflag/5", warning: "--broker-url is deprecated, use --broker.url"},
		{name: "the new flag before the old one", args: []string{"--broker-url=redis://oldflag/5", "--broker.url=redis://flag/3"}, want: "redis://flag/3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"CELERY_BROKER_URL", "CELERY_EXPORTER_BROKER_URL", "CE_BROKER_URL"} {
				t.Setenv(k, "")
			}
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			f, _, err := parseFlags(tt.args)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.brokerURL != tt.want || f.brokerURLWarning != tt.warning {
				t.Fatalf("broker URL %q, warning %q; want %q, %q", f.brokerURL, f.brokerURLWarning, tt.want, tt.warning)
			}
		})
	}
	t.Setenv("CELERY_BROKER_URL", "redis://app:6379/1")
	t.Setenv("CELERY_EXPORTER_WORKER_TIMEOUT", "9s")
	t.Setenv("CELERY_EXPORTER_BROKER_TRANSPORT_OPTION", "global_keyprefix=pfx:")
	t.Setenv("CELERY_EXPORTER_CONTROL_DISABLED", "true")
	f, web, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.workerTimeout != 9*time.Second || !f.controlDisabled || len(f.transportOptions) != 1 || (*web.WebListenAddresses)[0] != ":9808" {
		t.Fatalf("env not applied: %+v", f)
	}
}

func TestBuckets(t *testing.T) {
	if _, err := parseBuckets("x", "1,2,3"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"1,a", "3,2", ""} {
		if _, err := parseBuckets("x", bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
	f, _, _ := parseFlags(nil)
	b, err := parseBuckets("task.runtime-buckets", f.runtimeBuckets)
	if err != nil || b[len(b)-1] != 3600 {
		t.Fatalf("default runtime buckets %v %v", b, err)
	}
}

// exporter-toolkit logs through slog; it must come out of the same go-kit logger, level filter included.
func TestSlogBridge(t *testing.T) {
	var buf bytes.Buffer
	l, err := newLogger(&buf, "info", "logfmt")
	if err != nil {
		t.Fatal(err)
	}
	s := slogLogger(l).With("component", "web")
	s.Info("Listening on", "address", "[::]:9808")
	s.Debug("hidden")
	s.WithGroup("tls").Error("bad cert", "file", "x.pem")
	out := buf.String()
	for _, want := range []string{`level=info`, `caller=main_test.go:`, `msg="Listening on"`, `component=web`, `address=[::]:9808`, `level=error`, `tls.file=x.pem`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in %s", want, out)
		}
	}
	if strings.Contains(out, "hidden") {
		t.Error("debug passed an info filter")
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.Count(line, "ts=") != 1 || strings.Contains(line, "time=") {
			t.Errorf("want one timestamp, ts, on every line: %s", line)
		}
	}
}

func TestBadBrokerURLNeverLogsThePassword(t *testing.T) {
	t.Setenv("CELERY_EXPORTER_BROKER_URL", "")
	f, web, err := parseFlags([]string{"--broker.url=redis://:hunter2@host:badport/0"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	l, _ := newLogger(&buf, "debug", "logfmt")
	err = serve(withCaller(l), slogLogger(l), f, web)
	if err == nil || strings.Contains(err.Error(), "hunter2") || strings.Contains(buf.String(), "hunter2") {
		t.Fatalf("err %v, log %s", err, buf.String())
	}
}

// The flags show the collector's defaults, the one place they are written.
func TestFlagDefaultsAreTheCollectors(t *testing.T) {
	f, _, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	ev, ctl, br := collector.DefaultEventOptions(), collector.DefaultControlOptions(), collector.DefaultBrokerOptions()
	runtime, _ := parseBuckets("task.runtime-buckets", f.runtimeBuckets)
	wait, _ := parseBuckets("task.queue-wait-buckets", f.queueWaitBuckets)
	got := collector.EventOptions{
		PurgeAfter: f.workerPurgeAfter, RuntimeBuckets: runtime, QueueWaitBuckets: wait, SentWait: f.sentWait,
		DefaultQueue: f.defaultQueue, MaxTaskNames: f.maxTaskNames, MaxQueues: f.maxQueues, MaxExceptionsPerTask: f.maxExceptions,
		MaxWorkers: f.maxWorkers, InitialExceptions: splitList(f.initialExc),
	}
	if !reflect.DeepEqual(got, ev) {
		t.Errorf("event flags %+v\nwant %+v", got, ev)
	}
	if gotModel := (state.Options{WorkerTimeout: f.workerTimeout, MaxTasks: f.maxTracked, MaxTaskBytes: f.maxTrackedBytes, TaskTTL: f.taskTTL}); gotModel != collector.DefaultModelOptions() {
		t.Errorf("model flags %+v, want %+v", gotModel, collector.DefaultModelOptions())
	}
	if gotCtl := (collector.ControlOptions{Interval: f.controlInterval, Timeout: f.controlTimeout,
		Deadline: f.controlDeadline, ControlExchange: f.controlExchange}); gotCtl != ctl {
		t.Errorf("control flags %+v, want %+v", gotCtl, ctl)
	}
	if f.unackedScanLimit != br.UnackedScanLimit || f.discovery != br.DiscoveryInterval || f.eventExchange != br.EventExchange {
		t.Errorf("broker flags %d %v %q, want %+v", f.unackedScanLimit, f.discovery, f.eventExchange, br)
	}
}

// A cap below 1 is an error, not an unbounded label set or cache.
func TestCapsMustBePositive(t *testing.T) {
	for _, flag := range []string{"worker.max-workers", "task.max-tracked", "task.max-names", "task.max-exceptions-per-task"} {
		for _, v := range []string{"0", "-1"} {
			if _, _, err := parseFlags([]string{"--" + flag + "=" + v}); err == nil || !strings.Contains(err.Error(), flag) {
				t.Errorf("--%s=%s: err %v, want one naming the flag", flag, v, err)
			}
		}
	}
}

func TestInitialExceptionsFlag(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "SoftTimeLimitExceeded|TimeLimitExceeded|WorkerLostError"},
		{[]string{"--task.initial-exceptions=WorkerLostError, KeyError"}, "WorkerLostError|KeyError"},
		{[]string{"--task.initial-exceptions="}, ""},
	}
	for _, tt := range tests {
		f, _, err := parseFlags(tt.args)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(splitList(f.initialExc), "|"); got != tt.want {
			t.Errorf("%v: %q, want %q", tt.args, got, tt.want)
		}
	}
}

func TestReadyEndpoint(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantCode int
		wantBody string
	}{
		{"subscribed and the broker answers", nil, http.StatusOK, "Ready\n"},
		{"subscription down", errors.New("the event subscription is down"), http.StatusServiceUnavailable, "Not ready: the event subscription is down\n"},
		{"broker down", errors.New("the broker does not answer: dial tcp: connection refused"), http.StatusServiceUnavailable,
			"Not ready: the broker does not answer: dial tcp: connection refused\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hasDeadline bool
			mux, err := routes(log.NewNopLogger(), "/metrics", prometheus.NewRegistry(), func(ctx context.Context) error {
				_, hasDeadline = ctx.Deadline()
				return tt.err
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/-/ready", nil))
			if rec.Code != tt.wantCode || rec.Body.String() != tt.wantBody {
				t.Errorf("%d %q, want %d %q", rec.Code, rec.Body.String(), tt.wantCode, tt.wantBody)
			}
			if !hasDeadline {
				t.Error("the check runs without a deadline")
			}
		})
	}
}

// Every link of the landing page leads somewhere (the pprof links of exporter-toolkit's default
// page led to 404s).
func TestLandingPageHasNoDeadLinks(t *testing.T) {
	mux, err := routes(log.NewNopLogger(), "/metrics", prometheus.NewRegistry(), func(context.Context) error { return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("landing page: %d", rec.Code)
	}
	links := regexp.MustCompile(`href="([^"]+)"`).FindAllStringSubmatch(rec.Body.String(), -1)
	var local int
	for _, m := range links {
		href := m[1]
		if strings.HasPrefix(href, "http") {
			continue // external (prometheus.io, pprof.me)
		}
		local++
		if !strings.HasPrefix(href, "/") {
			href = "/" + href
		}
		r := httptest.NewRecorder()
		mux.ServeHTTP(r, httptest.NewRequest(http.MethodGet, href, nil))
		if r.Code != http.StatusOK {
			t.Errorf("link %s: %d", m[1], r.Code)
		}
	}
	if local < 3 {
		t.Errorf("%d local links, want at least metrics, health and readiness: %s", local, rec.Body.String())
	}
}
