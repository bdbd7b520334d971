// Scrapes the workers by remote control (ping, active_queues, stats, active) every
// --control.interval, and reports the last round.

package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/pidbox"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

// ControlOptions configure the remote-control source; DefaultControlOptions has the defaults.
type ControlOptions struct {
	// Interval between rounds.
	Interval time.Duration
	// Timeout is the idle timeout between replies, as Celery's inspect --timeout.
	Timeout time.Duration
	// Deadline bounds a whole round (default 10×Timeout).
	Deadline time.Duration
	// EnableEvents also casts enable_events every round, so task events come back after a worker
	// restart.
	EnableEvents bool
	// ControlExchange is Celery's control_exchange setting.
	ControlExchange string
	// StaleAfter is how long the answers of the last successful round are still served while
	// later rounds fail (default 3×Interval): one failed round leaves no gap in the series, and
	// celery_exporter_collector_success{collector="control"} says 0 from the first failure.
	StaleAfter time.Duration
}

// Bounds on what one round keeps, whatever the workers send.
const (
	maxControlReplies       = 40000 // 4 per worker: 10000 workers
	maxTaskNamesPerWorker   = 2000
	maxQueuesPerWorker      = 1000
	controlRoundGracePeriod = 5 * time.Second
)

// ControlSource asks every worker for ping, active_queues and stats on a timer, as `celery
// inspect` does, and reports the last round's answers. It reads the workers the event stream
// knows from the model, and writes into it who consumes which queue and which tasks run.
type ControlSource struct {
	logger log.Logger
	client ControlClient
	opts   ControlOptions
	model  *state.Model

	mu      sync.RWMutex
	last    *controlRound // the last round, failed or not
	lastOK  *controlRound // the last successful round
	failing bool
}

type controlRound struct {
	at      time.Time
	err     error
	alive   []string // heartbeating when the round began
	known   []string
	ping    map[string]bool // hostname -> answered pong
	queues  map[string][]string
	stats   map[string]*workerStats
	active  map[string][]state.ActiveTask // workers whose `active` reply could be read
	replies int
}

type workerStats struct {
	maxConcurrency, prefetch, uptime *float64
	processes                        *int
	maxRSSKiB, userCPU, systemCPU    *float64
	total                            map[string]float64
	rusageDarwin                     bool
}

// ControlClient broadcasts remote-control commands and collects the replies: over Redis
// (internal/pidbox) or AMQP (internal/amqp).
type ControlClient interface {
	Broadcast(ctx context.Context, calls []pidbox.Call, o pidbox.Options) (pidbox.Result, error)
}

// NewControlSource returns the remote-control source on a Redis broker. A round expects the
// workers the model knows alive; with none, it waits for the idle timeout.
func NewControlSource(logger log.Logger, client redis.UniversalClient, ks kombu.Keyspace, opts ControlOptions, m *state.Model) *ControlSource {
	exchange := opts.ControlExchange
	if exchange == "" {
		exchange = kombu.DefaultControlExchange
	}
	return NewControlSourceWith(logger, pidbox.New(client, ks, exchange), opts, m)
}

// NewControlSourceWith returns the remote-control source on any broker's control client.
func NewControlSourceWith(logger log.Logger, client ControlClient, opts ControlOptions, m *state.Model) *ControlSource {
	if opts.Interval <= 0 {
		opts.Interval = DefaultControlOptions().Interval
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultControlOptions().Timeout
	}
	if opts.Deadline <= 0 {
		opts.Deadline = 10 * opts.Timeout
	}
	if opts.ControlExchange == "" {
		opts.ControlExchange = DefaultControlOptions().ControlExchange
	}
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = 3 * opts.Interval
	}
	if logger == nil {
		logger = log.NewNopLogger()
	}
	return &ControlSource{logger: logger, client: client, opts: opts, model: m}
}

// Name implements Scraper.
func (c *ControlSource) Name() string { return "control" }

// Run does a round now, then one every Interval, until ctx is done.
func (c *ControlSource) Run(ctx context.Context) {
	_ = c.Round(ctx) // the error is logged and reported by the round
	t := time.NewTicker(c.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = c.Round(ctx)
		}
	}
}

