// Scrapes a Redis broker at scrape time: queue depths per priority, unacked messages, the age of
// the oldest waiting message, and (from the model) who consumes each queue.

package collector

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fastjson"

	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

// BrokerOptions configure the broker-state source; DefaultBrokerOptions has the defaults of the
// command's flags.
type BrokerOptions struct {
	// StaticQueues are always reported (--celery.queues), even before anything declared them.
	StaticQueues []string
	// UnackedScanLimit bounds how many entries of the unacked hash are read per scrape to count
	// unacked messages per queue; 0 or less disables the per-queue count (the total from HLEN
	// stays).
	UnackedScanLimit int
	// EventExchange and ControlExchange are Celery's event_exchange and control_exchange: their
	// bindings are pub/sub subscribers and reply lists, not task queues.
	EventExchange, ControlExchange string
	// DiscoveryInterval is how long the queue names found in the _kombu.binding.* sets are reused
	// before the keyspace is scanned again . SCAN walks the whole DB, which is costly
	// when results or caches share it; depths are read on every scrape regardless.
	DiscoveryInterval time.Duration
}

// Bounds on what one scrape reads, whatever is in Redis.
const (
	maxBrokerQueues     = 5000
	maxBindingScanCalls = 10000 // of COUNT 1000: a DB of 10 million keys
	bindingScanCount    = 1000
	unackedScanCount    = 500
)

// BrokerScraper reads queue depths, unacked messages and the age of waiting messages from Redis
// at scrape time, in a fixed number of round trips whatever the number of queues. From the model
// it reads the task sent times (ages) and the queues and consumers remote control found.
type BrokerScraper struct {
	logger  log.Logger
	client  redis.UniversalClient
	ks      kombu.Keyspace
	opts    BrokerOptions
	model   *state.Model
	clock   clock.Clock
	exclude map[string]bool // exchanges whose bindings are not task queues

	mu           sync.Mutex
	discoveredAt time.Time
	discovered   *bindingTable
	queueCap     queueCap
}

// bindingTable is what the _kombu.binding.* sets say: the queues, and per exchange which routing
// key reaches which queue (to attribute unacked messages sent through a named exchange).
type bindingTable struct {
	queues []string
	routes map[string]map[string][]string // exchange -> routing key -> queues
}

// NewBrokerScraper returns the broker-state source.
func NewBrokerScraper(logger log.Logger, client redis.UniversalClient, ks kombu.Keyspace, opts BrokerOptions, m *state.Model) *BrokerScraper {
	def := DefaultBrokerOptions()
	if opts.EventExchange == "" {
		opts.EventExchange = def.EventExchange
	}
	if opts.ControlExchange == "" {
		opts.ControlExchange = def.ControlExchange
	}
	if opts.DiscoveryInterval == 0 {
		opts.DiscoveryInterval = def.DiscoveryInterval
	}
	if logger == nil {
		logger = log.NewNopLogger()
	}
	return &BrokerScraper{
		logger: logger, client: client, ks: ks, opts: opts, model: m, clock: m.Clock(),
		exclude: map[string]bool{
			opts.EventExchange:                         true,
			kombu.PidboxExchange(opts.ControlExchange): true,
			kombu.ReplyExchange(opts.ControlExchange):  true,
		},
	}
}

// WithClock sets the clock the ages are measured with (tests).
func (b *BrokerScraper) WithClock(c clock.Clock) *BrokerScraper {
	b.clock = c
	return b
}

// Name implements Scraper.
func (b *BrokerScraper) Name() string { return "broker" }

