package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/collector"
	"github.com/celery-exporter/celery_exporter/internal/event"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/state"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

// TestControlQueuesMatchInspect runs the seed app's three workers (chat and default on threads
// pools, background+notifications+dlq on prefork) and checks that what the exporter reports from
// remote control equals what `celery inspect active_queues` and `celery inspect stats` say.
func TestControlQueuesMatchInspect(t *testing.T) {
	besideTheDemo(t)
	r := harness.StartRedis(t)
	url := r.URL(0)
	harness.StartWorkers(t,
		harness.WorkerOptions{BrokerURL: url, NodeName: "celery@chat", Queues: []string{"chat"}, Pool: "threads", Concurrency: 4},
		harness.WorkerOptions{BrokerURL: url, NodeName: "celery@default", Queues: []string{"default"}, Pool: "threads", Concurrency: 4},
		harness.WorkerOptions{BrokerURL: url, NodeName: "celery@background", Queues: []string{"background", "notifications", "dlq"},
			Pool: "prefork", Concurrency: 2},
	)
	// Some work, so stats.total has something to say.
	ids := harness.Produce(t, url, nil, []harness.Send{
		{Task: "assistant.tasks.process_chat_message", Kwargs: map[string]any{"seconds": 0.01}},
		{Task: "assistant.tasks.process_chat_message", Kwargs: map[string]any{"seconds": 0.01}},
		{Task: "add", Args: []any{1, 2}, Queue: "default"},
		{Task: "assistant.tasks.send_whatsapp_message_task", Kwargs: map[string]any{"seconds": 0.01}},
	})
	e := harness.StartExporter(t, "--broker.url="+url, "--control.interval=500ms", "--celery.queues=unused")

	// The truth, from Celery's own client, once every task was accepted.
	var queues, stats map[string]any
	deadline := time.Now().Add(brokerScrapeTimeout)
	for {
		queues = harness.InspectJSON(t, url, "active_queues")
		stats = harness.InspectJSON(t, url, "stats")
		if len(queues) == 3 && len(stats) == 3 && acceptedTotal(stats) == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("celery inspect did not show 3 workers with %d accepted tasks: queues %v, stats %v", len(ids), queues, stats)
		}
		time.Sleep(300 * time.Millisecond)
	}
	var wantInfo []string
	wantConsumers := map[string]float64{"unused": 0}
	wantProcesses := map[string]float64{"unused": 0}
	for node, list := range queues {
		st := stats[node].(map[string]any)
		pool := st["pool"].(map[string]any)
		// The exporter's rule: pool processes (prefork, solo), else max-concurrency (threads).
		procs := pool["max-concurrency"].(float64)
		if p, ok := pool["processes"].([]any); ok {
			procs = float64(len(p))
		}
		for _, q := range list.([]any) {
			name := q.(map[string]any)["name"].(string)
			wantInfo = append(wantInfo, node+" "+name)
			wantConsumers[name]++
			wantProcesses[name] += procs
		}
	}
	sort.Strings(wantInfo)

	m := e.WaitFor(t, brokerScrapeTimeout, func(m harness.Metrics) bool {
		return reflect.DeepEqual(queueInfo(m), wantInfo) && m.Sum("celery_worker_tasks_accepted_total", nil) == float64(len(ids))
	})
	for q, n := range wantConsumers {
		l := map[string]string{"queue_name": q}
		expectSeries(t, m, "celery_queue_consumers", l, n)
		expectSeries(t, m, "celery_active_worker_count", l, n)
		expectSeries(t, m, "celery_active_process_count", l, wantProcesses[q])
	}
	for node, s := range stats {
		st := s.(map[string]any)
		h := map[string]string{"hostname": node}
		expectSeries(t, m, "celery_worker_ping_ok", h, 1)
		expectSeries(t, m, "celery_worker_pool_max_concurrency", h, st["pool"].(map[string]any)["max-concurrency"].(float64))
		expectSeries(t, m, "celery_worker_prefetch_messages", h, st["prefetch_count"].(float64))
		for name, n := range st["total"].(map[string]any) {
			expectSeries(t, m, "celery_worker_tasks_accepted_total", map[string]string{"hostname": node, "name": name}, n.(float64))
		}
		if up, ok := m.Value("celery_worker_uptime_seconds", h); !ok || up < 0 || up > st["uptime"].(float64)+60 {
			t.Errorf("celery_worker_uptime_seconds%v = %v, %v; stats said %v", h, up, ok, st["uptime"])
		}
		ru := st["rusage"].(map[string]any)
		// Linux: maxrss is KiB.
		expectBetween(t, m, "celery_worker_max_rss_bytes", h, ru["maxrss"].(float64)*1024, 1.5)
		expectBetween(t, m, "celery_worker_cpu_seconds_total", map[string]string{"hostname": node, "mode": "user"}, ru["utime"].(float64), 3)
	}
	if got := m.Type("celery_worker_cpu_seconds_total"); got != "counter" {
		t.Errorf("celery_worker_cpu_seconds_total is a %q, want counter", got)
	}
}

