package main

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// maxScrapesInFlight bounds concurrent /metrics requests. Concurrent scrapes share one gathered
// result (sharedGatherer), so each extra one costs its encoding buffers, not a copy of every
// series: the limit can sit well above the number of Prometheus servers, and a few connections
// that never read cannot take every slot (they are cut at the write timeout).
const maxScrapesInFlight = 64

// writeTimeout bounds how long one response may take to write, so a client that never reads
// gives its slot back: the scrape's own deadline plus time for a slow link to carry the body.
func writeTimeout(scrapeTimeout time.Duration) time.Duration { return scrapeTimeout + 30*time.Second }

// sharedGatherer lets concurrent Gather calls share one result: a scrape arriving while another
// gathers waits for that one instead of building its own copy of every series. The families are
// only read after Gather returns (promhttp encodes them), so sharing them is safe.
type sharedGatherer struct {
	g prometheus.Gatherer

	mu       sync.Mutex
	inflight *gatherCall

	gathers atomic.Uint64 // calls of g, for tests
	waiting atomic.Int64  // callers waiting on another's gather, for tests
}

type gatherCall struct {
	done chan struct{}
	mfs  []*dto.MetricFamily
	err  error
}

func (s *sharedGatherer) Gather() ([]*dto.MetricFamily, error) {
	s.mu.Lock()
	if c := s.inflight; c != nil {
		s.mu.Unlock()
		s.waiting.Add(1)
		<-c.done
		s.waiting.Add(-1)
		return c.mfs, c.err
	}
	c := &gatherCall{done: make(chan struct{})}
	s.inflight = c
	s.mu.Unlock()

	s.gathers.Add(1)
	c.mfs, c.err = s.g.Gather()
	s.mu.Lock()
	s.inflight = nil
	s.mu.Unlock()
	close(c.done)
	return c.mfs, c.err
}

// metricsHandler serves g, at most limit requests at a time (503 past it), and logs one line per
// failed scrape: promhttp reports each family that could not be sent, and a client hanging up
// mid-scrape would otherwise log once per family.
func metricsHandler(logger log.Logger, g prometheus.Gatherer, limit int) http.Handler {
	slots := make(chan struct{}, limit)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
		default:
			http.Error(w, fmt.Sprintf("Limit of concurrent requests reached (%d), try again later.", limit), http.StatusServiceUnavailable)
			return
		}
		errs := &scrapeErrors{}
		promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: errs, ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
		if errs.n > 0 {
			level.Error(logger).Log("msg", "scrape failed", "client", r.RemoteAddr, "errors", errs.n, "err", errs.first)
		}
	})
}

// scrapeErrors collects what promhttp reports about one request.
type scrapeErrors struct {
	n     int
	first string
}

func (e *scrapeErrors) Println(v ...any) {
	if e.n == 0 {
		e.first = fmt.Sprint(v...)
	}
	e.n++
}
