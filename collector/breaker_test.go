package collector

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
)

// The seed app's breaker as django-redis writes it (pickle protocol 4), from
// test/fixtures/capture-5.2.6/django_redis_forced_mode_simulated.txt: reason
// consecutive_failures, forced_at 1795879513.8584006, until 300 s later.
const forcedModeFixture = "\x80\x04\x95_\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04mode\x94\x8c\nwrite_only\x94\x8c\x06reason\x94\x8c\x14consecutive_failures\x94\x8c\x05until\x94GA\xda\xc2\xbc\xe1v\xf0\t\x8c\tforced_at\x94GA\xda\xc2\xbc\x96v\xf0\tu."

// A pickle whose __reduce__ calls os.system (protocol 2, as python3 writes it).
const evilPickle = "\x80\x02cposix\nsystem\nq\x00X\x0c\x00\x00\x00touch /tmp/xq\x01\x85q\x02Rq\x03."

func newTestBreakers(t *testing.T, cfg string) (*BreakerScraper, *miniredis.Miniredis, *errCapturingCollector) {
	t.Helper()
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { client.Close() })
	s := NewBreakerScraper(nil, kombu.Dial, client)
	c, err := config.Parse([]byte(cfg), "test.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyConfig(c); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, mr, &errCapturingCollector{s: s}
}

func TestBreakerSeedFixture(t *testing.T) {
	s, mr, c := newTestBreakers(t, `
breakers:
  - {name: zep, key: ":1:mem:mode:forced:v1"}
app_values:
  - {name: zep_read_consecutive_failures, key: ":1:mem:read:consec_failures", default: 0}
`)
	now := time.Unix(1795879513, 0).Add(10 * time.Second)
	s.now = func() time.Time { return now }
	mr.Set(":1:mem:mode:forced:v1", forcedModeFixture)
	mr.Set(":1:mem:read:consec_failures", "2")

	compare(t, c, `celery_app_value{name="zep_read_consecutive_failures"} 2
celery_breaker_info{breaker="zep",mode="write_only",reason="consecutive_failures"} 1
celery_breaker_open{breaker="zep"} 1
celery_breaker_open_until_timestamp_seconds{breaker="zep"} 1.7958798138584006e+09
celery_breaker_opened_timestamp_seconds{breaker="zep"} 1.7958795138584006e+09
celery_breaker_read_ok{breaker="zep"} 1
celery_breaker_trips_total{breaker="zep",reason="consecutive_failures"} 1
celery_exporter_app_values_oversize_total{} 0
celery_exporter_pickle_refused_total{breaker="zep"} 0
`)
	if c.err != nil {
		t.Errorf("Scrape: %v", c.err)
	}

	// until has passed while the key is still there (the app then treats it as closed too);
	// the failure counter expired: its default 0 is reported.
	now = time.Unix(1795879813, 900e6)
	mr.Del(":1:mem:read:consec_failures")
	compare(t, c, `celery_app_value{name="zep_read_consecutive_failures"} 0
celery_breaker_open{breaker="zep"} 0
celery_breaker_read_ok{breaker="zep"} 1
celery_breaker_trips_total{breaker="zep",reason="consecutive_failures"} 1
celery_exporter_app_values_oversize_total{} 0
celery_exporter_pickle_refused_total{breaker="zep"} 0
`)
}

