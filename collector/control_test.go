package collector

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/pidbox"
	"github.com/celery-exporter/celery_exporter/internal/pidbox/pidboxtest"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

func TestControlRoundMetrics(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	pong := `{"ok": "pong"}`
	b.worker(t, "celery@a", replies(t, map[string]string{"ping": pong, "active_queues": queuesReply("celery", "chat"), "stats": preforkStats}))
	b.worker(t, "celery@b", replies(t, map[string]string{"ping": pong, "active_queues": queuesReply("chat"), "stats": threadsStats}))
	b.worker(t, "celery@mac", replies(t, map[string]string{"ping": pong, "active_queues": queuesReply("default"), "stats": macStats}))
	// Heartbeating but answering nothing (Celery 5.2 after a Redis restart).
	b.worker(t, "celery@stuck", func(string, map[string]any) (any, bool) { return nil, false })
	// Answers ping with an error: not a pong.
	b.worker(t, "celery@odd", replies(t, map[string]string{"ping": `{"error": "KeyError('ping')"}`, "active_queues": `{"error": "x"}`}))

	m, _ := newTestModel(state.Options{})
	setWorkers(m, []string{"celery@a", "celery@b", "celery@mac", "celery@stuck"},
		[]string{"celery@a", "celery@b", "celery@mac", "celery@stuck", "celery@gone"},
		map[string]string{"celery@mac": "Darwin", "celery@a": "Linux"})
	c := NewControlSource(log.NewNopLogger(), b.rdb, b.ks, ControlOptions{Timeout: 300 * time.Millisecond}, m)
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}

	want := `
# HELP celery_exporter_control_last_success_timestamp_seconds When the last successful remote-control round ended, in unix time.
# TYPE celery_exporter_control_last_success_timestamp_seconds gauge
celery_exporter_control_last_success_timestamp_seconds 1.79587946e+09
# HELP celery_worker_cpu_seconds_total CPU time of the worker's main process (stats.rusage utime/stime; pool children are not included).
# TYPE celery_worker_cpu_seconds_total counter
celery_worker_cpu_seconds_total{hostname="celery@a",mode="system"} 0.045023
celery_worker_cpu_seconds_total{hostname="celery@a",mode="user"} 0.163718
celery_worker_cpu_seconds_total{hostname="celery@mac",mode="system"} 0.5
celery_worker_cpu_seconds_total{hostname="celery@mac",mode="user"} 1.5
# HELP celery_worker_max_rss_bytes Peak resident set size of the worker's main process only (stats.rusage.maxrss: getrusage(RUSAGE_SELF) of the process that answers remote control). Prefork pool children are excluded, so this is not the worker's total memory.
# TYPE celery_worker_max_rss_bytes gauge
celery_worker_max_rss_bytes{hostname="celery@a"} 4.6641152e+07
celery_worker_max_rss_bytes{hostname="celery@mac"} 1.048576e+06
# HELP celery_worker_ping_ok Whether the worker answered the last remote-control ping (0 for a worker the event stream knows that did not: heartbeating but stuck, or gone).
# TYPE celery_worker_ping_ok gauge
celery_worker_ping_ok{hostname="celery@a"} 1
celery_worker_ping_ok{hostname="celery@b"} 1
celery_worker_ping_ok{hostname="celery@gone"} 0
celery_worker_ping_ok{hostname="celery@mac"} 1
celery_worker_ping_ok{hostname="celery@odd"} 0
celery_worker_ping_ok{hostname="celery@stuck"} 0
# HELP celery_worker_pool_max_concurrency The worker pool's maximum concurrency (stats.pool.max-concurrency).
# TYPE celery_worker_pool_max_concurrency gauge
celery_worker_pool_max_concurrency{hostname="celery@a"} 2
celery_worker_pool_max_concurrency{hostname="celery@b"} 4
celery_worker_pool_max_concurrency{hostname="celery@mac"} 1
# HELP celery_worker_prefetch_messages How many messages the worker may hold unacknowledged (stats.prefetch_count).
# TYPE celery_worker_prefetch_messages gauge
celery_worker_prefetch_messages{hostname="celery@a"} 8
celery_worker_prefetch_messages{hostname="celery@b"} 16
celery_worker_prefetch_messages{hostname="celery@mac"} 4
# HELP celery_worker_queue_info 1 for each queue a worker consumes, from its last active_queues reply.
# TYPE celery_worker_queue_info gauge
celery_worker_queue_info{hostname="celery@a",queue_name="celery"} 1
celery_worker_queue_info{hostname="celery@a",queue_name="chat"} 1
celery_worker_queue_info{hostname="celery@b",queue_name="chat"} 1
celery_worker_queue_info{hostname="celery@mac",queue_name="default"} 1
# HELP celery_worker_tasks_accepted_total Tasks the worker accepted since it started, per task name (stats.total; counts work without task events).
# TYPE celery_worker_tasks_accepted_total counter
celery_worker_tasks_accepted_total{hostname="celery@a",name="tasks.add"} 3
celery_worker_tasks_accepted_total{hostname="celery@a",name="tasks.boom"} 1
celery_worker_tasks_accepted_total{hostname="celery@mac",name="tasks.add"} 1
# HELP celery_worker_uptime_seconds The worker's uptime at the last remote-control round (stats.uptime).
# TYPE celery_worker_uptime_seconds gauge
celery_worker_uptime_seconds{hostname="celery@a"} 34
celery_worker_uptime_seconds{hostname="celery@b"} 7
celery_worker_uptime_seconds{hostname="celery@mac"} 9
`
	sc := &errCapturingCollector{s: c}
	if err := testutil.CollectAndCompare(sc, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if sc.err != nil {
		t.Errorf("scrape error: %v", sc.err)
	}

	if got, want := m.Queues.Names(), []string{"celery", "chat", "default"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Queues.Names() = %q, want %q", got, want)
	}
	use, ok := m.Queues.Consumers()
	wantUse := map[string]state.QueueUse{
		"celery":  {Workers: 1, Processes: 2},
		"chat":    {Workers: 2, Processes: 2 + 4},
		"default": {Workers: 1, Processes: 1},
	}
	if !ok || !reflect.DeepEqual(use, wantUse) {
		t.Errorf("Queues.Consumers() = %v, %v, want %v", use, ok, wantUse)
	}
	for host, want := range map[string]string{"celery@a": "", "celery@b": "chat", "celery@mac": "default", "celery@stuck": "", "nobody": ""} {
		got, ok := m.Queues.SingleQueue(host)
		if got != want || ok != (want != "") {
			t.Errorf("SingleQueue(%s) = %q, %v; want %q", host, got, ok, want)
		}
	}
}