// expectBetween checks a value that moves between two reads (memory, CPU): within a factor of
// the reference, and positive.
func expectBetween(t *testing.T, m harness.Metrics, name string, labels map[string]string, ref, factor float64) {
	t.Helper()
	got, ok := m.Value(name, labels)
	if !ok || got <= 0 || got < ref/factor || got > ref*factor {
		t.Errorf("%s%v = %v (present %v); want about %v", name, labels, got, ok, ref)
	}
}

func acceptedTotal(stats map[string]any) int {
	n := 0
	for _, s := range stats {
		st, _ := s.(map[string]any)
		total, _ := st["total"].(map[string]any)
		for _, v := range total {
			f, _ := v.(float64)
			n += int(f)
		}
	}
	return n
}

func queueInfo(m harness.Metrics) []string {
	var out []string
	for _, s := range m.Series("celery_worker_queue_info") {
		out = append(out, s["hostname"]+" "+s["queue_name"])
	}
	sort.Strings(out)
	return out
}

// aliveWorkers is a model in which the given workers heartbeat (for an hour: the rounds expect
// them to answer).
func aliveWorkers(names ...string) *state.Model {
	m := collector.NewModel(state.Options{WorkerTimeout: time.Hour})
	for _, h := range names {
		m.Workers.Apply(&event.Event{Type: event.WorkerHeartbeat, Hostname: h}, time.Now(), time.Time{})
	}
	return m
}

// TestControlThousandRounds runs a thousand remote-control rounds (ping, active_queues, stats, active)
// against real workers of each pool. Every round ends as soon as each worker answered every call,
// so the thousand rounds take seconds. The workers must still be alive and answering, and nothing
// may be left in Redis.
func TestControlThousandRounds(t *testing.T) {
	r := harness.StartRedis(t)
	url := r.URL(0)
	ws := harness.StartWorkers(t,
		harness.WorkerOptions{BrokerURL: url, Pool: "prefork", Concurrency: 1},
		harness.WorkerOptions{BrokerURL: url, Pool: "threads", Concurrency: 2},
		harness.WorkerOptions{BrokerURL: url, Pool: "solo"},
	)
	var names []string
	for _, w := range ws {
		names = append(names, w.NodeName)
	}
	b, err := kombu.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opts := kombu.DefaultOptions()
	client, err := b.NewClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c := collector.NewControlSource(log.NewNopLogger(), client, kombu.NewKeyspace(b, opts),
		collector.ControlOptions{Timeout: 2 * time.Second, Deadline: 10 * time.Second}, aliveWorkers(names...))

	const rounds = 1000
	start := time.Now()
	for i := 0; i < rounds; i++ {
		if err := c.Round(context.Background()); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if i%100 == 99 {
			if missing := notAnswering(t, c, names); len(missing) > 0 {
				t.Fatalf("round %d: %v did not answer ping", i, missing)
			}
		}
	}
	t.Logf("%d rounds of ping+active_queues+stats+active to %d workers in %v", rounds, len(ws), time.Since(start))

	for _, w := range ws {
		if w.Exited() {
			t.Errorf("worker %s died:\n%s", w.NodeName, w.Log())
		}
		if strings.Contains(w.Log(), "Unrecoverable error") || strings.Contains(w.Log(), "Traceback") {
			t.Errorf("worker %s logged an error:\n%s", w.NodeName, w.Log())
		}
	}
	// Every round removed its binding and reply list.
	for _, cmd := range [][]string{{"SCARD", "_kombu.binding.reply.celery.pidbox"}, {"EVAL", "return #redis.call('keys', '*reply.celery.pidbox*')", "0"}} {
		if got, err := r.Do(cmd...); err != nil || got != ":0" {
			t.Errorf("%v = %q, %v; want :0 (leftovers of the rounds)", cmd, got, err)
		}
	}
	// Celery's own client still gets an answer from everyone.
	pong := harness.InspectJSON(t, url, "ping")
	for _, n := range names {
		if fmt.Sprint(pong[n]) != "map[ok:pong]" {
			t.Errorf("celery inspect ping: %s answered %v", n, pong[n])
		}
	}
}