func TestBreakerFormats(t *testing.T) {
	s, mr, c := newTestBreakers(t, `
breakers:
  - {name: json_open, key: j1, format: json}
  - {name: json_expired, key: j2, format: json}
  - {name: json_iso, key: j3, format: json, fields: {opened_at: since}}
  - {name: json_scalar, key: j4, format: json}
  - {name: str_listed, key: s1, format: string, open_values: ["on"]}
  - {name: str_unlisted, key: s2, format: string, open_values: ["on"]}
  - {name: str_any, key: s3, format: string}
  - {name: exists_ttl, key: e1, format: exists}
  - {name: exists_absent, key: e2, format: exists}
  - {name: django_int, key: d1}
  - {name: empty_dict, key: d2}
  - {name: no_until_field, key: d3, fields: {until: ""}}
  - {name: evil, key: x1}
  - {name: garbage, key: x2, format: pickle}
  - {name: wrongtype, key: x3}
  - {name: bad_until, key: x4, format: json}
  - {name: absent, key: nothing}
`)
	now := time.Unix(1700000000, 0)
	s.now = func() time.Time { return now }
	mr.SetTime(now)
	mr.Set("j1", `{"mode":"read_only","reason":"manual","until":1700000100,"forced_at":1699999900}`)
	mr.Set("j2", `{"mode":"read_only","reason":"manual","until":1699999999}`)
	mr.Set("j3", `{"mode":"m","until":"2023-11-14T22:15:00Z","since":"2023-11-14T22:00:00Z"}`)
	mr.Set("j4", `true`)
	mr.Set("s1", "on")
	mr.Set("s2", "off")
	mr.Set("s3", "anything")
	mr.Set("e1", "")
	mr.SetTTL("e1", 30*time.Second)
	mr.Set("d1", "1")
	mr.Set("d2", "\x80\x04}\x94.")                                                                     // {}
	mr.Set("d3", "\x80\x04\x95\x11\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x04mode\x94\x8c\x03off\x94s.") // {"mode": "off"}
	mr.SetTTL("d3", 90*time.Second)
	mr.Set("x1", evilPickle)
	mr.Set("x2", "not a pickle")
	mr.Lpush("x3", "a list")
	mr.Set("x4", `{"until":"tomorrow"}`)

	compare(t, c, `celery_breaker_info{breaker="django_int",mode="",reason=""} 1
celery_breaker_info{breaker="exists_ttl",mode="",reason=""} 1
celery_breaker_info{breaker="json_iso",mode="m",reason=""} 1
celery_breaker_info{breaker="json_open",mode="read_only",reason="manual"} 1
celery_breaker_info{breaker="json_scalar",mode="",reason=""} 1
celery_breaker_info{breaker="no_until_field",mode="off",reason=""} 1
celery_breaker_info{breaker="str_any",mode="",reason=""} 1
celery_breaker_info{breaker="str_listed",mode="on",reason=""} 1
celery_breaker_open{breaker="absent"} 0
celery_breaker_open{breaker="django_int"} 1
celery_breaker_open{breaker="empty_dict"} 0
celery_breaker_open{breaker="exists_absent"} 0
celery_breaker_open{breaker="exists_ttl"} 1
celery_breaker_open{breaker="json_expired"} 0
celery_breaker_open{breaker="json_iso"} 1
celery_breaker_open{breaker="json_open"} 1
celery_breaker_open{breaker="json_scalar"} 1
celery_breaker_open{breaker="no_until_field"} 1
celery_breaker_open{breaker="str_any"} 1
celery_breaker_open{breaker="str_listed"} 1
celery_breaker_open{breaker="str_unlisted"} 0
celery_breaker_open_until_timestamp_seconds{breaker="exists_ttl"} 1.70000003e+09
celery_breaker_open_until_timestamp_seconds{breaker="json_iso"} 1.7000001e+09
celery_breaker_open_until_timestamp_seconds{breaker="json_open"} 1.7000001e+09
celery_breaker_open_until_timestamp_seconds{breaker="no_until_field"} 1.70000009e+09
celery_breaker_opened_timestamp_seconds{breaker="json_iso"} 1.6999992e+09
celery_breaker_opened_timestamp_seconds{breaker="json_open"} 1.6999999e+09
celery_breaker_read_ok{breaker="absent"} 1
celery_breaker_read_ok{breaker="bad_until"} 0
celery_breaker_read_ok{breaker="django_int"} 1
celery_breaker_read_ok{breaker="empty_dict"} 1
celery_breaker_read_ok{breaker="evil"} 0
celery_breaker_read_ok{breaker="exists_absent"} 1
celery_breaker_read_ok{breaker="exists_ttl"} 1
celery_breaker_read_ok{breaker="garbage"} 0
celery_breaker_read_ok{breaker="json_expired"} 1
celery_breaker_read_ok{breaker="json_iso"} 1
celery_breaker_read_ok{breaker="json_open"} 1
celery_breaker_read_ok{breaker="json_scalar"} 1
celery_breaker_read_ok{breaker="no_until_field"} 1
celery_breaker_read_ok{breaker="str_any"} 1
celery_breaker_read_ok{breaker="str_listed"} 1
celery_breaker_read_ok{breaker="str_unlisted"} 1
celery_breaker_read_ok{breaker="wrongtype"} 0
celery_exporter_pickle_refused_total{breaker="absent"} 0
celery_exporter_pickle_refused_total{breaker="django_int"} 0
celery_exporter_pickle_refused_total{breaker="empty_dict"} 0
celery_exporter_pickle_refused_total{breaker="evil"} 1
celery_exporter_pickle_refused_total{breaker="garbage"} 0
celery_exporter_pickle_refused_total{breaker="no_until_field"} 0
celery_exporter_pickle_refused_total{breaker="wrongtype"} 0
`, "celery_breaker_info", "celery_breaker_open", "celery_breaker_open_until_timestamp_seconds",
		"celery_breaker_opened_timestamp_seconds", "celery_breaker_read_ok", "celery_exporter_pickle_refused_total")
	if c.err != nil {
		t.Errorf("a value Redis or the decoder refuses must not fail the scrape: %v", c.err)
	}
	// Refusals are counted per read.
	compare(t, c, `celery_exporter_pickle_refused_total{breaker="absent"} 0
celery_exporter_pickle_refused_total{breaker="django_int"} 0
celery_exporter_pickle_refused_total{breaker="empty_dict"} 0
celery_exporter_pickle_refused_total{breaker="evil"} 2
celery_exporter_pickle_refused_total{breaker="garbage"} 0
celery_exporter_pickle_refused_total{breaker="no_until_field"} 0
celery_exporter_pickle_refused_total{breaker="wrongtype"} 0
`, "celery_exporter_pickle_refused_total")
}

