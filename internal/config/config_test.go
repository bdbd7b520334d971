package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func ptr[T any](v T) *T { return &v }

func TestDeployFile(t *testing.T) {
	cfg, err := Load("../../deploy/celery_exporter.yml")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Breakers: []Breaker{{
			Name: "zep", RedisURL: "redis://redis:6379/0", Key: ":1:mem:mode:forced:v1", Format: FormatDjangoPickle,
			Fields: BreakerFields{Mode: ptr("mode"), Reason: ptr("reason"), Until: ptr("until"), OpenedAt: ptr("forced_at")},
		}},
		AppValues: []AppValue{{Name: "zep_read_consecutive_failures", RedisURL: "redis://redis:6379/0", Key: ":1:mem:read:consec_failures", Default: ptr(0.0)}},
		Logs: []LogSource{{
			Paths:      []string{"/var/lib/docker/containers/*/*-json.log"},
			Format:     LogFormatDockerJSON,
			EventField: "message",
			LevelField: "level",
			Events: []string{"zep_call_error", "zep_call_failure", "zep_call_skipped_circuit", "preferences_extract_failed",
				"preferences_extract_skipped_no_openai_key", "zep_degraded_skipping_writes"},
			MaxLineBytes: 262144,
			PollInterval: time.Second,
		}},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
breakers:
  - name: zep
    key: ":1:mem:mode:forced:v1"
  - name: maint
    key: maintenance
    format: string
    open_values: ["on"]
    fields: {until: ""}
logs:
  - paths: [/var/log/app/*.log]
`), "t.yml")
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.Breakers[0]
	if b.Format != FormatDjangoPickle || b.RedisURL != "" {
		t.Errorf("breaker defaults: %+v", b)
	}
	if got := []string{b.Fields.ModeField(), b.Fields.ReasonField(), b.Fields.UntilField(), b.Fields.OpenedAtField()}; !reflect.DeepEqual(got, []string{"mode", "reason", "until", "forced_at"}) {
		t.Errorf("default fields = %v", got)
	}
	if got := cfg.Breakers[1].Fields.UntilField(); got != "" {
		t.Errorf("until set to \"\" must stay empty (no expiry field), got %q", got)
	}
	l := cfg.Logs[0]
	if l.Format != LogFormatJSON || l.EventField != "message" || l.LevelField != "level" || l.MaxLineBytes != DefaultMaxLineBytes || l.PollInterval != time.Second || l.FromBeginning {
		t.Errorf("log defaults: %+v", l)
	}
}

func TestEmpty(t *testing.T) {
	for _, in := range []string{"", "\n# only a comment\n", "{}"} {
		cfg, err := Parse([]byte(in), "t.yml")
		if err != nil || len(cfg.Breakers)+len(cfg.AppValues)+len(cfg.Logs) != 0 {
			t.Errorf("Parse(%q) = %+v, %v; want empty config", in, cfg, err)
		}
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string // every line of the error, in order
	}{
		{"unknown field", `
breakers:
  - name: zep
    kye: x
`, []string{"t.yml:4: field kye not found in a breaker", "t.yml:3: breakers[0].key: required"}},
		{"unknown top-level field", "breaker: []\n", []string{"t.yml:1: field breaker not found in the top level (breakers, app_values, logs)"}},
		{"bad format and missing key", `
breakers:
  - name: zep
    key: k
  - name: other
    format: djano-pickle
`, []string{
			"t.yml:5: breakers[1].key: required",
			`t.yml:6: breakers[1].format: "djano-pickle" is not one of django-pickle, pickle, json, string, exists`,
		}},
		{"duplicate breaker", `
breakers:
  - {name: zep, key: a}
  - {name: zep, key: b}
`, []string{`t.yml:4: breakers[1].name: breaker "zep" is already defined by breakers[0]`}},
		{"open_values on pickle", `
breakers:
  - name: zep
    key: a
    open_values: [x]
`, []string{`t.yml:5: breakers[0].open_values: only applies to format "string"`}},
		{"bad redis url", `
app_values:
  - name: n
    key: k
    redis_url: "http://example"
`, []string{`t.yml:5: app_values[0].redis_url: `}},
		{"logs", `
logs:
  - paths: ["[", ""]
    format: xml
    events: [a, a, ""]
    max_line_bytes: 10
    poll_interval: 1ms
  - events: [x]
`, []string{
			`t.yml:3: logs[0].paths[0]: bad glob "[": syntax error in pattern`,
			`t.yml:3: logs[0].paths[1]: empty glob`,
			`t.yml:4: logs[0].format: "xml" is not one of json, docker-json, logfmt, text`,
			`t.yml:5: logs[0].events[1]: event "a" listed twice`,
			`t.yml:5: logs[0].events[2]: empty event name`,
			`t.yml:6: logs[0].max_line_bytes: 10 is too small (at least 64)`,
			`t.yml:7: logs[0].poll_interval: 1ms is too short (at least 10ms)`,
			`t.yml:8: logs[1].paths: at least one glob is required`,
		}},
		{"bad duration", `
logs:
  - paths: [a]
    poll_interval: soon
`, []string{"t.yml:4: cannot unmarshal !!str `soon` into time.Duration"}},
		{"not yaml", "breakers: [\n", []string{"t.yml: yaml: line 1: did not find expected node content"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in), "t.yml")
			if err == nil {
				t.Fatal("no error")
			}
			got := strings.Split(err.Error(), "\n")
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%s", len(got), len(tc.want), err)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Errorf("error %d:\n got %s\nwant %s", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestBadURLHidesPassword(t *testing.T) {
	_, err := Parse([]byte("app_values:\n  - {name: n, key: k, redis_url: \"redis://u:s3cret@host:notaport/0\"}\n"), "t.yml")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %v must exist and not contain the password", err)
	}
}

func TestReloader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var applied []string
	failNext := false
	apply1 := func(c *Config) error {
		applied = append(applied, "a:"+names(c))
		return nil
	}
	apply2 := func(c *Config) error {
		applied = append(applied, "b:"+names(c))
		if failNext {
			failNext = false
			return errors.New("refused")
		}
		return nil
	}
	r := NewReloader(path, nil, apply1, apply2)
	now := time.Unix(1700000000, 500e6)
	r.now = func() time.Time { return now }

	metrics := func(ok, ts string) string {
		return `
# HELP celery_exporter_config_last_reload_success_timestamp_seconds Timestamp of the last successful configuration reload.
# TYPE celery_exporter_config_last_reload_success_timestamp_seconds gauge
celery_exporter_config_last_reload_success_timestamp_seconds ` + ts + `
# HELP celery_exporter_config_last_reload_successful Whether the last configuration reload attempt was successful (1) or not (0).
# TYPE celery_exporter_config_last_reload_successful gauge
celery_exporter_config_last_reload_successful ` + ok + `
`
	}
	check := func(ok, ts string) {
		t.Helper()
		if err := testutil.CollectAndCompare(r, strings.NewReader(metrics(ok, ts))); err != nil {
			t.Error(err)
		}
	}
	check("0", "0")

	write("breakers: [{name: one, key: k1}]\n")
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	check("1", "1.7000000005e+09")

	// Invalid file: nothing applied, the running config stays.
	write("breakers: [{name: two}]\n")
	now = now.Add(time.Minute)
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "breakers[0].key: required") {
		t.Fatalf("Reload = %v", err)
	}
	check("0", "1.7000000005e+09")
	if got := names(r.Config()); got != "one" {
		t.Errorf("running config = %s, want one", got)
	}

	// A source refusing the config: the previous one is handed back to those that took it.
	write("breakers: [{name: three, key: k3}]\n")
	failNext = true
	if err := r.Reload(); err == nil {
		t.Fatal("Reload succeeded although a source refused")
	}
	check("0", "1.7000000005e+09")

	write("breakers: [{name: four, key: k4}]\n")
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	check("1", "1.7000000605e+09")
	want := []string{"a:one", "b:one", "a:three", "b:three", "a:one", "b:one", "a:four", "b:four"}
	if !reflect.DeepEqual(applied, want) {
		t.Errorf("applied %v\nwant    %v", applied, want)
	}
}

func TestReloaderNoFile(t *testing.T) {
	var got *Config
	r := NewReloader("", nil, func(c *Config) error { got = c; return nil })
	if err := r.Reload(); err != nil || got == nil || len(got.Breakers) != 0 {
		t.Errorf("Reload = %v, applied %+v; want an empty config", err, got)
	}
}

func names(c *Config) string {
	var s []string
	for _, b := range c.Breakers {
		s = append(s, b.Name)
	}
	return strings.Join(s, ",")
}

// A config file over MaxFileBytes is refused before it is read whole (a
// 100 MB file took 664 MiB to reload).
func TestLoadRefusesHugeFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "huge.yml")
	if err := os.WriteFile(path, []byte("breakers: []\n#"+strings.Repeat("x", MaxFileBytes)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v, want a size error", err)
	}
}

// Every error of the file shows at once, the unknown field as well as the
// invalid values after it; at start the log does not claim a running configuration is kept.
func TestAllErrorsAtOnceAndStartMessage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yml")
	if err := os.WriteFile(path, []byte(`breakers:
  - {name: a, key: k, fromat: json}
  - {name: b, format: djano-pickle}
app_values:
  - {name: "", key: v}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"bad.yml:2: field fromat not found", "bad.yml:3: breakers[1].key", "bad.yml:3: breakers[1].format", "app_values[0].name"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	var buf strings.Builder
	r := NewReloader(path, log.NewLogfmtLogger(&buf))
	if r.Reload() == nil {
		t.Fatal("Reload of a bad file succeeded")
	}
	out := buf.String()
	if strings.Contains(out, "keeping the running one") || !strings.Contains(out, "not loaded at start") {
		t.Errorf("start-up log:\n%s", out)
	}
	if n := strings.Count(out, "\n"); n < 4 {
		t.Errorf("%d log lines for 4+ errors, want one each:\n%s", n, out)
	}
}