func notAnswering(t *testing.T, s collector.Scraper, names []string) []string {
	t.Helper()
	text, err := testutil.CollectAndFormat(collector.AsCollector(s), expfmt.TypeTextPlain, "celery_worker_ping_ok")
	if err != nil {
		t.Fatal(err)
	}
	m, err := harness.ParseMetrics(text)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, n := range names {
		if v, ok := m.Value("celery_worker_ping_ok", map[string]string{"hostname": n}); !ok || v != 1 {
			missing = append(missing, n)
		}
	}
	return missing
}

// TestControlEnableEvents starts a worker with task events off, and checks that task events come
// from it once the exporter runs with --celery.enable-events (and not before).
func TestControlEnableEvents(t *testing.T) {
	r := harness.StartRedis(t)
	url := r.URL(0)
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "prefork", Concurrency: 1,
		Env: []string{"CELERY_TASK_EVENTS=0"}})
	rec := harness.RecordRedis(t, r, 0)

	before := harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{1, 1}}})
	// Without task events, completion shows in stats.total only.
	deadline := time.Now().Add(brokerScrapeTimeout)
	for acceptedTotal(harness.InspectJSON(t, url, "stats")) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the first task never ran")
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second) // would-be events of the first task arrive by now
	for _, ev := range rec.Task(before[0]) {
		if ev.Hostname == w.NodeName {
			t.Fatalf("worker sent %s with task events off: the test cannot show anything", ev.Str("type"))
		}
	}

	e := harness.StartExporter(t, "--broker.url="+url, "--celery.enable-events", "--control.interval=500ms")
	e.WaitFor(t, brokerScrapeTimeout, func(m harness.Metrics) bool {
		v, ok := m.Value("celery_worker_ping_ok", map[string]string{"hostname": w.NodeName})
		return ok && v == 1
	})
	after := harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{2, 2}}})
	rec.WaitFor(t, brokerScrapeTimeout, "task-succeeded from the worker", func(rec *harness.Recorder) bool {
		for _, ev := range rec.Task(after[0]) {
			if ev.Hostname == w.NodeName && ev.Str("type") == "task-succeeded" {
				return true
			}
		}
		return false
	})
}

// aclLines reads the ACL SETUSER lines of docs/redis-acl.md, by user name.
func aclLines(t *testing.T) map[string][]string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(harness.ModuleRoot(t), "docs", "redis-acl.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "ACL SETUSER ") {
			f := strings.Fields(line)
			out[f[2]] = f
		}
	}
	return out
}

// TestControlRedisACL creates the users of docs/redis-acl.md in a real redis-server, runs the
// exporter with each (and a real worker), and checks that every source works and Redis denied
// nothing (ACL LOG).
func TestControlRedisACL(t *testing.T) {
	besideTheDemo(t)
	users := aclLines(t)
	tests := []struct {
		user    string
		flags   []string
		control bool
	}{
		{user: "celery-exporter-ro", flags: []string{"--control.disabled"}},
		{user: "celery-exporter", control: true},
		{user: "celery-exporter-7", control: true},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			line, ok := users[tt.user]
			if !ok {
				t.Fatalf("docs/redis-acl.md has no ACL SETUSER line for %s", tt.user)
			}
			r := harness.StartRedis(t)
			if got, err := r.Do(line...); err != nil || got != "+OK" {
				t.Fatalf("%s: %q, %v", strings.Join(line, " "), got, err)
			}
			url := r.URL(0)
			w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "threads", Concurrency: 1, Queues: []string{"celery"}})
			harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{1, 2}, Queue: "waiting"}})
			if _, err := r.Do("HSET", "unacked", "tag-1", `[{"body": "", "headers": {}, "properties": {}}, "", "waiting"]`); err != nil {
				t.Fatal(err)
			}

			userURL := fmt.Sprintf("redis://%s:CHANGE-ME@%s/0", tt.user, r.Addr())
			args := append([]string{"--broker.url=" + userURL, "--control.interval=500ms", "--control.timeout=300ms",
				"--broker.unacked-scan-limit=100", "--celery.enable-events"}, tt.flags...)
			e := harness.StartExporter(t, args...)
			m := e.WaitFor(t, brokerScrapeTimeout, func(m harness.Metrics) bool {
				up, _ := m.Value("celery_worker_up", map[string]string{"hostname": w.NodeName})
				sub, _ := m.Value("celery_exporter_subscription_up", nil)
				ready := up == 1 && sub == 1 && m.Has("celery_queue_unacked")
				if tt.control {
					ping, _ := m.Value("celery_worker_ping_ok", map[string]string{"hostname": w.NodeName})
					ready = ready && ping == 1
				}
				return ready
			})
			expectSeries(t, m, "celery_up", nil, 1)
			expectSeries(t, m, "celery_queue_length", map[string]string{"queue_name": "waiting"}, 1)
			expectSeries(t, m, "celery_queue_unacked", map[string]string{"queue_name": "waiting"}, 1)
			for _, s := range m.Samples("celery_exporter_collector_success") {
				if s.Value != 1 {
					t.Errorf("source %v failed with the ACL user", s.Labels)
				}
			}
			if tt.control {
				expectSeries(t, m, "celery_worker_queue_info", map[string]string{"hostname": w.NodeName, "queue_name": "celery"}, 1)
			} else if m.Has("celery_worker_ping_ok") {
				t.Error("read-only mode reports remote-control metrics")
			}
			if err := e.Stop(); err != nil {
				t.Error(err)
			}
			if denied := aclLog(t, r); len(denied) > 0 {
				t.Errorf("Redis denied the exporter: %v", denied)
			}
			if strings.Contains(e.Log(), "NOPERM") {
				t.Errorf("the exporter logged NOPERM:\n%s", e.Log())
			}
		})
	}
}

