package collector

import (
	"context"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	hungDesc = prometheus.NewDesc("test_hung_partial", "Sent before the source hung.", nil, nil)
	lateDesc = prometheus.NewDesc("test_hung_late", "Sent after the source was released.", nil, nil)
)

// hung sends one metric, then ignores its context until released, like a Redis read stuck on a
// broker under CLIENT PAUSE.
type hung struct{ release chan struct{} }

func (hung) Name() string { return "hung" }
func (h hung) Scrape(_ context.Context, ch chan<- prometheus.Metric) error {
	ch <- prometheus.MustNewConstMetric(hungDesc, prometheus.GaugeValue, 1)
	<-h.release
	ch <- prometheus.MustNewConstMetric(lateDesc, prometheus.GaugeValue, 2) // too late for a scrape that gave up
	return nil
}

type quick struct{}

func (quick) Name() string { return "quick" }
func (quick) Scrape(_ context.Context, ch chan<- prometheus.Metric) error {
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("test_quick", "Answers at once.", nil, nil), prometheus.GaugeValue, 7)
	return nil
}

// A source that ignores its context must not hold the scrape past --scrape.timeout: the scrape
// returns with that source failed, the others intact.
func TestExporterAnswersWithinTimeoutWhateverASourceDoes(t *testing.T) {
	h := hung{release: make(chan struct{})}
	defer close(h.release)
	e := NewExporter(log.NewNopLogger(), 200*time.Millisecond, h, quick{}, failing{})

	done := make(chan map[string]float64, 1)
	go func() { done <- samples(t, e) }()
	var got map[string]float64
	select {
	case got = <-done:
	case <-time.After(30 * time.Second): // far above the 200ms deadline; before the fix: forever
		t.Fatal("Collect did not return while a source hung")
	}
	expectSamples(t, got, map[string]float64{
		`celery_exporter_collector_success{collector="hung"}`:   0,
		`celery_exporter_collector_success{collector="quick"}`:  1,
		`celery_exporter_collector_success{collector="broken"}`: 0,
		`test_hung_partial{}`: 1,
		`test_quick{}`:        7,
	})
	expectAbsent(t, got, `test_hung_late{}`)
}

// The late metrics of a source abandoned at the deadline go nowhere (no send on a closed
// channel, no block): a second scrape works while the first source is still stuck.
func TestExporterAbandonedSourceDoesNotBlockNextScrape(t *testing.T) {
	h := hung{release: make(chan struct{})}
	e := NewExporter(log.NewNopLogger(), 50*time.Millisecond, h)
	_ = samples(t, e)
	close(h.release) // the first scrape's goroutine now sends its late metric
	got := samples(t, e)
	if got[`celery_exporter_collector_success{collector="hung"}`] != 1 {
		t.Fatalf("second scrape: %v", got)
	}
}