var (
	brokerUpDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "up"),
		"Whether the broker answered this scrape (1) or not (0).", nil, nil)
	queueLengthDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "queue", "length"),
		"Messages waiting in the queue, all priorities summed (LLEN of every priority list). Prefetched and reserved messages are in celery_queue_unacked instead.",
		[]string{"queue_name"}, nil)
	queuePriorityLengthDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "queue", "priority_length"),
		"Messages waiting in the queue per priority step (on Redis, 0 is consumed first).",
		[]string{"queue_name", "priority"}, nil)
	queueUnackedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "queue", "unacked"),
		"Messages of the queue delivered to a worker and not yet acknowledged (prefetched, reserved, ETA, or running with acks_late), by the routing key in the unacked hash.",
		[]string{"queue_name"}, nil)
	brokerUnackedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "broker", "unacked_messages"),
		"Entries of the unacked hash (HLEN): messages delivered and not yet acknowledged, all queues.", nil, nil)
	queueOldestAgeDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "queue", "oldest_message_age_seconds"),
		"Age of the oldest waiting message at the consuming end of the queue's priority lists, from its task-sent time; absent when no such time is known.",
		[]string{"queue_name"}, nil)
	queueConsumersDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "queue", "consumers"),
		"Workers consuming the queue, from the last remote-control round (0 when none).", []string{"queue_name"}, nil)
	activeWorkerCountDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "active", "worker_count"),
		"Workers consuming the queue (as the Python celery-exporter reports it).", []string{"queue_name"}, nil)
	activeProcessCountDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "active", "process_count"),
		"Pool processes of the workers consuming the queue (prefork and solo: processes; other pools: max-concurrency).",
		[]string{"queue_name"}, nil)
	unackedScanTruncatedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "exporter", "unacked_scan_truncated"),
		"1 when the unacked hash had more entries than the scan limit, so celery_queue_unacked counts only part of them.", nil, nil)
)

// Scrape reads the broker. On any Redis error it sends only celery_up 0 and returns the error:
// half-read depths would look like real ones.
func (b *BrokerScraper) Scrape(ctx context.Context, ch chan<- prometheus.Metric) error {
	var out []prometheus.Metric
	err := b.scrape(ctx, func(m prometheus.Metric) { out = append(out, m) })
	if err != nil {
		ch <- prometheus.MustNewConstMetric(brokerUpDesc, prometheus.GaugeValue, 0)
		return err
	}
	for _, m := range out {
		ch <- m
	}
	ch <- prometheus.MustNewConstMetric(brokerUpDesc, prometheus.GaugeValue, 1)
	return nil
}

// ScrapeTimedOut implements TimeoutReporter: a broker that does not answer in time is down for
// this scrape.
func (b *BrokerScraper) ScrapeTimedOut(emit func(prometheus.Metric)) {
	emit(prometheus.MustNewConstMetric(brokerUpDesc, prometheus.GaugeValue, 0))
}

type queueDepth struct {
	name  string
	keys  []kombu.PriorityKey
	lens  []*redis.IntCmd
	tails []*redis.StringCmd
}

func (b *BrokerScraper) scrape(ctx context.Context, emit func(prometheus.Metric)) error {
	table, err := b.bindings(ctx)
	if err != nil {
		return err
	}
	queues := b.queueSet(table)

	// One round trip for every depth, whatever the number of queues.
	pipe := b.client.Pipeline()
	depths := make([]*queueDepth, len(queues))
	for i, q := range queues {
		d := &queueDepth{name: q, keys: b.ks.QueueKeys(q)}
		for _, pk := range d.keys {
			d.lens = append(d.lens, pipe.LLen(ctx, pk.Key))
		}
		for _, pk := range d.keys {
			d.tails = append(d.tails, pipe.LIndex(ctx, pk.Key, -1))
		}
		depths[i] = d
	}
	hlen := pipe.HLen(ctx, b.ks.UnackedKey())
	if cmds, err := pipe.Exec(ctx); err != nil && !onlyReplyErrors(cmds) {
		return fmt.Errorf("read queue depths: %w", err)
	}
	if err := hlen.Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("HLEN %s: %w", b.ks.UnackedKey(), err)
	}

	now := b.clock.Now()
	var p fastjson.Parser
depths:
	for _, d := range depths {
		total := int64(0)
		for _, c := range d.lens {
			n, err := c.Result()
			if err != nil {
				// WRONGTYPE: a key of that name that is not a list is not a Celery queue.
				continue depths
			}
			total += n
		}
		emitConst(emit, queueLengthDesc, prometheus.GaugeValue, float64(total), d.name)
		for i, c := range d.lens {
			emitConst(emit, queuePriorityLengthDesc, prometheus.GaugeValue, float64(c.Val()), d.name, strconv.Itoa(d.keys[i].Priority))
		}
		if age, ok := b.oldestAge(&p, d, now); ok {
			emitConst(emit, queueOldestAgeDesc, prometheus.GaugeValue, age, d.name)
		}
	}
	emitConst(emit, brokerUnackedDesc, prometheus.GaugeValue, float64(hlen.Val()))

	if b.opts.UnackedScanLimit > 0 {
		counts, truncated, err := b.scanUnacked(ctx, table, queues)
		if err != nil {
			return err
		}
		for _, q := range queues {
			emitConst(emit, queueUnackedDesc, prometheus.GaugeValue, float64(counts[q]), q)
		}
		emitConst(emit, unackedScanTruncatedDesc, prometheus.GaugeValue, gaugeBool(truncated))
	}

	emitQueueUse(emit, b.model.Queues, queues, true)
	return nil
}

