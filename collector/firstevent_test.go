package collector

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A counter born at its first event reads 1 to Prometheus, and increase() over it reads 0: the
// first event never pages. These series exist at 0 before anything happened.
func TestEventSourceHealthCountersStartAtZero(t *testing.T) {
	src, _ := newTestSource(EventOptions{})
	got := samples(t, AsCollector(src))
	var want []string
	for _, r := range []string{"invalid_envelope", "invalid_base64", "unsupported_content_type", "compressed", "invalid_json",
		"not_an_object", "missing_type", "missing_uuid", "missing_hostname", "unknown_type", "buffer_full"} {
		want = append(want, `celery_exporter_event_errors_total{reason="`+r+`"}`)
	}
	for _, l := range []string{"name", "hostname", "exception"} {
		want = append(want, `celery_exporter_label_overflow_total{label="`+l+`"}`)
	}
	for _, k := range want {
		if v, ok := got[k]; !ok || v != 0 {
			t.Errorf("%s = %v (present %v), want 0 before any event", k, v, ok)
		}
	}
	if n := len(only(got, "celery_exporter_event_errors_total")); n != 11 {
		t.Errorf("%d reasons, want 11", n)
	}
}

func TestStartTime(t *testing.T) {
	start := time.Unix(1795879460, 250e6)
	if err := testutil.CollectAndCompare(NewStartTime(start), strings.NewReader(`
# HELP celery_exporter_start_time_seconds When the exporter process started counting, in unix time: every counter it exposes started at 0 then.
# TYPE celery_exporter_start_time_seconds gauge
celery_exporter_start_time_seconds 1.79587946025e+09
`)); err != nil {
		t.Fatal(err)
	}
}
