package integration

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// brokerScrapeTimeout bounds the waits on /metrics in these tests (the machine is shared).
const brokerScrapeTimeout = 60 * time.Second

// TestBrokerPriorityQueueLength sends tasks with priorities 0, 3, 5 and 9 to a queue nobody
// consumes and checks the depth per priority step, with kombu's key layout and with
// global_keyprefix and a custom sep; then a worker drains the queue and every value reads 0.
func TestBrokerPriorityQueueLength(t *testing.T) {
	tests := []struct {
		name      string
		transport map[string]any // Celery's broker_transport_options
		flags     []string       // the same, as exporter flags
		key       func(step int) string
	}{
		{
			name: "kombu defaults",
			key: func(step int) string {
				if step == 0 {
					return "work"
				}
				return "work\x06\x16" + strconv.Itoa(step)
			},
		},
		{
			name:      "global_keyprefix and sep",
			transport: map[string]any{"global_keyprefix": "pfx:", "sep": ":"},
			flags:     []string{"--broker.transport-option=global_keyprefix=pfx:", "--broker.transport-option=sep=:"},
			key: func(step int) string {
				if step == 0 {
					return "pfx:work"
				}
				return "pfx:work:" + strconv.Itoa(step)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := harness.StartRedis(t)
			url := r.URL(0)
			var plan []harness.Send
			for _, p := range []struct{ prio, n int }{{0, 2}, {3, 1}, {5, 3}, {9, 1}} {
				for i := 0; i < p.n; i++ {
					plan = append(plan, harness.Send{Task: "add", Args: []any{i, p.prio}, Queue: "work", Priority: harness.Prio(p.prio)})
				}
			}
			harness.Produce(t, url, tt.transport, plan)

			// kombu maps a priority down to the nearest step of [0, 3, 6, 9]: 5 goes to 3.
			want := map[int]float64{0: 2, 3: 1 + 3, 6: 0, 9: 1}
			// The keys are where we think they are (read without the exporter).
			for step, n := range want {
				got, err := r.Do("LLEN", tt.key(step))
				if err != nil || got != fmt.Sprintf(":%d", int(n)) {
					t.Fatalf("LLEN %q = %q, %v; want %v: the test's idea of kombu's keys is wrong", tt.key(step), got, err, n)
				}
			}

			args := append([]string{"--broker.url=" + url, "--control.interval=500ms", "--control.timeout=300ms"}, tt.flags...)
			e := harness.StartExporter(t, args...)
			q := map[string]string{"queue_name": "work"}
			m := e.WaitFor(t, brokerScrapeTimeout, func(m harness.Metrics) bool {
				v, ok := m.Value("celery_queue_consumers", q) // after a control round with no worker
				return ok && v == 0 && m.Has("celery_queue_length")
			})
			expectSeries(t, m, "celery_queue_length", q, 7)
			for step, n := range want {
				expectSeries(t, m, "celery_queue_priority_length", map[string]string{"queue_name": "work", "priority": strconv.Itoa(step)}, n)
			}
			expectSeries(t, m, "celery_up", nil, 1)
			if got := len(m.Series("celery_queue_priority_length")); got != 4 {
				t.Errorf("%d priority series, want 4 (one queue, four steps):\n%s", got, m.Text)
			}

			// A worker drains it: the known queue reads 0, never a missing series.
			harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Queues: []string{"work"}, Pool: "threads",
				Concurrency: 4, TransportOptions: tt.transport})
			m = e.WaitFor(t, brokerScrapeTimeout, func(m harness.Metrics) bool {
				v, ok := m.Value("celery_queue_length", q)
				u, _ := m.Value("celery_queue_unacked", q)
				c, _ := m.Value("celery_queue_consumers", q)
				return ok && v == 0 && u == 0 && c == 1
			})
			for step := range want {
				expectSeries(t, m, "celery_queue_priority_length", map[string]string{"queue_name": "work", "priority": strconv.Itoa(step)}, 0)
			}
			expectSeries(t, m, "celery_broker_unacked_messages", nil, 0)
		})
	}
}

