package config

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	reloadSuccessDesc = prometheus.NewDesc(
		"celery_exporter_config_last_reload_successful",
		"Whether the last configuration reload attempt was successful (1) or not (0).",
		nil, nil,
	)
	reloadTimestampDesc = prometheus.NewDesc(
		"celery_exporter_config_last_reload_success_timestamp_seconds",
		"Timestamp of the last successful configuration reload.",
		nil, nil,
	)
)

// Reloader owns the running configuration: it loads the file, validates it, and hands it to the
// sources. An invalid file (or one a source refuses) leaves the running configuration in force,
// like Prometheus and Alertmanager do, and shows in celery_exporter_config_last_reload_successful.
type Reloader struct {
	path   string
	logger log.Logger
	apply  []func(*Config) error
	now    func() time.Time

	mu          sync.Mutex // serialises reloads (SIGHUP and POST /-/reload may race)
	current     *Config
	ok          bool
	lastSuccess time.Time
}

// NewReloader returns a Reloader for the file at path (empty: no file, an empty configuration).
// apply functions receive each valid configuration, in order.
func NewReloader(path string, logger log.Logger, apply ...func(*Config) error) *Reloader {
	if logger == nil {
		logger = log.NewNopLogger()
	}
	return &Reloader{path: path, logger: logger, apply: apply, now: time.Now}
}

// Reload reads the file again and applies it. On error the previous configuration stays in force
// (sources that already took the new one are given the previous one back).
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.reload()
	r.ok = err == nil
	if err != nil {
		msg := "configuration not loaded, keeping the running one"
		if r.current == nil {
			msg = "configuration not loaded at start"
		}
		var joined interface{ Unwrap() []error }
		errs := []error{err}
		if errors.As(err, &joined) {
			errs = joined.Unwrap()
		}
		// One line per error, so every mistake of the file shows at once, each with its line.
		for _, e := range errs {
			level.Error(r.logger).Log("msg", msg, "file", r.path, "errors", len(errs), "err", e)
		}
		return err
	}
	r.lastSuccess = r.now()
	level.Info(r.logger).Log("msg", "configuration loaded", "file", r.path,
		"breakers", len(r.current.Breakers), "app_values", len(r.current.AppValues), "log_sources", len(r.current.Logs))
	return nil
}

func (r *Reloader) reload() error {
	cfg := &Config{}
	if r.path != "" {
		var err error
		if cfg, err = Load(r.path); err != nil {
			return err
		}
	}
	for i, apply := range r.apply {
		if err := apply(cfg); err != nil {
			if r.current != nil {
				for _, undo := range r.apply[:i+1] {
					if uerr := undo(r.current); uerr != nil {
						level.Error(r.logger).Log("msg", "could not restore the previous configuration", "err", uerr)
					}
				}
			}
			return fmt.Errorf("apply configuration: %w", err)
		}
	}
	r.current = cfg
	return nil
}

// Config returns the configuration in force (nil before the first successful load).
func (r *Reloader) Config() *Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current
}

// Describe implements prometheus.Collector.
func (r *Reloader) Describe(ch chan<- *prometheus.Desc) {
	ch <- reloadSuccessDesc
	ch <- reloadTimestampDesc
}

// Collect implements prometheus.Collector.
func (r *Reloader) Collect(ch chan<- prometheus.Metric) {
	r.mu.Lock()
	ok, last := r.ok, r.lastSuccess
	r.mu.Unlock()
	v := 0.0
	if ok {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(reloadSuccessDesc, prometheus.GaugeValue, v)
	ts := 0.0
	if !last.IsZero() {
		ts = float64(last.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(reloadTimestampDesc, prometheus.GaugeValue, ts)
}
