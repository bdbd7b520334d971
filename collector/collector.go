package collector

import (
	"context"
	"fmt"
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

// TimeoutReporter is a Scraper with metrics of its own that say it failed (celery_up 0): they are
// taken from ScrapeTimedOut when the source did not answer within the scrape's deadline.
type TimeoutReporter interface {
	ScrapeTimedOut(emit func(prometheus.Metric))
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

// Collect implements prometheus.Collector. It returns by the deadline whatever the sources do: a
// source that ignores its context (a Redis call stuck in a read) is reported failed with what it
// sent so far, and whatever it sends later is discarded. So a hanging broker shows as
// collector_success 0 in a scrape that Prometheus still receives, not as up 0.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	// The sources' deadline comes a little before the scrape's, so a source whose Redis call ends
	// at its deadline still has time to report its own failure (celery_up 0).
	margin := min(e.timeout/5, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout-margin)
	defer cancel()
	giveUp := time.NewTimer(e.timeout)
	defer giveUp.Stop()

	results := make([]*sourceResult, len(e.scrapers))
	for i, s := range e.scrapers {
		r := &sourceResult{done: make(chan struct{}), start: time.Now()}
		results[i] = r
		go r.run(ctx, s)
	}
	for i, s := range e.scrapers {
		r := results[i]
		var err error
		select {
		case <-r.done:
			err = r.err
		case <-giveUp.C:
			giveUp.Reset(0) // fires at once for every later source still running
			select {
			case <-r.done: // finished at the same moment
				err = r.err
			default:
				err = fmt.Errorf("no answer within --scrape.timeout (%s)", e.timeout)
				if tr, ok := s.(TimeoutReporter); ok {
					tr.ScrapeTimedOut(func(m prometheus.Metric) { r.add(m) })
				}
			}
		}
		for _, m := range r.take() {
			ch <- m
		}
		success := 1.0
		if err != nil {
			success = 0
		}
		e.logTransition(s.Name(), err)
		ch <- prometheus.MustNewConstMetric(scrapeSuccessDesc, prometheus.GaugeValue, success, s.Name())
		ch <- prometheus.MustNewConstMetric(scrapeDurationDesc, prometheus.GaugeValue, time.Since(r.start).Seconds(), s.Name())
	}
}

// sourceResult buffers one source's metrics of one scrape, so Collect decides when to stop
// waiting for it.
type sourceResult struct {
	start time.Time
	done  chan struct{}
	err   error

	mu      sync.Mutex
	metrics []prometheus.Metric
	closed  bool // taken: later metrics are dropped
}

func (r *sourceResult) run(ctx context.Context, s Scraper) {
	ch := make(chan prometheus.Metric, 64)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for m := range ch {
			r.add(m)
		}
	}()
	err := s.Scrape(ctx, ch)
	close(ch)
	<-drained
	r.err = err
	close(r.done)
}

func (r *sourceResult) add(m prometheus.Metric) {
	r.mu.Lock()
	if !r.closed {
		r.metrics = append(r.metrics, m)
	}
	r.mu.Unlock()
}

func (r *sourceResult) take() []prometheus.Metric {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	m := r.metrics
	r.metrics = nil
	return m
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