func TestControlRoundEndsWhenAllAliveAnswered(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	b.worker(t, "celery@a", pidboxtest.Pong)
	m, _ := newTestModel(state.Options{})
	setWorkers(m, []string{"celery@a"}, []string{"celery@a"}, nil)
	// With a 5s idle timeout, only knowing who is alive ends the round early.
	c := NewControlSource(nil, b.rdb, b.ks, ControlOptions{Timeout: 5 * time.Second}, m)
	start := time.Now()
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("round took %v: it should end when every alive worker answered every call", d)
	}
}

func TestControlEnableEventsIsACastEveryRound(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	w := b.worker(t, "celery@a", pidboxtest.Pong)
	m, _ := newTestModel(state.Options{})
	setWorkers(m, []string{"celery@a"}, []string{"celery@a"}, nil)
	for _, enable := range []bool{false, true} {
		c := NewControlSource(nil, b.rdb, b.ks, ControlOptions{Timeout: 200 * time.Millisecond, EnableEvents: enable}, m)
		before := len(w.Requests())
		for i := 0; i < 2; i++ {
			if err := c.Round(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		want := "ping active_queues stats active ping active_queues stats active"
		if enable {
			want = "ping active_queues stats active enable_events(cast) ping active_queues stats active enable_events(cast)"
		}
		// A round ends when the replies are in; the worker may still be reading the last cast.
		wantN := len(strings.Fields(want))
		for deadline := time.Now().Add(3 * time.Second); len(w.Requests())-before < wantN && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		var methods []string
		for _, r := range w.Requests()[before:] {
			m := r.Body["method"].(string)
			if _, hasTicket := r.Body["ticket"]; !hasTicket {
				m += "(cast)"
			}
			methods = append(methods, m)
		}
		if got := strings.Join(methods, " "); got != want {
			t.Errorf("EnableEvents=%v: requests %q, want %q", enable, got, want)
		}
	}
}

// Health belongs to the source that failed: while rounds fail, control reports 0 and the answers of
// the last successful round are served for StaleAfter only; then the series derived from remote
// control (here, and the consumer counts of the broker source) go, under a failed control source.
func TestControlFailedRound(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	b.worker(t, "celery@a", replies(t, map[string]string{"ping": `{"ok":"pong"}`, "active_queues": queuesReply("chat")}))
	m, clk := newTestModel(state.Options{})
	setWorkers(m, []string{"celery@a"}, []string{"celery@a"}, nil)
	c := NewControlSource(nil, b.rdb, b.ks, ControlOptions{Timeout: 200 * time.Millisecond, Interval: 10 * time.Second}, m)
	const lastOK = "celery_exporter_control_last_success_timestamp_seconds"
	check := func(stage string, wantNames []string, wantErr bool, wantQueues []string) {
		t.Helper()
		got, err := collectText(t, c, "celery_worker_ping_ok", "celery_worker_queue_info", lastOK)
		var names []string
		for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
			if l != "" {
				names = append(names, l[:strings.IndexAny(l, "{ ")])
			}
		}
		if !reflect.DeepEqual(names, wantNames) || (err != nil) != wantErr {
			t.Errorf("%s: series %q, err %v; want %q, error %v", stage, names, err, wantNames, wantErr)
		}
		if q := m.Queues.Names(); !reflect.DeepEqual(q, wantQueues) {
			t.Errorf("%s: Queues.Names() = %q, want %q", stage, q, wantQueues)
		}
		if _, ok := m.Queues.Consumers(); ok != (wantQueues != nil) {
			t.Errorf("%s: Queues.Consumers() ok = %v", stage, ok)
		}
	}
	all := []string{lastOK, "celery_worker_ping_ok", "celery_worker_queue_info"}
	check("before any round", nil, true, nil)
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	check("after a round", all, false, []string{"chat"})

	b.mr.SetError("LOADING Redis is loading the dataset in memory")
	clk.Add(10 * time.Second)
	if err := c.Round(context.Background()); err == nil {
		t.Fatal("round against a failing server did not fail")
	}
	check("a failed round: the last answers are still served, control is failed", all, true, []string{"chat"})
	clk.Add(20 * time.Second) // 30 s after the last success: 3×Interval
	check("at StaleAfter", all, true, []string{"chat"})
	clk.Add(time.Second)
	check("past StaleAfter", []string{lastOK}, true, nil)
	// The queue of a worker is kept for event attribution through failed rounds.
	if q, ok := m.Queues.SingleQueue("celery@a"); q != "chat" || !ok {
		t.Errorf("SingleQueue after a failed round = %q, %v", q, ok)
	}
	b.mr.SetError("")
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	check("after recovery", all, false, []string{"chat"})
	if got, _ := collectText(t, c, lastOK); got != lastOK+"{} 1.795879491e+09\n" {
		t.Errorf("last success %q", got)
	}
}

func TestControlSingleQueueRetention(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	w := b.worker(t, "celery@a", replies(t, map[string]string{"active_queues": queuesReply("chat")}))
	m, _ := newTestModel(state.Options{})
	setWorkers(m, nil, []string{"celery@a"}, nil)
	c := NewControlSource(nil, b.rdb, b.ks, ControlOptions{Timeout: 150 * time.Millisecond}, m)
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.Stop() // it misses the next rounds
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	if q, ok := m.Queues.SingleQueue("celery@a"); q != "chat" || !ok {
		t.Errorf("known worker that missed a round: SingleQueue = %q, %v; want chat", q, ok)
	}
	setWorkers(m, nil, nil, nil) // purged by the event stream
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	if q, ok := m.Queues.SingleQueue("celery@a"); ok {
		t.Errorf("purged worker: SingleQueue = %q, want none", q)
	}
}

// A worker that misses one round's reply while it still heartbeats keeps consuming its queues for
// StaleAfter; one that stopped heartbeating does not.
func TestControlQueueConsumersThroughAMissedReply(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	a := b.worker(t, "celery@a", replies(t, map[string]string{"active_queues": queuesReply("chat"), "stats": preforkStats}))
	b.worker(t, "celery@b", replies(t, map[string]string{"active_queues": queuesReply("chat", "default"), "stats": threadsStats}))
	m, clk := newTestModel(state.Options{})
	c := NewControlSource(nil, b.rdb, b.ks, ControlOptions{Timeout: 150 * time.Millisecond, Interval: 10 * time.Second}, m)
	alive, known := []string{"celery@a", "celery@b"}, []string{"celery@a", "celery@b"}
	round := func() {
		t.Helper()
		setWorkers(m, alive, known, nil) // their heartbeats of the moment
		if err := c.Round(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	check := func(stage string, want map[string]state.QueueUse) {
		t.Helper()
		if got, ok := m.Queues.Consumers(); !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: Queues.Consumers() = %v, %v; want %v", stage, got, ok, want)
		}
	}
	both := map[string]state.QueueUse{"chat": {Workers: 2, Processes: 2 + 4}, "default": {Workers: 1, Processes: 4}}
	onlyB := map[string]state.QueueUse{"chat": {Workers: 1, Processes: 4}, "default": {Workers: 1, Processes: 4}}
	round()
	check("both answered", both)

	a.Stop() // celery@a heartbeats on but misses the next replies
	clk.Add(10 * time.Second)
	round()
	check("celery@a missed one reply", both)
	clk.Add(20 * time.Second) // its answer is 30 s old: StaleAfter
	round()
	check("celery@a's answer at StaleAfter", both)
	clk.Add(10 * time.Second)
	round()
	check("celery@a's answer past StaleAfter", onlyB)

	// A worker that stopped heartbeating loses its queues at the first missed reply.
	a2 := b.worker(t, "celery@a", replies(t, map[string]string{"active_queues": queuesReply("chat"), "stats": preforkStats}))
	clk.Add(10 * time.Second)
	round()
	check("celery@a answers again", both)
	a2.Stop()
	alive = []string{"celery@b"}
	clk.Add(10 * time.Second)
	round()
	check("celery@a is no longer heartbeating", onlyB)
}

// roundCounter is a ControlClient that counts rounds (one broadcast each) and cancels Run at the
// start of round stopAt, before that round sends anything: the rounds before it are whole, so
// what the worker received is exact and no late reply can outlive a round.
type roundCounter struct {
	ControlClient
	rounds atomic.Int32
	stopAt int32
	cancel context.CancelFunc
}

func (r *roundCounter) Broadcast(ctx context.Context, calls []pidbox.Call, o pidbox.Options) (pidbox.Result, error) {
	if r.rounds.Add(1) == r.stopAt {
		r.cancel()
		return pidbox.Result{}, ctx.Err()
	}
	return r.ControlClient.Broadcast(ctx, calls, o)
}

func TestControlRunRoundsUntilCancelled(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		stopAt   int32
	}{
		// A round at once, else Run would wait an hour for its first tick.
		{name: "first round at once", interval: time.Hour, stopAt: 1},
		// Then one per tick: four whole rounds take at least the three intervals between them.
		{name: "one round per interval", interval: 100 * time.Millisecond, stopAt: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newMiniBroker(t, kombu.DefaultOptions())
			w := b.worker(t, "celery@a", pidboxtest.Pong)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			m, _ := newTestModel(state.Options{})
			setWorkers(m, []string{"celery@a"}, []string{"celery@a"}, nil)
			dir := &roundCounter{ControlClient: pidbox.New(b.rdb, b.ks, kombu.DefaultControlExchange), stopAt: tt.stopAt, cancel: cancel}
			c := NewControlSourceWith(nil, dir, ControlOptions{Interval: tt.interval, Timeout: time.Second}, m)
			done := make(chan struct{})
			start := time.Now()
			go func() { c.Run(ctx); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("Run did not return: %d rounds started, want %d", dir.rounds.Load(), tt.stopAt)
			}
			whole := int(tt.stopAt - 1)
			if elapsed, least := time.Since(start), time.Duration(whole)*tt.interval; whole > 0 && elapsed < least {
				t.Errorf("%d rounds after %v: faster than one per %v", whole+1, elapsed, tt.interval)
			}
			if n := len(w.Requests()); n != 4*whole {
				t.Errorf("worker got %d requests, want %d (%d rounds of ping, active_queues, stats, active)", n, 4*whole, whole)
			}
			if keys := b.mr.Keys(); len(keys) != 0 {
				t.Errorf("keys left: %q", keys)
			}
		})
	}
}

