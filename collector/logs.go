// Application log files: lines and named events counted by level, from files followed in the
// background (internal/logtail), plus the health of that following.

package collector

import (
	"context"
	"maps"
	"reflect"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/internal/logtail"
)

var logFilesWatchedDesc = prometheus.NewDesc(
	prometheus.BuildFQName(Namespace, "log", "files_watched"),
	"Log files currently followed.",
	nil, nil,
)

var logFilesUnfollowedDesc = prometheus.NewDesc(
	prometheus.BuildFQName(Namespace, "log", "files_unfollowed"),
	"Log files matching a source's paths that are not followed because the source already follows 1024.",
	nil, nil,
)

var logLastPollDesc = prometheus.NewDesc(
	prometheus.BuildFQName(Namespace, "log", "last_poll_timestamp_seconds"),
	"When the log source that polled least recently last completed a poll of its files; it stops advancing while a read hangs (a dead network mount). No series without log sources.",
	nil, nil,
)

// LogScraper counts lines and named events in application log files, followed in the background.
type LogScraper struct {
	logger  log.Logger
	events  *prometheus.CounterVec
	lines   *prometheus.CounterVec
	skipped *prometheus.CounterVec
	// truncations counts files truncated in place (copytruncate), each losing what was written
	// between our last read and the truncation.
	truncations prometheus.Counter
	// readErrors counts failed opens, stats and reads of matching files, once per poll.
	readErrors prometheus.Counter
	now        func() time.Time // the tailers' clock

	mu      sync.Mutex
	sources []*logSource
}

type logSource struct {
	cfg    config.LogSource
	tailer *logtail.Tailer
}

// NewLogScraper returns a scraper following nothing until ApplyConfig.
func NewLogScraper(logger log.Logger) *LogScraper {
	if logger == nil {
		logger = log.NewNopLogger()
	}
	s := &LogScraper{
		logger: logger,
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "log", Name: "events_total",
			Help: "Log lines carrying one of the configured event names, by event and normalized level.",
		}, []string{"event", "level"}),
		lines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "log", Name: "lines_total",
			Help: "Log lines read, by normalized level (debug, info, warning, error, critical, unknown).",
		}, []string{"level"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "log", Name: "lines_skipped_total",
			Help: "Log lines not counted, by reason (too_long: over max_line_bytes; malformed: not Docker's JSON wrapper).",
		}, []string{"reason"}),
		truncations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "log", Name: "files_truncated_total",
			Help: "Log files found truncated in place (copytruncate rotation): lines written between the last read and the truncation are lost.",
		}),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "log", Name: "read_errors_total",
			Help: "Failed attempts to open, stat or read a log file matching a source's paths; each poll tries again, so an unreadable file counts once per poll.",
		}),
		now: time.Now,
	}
	for _, l := range logLevels {
		s.lines.WithLabelValues(l)
	}
	s.skipped.WithLabelValues(skipTooLong)
	s.skipped.WithLabelValues(skipMalformed)
	return s
}

// Name implements Scraper.
func (s *LogScraper) Name() string { return "logs" }

// ApplyConfig follows cfg's log sources. Sources whose settings did not change keep running;
// the others are restarted where they stopped (no line is read twice, counts are kept).
func (s *LogScraper) ApplyConfig(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	wanted := make([]bool, len(cfg.Logs)) // cfg.Logs[i] is served by a running source
	resume := map[logtail.FileID]logtail.Position{}
	var next []*logSource
	for _, src := range s.sources {
		kept := false
		for i, c := range cfg.Logs {
			if !wanted[i] && reflect.DeepEqual(src.cfg, c) {
				wanted[i], kept = true, true
				next = append(next, src)
				break
			}
		}
		if !kept {
			maps.Copy(resume, src.tailer.Stop())
		}
	}
	for i, c := range cfg.Logs {
		// Zero series for every configured event, so the first occurrence is an increase.
		for _, e := range c.Events {
			for _, l := range logLevels {
				s.events.WithLabelValues(e, l)
			}
		}
		if wanted[i] {
			continue
		}
		p := newLogParser(c, s)
		t := logtail.New(logtail.Options{
			Globs:         c.Paths,
			FromBeginning: c.FromBeginning,
			MaxLineBytes:  c.MaxLineBytes,
			PollInterval:  c.PollInterval,
			Resume:        resume,
			OnTruncate:    s.truncations.Inc,
			OnReadError:   s.readErrors.Inc,
			Now:           s.now,
		}, p, log.With(s.logger, "source", "logs"))
		t.Start()
		next = append(next, &logSource{cfg: c, tailer: t})
	}
	s.sources = next
	return nil
}

// Close stops following every file.
func (s *LogScraper) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, src := range s.sources {
		src.tailer.Stop()
	}
	s.sources = nil
}

// Scrape implements Scraper; the counting happens in the background, so it never fails.
func (s *LogScraper) Scrape(_ context.Context, ch chan<- prometheus.Metric) error {
	s.mu.Lock()
	watched, unfollowed := 0, 0
	var oldest time.Time
	for _, src := range s.sources {
		watched += src.tailer.Watched()
		unfollowed += src.tailer.Unfollowed()
		if p := src.tailer.LastPoll(); !p.IsZero() && (oldest.IsZero() || p.Before(oldest)) {
			oldest = p
		}
	}
	s.mu.Unlock()
	s.events.Collect(ch)
	s.lines.Collect(ch)
	s.skipped.Collect(ch)
	s.truncations.Collect(ch)
	s.readErrors.Collect(ch)
	ch <- prometheus.MustNewConstMetric(logFilesWatchedDesc, prometheus.GaugeValue, float64(watched))
	ch <- prometheus.MustNewConstMetric(logFilesUnfollowedDesc, prometheus.GaugeValue, float64(unfollowed))
	if !oldest.IsZero() {
		ch <- prometheus.MustNewConstMetric(logLastPollDesc, prometheus.GaugeValue, float64(oldest.UnixNano())/1e9)
	}
	return nil
}
