package collector

import (
	"fmt"
	"strings"
	"testing"

	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/internal/logtail"
)

var seedEvents = []string{"zep_call_error", "zep_call_failure", "zep_call_skipped_circuit", "preferences_extract_failed",
	"preferences_extract_skipped_no_openai_key", "zep_degraded_skipping_writes"}

func logSourceConfig(format string, maxLine int) config.LogSource {
	c, err := config.Parse([]byte(fmt.Sprintf("logs:\n  - {paths: [x], format: %s, max_line_bytes: %d, events: [%s]}\n",
		format, maxLine, strings.Join(seedEvents, ", "))), "t")
	if err != nil {
		panic(err)
	}
	return c.Logs[0]
}

func TestLogParserFormats(t *testing.T) {
	for _, tc := range []struct {
		format string
		lines  []string
		want   string
	}{
		{"json", []string{
			`{"timestamp":"2025-01-01T10:00:00Z","level":"ERROR","logger":"assistant.memory.service","message":"zep_call_error","error":"boom"}`,
			`{"level":"WARNING","message":"zep_call_failure"}`,
			`{"level":"INFO","message":"preferences_extract_queued"}`,
			`{"level":"info","message":"zep_call_error_other"}`,
			`{"level":40,"message":"preferences_extract_failed"}`,
			`{"message":"zep_call_skipped_circuit"}`,
			`{"level":"ERROR","message":{"nested":"zep_call_error"}}`,
			`[2025-01-01 10:00:00,000: ERROR/ForkPoolWorker-1] Task chat.process raised unexpected: zep_call_error`,
			`{not json, WARNING`, // read as text
			`["level","ERROR"]`,
			``,
		}, `celery_log_events_total{event="preferences_extract_failed",level="error"} 1
celery_log_events_total{event="zep_call_error",level="error"} 2
celery_log_events_total{event="zep_call_failure",level="warning"} 1
celery_log_events_total{event="zep_call_skipped_circuit",level="unknown"} 1
celery_log_lines_total{level="error"} 5
celery_log_lines_total{level="info"} 2
celery_log_lines_total{level="unknown"} 2
celery_log_lines_total{level="warning"} 2`},
		{"docker-json", []string{
			`{"log":"{\"level\":\"ERROR\",\"message\":\"zep_call_error\"}\n","stream":"stdout","time":"2025-01-01T10:00:00.000000001Z"}`,
			// One app line split by Docker into two records.
			`{"log":"{\"level\":\"WARNING\",\"mess","stream":"stdout","time":"2025-01-01T10:00:00Z"}`,
			`{"log":"age\":\"zep_call_failure\"}\n","stream":"stdout","time":"2025-01-01T10:00:00Z"}`,
			`{"log":"[2025-01-01 10:00:00,000: WARNING/MainProcess] celery@abc ready.\r\n","stream":"stderr","time":"2025-01-01T10:00:00Z"}`,
			`not json at all`,
			`{"stream":"stdout"}`,
			// Parts adding up to more than max_line_bytes: skipped once, the rest discarded.
			`{"log":"` + strings.Repeat("a", 150) + `","stream":"stdout","time":"t"}`,
			`{"log":"` + strings.Repeat("b", 150) + `","stream":"stdout","time":"t"}`,
			`{"log":"zep_call_error tail of the long line\n","stream":"stdout","time":"t"}`,
			`{"log":"{\"level\":\"CRITICAL\",\"message\":\"zep_degraded_skipping_writes\"}\n","stream":"stdout","time":"t"}`,
		}, `celery_log_events_total{event="zep_call_error",level="error"} 1
celery_log_events_total{event="zep_call_failure",level="warning"} 1
celery_log_events_total{event="zep_degraded_skipping_writes",level="critical"} 1
celery_log_lines_skipped_total{reason="malformed"} 2
celery_log_lines_skipped_total{reason="too_long"} 1
celery_log_lines_total{level="critical"} 1
celery_log_lines_total{level="error"} 1
celery_log_lines_total{level="warning"} 2`},
		{"logfmt", []string{
			`ts=2025-01-01T10:00:00Z level=error logger=assistant.memory.service message=zep_call_error err="boom"`,
			`level=warn message="zep_degraded_skipping_writes"`,
			`level=info message="something else"`,
			`message=preferences_extract_skipped_no_openai_key`,
			`ERROR plain text zep_call_error`,
			`level="unterminated`,
		}, `celery_log_events_total{event="preferences_extract_skipped_no_openai_key",level="unknown"} 1
celery_log_events_total{event="zep_call_error",level="error"} 2
celery_log_events_total{event="zep_degraded_skipping_writes",level="warning"} 1
celery_log_lines_total{level="error"} 2
celery_log_lines_total{level="info"} 1
celery_log_lines_total{level="unknown"} 2
celery_log_lines_total{level="warning"} 1`},
		{"text", []string{
			`2025-01-01 10:00:00 ERROR assistant.memory.service zep_call_error: boom`,
			`WARNING:assistant.memory:zep_call_failure status=503`,
			`Errors happen, no level word here`,
			`[2025-01-01 10:00:00,000: INFO/MainProcess] Task received`,
			`DEBUG zep_call_skipped_circuit and zep_call_error: the first listed event wins`,
			`CRITICAL preferences_extract_failed`,
			`xERRORx FATAL`,
		}, `celery_log_events_total{event="preferences_extract_failed",level="critical"} 1
celery_log_events_total{event="zep_call_error",level="debug"} 1
celery_log_events_total{event="zep_call_error",level="error"} 1
celery_log_events_total{event="zep_call_failure",level="warning"} 1
celery_log_lines_total{level="critical"} 2
celery_log_lines_total{level="debug"} 1
celery_log_lines_total{level="error"} 1
celery_log_lines_total{level="info"} 1
celery_log_lines_total{level="unknown"} 1
celery_log_lines_total{level="warning"} 1`},
	} {
		t.Run(tc.format, func(t *testing.T) {
			s := NewLogScraper(nil)
			p := newLogParser(logSourceConfig(tc.format, 200), s)
			id := logtail.FileID{Dev: 1, Ino: 2}
			for _, l := range tc.lines {
				p.Line(id, []byte(l))
			}
			if got := nonZero(t, s); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestDockerPartialForgotten(t *testing.T) {
	// A truncated or closed file drops the Docker parts it was joining.
	s := NewLogScraper(nil)
	p := newLogParser(logSourceConfig("docker-json", 1000), s)
	id := logtail.FileID{Ino: 7}
	p.Line(id, []byte(`{"log":"{\"level\":\"ERROR\",","stream":"stdout"}`))
	p.Forget(id)
	p.Line(id, []byte(`{"log":"{\"level\":\"INFO\",\"message\":\"zep_call_error\"}\n","stream":"stdout"}`))
	if got, want := nonZero(t, s), `celery_log_events_total{event="zep_call_error",level="info"} 1
celery_log_lines_total{level="info"} 1`; got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestNormalizeLevel(t *testing.T) {
	for in, want := range map[string]string{
		"DEBUG": "debug", "trace": "debug", "Info": "info", "NOTICE": "info", "WARN": "warning", "warning": "warning",
		"err": "error", "ERROR": "error", "40": "error", "fatal": "critical", "CRITICAL": "critical", "50": "critical",
		" error ": "error", "verbose?": "unknown", "": "unknown",
	} {
		if got := normalizeLevel(in); got != want {
			t.Errorf("normalizeLevel(%q) = %q, want %q", in, got, want)
		}
	}
}
