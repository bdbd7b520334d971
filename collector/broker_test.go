package collector

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

func TestBrokerQueueLengths(t *testing.T) {
	custom := kombu.DefaultOptions()
	custom.GlobalKeyPrefix = "pfx:"
	custom.Sep = ":"
	custom.PrioritySteps = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	tests := []struct {
		name string
		opts kombu.Options
		// pushes: key (without prefix) -> messages
		pushes  map[string]int
		metrics []string
		want    string
	}{
		{
			name: "kombu defaults", opts: kombu.DefaultOptions(),
			pushes:  map[string]int{"celery": 2, "celery\x06\x163": 1, "celery\x06\x169": 4, "chat": 1},
			metrics: []string{"celery_queue_length", "celery_queue_priority_length", "celery_up"},
			want: `celery_queue_length{queue_name="celery"} 7
celery_queue_length{queue_name="chat"} 1
celery_queue_length{queue_name="dlq"} 0
celery_queue_length{queue_name="gone"} 0
celery_queue_priority_length{priority="0",queue_name="celery"} 2
celery_queue_priority_length{priority="0",queue_name="chat"} 1
celery_queue_priority_length{priority="0",queue_name="dlq"} 0
celery_queue_priority_length{priority="0",queue_name="gone"} 0
celery_queue_priority_length{priority="3",queue_name="celery"} 1
celery_queue_priority_length{priority="3",queue_name="chat"} 0
celery_queue_priority_length{priority="3",queue_name="dlq"} 0
celery_queue_priority_length{priority="3",queue_name="gone"} 0
celery_queue_priority_length{priority="6",queue_name="celery"} 0
celery_queue_priority_length{priority="6",queue_name="chat"} 0
celery_queue_priority_length{priority="6",queue_name="dlq"} 0
celery_queue_priority_length{priority="6",queue_name="gone"} 0
celery_queue_priority_length{priority="9",queue_name="celery"} 4
celery_queue_priority_length{priority="9",queue_name="chat"} 0
celery_queue_priority_length{priority="9",queue_name="dlq"} 0
celery_queue_priority_length{priority="9",queue_name="gone"} 0
celery_up{} 1
`,
		},
		{
			// Every queue has ten priority series here; the sums show that each list was found.
			name: "global_keyprefix, sep and ten steps", opts: custom,
			pushes:  map[string]int{"celery": 1, "celery:5": 3, "celery:9": 2},
			metrics: []string{"celery_queue_length", "celery_up"},
			want: `celery_queue_length{queue_name="celery"} 6
celery_queue_length{queue_name="chat"} 0
celery_queue_length{queue_name="dlq"} 0
celery_queue_length{queue_name="gone"} 0
celery_up{} 1
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newMiniBroker(t, tt.opts)
			p := tt.opts.GlobalKeyPrefix
			sep := tt.opts.Sep
			for key, n := range tt.pushes {
				for i := 0; i < n; i++ {
					b.mr.Lpush(p+key, taskMessage(t, fmt.Sprintf("%s-%d", key, i)))
				}
			}
			// Bindings as workers and clients leave them: task queues, plus the event and pidbox
			// exchanges whose "queues" are subscribers and reply lists.
			b.mr.SetAdd(p+"_kombu.binding.celery", "celery"+sep+sep+"celery")
			b.mr.SetAdd(p+"_kombu.binding.chat", "chat"+sep+sep+"chat")
			b.mr.SetAdd(p+"_kombu.binding.gone", "gone"+sep+sep+"gone")
			b.mr.SetAdd(p+"_kombu.binding.celeryev", "worker.#"+sep+sep+"celeryev.5f1d")
			b.mr.SetAdd(p+"_kombu.binding.celery.pidbox", sep+sep+"w1@h.celery.pidbox")
			b.mr.SetAdd(p+"_kombu.binding.reply.celery.pidbox", "oid"+sep+sep+"oid.reply.celery.pidbox")
			// Another app's keys in the same DB do not matter.
			b.mr.Set(p+"session:1", "x")

			s := NewBrokerScraper(log.NewNopLogger(), b.rdb, b.ks, BrokerOptions{StaticQueues: []string{"dlq"}}, emptyModel())
			got, err := collectText(t, s, tt.metrics...)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestBrokerCustomStepsPerPriority(t *testing.T) {
	o := kombu.DefaultOptions()
	o.PrioritySteps = []int{0, 5}
	b := newMiniBroker(t, o)
	b.mr.Lpush("q", taskMessage(t, "a"))
	b.mr.Lpush("q\x06\x165", taskMessage(t, "b"))
	b.mr.Lpush("q\x06\x165", taskMessage(t, "c"))
	s := NewBrokerScraper(nil, b.rdb, b.ks, BrokerOptions{StaticQueues: []string{"q"}}, emptyModel())
	got, err := collectText(t, s, "celery_queue_priority_length")
	if err != nil {
		t.Fatal(err)
	}
	want := `celery_queue_priority_length{priority="0",queue_name="q"} 1
celery_queue_priority_length{priority="5",queue_name="q"} 2
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestBrokerUnacked(t *testing.T) {
	tests := []struct {
		name  string
		limit int
		want  string
	}{
		{name: "whole hash", limit: 1000, want: `celery_broker_unacked_messages{} 6
celery_exporter_unacked_scan_truncated{} 0
celery_queue_unacked{queue_name="celery"} 3
celery_queue_unacked{queue_name="chat"} 2
celery_queue_unacked{queue_name="idle"} 0
`},
		{name: "scan disabled", limit: 0, want: `celery_broker_unacked_messages{} 6
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newMiniBroker(t, kombu.DefaultOptions())
			b.mr.SetAdd("_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
			b.mr.SetAdd("_kombu.binding.chat", "chat\x06\x16\x06\x16chat")
			// A topic-ish exchange whose routing key is not a queue name.
			b.mr.SetAdd("_kombu.binding.tasks", "tasks.important\x06\x16\x06\x16celery")
			b.mr.HSet("unacked", "t1", unackedEntry(t, "", "celery"))               // default exchange: rk = queue
			b.mr.HSet("unacked", "t2", unackedEntry(t, "", "celery"))               //
			b.mr.HSet("unacked", "t3", unackedEntry(t, "chat", "chat"))             // named direct exchange
			b.mr.HSet("unacked", "t4", unackedEntry(t, "chat", "chat"))             //
			b.mr.HSet("unacked", "t5", unackedEntry(t, "tasks", "tasks.important")) // resolved by binding
			b.mr.HSet("unacked", "t6", "garbage")                                   // counted by HLEN only
			s := NewBrokerScraper(nil, b.rdb, b.ks, BrokerOptions{StaticQueues: []string{"idle"}, UnackedScanLimit: tt.limit}, emptyModel())
			got, err := collectText(t, s, "celery_queue_unacked", "celery_broker_unacked_messages", "celery_exporter_unacked_scan_truncated")
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestBrokerUnackedScanIsBounded(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	for i := 0; i < 1500; i++ {
		b.mr.HSet("unacked", fmt.Sprintf("t%d", i), unackedEntry(t, "", "celery"))
	}
	s := NewBrokerScraper(nil, b.rdb, b.ks, BrokerOptions{StaticQueues: []string{"celery"}, UnackedScanLimit: 1000}, emptyModel())
	got, err := collectText(t, s, "celery_queue_unacked", "celery_broker_unacked_messages", "celery_exporter_unacked_scan_truncated")
	if err != nil {
		t.Fatal(err)
	}
	// COUNT is a hint (miniredis ignores it): the limit holds anyway.
	want := `celery_broker_unacked_messages{} 1500
celery_exporter_unacked_scan_truncated{} 1
celery_queue_unacked{queue_name="celery"} 1000
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestBrokerOldestMessageAge(t *testing.T) {
	now := time.Unix(1700000000, 0)
	b := newMiniBroker(t, kombu.DefaultOptions())
	// LPUSH adds at the head; the consuming end (index -1) holds the first pushed.
	b.mr.Lpush("celery", taskMessage(t, "old"))
	b.mr.Lpush("celery", taskMessage(t, "new"))
	// A lower-priority list whose waiting message is older still.
	b.mr.Lpush("celery\x06\x169", taskMessage(t, "starving"))
	// Sent time unknown (evicted, or no task-sent events): no series.
	b.mr.Lpush("unknown", taskMessage(t, "nobody-knows"))
	// Protocol 1: the id is in the body only.
	p1, _ := kombu.NewMessage([]byte(`{"id": "p1", "task": "tasks.add", "args": []}`), "", "v1", nil)
	b.mr.Lpush("v1", string(p1))
	// Producer clock ahead of ours: never negative.
	b.mr.Lpush("future", taskMessage(t, "future"))
	m := emptyModel()
	setSentAt(m, map[string]time.Time{
		"old": now.Add(-30 * time.Second), "new": now.Add(-time.Second),
		"starving": now.Add(-300 * time.Second), "p1": now.Add(-2500 * time.Millisecond),
		"future": now.Add(3 * time.Second),
	})
	s := NewBrokerScraper(nil, b.rdb, b.ks, BrokerOptions{StaticQueues: []string{"celery", "unknown", "v1", "future", "empty"}}, m).
		WithClock(clock.NewFake(now))
	got, err := collectText(t, s, "celery_queue_oldest_message_age_seconds")
	if err != nil {
		t.Fatal(err)
	}
	want := `celery_queue_oldest_message_age_seconds{queue_name="celery"} 300
celery_queue_oldest_message_age_seconds{queue_name="future"} 0
celery_queue_oldest_message_age_seconds{queue_name="v1"} 2.5
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestBrokerConsumersFromControl(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	b.mr.SetAdd("_kombu.binding.dlq", "dlq\x06\x16\x06\x16dlq")
	answered := state.QueueRound{At: t0, StaleAfter: time.Minute, Alive: []string{"w1", "w2"}, Known: []string{"w1", "w2"},
		Queues: map[string][]string{"w1": {"chat"}, "w2": {"chat"}}, Procs: map[string]int{"w1": 2, "w2": 4}}
	stale := answered
	stale.At = t0.Add(-2 * time.Minute)
	tests := []struct {
		name  string
		round *state.QueueRound // recorded by remote control, if any
		want  string
	}{
		{
			name:  "control answered",
			round: &answered,
			want: `celery_active_process_count{queue_name="chat"} 6
celery_active_process_count{queue_name="dlq"} 0
celery_active_worker_count{queue_name="chat"} 2
celery_active_worker_count{queue_name="dlq"} 0
celery_queue_consumers{queue_name="chat"} 2
celery_queue_consumers{queue_name="dlq"} 0
celery_queue_length{queue_name="chat"} 0
celery_queue_length{queue_name="dlq"} 0
`,
		},
		{
			// No round succeeded for StaleAfter: consumers are unknown, not 0. Its queues are gone too.
			name: "control failed", round: &stale,
			want: `celery_queue_length{queue_name="dlq"} 0
`,
		},
		{
			name: "no control (read-only mode)",
			want: `celery_queue_length{queue_name="dlq"} 0
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := emptyModel()
			if tt.round != nil {
				m.Queues.Record(*tt.round)
			}
			s := NewBrokerScraper(nil, b.rdb, b.ks, BrokerOptions{}, m)
			got, err := collectText(t, s, "celery_queue_consumers", "celery_active_worker_count", "celery_active_process_count", "celery_queue_length")
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestBrokerDown(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	b.mr.Lpush("celery", "x")
	s := NewBrokerScraper(nil, b.rdb, b.ks, BrokerOptions{StaticQueues: []string{"celery"}, UnackedScanLimit: 10}, emptyModel())
	for _, breakIt := range []func(){
		func() { b.mr.SetError("LOADING Redis is loading the dataset in memory") },
		func() { b.mr.SetError(""); b.mr.Close() },
	} {
		breakIt()
		got, err := collectText(t, s)
		if err == nil {
			t.Error("no error from a broken broker")
		}
		if got != "celery_up{} 0\n" {
			t.Errorf("got\n%s\nwant only celery_up 0", got)
		}
	}
}

func TestBrokerOddKeys(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	b.mr.Set("notalist", "x")                                           // a string where a queue would be
	b.mr.SetAdd("_kombu.binding.bad", "bad\xff\x06\x16\x06\x16bad\xff") // invalid UTF-8 queue name
	b.mr.SetAdd("_kombu.binding.bad", "no separator")
	b.mr.Set("_kombu.binding.str", "not a set")
	b.mr.HSet("unacked", "t1", `["x"]`)
	s := NewBrokerScraper(nil, b.rdb, b.ks, BrokerOptions{StaticQueues: []string{"notalist", "ok"}, UnackedScanLimit: 10}, emptyModel())
	got, err := collectText(t, s, "celery_queue_length", "celery_up")
	if err != nil {
		t.Fatal(err)
	}
	want := `celery_queue_length{queue_name="ok"} 0
celery_up{} 1
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestBrokerDiscoveryIsCached(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	clk := clock.NewFake(time.Unix(1700000000, 0))
	b.mr.SetAdd("_kombu.binding.a", "a\x06\x16\x06\x16a")
	s := NewBrokerScraper(nil, b.rdb, b.ks, BrokerOptions{}, emptyModel()).WithClock(clk)
	scrape := func() string {
		got, err := collectText(t, s, "celery_queue_length")
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	scrape()
	b.mr.SetAdd("_kombu.binding.b", "b\x06\x16\x06\x16b")
	b.mr.Lpush("a", "m")
	if got, want := scrape(), "celery_queue_length{queue_name=\"a\"} 1\n"; got != want {
		t.Errorf("within the discovery interval: got %q, want %q (depths live, names cached)", got, want)
	}
	clk.Add(31 * time.Second)
	if got, want := scrape(), "celery_queue_length{queue_name=\"a\"} 1\ncelery_queue_length{queue_name=\"b\"} 0\n"; got != want {
		t.Errorf("after the discovery interval: got %q, want %q", got, want)
	}
}

// roundTrips counts what the client sends to Redis: one per command, one per pipeline.
type roundTrips struct {
	mu    sync.Mutex
	trips []string
}

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n != "hello" && n != "select" {
			r.mu.Lock()
			r.trips = append(r.trips, n)
			r.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}
func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.mu.Lock()
		r.trips = append(r.trips, fmt.Sprintf("pipeline(%s×%d)", cmds[0].Name(), len(cmds)))
		r.mu.Unlock()
		return next(ctx, cmds)
	}
}

func TestBrokerRoundTripsDoNotGrowWithQueues(t *testing.T) {
	for _, n := range []int{1, 300} {
		b := newMiniBroker(t, kombu.DefaultOptions())
		rt := &roundTrips{}
		b.rdb.AddHook(rt)
		for i := 0; i < n; i++ {
			q := fmt.Sprintf("q%03d", i)
			b.mr.SetAdd("_kombu.binding."+q, q+"\x06\x16\x06\x16"+q)
		}
		s := NewBrokerScraper(nil, b.rdb, b.ks, BrokerOptions{UnackedScanLimit: 100}, emptyModel())
		if _, err := collectText(t, s); err != nil {
			t.Fatal(err)
		}
		// SCAN pages of 1000 keys; one pipeline of SMEMBERS; one of the depths (LLEN and LINDEX of 4
		// priority lists per queue, HLEN); one HSCAN.
		want := fmt.Sprintf("scan pipeline(smembers×%d) pipeline(llen×%d) hscan", n, n*8+1)
		if got := strings.Join(rt.trips, " "); got != want {
			t.Errorf("%d queues: round trips %q, want %q", n, got, want)
		}
	}
}

func TestBrokerContextDeadline(t *testing.T) {
	b := newMiniBroker(t, kombu.DefaultOptions())
	s := NewBrokerScraper(nil, b.rdb, b.ks, BrokerOptions{StaticQueues: []string{"celery"}}, emptyModel())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ch := make(chan prometheus.Metric, 100)
	err := s.Scrape(ctx, ch)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	close(ch)
	if n := len(ch); n != 1 {
		t.Errorf("%d metrics, want only celery_up", n)
	}
}