// Round does one round of broadcasts and keeps its result. Run calls it; tests call it directly.
func (c *ControlSource) Round(parent context.Context) error {
	ctx, cancel := context.WithTimeout(parent, c.opts.Deadline+controlRoundGracePeriod)
	defer cancel()
	alive, known := c.model.Workers.Names()
	// active with safe=true: the arguments come as their bounded repr, not in full.
	calls := []pidbox.Call{{Method: "ping"}, {Method: "active_queues"}, {Method: "stats"},
		{Method: "active", Arguments: map[string]any{"safe": true}}}
	sent := c.now()
	if c.opts.EnableEvents {
		calls = append(calls, pidbox.Call{Method: "enable_events", Cast: true})
	}
	res, err := c.client.Broadcast(ctx, calls, pidbox.Options{
		Timeout:    c.opts.Timeout,
		Deadline:   c.opts.Deadline,
		Expect:     alive,
		MaxReplies: maxControlReplies,
	})
	if err != nil && parent.Err() != nil {
		return err // shutting down: keep the last real result, log nothing
	}
	r := &controlRound{at: c.now(), alive: alive, known: known}
	if err != nil {
		r.err = err
	} else {
		c.digest(r, res)
	}
	c.store(r)
	c.logTransition(r)
	if r.err == nil {
		c.model.Active.Put(state.ActiveSnapshot{Sent: sent, Hosts: r.active})
	}
	return err
}

func (c *ControlSource) now() time.Time { return c.model.Clock().Now() }

func (c *ControlSource) logTransition(r *controlRound) {
	c.mu.Lock()
	was := c.failing
	c.failing = r.err != nil
	c.mu.Unlock()
	switch {
	case r.err != nil && !was:
		level.Warn(c.logger).Log("msg", "remote-control round failed", "err", r.err)
	case r.err == nil && was:
		level.Info(c.logger).Log("msg", "remote-control rounds work again", "workers", len(r.ping))
	default:
		level.Debug(c.logger).Log("msg", "remote-control round", "replies", r.replies, "pong", len(r.ping), "err", r.err)
	}
}

func (c *ControlSource) digest(r *controlRound, res pidbox.Result) {
	r.ping = map[string]bool{}
	r.queues = map[string][]string{}
	r.stats = map[string]*workerStats{}
	r.active = map[string][]state.ActiveTask{}
	r.replies = len(res.Replies)
	routingKeys := map[string][]string{}
	for _, rep := range res.Replies {
		switch rep.Method {
		case "ping":
			var pong struct {
				OK string `json:"ok"`
			}
			r.ping[rep.Hostname] = json.Unmarshal(rep.Result, &pong) == nil && pong.OK == "pong"
		case "active_queues":
			var qs []struct {
				Name string `json:"name"`
			}
			if json.Unmarshal(rep.Result, &qs) != nil {
				continue // {"error": ...} from a worker that cannot answer
			}
			names := make([]string, 0, len(qs))
			dup := map[string]bool{}
			for _, q := range qs {
				if q.Name != "" && !dup[q.Name] && len(names) < maxQueuesPerWorker {
					dup[q.Name] = true
					names = append(names, q.Name)
				}
			}
			sort.Strings(names)
			r.queues[rep.Hostname] = names
		case "stats":
			st := parseStats(rep.Result)
			if st == nil {
				continue
			}
			if s, ok := c.model.Workers.System(rep.Hostname); ok && strings.EqualFold(s, "Darwin") {
				st.rusageDarwin = true
			}
			r.stats[rep.Hostname] = st
		case "active":
			list, keys, ok := parseActive(rep.Result)
			if ok {
				r.active[rep.Hostname], routingKeys[rep.Hostname] = list, keys
			}
		}
	}
	// The queue of an active task: its routing key when the worker consumes a queue of that name
	// (Celery's default routing), else the worker's only queue, else unknown.
	for h, list := range r.active {
		qs := r.queues[h]
		for i := range list {
			switch rk := routingKeys[h][i]; {
			case slices.Contains(qs, rk):
				list[i].Queue = rk
			case len(qs) == 1:
				list[i].Queue = qs[0]
			}
		}
	}
}

