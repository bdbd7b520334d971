package collector

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/internal/logtail"
)

func TestLogScraperFilesAndReload(t *testing.T) {
	dir := t.TempDir()
	app := filepath.Join(dir, "app.log")
	if err := os.WriteFile(app, []byte(`{"level":"ERROR","message":"zep_call_error"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := NewLogScraper(nil)
	s.now = func() time.Time { return time.Unix(1000, 0) }
	defer s.Close()
	cfgText := func(events string) *config.Config {
		c, err := config.Parse([]byte(fmt.Sprintf("logs:\n  - {paths: [%q], poll_interval: 10ms, events: [%s]}\n", filepath.Join(dir, "*.log"), events)), "t")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if err := s.ApplyConfig(cfgText("zep_call_error")); err != nil {
		t.Fatal(err)
	}
	// The line written before start is history: not counted.
	waitFor(t, s, "celery_log_files_watched{} 1\ncelery_log_last_poll_timestamp_seconds{} 1000")

	appendLine := func(path, line string) {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(f, line)
		f.Close()
	}
	appendLine(app, `{"level":"ERROR","message":"zep_call_error"}`)
	appendLine(app, `{"level":"WARNING","message":"zep_call_failure"}`)
	waitFor(t, s, `celery_log_events_total{event="zep_call_error",level="error"} 1
celery_log_files_watched{} 1
celery_log_last_poll_timestamp_seconds{} 1000
celery_log_lines_total{level="error"} 1
celery_log_lines_total{level="warning"} 1`)

	// A reload that adds an event restarts the source where it was: a line read before is not
	// counted twice (nor, for the new event, at all), one written after counts for it, and a file
	// created since is read from its start. The line is read before the reload, so the result does
	// not depend on when the tailer polls.
	appendLine(app, `{"level":"WARNING","message":"zep_call_failure"}`)
	waitFor(t, s, `celery_log_events_total{event="zep_call_error",level="error"} 1
celery_log_files_watched{} 1
celery_log_last_poll_timestamp_seconds{} 1000
celery_log_lines_total{level="error"} 1
celery_log_lines_total{level="warning"} 2`)
	if err := s.ApplyConfig(cfgText("zep_call_error, zep_call_failure")); err != nil {
		t.Fatal(err)
	}
	appendLine(app, `{"level":"WARNING","message":"zep_call_failure"}`)
	appendLine(filepath.Join(dir, "new.log"), `{"level":"INFO","message":"zep_call_failure"}`)
	waitFor(t, s, `celery_log_events_total{event="zep_call_error",level="error"} 1
celery_log_events_total{event="zep_call_failure",level="info"} 1
celery_log_events_total{event="zep_call_failure",level="warning"} 1
celery_log_files_watched{} 2
celery_log_last_poll_timestamp_seconds{} 1000
celery_log_lines_total{level="error"} 1
celery_log_lines_total{level="info"} 1
celery_log_lines_total{level="warning"} 3`)

	// The zero series of a configured event exist before it first happens.
	compare(t, &errCapturingCollector{s: s}, `celery_log_events_total{event="zep_call_error",level="critical"} 0
celery_log_events_total{event="zep_call_error",level="debug"} 0
celery_log_events_total{event="zep_call_error",level="error"} 1
celery_log_events_total{event="zep_call_error",level="info"} 0
celery_log_events_total{event="zep_call_error",level="unknown"} 0
celery_log_events_total{event="zep_call_error",level="warning"} 0
celery_log_events_total{event="zep_call_failure",level="critical"} 0
celery_log_events_total{event="zep_call_failure",level="debug"} 0
celery_log_events_total{event="zep_call_failure",level="error"} 0
celery_log_events_total{event="zep_call_failure",level="info"} 1
celery_log_events_total{event="zep_call_failure",level="unknown"} 0
celery_log_events_total{event="zep_call_failure",level="warning"} 1
`, "celery_log_events_total")

	// An unchanged reload keeps the running tailer; an empty one stops everything but keeps counts.
	running := s.sources[0].tailer
	if err := s.ApplyConfig(cfgText("zep_call_error, zep_call_failure")); err != nil {
		t.Fatal(err)
	}
	if len(s.sources) != 1 || s.sources[0].tailer != running {
		t.Error("an unchanged reload restarted the source")
	}
	if err := s.ApplyConfig(&config.Config{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, `celery_log_events_total{event="zep_call_error",level="error"} 1
celery_log_events_total{event="zep_call_failure",level="info"} 1
celery_log_events_total{event="zep_call_failure",level="warning"} 1
celery_log_lines_total{level="error"} 1
celery_log_lines_total{level="info"} 1
celery_log_lines_total{level="warning"} 3`)
}

// The last poll time is the oldest of the sources': one whose polling stopped (here one polled
// by hand at 1000, then no more) holds it back while another keeps polling. A source that never
// polled is left out; without sources there is no series.
func TestLogScraperLastPollIsOldest(t *testing.T) {
	var clock atomic.Int64
	now := func() time.Time { return time.Unix(clock.Load(), 0) }
	tailer := func() *logtail.Tailer {
		tl := logtail.New(logtail.Options{Globs: []string{filepath.Join(t.TempDir(), "*.log")}, Now: now}, nil, nil)
		t.Cleanup(func() { tl.Stop() })
		return tl
	}
	stopped, polling, never := tailer(), tailer(), tailer()
	s := NewLogScraper(nil)
	s.sources = []*logSource{{tailer: polling}, {tailer: stopped}, {tailer: never}}
	clock.Store(1000)
	stopped.Poll()
	polling.Poll()
	clock.Store(2000)
	polling.Poll()
	compare(t, &errCapturingCollector{s: s}, "celery_log_last_poll_timestamp_seconds{} 1000\n", "celery_log_last_poll_timestamp_seconds")
	s.sources = nil
	compare(t, &errCapturingCollector{s: s}, "", "celery_log_last_poll_timestamp_seconds")
}