// TestBrokerUnackedPrefetch runs a prefetching worker with acks_late and one without, each with
// more long tasks than it may hold, and checks the unacked count per queue against what the
// workers themselves say (celery inspect active / reserved) and against HLEN.
func TestBrokerUnackedPrefetch(t *testing.T) {
	r := harness.StartRedis(t)
	url := r.URL(0)
	const sent = 8
	var plan []harness.Send
	for _, q := range []string{"late", "early"} {
		for i := 0; i < sent; i++ {
			plan = append(plan, harness.Send{Task: "sleep", Kwargs: map[string]any{"seconds": 300}, Queue: q})
		}
	}
	harness.Produce(t, url, nil, plan)
	// prefetch_count = multiplier × concurrency = 4 for both.
	harness.StartWorkers(t,
		harness.WorkerOptions{BrokerURL: url, Queues: []string{"late"}, Pool: "prefork", Concurrency: 1, NodeName: "late@harness",
			Env: []string{"CELERY_ACKS_LATE=1", "CELERY_PREFETCH_MULTIPLIER=4"}},
		harness.WorkerOptions{BrokerURL: url, Queues: []string{"early"}, Pool: "prefork", Concurrency: 1, NodeName: "early@harness",
			Env: []string{"CELERY_PREFETCH_MULTIPLIER=4"}},
	)
	e := harness.StartExporter(t, "--broker.url="+url, "--control.interval=1s")

	// What the workers hold, in their own words, once they have filled their prefetch window.
	type held struct{ active, reserved int }
	var byNode map[string]held
	deadline := time.Now().Add(brokerScrapeTimeout)
	for {
		active := harness.InspectJSON(t, url, "active")
		reserved := harness.InspectJSON(t, url, "reserved")
		byNode = map[string]held{}
		for _, n := range []string{"late@harness", "early@harness"} {
			a, _ := active[n].([]any)
			rs, _ := reserved[n].([]any)
			byNode[n] = held{len(a), len(rs)}
		}
		if byNode["late@harness"].active == 1 && byNode["early@harness"].active == 1 &&
			byNode["late@harness"].active+byNode["late@harness"].reserved == 4 &&
			byNode["early@harness"].reserved == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workers did not settle on 1 active + their prefetch window: %+v", byNode)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// acks_late: the running message stays unacked with the reserved ones (the prefetch window,
	// 4). Early ack: the running message is acked at start, so the window refills with 4 reserved.
	want := map[string]struct{ unacked, length float64 }{
		"late":  {unacked: 4, length: sent - 4},
		"early": {unacked: 4, length: sent - 1 - 4},
	}
	m := e.WaitFor(t, brokerScrapeTimeout, func(m harness.Metrics) bool {
		for q, w := range want {
			u, _ := m.Value("celery_queue_unacked", map[string]string{"queue_name": q})
			l, _ := m.Value("celery_queue_length", map[string]string{"queue_name": q})
			if u != w.unacked || l != w.length {
				return false
			}
		}
		return true
	})
	for q, w := range want {
		expectSeries(t, m, "celery_queue_unacked", map[string]string{"queue_name": q}, w.unacked)
		expectSeries(t, m, "celery_queue_length", map[string]string{"queue_name": q}, w.length)
	}
	hlen, err := r.Do("HLEN", "unacked")
	if err != nil {
		t.Fatal(err)
	}
	expectSeries(t, m, "celery_broker_unacked_messages", nil, mustAtoi(t, strings.TrimPrefix(hlen, ":")))
	expectSeries(t, m, "celery_exporter_unacked_scan_truncated", nil, 0)
	// The stats reply agrees on the window.
	m = e.WaitFor(t, brokerScrapeTimeout, func(m harness.Metrics) bool { return m.Has("celery_worker_prefetch_messages") })
	for _, n := range []string{"late@harness", "early@harness"} {
		expectSeries(t, m, "celery_worker_prefetch_messages", map[string]string{"hostname": n}, 4)
	}
}

func mustAtoi(t *testing.T, s string) float64 {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("not an integer: %q", s)
	}
	return float64(n)
}

// TestBrokerReadOnlyModeWritesNothing watches everything the exporter sends to Redis with
// MONITOR. With --control.disabled nothing may write (no command flagged "write" by the server,
// no PUBLISH); in the default mode the remote-control writes must show up, so the watch is known
// to see them.
func TestBrokerReadOnlyModeWritesNothing(t *testing.T) {
	tests := []struct {
		name       string
		flags      []string
		wantWrites []string
	}{
		{name: "read-only", flags: []string{"--control.disabled"}},
		{name: "default", flags: []string{"--control.interval=500ms", "--control.timeout=200ms"},
			wantWrites: []string{"brpop", "del", "publish", "sadd", "srem"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := harness.StartRedis(t)
			url := r.URL(0)
			// Broker state for every read path: queued messages in priority lists, bindings, unacked.
			harness.Produce(t, url, nil, []harness.Send{
				{Task: "add", Args: []any{1, 2}, Queue: "q1"},
				{Task: "add", Args: []any{1, 2}, Queue: "q1", Priority: harness.Prio(6)},
			})
			if _, err := r.Do("HSET", "unacked", "tag-1", `[{"body": "", "headers": {}, "properties": {}}, "", "q1"]`); err != nil {
				t.Fatal(err)
			}
			mon := startMonitor(t, r.Addr())
			e := harness.StartExporter(t, append([]string{"--broker.url=" + url, "--broker.unacked-scan-limit=100"}, tt.flags...)...)
			e.WaitReady(t, 30*time.Second)
			for i := 0; i < 3; i++ {
				e.MustScrape(t)
				time.Sleep(400 * time.Millisecond)
			}
			if err := e.Stop(); err != nil {
				t.Error(err)
			}
			cmds := mon.stop(t)

			seen := map[string]bool{}
			for _, c := range cmds {
				seen[c] = true
			}
			for _, must := range []string{"scan", "smembers", "llen", "hlen", "hscan", "psubscribe"} {
				if !seen[must] {
					t.Errorf("MONITOR never saw %q: the exporter's reads are not being watched (saw %v)", must, slices.Sorted(maps.Keys(seen)))
				}
			}
			writes := writeCommands(t, r, seen)
			if strings.Join(writes, " ") != strings.Join(tt.wantWrites, " ") {
				t.Errorf("write commands = %q, want %q (all commands: %v)", writes, tt.wantWrites, slices.Sorted(maps.Keys(seen)))
			}
		})
	}
}