// parseActive reads an `inspect active` reply: the tasks a worker runs now. Entries without an id
// are skipped; keys are their delivery_info.routing_key, index for index.
func parseActive(raw json.RawMessage) (list []state.ActiveTask, keys []string, ok bool) {
	var reqs []json.RawMessage
	if json.Unmarshal(raw, &reqs) != nil {
		return nil, nil, false // {"error": ...} from a worker that cannot answer
	}
	for _, q := range reqs {
		if len(list) >= maxActivePerWorker {
			break
		}
		var a struct {
			ID           string   `json:"id"`
			Name         string   `json:"name"`
			TimeStart    *float64 `json:"time_start"`
			DeliveryInfo struct {
				RoutingKey string `json:"routing_key"`
			} `json:"delivery_info"`
		}
		if json.Unmarshal(q, &a) != nil || a.ID == "" {
			continue
		}
		t := state.ActiveTask{ID: a.ID, Name: a.Name}
		if a.TimeStart != nil && *a.TimeStart > 0 {
			t.Started = *a.TimeStart
		}
		list = append(list, t)
		keys = append(keys, a.DeliveryInfo.RoutingKey)
	}
	return list, keys, true
}

// parseStats reads the parts of a `stats` reply the metrics use. Every part is optional: pools
// and platforms differ (rusage is "N/A" where unsupported, threads pools have no processes).
func parseStats(raw json.RawMessage) *workerStats {
	var top map[string]json.RawMessage
	if json.Unmarshal(raw, &top) != nil {
		return nil
	}
	if _, isErr := top["error"]; isErr && len(top) == 1 {
		return nil
	}
	st := &workerStats{}
	num := func(m map[string]json.RawMessage, k string) *float64 {
		var f float64
		if v, ok := m[k]; ok && json.Unmarshal(v, &f) == nil {
			return &f
		}
		return nil
	}
	st.uptime = num(top, "uptime")
	st.prefetch = num(top, "prefetch_count")
	var pool map[string]json.RawMessage
	if json.Unmarshal(top["pool"], &pool) == nil && pool != nil {
		st.maxConcurrency = num(pool, "max-concurrency")
		var procs []json.RawMessage
		if v, ok := pool["processes"]; ok && json.Unmarshal(v, &procs) == nil {
			n := len(procs)
			st.processes = &n
		}
	}
	var ru map[string]json.RawMessage
	if json.Unmarshal(top["rusage"], &ru) == nil && ru != nil {
		st.maxRSSKiB = num(ru, "maxrss")
		st.userCPU = num(ru, "utime")
		st.systemCPU = num(ru, "stime")
	}
	var total map[string]float64
	if json.Unmarshal(top["total"], &total) == nil && total != nil {
		if len(total) > maxTaskNamesPerWorker {
			for _, n := range slices.Sorted(maps.Keys(total))[maxTaskNamesPerWorker:] {
				delete(total, n)
			}
		}
		st.total = total
	}
	return st
}

// store keeps the round for Scrape and, when it succeeded, gives the model what it said about
// queues.
func (c *ControlSource) store(r *controlRound) {
	c.mu.Lock()
	c.last = r
	if r.err == nil {
		c.lastOK = r
	}
	c.mu.Unlock()
	if r.err != nil {
		return
	}
	procs := map[string]int{}
	for h, st := range r.stats {
		switch {
		case st.processes != nil:
			procs[h] = *st.processes
		case st.maxConcurrency != nil:
			procs[h] = int(*st.maxConcurrency)
		default:
			procs[h] = 0
		}
	}
	c.model.Queues.Record(state.QueueRound{At: r.at, StaleAfter: c.opts.StaleAfter, Alive: r.alive, Known: r.known,
		Queues: r.queues, Procs: procs})
}

// current is the last successful round while it is fresh (no older than StaleAfter), else nil:
// what the workers answered, as far as it can still be trusted. The caller holds mu.
func (c *ControlSource) current() *controlRound {
	if c.lastOK == nil || c.now().Sub(c.lastOK.at) > c.opts.StaleAfter {
		return nil
	}
	return c.lastOK
}