// aclLog returns the entries of ACL LOG as "reason object" strings.
func aclLog(t *testing.T, r *harness.Redis) []string {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), Protocol: 2, DisableIdentity: true})
	defer rdb.Close()
	entries, err := rdb.Do(context.Background(), "ACL", "LOG").Slice()
	if err != nil {
		t.Fatalf("ACL LOG: %v", err)
	}
	var out []string
	for _, e := range entries {
		kv, _ := e.([]any)
		fields := map[string]any{}
		for i := 0; i+1 < len(kv); i += 2 {
			fields[fmt.Sprint(kv[i])] = kv[i+1]
		}
		out = append(out, fmt.Sprintf("%v %v by %v", fields["reason"], fields["object"], fields["username"]))
	}
	return out
}

// TestControlPingOKShowsSilentWorker runs a worker that heartbeats but never answers remote
// control (worker_enable_remote_control=False: the same picture as a worker stuck after a Redis
// restart) next to a normal one: celery_worker_up is 1 for both, celery_worker_ping_ok only for the
// normal one.
func TestControlPingOKShowsSilentWorker(t *testing.T) {
	r := harness.StartRedis(t)
	url := r.URL(0)
	ws := harness.StartWorkers(t,
		harness.WorkerOptions{BrokerURL: url, Pool: "solo", NodeName: "celery@answers"},
		harness.WorkerOptions{BrokerURL: url, Pool: "solo", NodeName: "celery@silent", Queues: []string{"silent"},
			ExtraArgs: []string{"--", "worker.enable_remote_control=False"}},
	)
	e := harness.StartExporter(t, "--broker.url="+url, "--control.interval=300ms", "--control.timeout=200ms")
	answers := map[string]string{"hostname": ws[0].NodeName}
	silent := map[string]string{"hostname": ws[1].NodeName}
	var m harness.Metrics
	for stable := 0; stable < 3; {
		m = e.WaitFor(t, brokerScrapeTimeout, func(m harness.Metrics) bool {
			u1, _ := m.Value("celery_worker_up", answers)
			u2, _ := m.Value("celery_worker_up", silent)
			p1, _ := m.Value("celery_worker_ping_ok", answers)
			p2, ok := m.Value("celery_worker_ping_ok", silent)
			return u1 == 1 && u2 == 1 && p1 == 1 && ok && p2 == 0
		})
		stable++
		time.Sleep(400 * time.Millisecond) // another round
	}
	if got := queueInfo(m); !reflect.DeepEqual(got, []string{"celery@answers celery"}) {
		t.Errorf("queue info = %q, want only the answering worker's", got)
	}
	// Celery's own client agrees: the silent worker does not answer.
	pong := harness.InspectJSON(t, url, "ping")
	if _, ok := pong[ws[1].NodeName]; ok || len(pong) != 1 {
		t.Errorf("celery inspect ping = %v, want only %s", pong, ws[0].NodeName)
	}
}

