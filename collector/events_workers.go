package collector

// Workers in the event source: worker events go into the model (state.Workers, which holds the
// liveness rule); here are the hostname label's cap, the purge of down workers' series, and the
// worker metrics.

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/celery-exporter/celery_exporter/internal/event"
)

// hostLabel is the hostname label value of a task or worker event.
func (s *EventSource) hostLabel(host string) string {
	if s.hosts.Add(host) {
		s.hostSeen[host] = s.now
		return host
	}
	return s.hosts.Value(host) // overflowValue, counted
}

// workerHostLabel is hostLabel for a worker event: a worker that heartbeats is never locked out
// by hostnames only task events named (which age out, see purgeTaskOnlyHosts). At the cap, the
// task-only hostname least recently seen gives its place up.
func (s *EventSource) workerHostLabel(host string) string {
	if s.hosts.Has(host) || !s.hosts.Full() {
		return s.hostLabel(host)
	}
	victim, oldest := "", time.Time{}
	s.hosts.Each(func(h string) {
		if !s.model.Workers.Has(h) && (victim == "" || s.hostSeen[h].Before(oldest)) {
			victim, oldest = h, s.hostSeen[h]
		}
	})
	if victim != "" {
		s.dropHostSeries([]string{victim})
		s.hostsEvicted.Add(1)
	}
	return s.hostLabel(host)
}

// purgeTaskOnlyHosts drops the series of hostnames that only task events named (no worker
// event: e.g. a producer's gen<pid>@host, or events of workers whose heartbeats never came) and
// were not seen for PurgeAfter: they would fill the hostname cap for good.
func (s *EventSource) purgeTaskOnlyHosts(now time.Time) {
	var gone []string
	s.hosts.Each(func(h string) {
		if !s.model.Workers.Has(h) && now.Sub(s.hostSeen[h]) >= s.opts.PurgeAfter {
			gone = append(gone, h)
		}
	})
	s.dropHostSeries(gone)
}

func (s *EventSource) applyWorker(ev *event.Event, now time.Time) {
	if s.workerHostLabel(ev.Hostname) == overflowValue {
		return // past the worker cap: counted, not tracked
	}
	s.series(mSeen, "", ev.Hostname, "", "") // at 0 from the worker's first event, as processed
	if ev.Type == event.WorkerHeartbeat && ev.HasCounts && ev.Active == 0 {
		s.workerIdle(ev.Hostname, now)
	}
	s.model.Workers.Apply(ev, now, s.lastTaskEvent[ev.Hostname])
	if ev.HasCounts && ev.Type != event.WorkerOffline {
		s.estimateLost(ev, now)
	}
}

// purgeWorkers drops every series of workers down for longer than PurgeAfter.
func (s *EventSource) purgeWorkers(now time.Time) {
	s.dropHostSeries(s.model.Workers.Purge(now, s.opts.PurgeAfter))
	s.purgeTaskOnlyHosts(now)
}

var (
	workerUpDesc        = desc("worker_up", "1 while the worker heartbeats (within 2×freq + --worker.timeout), 0 once it stopped or went offline.", "hostname")
	workerActiveDesc    = desc("worker_tasks_active", "Tasks the worker is executing, from its last heartbeat.", "hostname")
	workerProcessedDesc = desc("worker_tasks_processed_total", "Tasks the worker accepted, from heartbeats (works without task events).", "hostname")
	workerLastHBDesc    = desc("worker_last_heartbeat_timestamp_seconds", "When the exporter last heard the worker's heartbeat.", "hostname")
	workerFreqDesc      = desc("worker_heartbeat_interval_seconds", "The worker's heartbeat interval (freq).", "hostname")
	workerLoadDesc      = desc("worker_load_average", "The worker host's load average.", "hostname", "period")
	workerInfoDesc      = desc("worker_info", "Worker software, always 1.", "hostname", "sw_ident", "sw_ver", "sw_sys")
	workerClashDesc     = desc("worker_hostname_clashes_total", "Heartbeats from a process of this hostname after another process of it had spoken: two workers share the nodename (their counts are kept apart; start them with distinct -n names).", "hostname")
	hostsEvictedDesc    = desc("exporter_hostnames_evicted_total", "Hostnames seen only in task events whose series were dropped at the hostname cap to make room for a heartbeating worker.")
	workerEventsDesc    = desc("worker_task_events_enabled", "0 when the worker's processed count grows but none of its task events arrive.", "hostname")
)

// collectWorkers sends the worker metrics from the model and returns the workers that are down.
func (s *EventSource) collectWorkers(ch chan<- prometheus.Metric, now time.Time) (down map[string]bool) {
	down = map[string]bool{}
	for _, w := range s.model.Workers.Snapshot(now) {
		h := w.Hostname
		if !w.Up {
			down[h] = true
		}
		ch <- prometheus.MustNewConstMetric(workerUpDesc, prometheus.GaugeValue, gaugeBool(w.Up), h)
		ch <- prometheus.MustNewConstMetric(workerLastHBDesc, prometheus.GaugeValue, float64(w.LastSeen.UnixNano())/1e9, h)
		ch <- prometheus.MustNewConstMetric(workerFreqDesc, prometheus.GaugeValue, w.Freq, h)
		if w.SWIdent != "" || w.SWVer != "" {
			ch <- prometheus.MustNewConstMetric(workerInfoDesc, prometheus.GaugeValue, 1, h, w.SWIdent, w.SWVer, w.SWSys)
		}
		if w.HasCounts {
			ch <- prometheus.MustNewConstMetric(workerClashDesc, prometheus.CounterValue, w.Clashes, h)
			ch <- prometheus.MustNewConstMetric(workerActiveDesc, prometheus.GaugeValue, float64(w.Active), h)
			ch <- prometheus.MustNewConstMetric(workerProcessedDesc, prometheus.CounterValue, w.ProcessedTotal, h)
			for i, p := range []string{"1m", "5m", "15m"} {
				ch <- prometheus.MustNewConstMetric(workerLoadDesc, prometheus.GaugeValue, w.LoadAvg[i], h, p)
			}
		}
		ch <- prometheus.MustNewConstMetric(workerEventsDesc, prometheus.GaugeValue, gaugeBool(w.EventsEnabled), h)
	}
	return down
}
