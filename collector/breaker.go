// Circuit breakers: the flags the application keeps in Redis, read at scrape time and judged open
// or closed as the application judges them.

package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/internal/pickle"
)

var (
	breakerOpenDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "breaker", "open"),
		"Whether the circuit breaker is open (1) or closed (0), decided as the application does: open while its key exists and its until time has not passed.",
		[]string{"breaker"}, nil,
	)
	breakerInfoDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "breaker", "info"),
		"The mode and reason of an open circuit breaker (1 while open; no series while closed).",
		[]string{"breaker", "mode", "reason"}, nil,
	)
	breakerUntilDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "breaker", "open_until_timestamp_seconds"),
		"When an open circuit breaker closes by itself (its until field, or else the key's TTL).",
		[]string{"breaker"}, nil,
	)
	breakerOpenedDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "breaker", "opened_timestamp_seconds"),
		"When an open circuit breaker was opened (its opened_at field).",
		[]string{"breaker"}, nil,
	)
	breakerTripsDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "breaker", "trips_total"),
		"Circuit breaker trips seen by the exporter: closed to open transitions, and re-opens with a new opened_at.",
		[]string{"breaker", "reason"}, nil,
	)
	breakerReadOKDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "breaker", "read_ok"),
		"Whether the circuit breaker's key was read and understood at the last scrape (1) or not (0).",
		[]string{"breaker"}, nil,
	)
	oversizeDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "exporter", "app_values_oversize_total"),
		"Reads of a breaker or app value refused because the value is over 1 MiB (only the first 1 MiB + 1 byte is fetched).",
		nil, nil,
	)
	pickleRefusedDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "exporter", "pickle_refused_total"),
		"Reads of a breaker whose pickle named Python code (a global, a call): refused, nothing decoded or run.",
		[]string{"breaker"}, nil,
	)
)

// maxValueBytes bounds what is decoded from one key; a flag is about 100 bytes.
const maxValueBytes = pickle.MaxInputBytes

// unsupportedLabel replaces a mode or reason that is not a string, number or boolean.
const unsupportedLabel = "unsupported_type"

// maxLabelBytes bounds mode and reason label values taken from Redis.
const maxLabelBytes = 128

// BreakerScraper reads circuit-breaker flags and application values (appvalue.go) from Redis at
// scrape time, both in one pipeline per Redis.
type BreakerScraper struct {
	logger        log.Logger
	dial          func(rawURL string) (redis.UniversalClient, error)
	defaultClient redis.UniversalClient
	now           func() time.Time

	mu        sync.Mutex
	breakers  []config.Breaker
	appValues []config.AppValue
	clients   map[string]redis.UniversalClient // dialed here, by URL; the default client is not in it
	state     map[string]*breakerState         // by breaker name; survives reloads
	lastErr   map[string]string                // per breaker/app value, to log changes only

	oversize atomic.Uint64 // reads refused for a value over maxValueBytes
}

type breakerState struct {
	open     bool
	openedAt float64 // of the current open period; NaN when unknown
	// reasons bounds the reason label of trips (see maxTripReasons); guarded by the scraper's mu.
	reasons *labelSet
	trips   map[string]float64 // by reason label value
	refused float64
}

// maxTripReasons bounds the reason values of one breaker's trip counter: the reason is read from
// Redis, and an application that wrote an error message there would add a series with every trip.
// Past the cap a trip counts under overflowValue, as every capped label of this exporter does;
// the value is already cut to maxLabelBytes by labelValue, so the set has no byte cap of its own.
const maxTripReasons = 32

func newBreakerState() *breakerState {
	return &breakerState{reasons: newLabelSet(maxTripReasons, 0, nil), trips: map[string]float64{}, openedAt: math.NaN()}
}

// NewBreakerScraper returns a scraper with no breakers until ApplyConfig. dial connects to a
// redis_url from the configuration; defaultClient (the broker's) serves entries without one.
func NewBreakerScraper(logger log.Logger, dial func(rawURL string) (redis.UniversalClient, error), defaultClient redis.UniversalClient) *BreakerScraper {
	if logger == nil {
		logger = log.NewNopLogger()
	}
	return &BreakerScraper{
		logger:        logger,
		dial:          dial,
		defaultClient: defaultClient,
		now:           time.Now,
		clients:       map[string]redis.UniversalClient{},
		state:         map[string]*breakerState{},
		lastErr:       map[string]string{},
	}
}