func TestBreakerTrips(t *testing.T) {
	s, mr, c := newTestBreakers(t, "breakers:\n  - {name: zep, key: k, format: json}\n")
	now := time.Unix(1700000000, 0)
	s.now = func() time.Time { return now }
	set := func(reason string, forcedAt float64) {
		mr.Set("k", `{"mode":"write_only","reason":"`+reason+`","until":1800000000,"forced_at":`+
			strconv.FormatFloat(forcedAt, 'f', -1, 64)+`}`)
	}
	trips := func(want string) {
		t.Helper()
		compare(t, c, want, "celery_breaker_trips_total")
	}
	trips("")
	set("auth", 1)
	for i := 0; i < 5; i++ {
		trips(`celery_breaker_trips_total{breaker="zep",reason="auth"} 1` + "\n")
	}
	mr.Del("k")
	trips(`celery_breaker_trips_total{breaker="zep",reason="auth"} 1` + "\n")
	set("auth", 2)
	trips(`celery_breaker_trips_total{breaker="zep",reason="auth"} 2` + "\n")
	// Forced again while open (a new forced_at): a new trip, as the app counts it.
	set("consecutive_failures", 3)
	trips(`celery_breaker_trips_total{breaker="zep",reason="auth"} 2
celery_breaker_trips_total{breaker="zep",reason="consecutive_failures"} 1
`)
	// A read failure in between changes nothing: no trip when it reads again.
	mr.Set("k", "{broken")
	trips(`celery_breaker_trips_total{breaker="zep",reason="auth"} 2
celery_breaker_trips_total{breaker="zep",reason="consecutive_failures"} 1
`)
	set("consecutive_failures", 3)
	trips(`celery_breaker_trips_total{breaker="zep",reason="auth"} 2
celery_breaker_trips_total{breaker="zep",reason="consecutive_failures"} 1
`)
	// A reload that keeps the breaker keeps its count; one that drops it forgets it.
	cfg, _ := config.Parse([]byte("breakers:\n  - {name: zep, key: k, format: json}\n  - {name: other, key: o, format: json}\n"), "t")
	if err := s.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	trips(`celery_breaker_trips_total{breaker="zep",reason="auth"} 2
celery_breaker_trips_total{breaker="zep",reason="consecutive_failures"} 1
`)
	cfg, _ = config.Parse([]byte("breakers:\n  - {name: other, key: o, format: json}\n"), "t")
	if err := s.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	trips("")
}

// TestBreakerTripReasonsBounded: the reason comes from Redis; past maxTripReasons distinct values
// new ones are counted as "other", so a reason carrying an error message cannot grow the series
// without end.
func TestBreakerTripReasonsBounded(t *testing.T) {
	s, mr, c := newTestBreakers(t, "breakers:\n  - {name: zep, key: k, format: json}\n")
	s.now = func() time.Time { return time.Unix(1700000000, 0) }
	for i := range maxTripReasons + 8 {
		// A new forced_at each time: every read is a trip.
		mr.Set("k", fmt.Sprintf(`{"reason":"http 503 #%d","until":1800000000,"forced_at":%d}`, i, i))
		testutil.CollectAndCount(c)
	}
	mr.Set("k", `{"reason":"http 503 #0","until":1800000000,"forced_at":1000}`)
	testutil.CollectAndCount(c)
	text, err := collectText(t, s, "celery_breaker_trips_total")
	if err != nil {
		t.Fatal(err)
	}
	series := strings.Split(strings.TrimSpace(text), "\n")
	if len(series) != maxTripReasons+1 {
		t.Errorf("%d trip series, want %d (the cap and other):\n%s", len(series), maxTripReasons+1, text)
	}
	for _, want := range []string{
		`celery_breaker_trips_total{breaker="zep",reason="http 503 #0"} 2`,
		fmt.Sprintf(`celery_breaker_trips_total{breaker="zep",reason="http 503 #%d"} 1`, maxTripReasons-1),
		`celery_breaker_trips_total{breaker="zep",reason="other"} 8`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("missing %s in\n%s", want, text)
		}
	}
}

