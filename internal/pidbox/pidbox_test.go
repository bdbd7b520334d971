package pidbox

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/pidbox/pidboxtest"
)

// recorder is a go-redis hook that keeps every command the client sends, pipelined or not.
type recorder struct {
	mu   sync.Mutex
	cmds [][]string
}

func (r *recorder) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *recorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.add(cmd)
		return next(ctx, cmd)
	}
}

func (r *recorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			r.add(c)
		}
		return next(ctx, cmds)
	}
}

func (r *recorder) add(cmd redis.Cmder) {
	switch cmd.Name() {
	case "hello", "select", "auth":
		return // connection setup, not part of the protocol
	}
	args := make([]string, len(cmd.Args()))
	for i, a := range cmd.Args() {
		if b, ok := a.([]byte); ok {
			args[i] = string(b)
			continue
		}
		args[i] = fmt.Sprint(a)
	}
	r.mu.Lock()
	r.cmds = append(r.cmds, args)
	r.mu.Unlock()
}

func (r *recorder) get() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]string(nil), r.cmds...)
}

type setup struct {
	mr     *miniredis.Miniredis
	rdb    *redis.Client // the client under test, recorded
	worker *redis.Client // the fake workers' own connection
	rec    *recorder
	ks     kombu.Keyspace
}