// Name implements Scraper.
func (s *BreakerScraper) Name() string { return "breakers" }

// ApplyConfig switches to cfg's breakers and app values. Trip counts of breakers that keep their
// name are kept. Connections for URLs no longer used are closed; a scrape running at that moment
// may fail once.
func (s *BreakerScraper) ApplyConfig(cfg *config.Config) error {
	need := map[string]bool{}
	for _, b := range cfg.Breakers {
		need[b.RedisURL] = true
	}
	for _, a := range cfg.AppValues {
		need[a.RedisURL] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if need[""] && s.defaultClient == nil {
		return errors.New("breakers: an entry has no redis_url and there is no broker connection to default to")
	}
	dialed := map[string]redis.UniversalClient{}
	for u := range need {
		if u == "" || s.clients[u] != nil {
			continue
		}
		c, err := s.dial(u)
		if err != nil {
			for _, c := range dialed {
				_ = c.Close()
			}
			// The dial error is the caller's (kombu's), which never repeats the URL's password.
			return fmt.Errorf("breakers: connect: %w", err)
		}
		dialed[u] = c
	}
	for u, c := range s.clients {
		if !need[u] {
			_ = c.Close()
			delete(s.clients, u)
		}
	}
	maps.Copy(s.clients, dialed)
	keep := map[string]bool{}
	for _, b := range cfg.Breakers {
		keep[b.Name] = true
	}
	for name := range s.state {
		if !keep[name] {
			delete(s.state, name)
		}
	}
	clear(s.lastErr) // a problem still there is logged again once, under the new configuration
	s.breakers = append([]config.Breaker(nil), cfg.Breakers...)
	s.appValues = append([]config.AppValue(nil), cfg.AppValues...)
	return nil
}

// Close closes the connections this scraper dialed (not the broker's).
func (s *BreakerScraper) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for u, c := range s.clients {
		errs = append(errs, c.Close())
		delete(s.clients, u)
	}
	return errors.Join(errs...)
}

// breakerRead is what one scrape learnt about one breaker.
type breakerRead struct {
	err      error // the value could not be read or understood
	refused  bool  // the pickle named code
	open     bool
	mode     string
	reason   string
	until    float64 // NaN when unknown
	openedAt float64 // NaN when unknown
}

// readGroup is every key read over one client, in one pipeline.
type readGroup struct {
	client    redis.UniversalClient
	breakers  []int // indexes into the snapshot
	appValues []int
}