func TestBreakerRedisDown(t *testing.T) {
	_, mr, c := newTestBreakers(t, "breakers:\n  - {name: zep, key: k}\napp_values:\n  - {name: v, key: a, default: 0}\n")
	mr.Close()
	compare(t, c, `celery_breaker_read_ok{breaker="zep"} 0
celery_exporter_app_values_oversize_total{} 0
celery_exporter_pickle_refused_total{breaker="zep"} 0
`)
	if c.err == nil {
		t.Error("Scrape must fail when Redis cannot be read")
	}
}

func TestBreakerSeparateRedis(t *testing.T) {
	broker := miniredis.RunT(t)
	cache := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: broker.Addr()})
	defer client.Close()
	dials := map[string]int{}
	var closed []string
	dial := func(raw string) (redis.UniversalClient, error) {
		dials[raw]++
		c, err := kombu.Dial(raw)
		if err != nil {
			return nil, err
		}
		return &closeSpy{UniversalClient: c, closed: &closed, url: raw}, nil
	}
	s := NewBreakerScraper(nil, dial, client)
	defer s.Close()
	cacheURL := "redis://" + cache.Addr() + "/3"
	cfg, err := config.Parse([]byte(`
breakers:
  - {name: on_cache, key: k, format: string, redis_url: "`+cacheURL+`"}
  - {name: on_broker, key: k, format: string}
app_values:
  - {name: on_cache, key: v, redis_url: "`+cacheURL+`"}
`), "t")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if dials[cacheURL] != 1 {
		t.Errorf("dialed %v; want the cache URL once across reloads", dials)
	}
	cache.Select(3)
	cache.Set("k", "x")
	cache.Set("v", "5")
	c := &errCapturingCollector{s: s}
	compare(t, c, `celery_app_value{name="on_cache"} 5
celery_breaker_open{breaker="on_broker"} 0
celery_breaker_open{breaker="on_cache"} 1
`, "celery_app_value", "celery_breaker_open")

	cfg, _ = config.Parse([]byte("breakers:\n  - {name: on_broker, key: k, format: string}\n"), "t")
	if err := s.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if len(closed) != 1 || closed[0] != cacheURL {
		t.Errorf("closed %v; want the cache connection closed once no entry uses it", closed)
	}

	noBroker := NewBreakerScraper(nil, dial, nil)
	if err := noBroker.ApplyConfig(cfg); err == nil {
		t.Error("an entry without redis_url and no broker connection must be refused")
	}
	failing := NewBreakerScraper(nil, func(string) (redis.UniversalClient, error) { return nil, errors.New("boom") }, client)
	cfg, _ = config.Parse([]byte("breakers:\n  - {name: x, key: k, redis_url: \"redis://127.0.0.1:1/0\"}\n"), "t")
	if err := failing.ApplyConfig(cfg); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("ApplyConfig = %v; want the dial error", err)
	}
}

type closeSpy struct {
	redis.UniversalClient
	closed *[]string
	url    string
}

func (c *closeSpy) Close() error {
	*c.closed = append(*c.closed, c.url)
	return c.UniversalClient.Close()
}

// A breaker whose mode is a list or dict gets a fixed label, never Go's
// %v of the decoded value (heap addresses for pickled containers); an oversized value is refused
// and counted, for breakers and app values alike.
func TestBreakerHostileValues(t *testing.T) {
	_, mr, c := newTestBreakers(t, `
breakers:
  - {name: json_list, key: j, format: json}
  - {name: pickle_list, key: p}
  - {name: huge, key: h, format: json}
app_values:
  - {name: huge_value, key: hv}
`)
	mr.Set("j", `{"mode":["a","b"],"reason":{"x":1},"until":4102444800}`)
	mr.Set("p", "\x80\x04\x95\x25\x00\x00\x00\x00\x00\x00\x00\x7d\x94\x28\x8c\x04\x6d\x6f\x64\x65\x94\x5d\x94\x28\x4b\x01\x4b\x02\x65\x8c\x05\x75\x6e\x74\x69\x6c\x94\x47\x41\xee\x90\xca\xe0\x00\x00\x00\x75\x2e") // {"mode": [1, 2], "until": 4102444800.0}
	mr.Set("h", `{"mode":"`+strings.Repeat("m", maxValueBytes)+`"}`)
	mr.Set("hv", strings.Repeat("1", maxValueBytes+10))
	compare(t, c, `celery_breaker_info{breaker="json_list",mode="unsupported_type",reason="unsupported_type"} 1
celery_breaker_info{breaker="pickle_list",mode="unsupported_type",reason=""} 1
celery_breaker_read_ok{breaker="huge"} 0
celery_breaker_read_ok{breaker="json_list"} 1
celery_breaker_read_ok{breaker="pickle_list"} 1
celery_exporter_app_values_oversize_total{} 2
`, "celery_breaker_info", "celery_breaker_read_ok", "celery_exporter_app_values_oversize_total")
}