var (
	workerQueueInfoDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "worker", "queue_info"),
		"1 for each queue a worker consumes, from its last active_queues reply.", []string{"hostname", "queue_name"}, nil)
	workerPingOKDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "worker", "ping_ok"),
		"Whether the worker answered the last remote-control ping (0 for a worker the event stream knows that did not: heartbeating but stuck, or gone).",
		[]string{"hostname"}, nil)
	workerPoolMaxConcurrencyDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "worker", "pool_max_concurrency"),
		"The worker pool's maximum concurrency (stats.pool.max-concurrency).", []string{"hostname"}, nil)
	workerPrefetchDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "worker", "prefetch_messages"),
		"How many messages the worker may hold unacknowledged (stats.prefetch_count).", []string{"hostname"}, nil)
	workerUptimeDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "worker", "uptime_seconds"),
		"The worker's uptime at the last remote-control round (stats.uptime).", []string{"hostname"}, nil)
	workerMaxRSSDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "worker", "max_rss_bytes"),
		"Peak resident set size of the worker's main process only (stats.rusage.maxrss: getrusage(RUSAGE_SELF) of the process that answers remote control). "+
			"Prefork pool children are excluded, so this is not the worker's total memory.", []string{"hostname"}, nil)
	workerCPUDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "worker", "cpu_seconds_total"),
		"CPU time of the worker's main process (stats.rusage utime/stime; pool children are not included).", []string{"hostname", "mode"}, nil)
	controlLastSuccessDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "exporter", "control_last_success_timestamp_seconds"),
		"When the last successful remote-control round ended, in unix time.", nil, nil)
	workerTasksAcceptedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "worker", "tasks_accepted_total"),
		"Tasks the worker accepted since it started, per task name (stats.total; counts work without task events).", []string{"hostname", "name"}, nil)
)

// Scrape sends the current round's metrics (the last successful round, for StaleAfter). It fails
// while no round succeeded yet and when the last round failed, so the series derived from remote
// control (these, and the consumer counts the broker source reports) are never served under a
// healthy control source when they are stale or missing.
func (c *ControlSource) Scrape(_ context.Context, ch chan<- prometheus.Metric) error {
	c.mu.RLock()
	last, ok, cur := c.last, c.lastOK, c.current()
	c.mu.RUnlock()
	if ok != nil {
		ch <- prometheus.MustNewConstMetric(controlLastSuccessDesc, prometheus.GaugeValue, float64(ok.at.UnixNano())/1e9)
	}
	if cur != nil {
		c.emitRound(ch, cur)
	}
	switch {
	case last == nil:
		return errors.New("no remote-control round has completed yet")
	case last.err != nil:
		return fmt.Errorf("last remote-control round at %s: %w", last.at.UTC().Format(time.RFC3339), last.err)
	}
	return nil
}

func (c *ControlSource) emitRound(ch chan<- prometheus.Metric, r *controlRound) {
	emit := func(m prometheus.Metric) { ch <- m }
	hosts := map[string]bool{}
	for _, h := range r.known {
		hosts[h] = true
	}
	for h := range r.ping {
		hosts[h] = true
	}
	for _, h := range slices.Sorted(maps.Keys(hosts)) {
		emitConst(emit, workerPingOKDesc, prometheus.GaugeValue, gaugeBool(r.ping[h]), h)
	}
	for _, h := range slices.Sorted(maps.Keys(r.queues)) {
		for _, q := range r.queues[h] {
			emitConst(emit, workerQueueInfoDesc, prometheus.GaugeValue, 1, h, q)
		}
	}
	for _, h := range slices.Sorted(maps.Keys(r.stats)) {
		st := r.stats[h]
		if st.maxConcurrency != nil {
			emitConst(emit, workerPoolMaxConcurrencyDesc, prometheus.GaugeValue, *st.maxConcurrency, h)
		}
		if st.prefetch != nil {
			emitConst(emit, workerPrefetchDesc, prometheus.GaugeValue, *st.prefetch, h)
		}
		if st.uptime != nil {
			emitConst(emit, workerUptimeDesc, prometheus.GaugeValue, *st.uptime, h)
		}
		if st.maxRSSKiB != nil {
			// getrusage's ru_maxrss is KiB on Linux and bytes on macOS.
			rss := *st.maxRSSKiB * 1024
			if st.rusageDarwin {
				rss = *st.maxRSSKiB
			}
			emitConst(emit, workerMaxRSSDesc, prometheus.GaugeValue, rss, h)
		}
		if st.userCPU != nil {
			emitConst(emit, workerCPUDesc, prometheus.CounterValue, *st.userCPU, h, "user")
		}
		if st.systemCPU != nil {
			emitConst(emit, workerCPUDesc, prometheus.CounterValue, *st.systemCPU, h, "system")
		}
		for _, name := range slices.Sorted(maps.Keys(st.total)) {
			emitConst(emit, workerTasksAcceptedDesc, prometheus.CounterValue, st.total[name], h, name)
		}
	}
}