// Scrape implements Scraper. It fails only when Redis cannot be read; a value that cannot be
// understood shows as celery_breaker_read_ok 0 and leaves the other breakers reported.
func (s *BreakerScraper) Scrape(ctx context.Context, ch chan<- prometheus.Metric) error {
	s.mu.Lock()
	breakers, appValues := s.breakers, s.appValues
	groups := map[redis.UniversalClient]*readGroup{}
	var order []*readGroup
	group := func(u string) *readGroup {
		c := s.defaultClient
		if u != "" {
			c = s.clients[u]
		}
		g := groups[c]
		if g == nil {
			g = &readGroup{client: c}
			groups[c] = g
			order = append(order, g)
		}
		return g
	}
	for i, b := range breakers {
		g := group(b.RedisURL)
		g.breakers = append(g.breakers, i)
	}
	for i, a := range appValues {
		g := group(a.RedisURL)
		g.appValues = append(g.appValues, i)
	}
	s.mu.Unlock()

	reads := make([]breakerRead, len(breakers))
	values := make([]*float64, len(appValues))
	valueErrs := make([]error, len(appValues))
	var scrapeErrs []error
	for _, g := range order {
		if err := s.readGroup(ctx, g, breakers, appValues, reads, values, valueErrs); err != nil {
			scrapeErrs = append(scrapeErrs, err)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for i, b := range breakers {
		r := reads[i]
		st := s.state[b.Name]
		if st == nil {
			st = newBreakerState()
			s.state[b.Name] = st
		}
		s.logChange("breaker "+b.Name, r.err)
		if r.refused {
			st.refused++
		}
		ok := 0.0
		if r.err == nil {
			ok = 1
			// A trip is a closed→open transition, or an open breaker whose opened_at changed
			// between scrapes (it closed and re-opened, or the app forced it again): each
			// force_write_only() call is one trip, as the app's own downgrade counter counts.
			reopened := st.open && r.open && !math.IsNaN(r.openedAt) && !math.IsNaN(st.openedAt) && r.openedAt != st.openedAt
			if r.open && (!st.open || reopened) {
				st.trips[st.reasons.Value(r.reason)]++
			}
			st.open, st.openedAt = r.open, r.openedAt
			if !r.open {
				st.openedAt = math.NaN()
			}
			ch <- prometheus.MustNewConstMetric(breakerOpenDesc, prometheus.GaugeValue, gaugeBool(r.open), b.Name)
			if r.open {
				ch <- prometheus.MustNewConstMetric(breakerInfoDesc, prometheus.GaugeValue, 1, b.Name, r.mode, r.reason)
				if !math.IsNaN(r.until) {
					ch <- prometheus.MustNewConstMetric(breakerUntilDesc, prometheus.GaugeValue, r.until, b.Name)
				}
				if !math.IsNaN(r.openedAt) {
					ch <- prometheus.MustNewConstMetric(breakerOpenedDesc, prometheus.GaugeValue, r.openedAt, b.Name)
				}
			}
		}
		ch <- prometheus.MustNewConstMetric(breakerReadOKDesc, prometheus.GaugeValue, ok, b.Name)
		for reason, n := range st.trips {
			ch <- prometheus.MustNewConstMetric(breakerTripsDesc, prometheus.CounterValue, n, b.Name, reason)
		}
		if b.Format == config.FormatPickle || b.Format == config.FormatDjangoPickle {
			ch <- prometheus.MustNewConstMetric(pickleRefusedDesc, prometheus.CounterValue, st.refused, b.Name)
		}
	}
	ch <- prometheus.MustNewConstMetric(oversizeDesc, prometheus.CounterValue, float64(s.oversize.Load()))
	for i, a := range appValues {
		s.logChange("app value "+a.Name, valueErrs[i])
		if values[i] != nil {
			ch <- prometheus.MustNewConstMetric(appValueDesc, prometheus.GaugeValue, *values[i], a.Name)
		}
	}
	return errors.Join(scrapeErrs...)
}

// logChange logs a read problem when it appears or changes, not on every scrape.
func (s *BreakerScraper) logChange(what string, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if s.lastErr[what] == msg {
		return
	}
	s.lastErr[what] = msg
	if err != nil {
		level.Warn(s.logger).Log("msg", "cannot read "+what, "err", err)
	} else {
		level.Info(s.logger).Log("msg", "reading "+what+" again")
	}
}

// readGroup reads one client's keys in one round trip. It returns an error when Redis could not
// be read (isKeyError: connection, timeout, NOPERM, LOADING...); a key of the wrong type
// (WRONGTYPE) is that key's problem.
func (s *BreakerScraper) readGroup(ctx context.Context, g *readGroup, breakers []config.Breaker, appValues []config.AppValue,
	reads []breakerRead, values []*float64, valueErrs []error) error {
	if g.client == nil {
		err := errors.New("no connection for this redis_url")
		for _, i := range g.breakers {
			reads[i] = breakerRead{err: err}
		}
		for _, i := range g.appValues {
			valueErrs[i] = err
		}
		return err
	}
	pipe := g.client.Pipeline()
	type breakerCmds struct {
		get    *redis.StringCmd
		exists *redis.IntCmd
		pttl   *redis.DurationCmd
	}
	bcmds := make([]breakerCmds, len(g.breakers))
	for j, i := range g.breakers {
		b := breakers[i]
		if b.Format == config.FormatExists {
			bcmds[j].exists = pipe.Exists(ctx, b.Key)
		} else {
			bcmds[j].get = boundedGet(ctx, pipe, b.Key)
		}
		bcmds[j].pttl = pipe.PTTL(ctx, b.Key)
	}
	vcmds := make([]appValueCmds, len(g.appValues))
	for j, i := range g.appValues {
		vcmds[j] = queueAppValue(ctx, pipe, appValues[i].Key)
	}
	cmds, err := pipe.Exec(ctx)
	if err != nil && !onlyReplyErrors(cmds) {
		err = fmt.Errorf("read breakers and app values: %w", err)
		for _, i := range g.breakers {
			reads[i] = breakerRead{err: err}
		}
		for _, i := range g.appValues {
			valueErrs[i] = err
		}
		return err
	}

	now := s.now()
	for j, i := range g.breakers {
		b := breakers[i]
		c := bcmds[j]
		var ttl time.Duration = -1
		if d, err := c.pttl.Result(); err == nil && d > 0 {
			ttl = d
		}
		if c.exists != nil {
			n, err := c.exists.Result()
			if err != nil {
				reads[i] = breakerRead{err: fmt.Errorf("EXISTS %s: %w", b.Key, err)}
				continue
			}
			reads[i] = breakerRead{open: n > 0, until: ttlUntil(now, ttl, n > 0), openedAt: math.NaN()}
			continue
		}
		raw, err := c.get.Bytes()
		switch {
		case err == nil && missing(c.pttl):
			reads[i] = breakerRead{until: math.NaN(), openedAt: math.NaN()}
			continue
		case err != nil:
			reads[i] = breakerRead{err: fmt.Errorf("GETRANGE %s: %w", b.Key, err)}
			continue
		case len(raw) > maxValueBytes:
			s.oversize.Add(1)
		}
		reads[i] = evalBreaker(b, raw, now, ttl)
		if reads[i].err != nil {
			reads[i].err = fmt.Errorf("key %s: %w", b.Key, reads[i].err)
		}
	}
	for j, i := range g.appValues {
		var oversize bool
		values[i], oversize, valueErrs[i] = vcmds[j].value(appValues[i])
		if oversize {
			s.oversize.Add(1)
		}
	}
	return nil
}

// boundedGet reads at most maxValueBytes+1 bytes of a string key: GET of a 100 MB value would
// be read whole at every scrape before being refused. One byte past the limit is enough to
// refuse it. GETRANGE returns "" for a missing key, which PTTL (-2) tells apart.
func boundedGet(ctx context.Context, pipe redis.Pipeliner, key string) *redis.StringCmd {
	return pipe.GetRange(ctx, key, 0, maxValueBytes)
}

// missing reports whether PTTL said the key does not exist.
func missing(pttl *redis.DurationCmd) bool {
	d, err := pttl.Result()
	return err == nil && d == -2
}

func ttlUntil(now time.Time, ttl time.Duration, open bool) float64 {
	if !open || ttl <= 0 {
		return math.NaN()
	}
	return float64(now.Add(ttl).UnixNano()) / 1e9
}

var asciiInt = regexp.MustCompile(`^-?[0-9]+$`)

// evalBreaker decides whether a present key means open, as the application would.
func evalBreaker(b config.Breaker, raw []byte, now time.Time, ttl time.Duration) breakerRead {
	r := breakerRead{until: math.NaN(), openedAt: math.NaN()}
	if len(raw) > maxValueBytes {
		r.err = fmt.Errorf("value of %d bytes is over the %d limit", len(raw), maxValueBytes)
		return r
	}
	var v any
	switch b.Format {
	case config.FormatString:
		s := string(raw)
		r.open = true
		if len(b.OpenValues) > 0 {
			r.open = false
			for _, ov := range b.OpenValues {
				if s == ov {
					// Only configured values become labels.
					r.open, r.mode = true, ov
					break
				}
			}
		}
		r.until = ttlUntil(now, ttl, r.open)
		return r
	case config.FormatJSON:
		if err := json.Unmarshal(raw, &v); err != nil {
			r.err = fmt.Errorf("not JSON: %w", err)
			return r
		}
	case config.FormatDjangoPickle, config.FormatPickle:
		if b.Format == config.FormatDjangoPickle && asciiInt.Match(raw) {
			// django-redis stores a plain int as its digits, unpickled.
			n, _ := strconv.ParseFloat(string(raw), 64)
			v = n
			break
		}
		d, err := pickle.Decode(raw)
		if err != nil {
			r.refused = pickle.IsUnsafe(err)
			r.err = err
			return r
		}
		v = d
	default:
		r.err = fmt.Errorf("unknown format %q", b.Format)
		return r
	}

	var get func(string) (any, bool)
	switch m := v.(type) {
	case *pickle.Dict:
		if m.Len() == 0 {
			return r // an empty dict is falsy: get_forced_mode() returns None
		}
		get = m.Get
	case map[string]any:
		if len(m) == 0 {
			return r
		}
		get = func(k string) (any, bool) { x, ok := m[k]; return x, ok }
	default:
		// A scalar: open when Python would find it true.
		r.open = truthy(v)
		r.until = ttlUntil(now, ttl, r.open)
		return r
	}

	f := b.Fields
	if name := f.UntilField(); name != "" {
		until := 0.0 // get_forced_mode(): forced.get("until", 0)
		if x, ok := get(name); ok {
			t, err := toTimestamp(x)
			if err != nil {
				r.err = fmt.Errorf("field %s: %w", name, err)
				return r
			}
			until = t
		}
		r.open = until > float64(now.UnixNano())/1e9
		r.until = until
	} else {
		r.open = true
		r.until = ttlUntil(now, ttl, true)
	}
	if !r.open {
		r.until = math.NaN()
		return r
	}
	if name := f.ModeField(); name != "" {
		if x, ok := get(name); ok {
			r.mode = labelValue(x)
		}
	}
	if name := f.ReasonField(); name != "" {
		if x, ok := get(name); ok {
			r.reason = labelValue(x)
		}
	}
	if name := f.OpenedAtField(); name != "" {
		if x, ok := get(name); ok {
			if t, err := toTimestamp(x); err == nil {
				r.openedAt = t
			}
		}
	}
	return r
}

// toTimestamp reads epoch seconds (a number, or a string of one) or an RFC 3339 time.
func toTimestamp(v any) (float64, error) {
	switch x := v.(type) {
	case float64:
		return x, nil
	case int64:
		return float64(x), nil
	case *big.Int:
		f, _ := new(big.Float).SetInt(x).Float64()
		return f, nil
	case bool:
		return gaugeBool(x), nil
	case nil:
		return 0, nil
	case string:
		if f, err := strconv.ParseFloat(strings.TrimSpace(x), 64); err == nil {
			return f, nil
		}
		if t, err := time.Parse(time.RFC3339Nano, x); err == nil {
			return float64(t.UnixNano()) / 1e9, nil
		}
		return 0, fmt.Errorf("%q is neither epoch seconds nor an RFC 3339 time", truncate(x))
	default:
		return 0, fmt.Errorf("a %T is not a time", v)
	}
}

func truthy(v any) bool {
	switch x := v.(type) {
	case nil:
		return false
	case bool:
		return x
	case float64:
		return x != 0
	case int64:
		return x != 0
	case *big.Int:
		return x.Sign() != 0
	case string:
		return x != ""
	case []byte:
		return len(x) > 0
	case pickle.ByteArray:
		return len(x) > 0
	case pickle.Tuple:
		return len(x) > 0
	case *pickle.List:
		return len(x.Items) > 0
	case *pickle.Set:
		return len(x.Items) > 0
	case []any:
		return len(x) > 0
	default:
		return true
	}
}

// labelValue renders a field for a label: valid UTF-8, bounded.
func labelValue(v any) string {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case []byte:
		s = string(x)
	case nil:
		return ""
	case float64:
		s = strconv.FormatFloat(x, 'g', -1, 64)
	case int64:
		s = strconv.FormatInt(x, 10)
	case bool:
		s = strconv.FormatBool(x)
	default:
		// A list, dict or object: its Go form (%v) would show heap addresses, and a label
		// value must name something the application wrote.
		s = unsupportedLabel
	}
	return truncate(strings.ToValidUTF8(s, "\uFFFD"))
}

func truncate(s string) string {
	if len(s) <= maxLabelBytes {
		return s
	}
	s = s[:maxLabelBytes]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