// writeCommands returns, sorted, the commands the server itself flags "write", plus PUBLISH (a
// write to subscribers, not to the keyspace).
func writeCommands(t *testing.T, r *harness.Redis, seen map[string]bool) []string {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), Protocol: 2, DisableIdentity: true})
	defer rdb.Close()
	info, err := rdb.Command(context.Background()).Result()
	if err != nil {
		t.Fatalf("COMMAND: %v", err)
	}
	var out []string
	for c := range seen {
		ci, ok := info[c]
		if !ok {
			t.Errorf("unknown command %q in MONITOR output", c)
			continue
		}
		write := c == "publish" || c == "spublish"
		for _, f := range ci.Flags {
			if f == "write" {
				write = true
			}
		}
		if write {
			out = append(out, c)
		}
	}
	sort.Strings(out)
	return out
}

// monitor is a raw MONITOR connection that collects every command with the client that sent it.
type monitor struct {
	addr    string
	conn    net.Conn
	mu      sync.Mutex
	entries []monitorEntry
	done    chan struct{}
}

type monitorEntry struct {
	client string // ip:port of the sending connection
	name   string // lower-case command name
	line   string // the whole line, quoted as MONITOR prints it
}

func startMonitor(t *testing.T, addr string) *monitor {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("*1\r\n$7\r\nMONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(c)
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		t.Fatalf("MONITOR: %q, %v", line, err)
	}
	m := &monitor{addr: addr, conn: c, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			// +1700000000.123456 [0 127.0.0.1:41234] "llen" "q1"
			head, rest, ok := strings.Cut(line, "] \"")
			if !ok {
				continue
			}
			_, client, _ := strings.Cut(head, " [")
			_, client, _ = strings.Cut(client, " ")
			name, _, _ := strings.Cut(rest, "\"")
			m.mu.Lock()
			m.entries = append(m.entries, monitorEntry{client: client, name: strings.ToLower(name), line: strings.TrimSpace(line)})
			m.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close() })
	return m
}

// stop ends the watch and returns the command names seen.
func (m *monitor) stop(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, e := range m.stopEntries(t) {
		names = append(names, e.name)
	}
	return names
}

// stopEntries ends the watch and returns what it saw of every command the server ran before it
// was called. MONITOR shows commands in the order the server runs them, so once a marker sent now
// shows up, everything before it is in.
func (m *monitor) stopEntries(t *testing.T) []monitorEntry {
	t.Helper()
	marker := fmt.Sprintf("end-of-watch-%d", time.Now().UnixNano())
	rdb := redis.NewClient(&redis.Options{Addr: m.addr, Protocol: 2, DisableIdentity: true})
	defer rdb.Close()
	if err := rdb.Echo(context.Background(), marker).Err(); err != nil {
		t.Fatalf("ECHO marker: %v", err)
	}
	defer func() {
		m.conn.Close()
		<-m.done
	}()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		m.mu.Lock()
		for i, e := range m.entries {
			if e.name == "echo" && strings.Contains(e.line, marker) {
				out := append([]monitorEntry(nil), m.entries[:i]...)
				m.mu.Unlock()
				return out
			}
		}
		m.mu.Unlock()
	}
	t.Fatal("MONITOR never showed the end-of-watch marker")
	return nil
}

// expectSeries checks one series' value (label set exact; nil = no labels).
func expectSeries(t *testing.T, m harness.Metrics, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := m.Value(name, labels)
	switch {
	case !ok:
		t.Errorf("%s%v: no series; want %v\n%s", name, labels, want, m.Text)
	case got != want:
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}