func TestControlBadInput(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	// Invalid UTF-8 names, odd shapes: never a panic.
	b.worker(t, "bad\xffhost", replies(t, map[string]string{"ping": `{"ok":"pong"}`, "active_queues": queuesReply("ok")}))
	b.worker(t, "celery@weird", replies(t, map[string]string{
		"ping":          `"pong"`,
		"active_queues": `[{"name": 5}, "x", {"name": "q\u00ff"}]`,
		"stats":         `{"total": 5, "pool": [], "rusage": {"maxrss": "big"}, "uptime": "long"}`,
	}))
	c := NewControlSource(nil, b.rdb, b.ks, ControlOptions{Timeout: 200 * time.Millisecond}, emptyModel())
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Replies are JSON, whose decoder turns invalid UTF-8 into U+FFFD: the bad host stays valid. The
	// weird worker's ping is no pong, and neither its queues nor its stats say anything usable.
	got, err := collectText(t, c, "celery_worker_ping_ok", "celery_worker_queue_info")
	want := "celery_worker_ping_ok{hostname=\"bad\ufffdhost\"} 1\n" +
		"celery_worker_ping_ok{hostname=\"celery@weird\"} 0\n" +
		"celery_worker_queue_info{hostname=\"bad\ufffdhost\",queue_name=\"ok\"} 1\n"
	if got != want || err != nil {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
}

// A worker's reply cannot grow the exporter's memory or series without bound: task names per
// worker are capped keeping the first by name, queues keeping the first the worker listed.
func TestControlRepliesAreBounded(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	total := map[string]int{}
	for i := 0; i <= maxTaskNamesPerWorker; i++ {
		total[fmt.Sprintf("t%05d", i)] = 1
	}
	stats, _ := json.Marshal(map[string]any{"total": total})
	queues := make([]string, maxQueuesPerWorker+1)
	for i := range queues {
		queues[i] = fmt.Sprintf("q%05d", i)
	}
	b.worker(t, "celery@big", replies(t, map[string]string{"ping": `{"ok": "pong"}`, "active_queues": queuesReply(queues...), "stats": string(stats)}))
	// The round ends once the alive worker answered; the timeout only has to outlast a busy machine.
	m, _ := newTestModel(state.Options{})
	setWorkers(m, []string{"celery@big"}, []string{"celery@big"}, nil)
	c := NewControlSource(nil, b.rdb, b.ks, ControlOptions{Timeout: 10 * time.Second}, m)
	if err := c.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := collectText(t, c, "celery_worker_tasks_accepted_total", "celery_worker_queue_info")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if n, want := len(lines), maxTaskNamesPerWorker+maxQueuesPerWorker; n != want {
		t.Errorf("%d series, want %d", n, want)
	}
	for _, dropped := range []string{fmt.Sprintf(`name="t%05d"`, maxTaskNamesPerWorker), fmt.Sprintf(`queue_name="q%05d"`, maxQueuesPerWorker)} {
		if strings.Contains(got, dropped) {
			t.Errorf("%s is past the cap but reported", dropped)
		}
	}
}