// oldestAge is the age of the oldest message among the consuming ends of the queue's priority
// lists whose task-sent time is known. Each list is FIFO, so its consuming end (index -1) holds its
// oldest message.
func (b *BrokerScraper) oldestAge(p *fastjson.Parser, d *queueDepth, now time.Time) (float64, bool) {
	var oldest time.Time
	found := false
	for i, c := range d.tails {
		if d.lens[i].Val() == 0 {
			continue
		}
		raw, err := c.Result()
		if err != nil {
			continue
		}
		id := taskIDOf(p, raw)
		if id == "" {
			continue
		}
		at, ok := b.model.Tasks.SentTime(id)
		if !ok {
			continue
		}
		if !found || at.Before(oldest) {
			oldest, found = at, true
		}
	}
	if !found {
		return 0, false
	}
	age := now.Sub(oldest).Seconds()
	if age < 0 {
		age = 0 // producer clock ahead of ours
	}
	return age, true
}

// taskIDOf reads a queued message's task id without decoding its body: protocol 2 has it in the
// headers; protocol 1 only in the body.
func taskIDOf(p *fastjson.Parser, raw string) string {
	v, err := p.Parse(raw)
	if err != nil {
		return ""
	}
	if id := v.GetStringBytes("headers", "id"); len(id) > 0 {
		return string(id)
	}
	m, err := kombu.ParseMessage([]byte(raw))
	if err != nil {
		return ""
	}
	return m.TaskID()
}

func (b *BrokerScraper) queueSet(table *bindingTable) []string {
	set := map[string]bool{}
	for _, q := range b.opts.StaticQueues {
		if q != "" {
			set[q] = true
		}
	}
	for _, q := range table.queues {
		set[q] = true
	}
	for _, q := range b.model.Queues.Names() {
		if q != "" {
			set[q] = true
		}
	}
	return b.queueCap.apply(b.logger, slices.Sorted(maps.Keys(set)))
}

// emitQueueUse sends who consumes each queue, from remote control; withConsumers also sends
// celery_queue_consumers, which an AMQP broker knows itself. The broker source reports them
// because only it knows every queue, including those nobody consumes. Nothing is sent while
// remote control's answers are stale or missing (read-only mode), when the control source reports
// itself failed: the series fail with the source they come from.
func emitQueueUse(emit func(prometheus.Metric), qs *state.Queues, queues []string, withConsumers bool) {
	use, ok := qs.Consumers()
	if !ok {
		return
	}
	for _, q := range queues {
		u := use[q]
		if withConsumers {
			emitConst(emit, queueConsumersDesc, prometheus.GaugeValue, float64(u.Workers), q)
		}
		emitConst(emit, activeWorkerCountDesc, prometheus.GaugeValue, float64(u.Workers), q)
		emitConst(emit, activeProcessCountDesc, prometheus.GaugeValue, float64(u.Processes), q)
	}
}

// queueCap keeps the first maxBrokerQueues queues by name, warning once.
type queueCap struct {
	once sync.Once
}

func (c *queueCap) apply(logger log.Logger, names []string) []string {
	if len(names) <= maxBrokerQueues {
		return names
	}
	c.once.Do(func() {
		level.Warn(logger).Log("msg", "too many queues; reporting the first ones by name", "queues", len(names), "limit", maxBrokerQueues)
	})
	return names[:maxBrokerQueues]
}

// bindings returns the queues of the _kombu.binding.* sets, rescanning at most every
// DiscoveryInterval.
func (b *BrokerScraper) bindings(ctx context.Context) (*bindingTable, error) {
	b.mu.Lock()
	cached, at := b.discovered, b.discoveredAt
	b.mu.Unlock()
	now := b.clock.Now()
	if cached != nil && b.opts.DiscoveryInterval > 0 && now.Sub(at) < b.opts.DiscoveryInterval {
		return cached, nil
	}
	t, err := b.discover(ctx)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.discovered, b.discoveredAt = t, now
	b.mu.Unlock()
	return t, nil
}