func newSetup(t *testing.T, db int, o kombu.Options) *setup {
	t.Helper()
	mr := miniredis.RunT(t)
	s := &setup{mr: mr, rec: &recorder{}}
	s.rdb = redis.NewClient(&redis.Options{Addr: mr.Addr(), DB: db, Protocol: 2, DisableIdentity: true})
	s.rdb.AddHook(s.rec)
	s.worker = redis.NewClient(&redis.Options{Addr: mr.Addr(), DB: db, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { s.rdb.Close(); s.worker.Close() })
	s.ks = kombu.NewKeyspace(&kombu.Broker{Scheme: "redis", Addrs: []string{mr.Addr()}, DB: db}, o)
	return s
}

// fixedIDs makes oids and tickets predictable: "id-1", "id-2", ...
func fixedIDs(c *Client) {
	n := 0
	var mu sync.Mutex
	c.newID = func() string {
		mu.Lock()
		defer mu.Unlock()
		n++
		return fmt.Sprintf("id-%d", n)
	}
}

func TestBroadcastCommandSequence(t *testing.T) {
	pfx := kombu.DefaultOptions()
	pfx.GlobalKeyPrefix = "pfx:"
	pfx.Sep = ":"
	tests := []struct {
		name    string
		db      int
		opts    kombu.Options
		channel string
		bindKey string
		member  string
		keys    []string
	}{
		{
			name: "defaults", db: 0, opts: kombu.DefaultOptions(),
			channel: "/0.celery.pidbox",
			bindKey: "_kombu.binding.reply.celery.pidbox",
			member:  "id-1\x06\x16\x06\x16id-1.reply.celery.pidbox",
			keys: []string{"id-1.reply.celery.pidbox", "id-1.reply.celery.pidbox\x06\x163",
				"id-1.reply.celery.pidbox\x06\x166", "id-1.reply.celery.pidbox\x06\x169"},
		},
		{
			name: "global_keyprefix and sep", db: 3, opts: pfx,
			channel: "pfx:/3.celery.pidbox",
			bindKey: "pfx:_kombu.binding.reply.celery.pidbox",
			member:  "id-1::id-1.reply.celery.pidbox",
			keys: []string{"pfx:id-1.reply.celery.pidbox", "pfx:id-1.reply.celery.pidbox:3",
				"pfx:id-1.reply.celery.pidbox:6", "pfx:id-1.reply.celery.pidbox:9"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSetup(t, tt.db, tt.opts)
			w := pidboxtest.Start(t, s.worker, s.ks, "celery", "w1@host", pidboxtest.Pong)
			c := New(s.rdb, s.ks, "celery")
			fixedIDs(c)
			c.now = func() time.Time { return time.Unix(1700000000, 0) }
			// The fixed clock never moves, so the collection ends on Expect, not on a timeout.
			res, err := c.Broadcast(context.Background(), []Call{{Method: "ping"}}, Options{Timeout: time.Second, Expect: []string{"w1@host"}})
			if err != nil {
				t.Fatal(err)
			}
			want := []Reply{{Method: "ping", Hostname: "w1@host", Result: json.RawMessage(`{"ok":"pong"}`)}}
			if !reflect.DeepEqual(res.Replies, want) {
				t.Fatalf("replies = %+v, want %+v", res.Replies, want)
			}

			cmds := s.rec.get()
			names := make([]string, len(cmds))
			for i, c := range cmds {
				names[i] = c[0]
			}
			if got, want := strings.Join(names, " "), "sadd publish brpop srem del"; got != want {
				t.Fatalf("commands = %q, want %q (%q)", got, want, cmds)
			}
			if want := []string{"sadd", tt.bindKey, tt.member}; !reflect.DeepEqual(cmds[0], want) {
				t.Errorf("SADD = %q, want %q", cmds[0], want)
			}
			if cmds[1][1] != tt.channel {
				t.Errorf("PUBLISH channel = %q, want %q", cmds[1][1], tt.channel)
			}
			if want := append(append([]string{"brpop"}, tt.keys...), "1"); !reflect.DeepEqual(cmds[2], want) {
				t.Errorf("BRPOP = %q, want %q", cmds[2], want)
			}
			if want := []string{"srem", tt.bindKey, tt.member}; !reflect.DeepEqual(cmds[3], want) {
				t.Errorf("SREM = %q, want %q", cmds[3], want)
			}
			if want := append([]string{"del"}, tt.keys...); !reflect.DeepEqual(cmds[4], want) {
				t.Errorf("DEL = %q, want %q", cmds[4], want)
			}

			// The envelope as the worker saw it.
			reqs := w.Requests()
			if len(reqs) != 1 {
				t.Fatalf("worker got %d requests, want 1", len(reqs))
			}
			var env map[string]any
			if err := json.Unmarshal([]byte(cmds[1][2]), &env); err != nil {
				t.Fatal(err)
			}
			props := env["properties"].(map[string]any)
			if tag, _ := props["delivery_tag"].(string); tag == "" {
				t.Errorf("no properties.delivery_tag: %v", props)
			}
			if props["body_encoding"] != "base64" || !reflect.DeepEqual(props["delivery_info"], map[string]any{"exchange": "celery.pidbox", "routing_key": ""}) {
				t.Errorf("properties = %v", props)
			}
			if !reflect.DeepEqual(env["headers"], map[string]any{"clock": 1.0, "expires": 1700000001.0}) {
				t.Errorf("headers = %v", env["headers"])
			}
			raw, _ := base64.StdEncoding.DecodeString(env["body"].(string))
			wantBody := `{"method":"ping","arguments":{},"destination":null,"pattern":null,"matcher":null,` +
				`"ticket":"id-2","reply_to":{"exchange":"reply.celery.pidbox","routing_key":"id-1"}}`
			if string(raw) != wantBody {
				t.Errorf("body = %s\nwant   %s", raw, wantBody)
			}

			// Nothing is left behind.
			if keys := s.mr.DB(tt.db).Keys(); len(keys) != 0 {
				t.Errorf("keys left in redis: %q", keys)
			}
		})
	}
}

func TestBroadcastSeveralMethodsAndWorkers(t *testing.T) {
	s := newSetup(t, 0, kombu.DefaultOptions())
	stats := func(method string, _ map[string]any) (any, bool) {
		switch method {
		case "ping":
			return map[string]string{"ok": "pong"}, true
		case "stats":
			return map[string]any{"uptime": 5}, true
		}
		return nil, false
	}
	pidboxtest.Start(t, s.worker, s.ks, "celery", "a@h", stats)
	pidboxtest.Start(t, s.worker, s.ks, "celery", "b@h", stats)
	// A stuck worker: it receives but never answers, as Celery 5.2 after a Redis restart.
	stuck := pidboxtest.Start(t, s.worker, s.ks, "celery", "stuck@h", func(string, map[string]any) (any, bool) { return nil, false })
	c := New(s.rdb, s.ks, "celery")

	start := time.Now()
	res, err := c.Broadcast(context.Background(), []Call{{Method: "ping"}, {Method: "stats"}, {Method: "enable_events", Cast: true}},
		Options{Timeout: 300 * time.Millisecond, Deadline: 5 * time.Second, Expect: []string{"a@h", "b@h", "stuck@h"}})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	got := map[string]string{}
	for _, r := range res.Replies {
		got[r.Method+" "+r.Hostname] = string(r.Result)
	}
	want := map[string]string{
		"ping a@h": `{"ok":"pong"}`, "ping b@h": `{"ok":"pong"}`,
		"stats a@h": `{"uptime":5}`, "stats b@h": `{"uptime":5}`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("replies = %v, want %v", got, want)
	}
	// The stuck worker is expected, so the round waits for the idle timeout, not longer.
	if elapsed < 300*time.Millisecond || elapsed > 3*time.Second {
		t.Errorf("round took %v, want about the 300ms idle timeout", elapsed)
	}
	// One round, one oid: every request that wants a reply names the same reply routing key, each
	// its own ticket; the cast has neither.
	reqs := stuck.Requests()
	if len(reqs) != 3 {
		t.Fatalf("worker got %d requests, want 3", len(reqs))
	}
	oids := map[any]bool{}
	tickets := map[any]bool{}
	for _, r := range reqs[:2] {
		oids[r.Body["reply_to"].(map[string]any)["routing_key"]] = true
		tickets[r.Body["ticket"]] = true
	}
	if len(oids) != 1 || len(tickets) != 2 {
		t.Errorf("oids %v tickets %v: want one oid, two tickets", oids, tickets)
	}
	if _, ok := reqs[2].Body["ticket"]; ok || reqs[2].Body["method"] != "enable_events" {
		t.Errorf("cast = %v, want enable_events without ticket", reqs[2].Body)
	}
	if _, ok := reqs[2].Body["reply_to"]; ok {
		t.Errorf("cast has reply_to: %v", reqs[2].Body)
	}
	if keys := s.mr.Keys(); len(keys) != 0 {
		t.Errorf("keys left in redis: %q", keys)
	}
}

func TestCastSendsNoBindingAndReadsNothing(t *testing.T) {
	s := newSetup(t, 0, kombu.DefaultOptions())
	w := pidboxtest.Start(t, s.worker, s.ks, "celery", "a@h", pidboxtest.Pong)
	c := New(s.rdb, s.ks, "celery")
	if err := c.Cast(context.Background(), Call{Method: "enable_events"}); err != nil {
		t.Fatal(err)
	}
	cmds := s.rec.get()
	if len(cmds) != 1 || cmds[0][0] != "publish" || cmds[0][1] != "/0.celery.pidbox" {
		t.Errorf("commands = %q, want one PUBLISH to /0.celery.pidbox", cmds)
	}
	waitFor(t, func() bool { return len(w.Requests()) == 1 })
}

func TestBroadcastLimitEndsEarly(t *testing.T) {
	s := newSetup(t, 0, kombu.DefaultOptions())
	pidboxtest.Start(t, s.worker, s.ks, "celery", "a@h", pidboxtest.Pong)
	c := New(s.rdb, s.ks, "celery")
	start := time.Now()
	res, err := c.Broadcast(context.Background(), []Call{{Method: "ping"}}, Options{Timeout: 5 * time.Second, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replies) != 1 || time.Since(start) > 2*time.Second {
		t.Errorf("got %d replies after %v, want 1 at once", len(res.Replies), time.Since(start))
	}
}

func TestBroadcastDeadlineBoundsTrickle(t *testing.T) {
	s := newSetup(t, 0, kombu.DefaultOptions())
	c := New(s.rdb, s.ks, "celery")
	fixedIDs(c) // oid id-1
	// Foreign replies trickle in faster than the idle timeout: only the deadline ends the round.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		foreign, _ := kombu.NewMessage([]byte(`{"x@h": {"ok": "pong"}}`), "reply.celery.pidbox", "id-1", map[string]any{"ticket": "other"})
		for {
			select {
			case <-stop:
				return
			case <-time.After(40 * time.Millisecond):
				s.worker.LPush(context.Background(), "id-1.reply.celery.pidbox", foreign)
			}
		}
	}()
	start := time.Now()
	res, err := c.Broadcast(context.Background(), []Call{{Method: "ping"}}, Options{Timeout: 200 * time.Millisecond, Deadline: 600 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if elapsed < 550*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("round took %v, want the 600ms deadline", elapsed)
	}
	if res.Foreign < 5 || len(res.Replies) != 0 {
		t.Errorf("foreign = %d, replies = %d: want many foreign replies and no reply", res.Foreign, len(res.Replies))
	}
}

func TestBroadcastCleansUpOnCancelAndError(t *testing.T) {
	s := newSetup(t, 0, kombu.DefaultOptions())
	c := New(s.rdb, s.ks, "celery")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(150 * time.Millisecond)
		cancel()
	}()
	_, err := c.Broadcast(ctx, []Call{{Method: "ping"}}, Options{Timeout: 10 * time.Second})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if keys := s.mr.Keys(); len(keys) != 0 {
		t.Errorf("keys left after cancel: %q", keys)
	}
	cmds := s.rec.get()
	if last := cmds[len(cmds)-1]; last[0] != "del" || cmds[len(cmds)-2][0] != "srem" {
		t.Errorf("last commands = %q, want srem, del", cmds[len(cmds)-2:])
	}

	// The server refuses the reply list read after the binding was added: the binding still goes.
	s.rdb.AddHook(failBRPOP{err: errors.New("NOPERM this user has no permissions to run the 'brpop' command")})
	_, err = c.Broadcast(context.Background(), []Call{{Method: "ping"}}, Options{Timeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("err = %v, want the BRPOP's NOPERM", err)
	}
	var names []string
	for _, cmd := range s.rec.get()[len(cmds):] {
		names = append(names, cmd[0])
	}
	if got, want := strings.Join(names, " "), "sadd publish brpop srem del"; got != want {
		t.Errorf("commands of the failed round = %q, want %q", got, want)
	}
	if keys := s.mr.Keys(); len(keys) != 0 {
		t.Errorf("keys left after a failed read: %q", keys)
	}
}

// failBRPOP is a go-redis hook that fails every BRPOP whose arguments reject says no to (all when
// reject is nil) with err, as a server would, without sending it.
type failBRPOP struct {
	err    error
	reject func(args []any) bool
}

func (f failBRPOP) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f failBRPOP) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "brpop" && (f.reject == nil || f.reject(cmd.Args())) {
			cmd.SetErr(f.err)
			return f.err
		}
		return next(ctx, cmd)
	}
}
func (f failBRPOP) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A server before Redis 6 refuses a fractional BRPOP timeout: the client retries at once with
// whole seconds, and keeps to them.
func TestBroadcastWholeSecondsForOldRedis(t *testing.T) {
	s := newSetup(t, 0, kombu.DefaultOptions())
	s.rdb.AddHook(failBRPOP{
		err: errors.New("ERR timeout is not an integer or out of range"),
		reject: func(args []any) bool {
			return strings.Contains(fmt.Sprint(args[len(args)-1]), ".")
		},
	})
	c := New(s.rdb, s.ks, "celery")
	for round := 0; round < 2; round++ {
		if _, err := c.Broadcast(context.Background(), []Call{{Method: "ping"}}, Options{Timeout: 100 * time.Millisecond}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	var timeouts []string
	for _, cmd := range s.rec.get() {
		if cmd[0] == "brpop" {
			timeouts = append(timeouts, cmd[len(cmd)-1])
		}
	}
	if got, want := strings.Join(timeouts, " "), "0.1 1 1"; got != want {
		t.Errorf("BRPOP timeouts = %q, want %q (refused, then whole seconds in every round)", got, want)
	}
}

func TestBroadcastMalformedAndForeignReplies(t *testing.T) {
	s := newSetup(t, 0, kombu.DefaultOptions())
	c := New(s.rdb, s.ks, "celery")
	fixedIDs(c) // oid id-1, ticket id-2
	good, _ := kombu.NewMessage([]byte(`{"a@h": {"ok": "pong"}}`), "reply.celery.pidbox", "id-1", map[string]any{"ticket": "id-2", "clock": 41})
	list, _ := kombu.NewMessage([]byte(`[1, 2]`), "reply.celery.pidbox", "id-1", map[string]any{"ticket": "id-2"})
	foreign, _ := kombu.NewMessage([]byte(`{"b@h": {"ok": "pong"}}`), "reply.celery.pidbox", "id-1", map[string]any{"ticket": "nope"})
	// Queued before the round: BRPOP takes from the right, so this order is the reading order.
	for _, v := range []string{string(good), "not json", string(list), string(foreign)} {
		s.mr.Lpush("id-1.reply.celery.pidbox", v)
	}
	res, err := c.Broadcast(context.Background(), []Call{{Method: "ping"}}, Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replies) != 1 || res.Replies[0].Hostname != "a@h" || res.Malformed != 2 || res.Foreign != 1 {
		t.Errorf("result = %+v, want 1 reply from a@h, 2 malformed, 1 foreign", res)
	}
	// The Lamport clock moved past the reply's.
	if got := c.clock.v.Load(); got != 41 {
		t.Errorf("clock = %d, want 41", got)
	}
}

func TestBroadcastMaxRepliesBoundsWhatIsKept(t *testing.T) {
	s := newSetup(t, 0, kombu.DefaultOptions())
	c := New(s.rdb, s.ks, "celery")
	fixedIDs(c) // oid id-1, ticket id-2
	// One reply message may name several workers; each counts against MaxReplies.
	two, _ := kombu.NewMessage([]byte(`{"a@h": {"ok": "pong"}, "b@h": {"ok": "pong"}}`), "reply.celery.pidbox", "id-1", map[string]any{"ticket": "id-2"})
	one, _ := kombu.NewMessage([]byte(`{"c@h": {"ok": "pong"}}`), "reply.celery.pidbox", "id-1", map[string]any{"ticket": "id-2"})
	s.mr.Lpush("id-1.reply.celery.pidbox", string(two))
	s.mr.Lpush("id-1.reply.celery.pidbox", string(one))
	res, err := c.Broadcast(context.Background(), []Call{{Method: "ping"}}, Options{Timeout: 100 * time.Millisecond, MaxReplies: 2})
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, r := range res.Replies {
		hosts = append(hosts, r.Hostname)
	}
	sort.Strings(hosts)
	if got := strings.Join(hosts, " "); got != "a@h b@h" || res.Dropped != 1 {
		t.Errorf("kept %q, dropped %d; want a@h b@h kept, 1 dropped", got, res.Dropped)
	}
}

// Destination names the workers in the request, and only those answer (Celery's -d).
func TestBroadcastDestination(t *testing.T) {
	s := newSetup(t, 0, kombu.DefaultOptions())
	a := pidboxtest.Start(t, s.worker, s.ks, "celery", "a@h", pidboxtest.Pong)
	pidboxtest.Start(t, s.worker, s.ks, "celery", "b@h", pidboxtest.Pong)
	c := New(s.rdb, s.ks, "celery")
	res, err := c.Broadcast(context.Background(), []Call{{Method: "ping"}}, Options{Timeout: 200 * time.Millisecond, Destination: []string{"a@h"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replies) != 1 || res.Replies[0].Hostname != "a@h" {
		t.Errorf("replies = %+v, want a@h's only", res.Replies)
	}
	if got := a.Requests()[0].Body["destination"]; !reflect.DeepEqual(got, []any{"a@h"}) {
		t.Errorf("destination = %v, want [a@h]", got)
	}
}

func TestCastLeavesTheCallersCallsAlone(t *testing.T) {
	s := newSetup(t, 0, kombu.DefaultOptions())
	c := New(s.rdb, s.ks, "celery")
	calls := []Call{{Method: "enable_events"}}
	if err := c.Cast(context.Background(), calls...); err != nil {
		t.Fatal(err)
	}
	if calls[0].Cast {
		t.Error("Cast changed the caller's Call")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
