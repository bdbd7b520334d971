// Package collector turns the sources of a Celery deployment into Prometheus metrics.
//
// Each source lives in its own file and implements Scraper. Sources that are fed in the background
// (the event stream, remote control, log files) keep their state between scrapes and report it on
// Scrape; sources read at scrape time (broker state, breaker flags) talk to Redis inside Scrape.
// Every scrape reports, per source, whether it worked and how long it took, so one broken source is
// visible and never hides the others (the node_exporter / mysqld_exporter pattern).
package collector

import (
	"context"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
)

// Namespace is the prefix of every metric this exporter exposes.
const Namespace = "celery"

// Scraper is one source of metrics.
type Scraper interface {
	// Name is the value of the `collector` label of the per-source health metrics.
	Name() string
	// Scrape sends the source's metrics. An error marks the source failed for this scrape; the
	// metrics sent before it still count.
	Scrape(ctx context.Context, ch chan<- prometheus.Metric) error
}

var (
	scrapeSuccessDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "exporter", "collector_success"),
		"Whether the source answered the last scrape (1) or failed (0).",
		[]string{"collector"}, nil,
	)
	scrapeDurationDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "exporter", "collector_duration_seconds"),
		"How long the source took to answer the last scrape.",
		[]string{"collector"}, nil,
	)
)

// Exporter runs every Scraper on each scrape, concurrently, each under the same deadline.
type Exporter struct {
	scrapers []Scraper
	timeout  time.Duration
	logger   log.Logger

	mu       sync.Mutex
	failures map[string]bool // last state per source, so a failure is logged once, not every scrape
}

// NewExporter returns an Exporter that gives each scrape at most timeout.
func NewExporter(logger log.Logger, timeout time.Duration, scrapers ...Scraper) *Exporter {
	return &Exporter{scrapers: scrapers, timeout: timeout, logger: logger, failures: map[string]bool{}}
}

// Describe sends nothing: the set of series depends on what the sources find (an unchecked
// collector).
func (e *Exporter) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()

	var wg sync.WaitGroup
	for _, s := range e.scrapers {
		wg.Add(1)
		go func(s Scraper) {
			defer wg.Done()
			start := time.Now()
			err := s.Scrape(ctx, ch)
			success := 1.0
			if err != nil {
				success = 0
			}
			e.logTransition(s.Name(), err)
			ch <- prometheus.MustNewConstMetric(scrapeSuccessDesc, prometheus.GaugeValue, success, s.Name())
			ch <- prometheus.MustNewConstMetric(scrapeDurationDesc, prometheus.GaugeValue, time.Since(start).Seconds(), s.Name())
		}(s)
	}
	wg.Wait()
}

func (e *Exporter) logTransition(name string, err error) {
	e.mu.Lock()
	was := e.failures[name]
	e.failures[name] = err != nil
	e.mu.Unlock()
	switch {
	case err != nil && !was:
		level.Warn(e.logger).Log("msg", "source failed", "collector", name, "err", err)
	case err == nil && was:
		level.Info(e.logger).Log("msg", "source recovered", "collector", name)
	}
}

// AsCollector exposes one Scraper as a plain prometheus.Collector, without the health metrics
// (tests and tools that look at one source).
func AsCollector(s Scraper) prometheus.Collector { return scraperCollector{s} }

type scraperCollector struct{ s Scraper }

func (c scraperCollector) Describe(chan<- *prometheus.Desc) {}

func (c scraperCollector) Collect(ch chan<- prometheus.Metric) {
	_ = c.s.Scrape(context.Background(), ch)
}

// NewStartTime returns celery_exporter_start_time_seconds: when this exporter process started
// counting. Every counter of the process starts at that time, so a rule can tell a series that
// is new because its first event just happened from one that is new because the process (and
// with it, in Kubernetes, the instance label) is new.
func NewStartTime(start time.Time) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Subsystem: "exporter", Name: "start_time_seconds",
		Help: "When the exporter process started counting, in unix time: every counter it exposes started at 0 then.",
	})
	g.Set(float64(start.Unix()) + float64(start.Nanosecond())/1e9)
	return g
}