func (b *BrokerScraper) discover(ctx context.Context) (*bindingTable, error) {
	var keys []string
	var cursor uint64
	pattern := b.ks.BindingScanPattern()
	for calls := 0; ; calls++ {
		if calls >= maxBindingScanCalls {
			level.Warn(b.logger).Log("msg", "binding scan stopped early: the DB has too many keys", "calls", calls)
			break
		}
		page, next, err := b.client.Scan(ctx, cursor, pattern, bindingScanCount).Result()
		if err != nil {
			return nil, fmt.Errorf("SCAN %s: %w", pattern, err)
		}
		for _, k := range page {
			ex, ok := b.ks.ExchangeOfBindingKey(k)
			if ok && !b.exclude[ex] {
				keys = append(keys, k)
			}
		}
		cursor = next
		if cursor == 0 {
			break
		}
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	t := &bindingTable{routes: map[string]map[string][]string{}}
	if len(keys) == 0 {
		return t, nil
	}
	pipe := b.client.Pipeline()
	members := make([]*redis.StringSliceCmd, len(keys))
	for i, k := range keys {
		members[i] = pipe.SMembers(ctx, k)
	}
	if cmds, err := pipe.Exec(ctx); err != nil && !onlyReplyErrors(cmds) {
		return nil, fmt.Errorf("SMEMBERS of bindings: %w", err)
	}
	seen := map[string]bool{}
	for i, k := range keys {
		ms, err := members[i].Result()
		if err != nil {
			continue // not a set: not kombu's
		}
		ex, _ := b.ks.ExchangeOfBindingKey(k)
		for _, m := range ms {
			rk, _, q, ok := b.ks.ParseBindingMember(m)
			if !ok {
				continue
			}
			if !seen[q] {
				seen[q] = true
				t.queues = append(t.queues, q)
			}
			r := t.routes[ex]
			if r == nil {
				r = map[string][]string{}
				t.routes[ex] = r
			}
			r[rk] = append(r[rk], q)
		}
	}
	sort.Strings(t.queues)
	return t, nil
}

// scanUnacked counts unacked messages per queue by reading at most UnackedScanLimit entries. An
// entry is [envelope, exchange, routing_key]: with the default exchange ("") the routing key is
// the queue; through a named exchange the bindings say which queue the key reached.
func (b *BrokerScraper) scanUnacked(ctx context.Context, table *bindingTable, queues []string) (map[string]int, bool, error) {
	known := make(map[string]bool, len(queues))
	for _, q := range queues {
		known[q] = true
	}
	counts := map[string]int{}
	var p fastjson.Parser
	var cursor uint64
	scanned := 0
	for {
		count := int64(unackedScanCount)
		if left := b.opts.UnackedScanLimit - scanned; left < unackedScanCount {
			count = int64(left)
		}
		kv, next, err := b.client.HScan(ctx, b.ks.UnackedKey(), cursor, "", count).Result()
		if err != nil {
			return nil, false, fmt.Errorf("HSCAN %s: %w", b.ks.UnackedKey(), err)
		}
		for i := 1; i < len(kv); i += 2 {
			if scanned >= b.opts.UnackedScanLimit {
				// COUNT is only a hint: a page can be longer than asked.
				return counts, true, nil
			}
			scanned++
			e, err := kombu.ParseUnacked(&p, []byte(kv[i]))
			if err != nil {
				continue
			}
			for _, q := range b.queuesOf(table, e) {
				if known[q] {
					counts[q]++
				}
			}
		}
		cursor = next
		if cursor == 0 {
			return counts, false, nil
		}
		if scanned >= b.opts.UnackedScanLimit {
			return counts, true, nil
		}
	}
}

func (b *BrokerScraper) queuesOf(table *bindingTable, e kombu.UnackedEntry) []string {
	if e.Exchange != "" {
		if qs := table.routes[e.Exchange][e.RoutingKey]; len(qs) > 0 {
			return qs
		}
	}
	if e.RoutingKey == "" {
		return nil
	}
	return []string{e.RoutingKey}
}