// TestControlRoundOnTheWire watches one round with MONITOR, on DB 3, with a real worker: the
// exporter's commands come in Celery's order (reply binding first, requests to /3.celery.pidbox,
// replies read, binding and list removed), and the worker replies through that binding.
func TestControlRoundOnTheWire(t *testing.T) {
	r := harness.StartRedis(t)
	url := r.URL(3)
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "solo"})

	var mu sync.Mutex
	ours := map[string]bool{} // local addresses of the exporter's connections
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), DB: 3, Protocol: 2, DisableIdentity: true,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				mu.Lock()
				ours[c.LocalAddr().String()] = true
				mu.Unlock()
			}
			return c, err
		}})
	defer rdb.Close()
	b, err := kombu.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := collector.NewControlSource(nil, rdb, kombu.NewKeyspace(b, kombu.DefaultOptions()),
		collector.ControlOptions{Timeout: 2 * time.Second}, aliveWorkers(w.NodeName))
	mon := startMonitor(t, r.Addr())
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	entries := mon.stopEntries(t)

	var seq []string
	var mine []monitorEntry
	type at struct {
		i int
		e monitorEntry
	}
	var theirs []at
	for i, e := range entries {
		mu.Lock()
		isOurs := ours[e.client]
		mu.Unlock()
		if !isOurs {
			theirs = append(theirs, at{i, e})
			continue
		}
		if e.name == "select" || e.name == "hello" {
			continue
		}
		mine = append(mine, e)
		if len(seq) == 0 || seq[len(seq)-1] != e.name || e.name != "brpop" {
			seq = append(seq, e.name)
		}
	}
	if got, want := strings.Join(seq, " "), "sadd publish publish publish publish brpop srem del"; got != want {
		t.Fatalf("exporter's commands (repeated brpop folded) = %q, want %q", got, want)
	}
	sadd := regexp.MustCompile(`^"sadd" "_kombu\.binding\.reply\.celery\.pidbox" "([0-9a-f-]{36})\\x06\\x16\\x06\\x16([0-9a-f-]{36})\.reply\.celery\.pidbox"$`).
		FindStringSubmatch(monitorArgs(mine[0].line))
	if sadd == nil || sadd[1] != sadd[2] {
		t.Fatalf("SADD = %s", mine[0].line)
	}
	oid := sadd[1]
	for _, p := range mine[1:5] {
		if !strings.HasPrefix(monitorArgs(p.line), `"publish" "/3.celery.pidbox" "{`) {
			t.Errorf("PUBLISH = %.120s, want to /3.celery.pidbox", p.line)
		}
	}
	q := oid + ".reply.celery.pidbox"
	wantKeys := fmt.Sprintf(`"%s" "%s\x06\x163" "%s\x06\x166" "%s\x06\x169"`, q, q, q, q)
	for _, e := range mine {
		if e.name == "brpop" && !strings.HasPrefix(monitorArgs(e.line), `"brpop" `+wantKeys+` "`) {
			t.Errorf("BRPOP = %s, want the four priority lists of %s", e.line, q)
		}
	}
	if got, want := monitorArgs(mine[len(mine)-2].line), strings.Replace(monitorArgs(mine[0].line), `"sadd"`, `"srem"`, 1); got != want {
		t.Errorf("SREM = %s, want %s", got, want)
	}
	if got, want := monitorArgs(mine[len(mine)-1].line), `"del" `+wantKeys; got != want {
		t.Errorf("DEL = %s, want %s", got, want)
	}
	// The worker looked the binding up and pushed one reply per call, after the binding was added
	// and before it was removed. (redis-py sends upper-case names.)
	saddAt, sremAt := -1, -1
	for i, e := range entries {
		if e.name == "sadd" && e.line == mine[0].line {
			saddAt = i
		}
		if e.name == "srem" && e.line != "" && monitorArgs(e.line) == monitorArgs(mine[len(mine)-2].line) {
			sremAt = i
		}
	}
	lpush, lookups := 0, 0
	for _, x := range theirs {
		args := monitorArgs(x.e.line)
		switch {
		case strings.HasPrefix(args, `"SMEMBERS" "_kombu.binding.reply.celery.pidbox"`):
			lookups++
		case strings.HasPrefix(args, `"LPUSH" "`+q+`"`):
			lpush++
			if x.i < saddAt || x.i > sremAt {
				t.Errorf("reply pushed outside the round (at %d, binding %d-%d)", x.i, saddAt, sremAt)
			}
		}
	}
	if lpush != 4 || lookups < 4 {
		t.Errorf("the worker looked the binding up %d times and pushed %d replies to %s; want 4 and 4 (ping, active_queues, stats, active)", lookups, lpush, q)
	}
}

// monitorArgs is the quoted command and arguments of a MONITOR line.
func monitorArgs(line string) string {
	_, rest, _ := strings.Cut(line, "] ")
	return rest
}
