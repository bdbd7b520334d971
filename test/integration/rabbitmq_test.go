package integration

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// amqpChannel opens a channel on the broker as a test client (not the exporter).
func amqpChannel(t *testing.T, url string) *amqp.Channel {
	t.Helper()
	if strings.HasSuffix(url, "//") {
		url = strings.TrimSuffix(url, "/") + "%2F"
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// rabbitVhost skips in -short mode, and gives a vhost of the test's own on the shared server.
func rabbitVhost(t *testing.T) (r *harness.RabbitMQ, vhost, url string) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: real rabbitmq-server, Celery workers and the exporter binary")
	}
	harness.RequirePython(t, "celery")
	r = harness.SharedRabbitMQ(t)
	vhost = r.Vhost(t)
	return r, vhost, r.URL(vhost)
}

// queueSamples is what /metrics must say of the queues, from the server's own list_queues.
func queueSamples(list map[string]harness.QueueInfo, names ...string) []harness.Sample {
	var out []harness.Sample
	for _, n := range names {
		q := list[n] // a missing queue reads 0
		out = append(out,
			harness.Sample{Name: "celery_queue_length", Labels: map[string]string{"queue_name": n}, Value: float64(q.Ready)},
			harness.Sample{Name: "celery_queue_consumers", Labels: map[string]string{"queue_name": n}, Value: float64(q.Consumers)})
	}
	return out
}

// TestRabbitMQQueueState: depths and consumers of a consumed queue, a queue nobody consumes, a
// priority queue and a queue that does not exist equal the server's own list_queues; consumers
// equal what `celery inspect active_queues` says; the missing queue is never created.
func TestRabbitMQQueueState(t *testing.T) {
	r, vh, url := rabbitVhost(t)

	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "solo", Queues: []string{"work"}, NodeName: "solo@queues",
		Events: true, HeartbeatInterval: heartbeat})
	// A priority queue as Celery declares one with x-max-priority, holding messages of several
	// priorities; RabbitMQ reports one depth for all of them.
	ch := amqpChannel(t, url)
	if _, err := ch.QueueDeclare("prio", true, false, false, false, amqp.Table{"x-max-priority": int32(10)}); err != nil {
		t.Fatal(err)
	}
	for i, p := range []uint8{0, 3, 9, 9, 5} {
		if err := ch.Publish("", "prio", false, false, amqp.Publishing{Priority: p, Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	// Tasks for a queue nobody consumes (Celery declares it on publish), and one for the worker.
	harness.Produce(t, url, nil, []harness.Send{
		{Task: "add", Args: []any{1, 1}, Queue: "nobody"}, {Task: "add", Args: []any{2, 2}, Queue: "nobody"},
		{Task: "add", Args: []any{3, 3}, Queue: "nobody"}, {Task: "add", Args: []any{4, 4}, Queue: "work"},
	})
	names := []string{"missing", "nobody", "prio", "work"}
	// A failover list as Celery takes it: the first broker refuses connections, the second works.
	dead := strings.Replace(url, fmt.Sprintf(":%d/", r.Port), fmt.Sprintf(":%d/", harness.FreePort(t)), 1)
	exp := harness.StartExporter(t, "--broker.url="+dead+";"+url, "--celery.queues=missing,nobody,prio", "--control.interval=1s")
	exp.WaitReady(t, 30*time.Second)

	var list map[string]harness.QueueInfo
	agreeWith(t, exp, 30*time.Second, func(harness.Metrics) []harness.Sample {
		list = r.ListQueues(t, vh)
		return queueSamples(list, names...)
	}, "celery_queue_length", "celery_queue_consumers")
	if list["nobody"].Ready != 3 || list["prio"].Ready != 5 || list["work"].Consumers != 1 {
		t.Errorf("list_queues = %v: the test did not set up 3 waiting tasks, 5 prioritised messages and 1 consumer", list)
	}
	if _, ok := list["missing"]; ok {
		t.Errorf("the queue %q exists: the exporter must never create a queue", "missing")
	}

	// Consumers as the workers themselves say.
	aq := harness.InspectJSON(t, url, "active_queues")
	consumers := map[string]int{}
	for _, qs := range aq {
		for _, q := range qs.([]any) {
			consumers[q.(map[string]any)["name"].(string)]++
		}
	}
	m := exp.MustScrape(t)
	for _, n := range names {
		if v, _ := m.Value("celery_queue_consumers", map[string]string{"queue_name": n}); int(v) != consumers[n] {
			t.Errorf("celery_queue_consumers{queue_name=%q} = %v, celery inspect active_queues says %d", n, v, consumers[n])
		}
		if v, _ := m.Value("celery_active_worker_count", map[string]string{"queue_name": n}); int(v) != consumers[n] {
			t.Errorf("celery_active_worker_count{queue_name=%q} = %v, celery inspect active_queues says %d", n, v, consumers[n])
		}
	}
	if v, ok := m.Value("celery_up", nil); !ok || v != 1 {
		t.Errorf("celery_up = %v, want 1", v)
	}
	// Remote control over the pidbox exchanges: ping and stats answered.
	if v, _ := m.Value("celery_worker_ping_ok", map[string]string{"hostname": w.NodeName}); v != 1 {
		t.Errorf("celery_worker_ping_ok{hostname=%q} = %v, want 1", w.NodeName, v)
	}
	if _, ok := m.Value("celery_worker_pool_max_concurrency", map[string]string{"hostname": w.NodeName}); !ok {
		t.Errorf("no celery_worker_pool_max_concurrency for %s: no stats reply", w.NodeName)
	}
	// Metrics only a Redis broker has are not invented.
	for _, name := range []string{"celery_queue_priority_length", "celery_broker_unacked_messages", "celery_exporter_unacked_scan_truncated"} {
		if m.Has(name) {
			t.Errorf("%s is exported on AMQP: %v", name, m.Samples(name))
		}
	}
}

// TestRabbitMQBrokerRestart: the broker restarts under the exporter; the event consumer comes
// back (counted once, logged once) and the task counters continue from where they were: equal to
// what the wire carried before plus after.
func TestRabbitMQBrokerRestart(t *testing.T) {
	r, _, url := rabbitVhost(t)
	before := harness.RecordAMQP(t, url)
	exp := harness.StartExporter(t, "--broker.url="+url, "--control.interval=2s")
	exp.WaitReady(t, 30*time.Second)
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "solo", Queues: []string{"celery"},
		NodeName: "solo@restart", Events: true, HeartbeatInterval: heartbeat})

	ids := harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{1, 2}}, {Task: "fail", Args: []any{"x"}}})
	before.WaitFinished(t, 60*time.Second, ids...)
	before.WaitQuiet(t, "task-", time.Second, 30*time.Second)
	agree(t, exp, 15*time.Second, harness.WithZeroSeries(before.ExpectedTaskCounters("celery"), harness.DefaultInitialExceptions...), taskCounters...)

	// While the broker is away /-/ready says so, as on Redis.
	restart := time.Now()
	stop := make(chan struct{})
	var sawNotReady atomic.Bool
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if code, _, err := exp.Get("/-/ready"); err == nil && code == 503 {
				sawNotReady.Store(true)
			}
		}
	}()
	r.Restart(t)
	close(stop)
	<-polled
	if !sawNotReady.Load() {
		t.Error("/-/ready never answered 503 during the broker restart")
	}
	after := harness.RecordAMQP(t, url)
	// The exporter and the worker reconnect by themselves; the gap is timed as on Redis.
	m := exp.WaitFor(t, 60*time.Second, func(m harness.Metrics) bool {
		up, _ := m.Value("celery_exporter_subscription_up", nil)
		n, _ := m.Value("celery_exporter_subscription_reconnects_total", nil)
		return up == 1 && n == 1
	})
	if down, _ := m.Value("celery_exporter_subscription_down_seconds_total", nil); down <= 0 || down > time.Since(restart).Seconds() {
		t.Errorf("celery_exporter_subscription_down_seconds_total = %v after a restart of %v", down, time.Since(restart))
	}
	for _, name := range []string{"celery_exporter_event_buffer_messages", "celery_exporter_event_buffer_bytes"} {
		if !m.Has(name) {
			t.Errorf("no %s on AMQP", name)
		}
	}
	after.WaitFor(t, 60*time.Second, "a heartbeat of the worker after the restart", func(rec *harness.Recorder) bool {
		_, ok := rec.LastHeartbeat(w.NodeName)
		return ok
	})
	ids = harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{3, 4}}, {Task: "add", Args: []any{5, 6}}})
	after.WaitFinished(t, 60*time.Second, ids...)
	after.WaitQuiet(t, "task-", time.Second, 30*time.Second)

	want := harness.WithZeroSeries(sumSamples(before.ExpectedTaskCounters("celery"), after.ExpectedTaskCounters("celery")), harness.DefaultInitialExceptions...)
	agree(t, exp, 15*time.Second, want, taskCounters...)
	if n := strings.Count(exp.Log(), "event consumer lost"); n != 1 {
		t.Errorf("the outage was logged %d times, want once:\n%s", n, harness.Tail(exp.Log(), 30))
	}
}

// sumSamples adds samples of the same series.
func sumSamples(sets ...[]harness.Sample) []harness.Sample {
	byKey := map[string]*harness.Sample{}
	var keys []string
	for _, set := range sets {
		for _, s := range set {
			k := harness.Sample{Name: s.Name, Labels: s.Labels}.String()
			if p, ok := byKey[k]; ok {
				p.Value += s.Value
				continue
			}
			c := s
			byKey[k] = &c
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	out := make([]harness.Sample, 0, len(keys))
	for _, k := range keys {
		out = append(out, *byKey[k])
	}
	return out
}

// TestRabbitMQReadOnly: with --control.disabled the exporter declares nothing on the broker but
// its own event queue and binding, as the server itself lists them before, during and after.
func TestRabbitMQReadOnly(t *testing.T) {
	r, vh, url := rabbitVhost(t)
	harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "solo", NodeName: "solo@readonly", Events: true, HeartbeatInterval: heartbeat})
	harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{1, 1}, Queue: "waiting"}})

	view := func() (queues, exchanges, bindings []string) {
		return r.Table(t, "list_queues", "-p", vh, "name", "durable", "auto_delete", "arguments"),
			r.Table(t, "list_exchanges", "-p", vh, "name", "type", "durable", "auto_delete"),
			r.Table(t, "list_bindings", "-p", vh, "source_name", "destination_name", "routing_key")
	}
	q0, e0, b0 := view()

	exp := harness.StartExporter(t, "--broker.url="+url, "--control.disabled", "--celery.queues=waiting,missing")
	exp.WaitReady(t, 30*time.Second)
	m := exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		v, _ := m.Value("celery_queue_length", map[string]string{"queue_name": "waiting"})
		up, _ := workerUp(m, "solo@readonly")
		return v == 1 && up == 1
	})
	_ = m
	q1, e1, b1 := view()
	if !slices.Equal(e0, e1) {
		t.Errorf("exchanges changed:\nbefore %q\nduring %q", e0, e1)
	}
	added := func(before, during []string) []string {
		var out []string
		for _, x := range during {
			if !slices.Contains(before, x) {
				out = append(out, x)
			}
		}
		return out
	}
	newQ, newB := added(q0, q1), added(b0, b1)
	if len(newQ) != 1 || !strings.HasPrefix(newQ[0], "celeryev.") ||
		!strings.Contains(newQ[0], "\tfalse\ttrue\t") || !strings.Contains(newQ[0], "x-expires") || !strings.Contains(newQ[0], "x-message-ttl") {
		t.Errorf("queues added = %q, want only the exporter's celeryev.<uuid> (not durable, auto-delete, x-expires, x-message-ttl)", newQ)
	}
	// Every queue has the default exchange's implicit binding (source ""), which nobody declares.
	var explicit []string
	for _, b := range newB {
		if !strings.HasPrefix(b, "\t") {
			explicit = append(explicit, b)
		}
	}
	if len(explicit) != 1 || !strings.HasPrefix(explicit[0], "celeryev\tceleryev.") || !strings.HasSuffix(explicit[0], "\t#") {
		t.Errorf("bindings added = %q, want only celeryev → the exporter's queue with #", newB)
	}
	if len(added(q1, q0)) != 0 || len(added(b1, b0)) != 0 {
		t.Errorf("queues or bindings removed: %q %q", added(q1, q0), added(b1, b0))
	}
	// The exporter leaves: its queue goes with it (auto-delete).
	if err := exp.Stop(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		q2, _, _ := view()
		if slices.Equal(q0, q2) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the exporter stopped, queues = %q, want %q", q2, q0)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestRabbitMQManagementAPI: with --broker.management-url the ready/unacked split of a busy
// queue equals the server's list_queues, every task queue of the vhost is found without being
// named, and the exporter's own event queue and the workers' mailboxes are not reported.
func TestRabbitMQManagementAPI(t *testing.T) {
	r, vh, url := rabbitVhost(t)
	// One solo worker prefetches 4 (prefetch multiplier 4): one task runs, three wait reserved,
	// the rest stay ready; the sleeps keep that state still while it is compared.
	harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "solo", Concurrency: 1, Queues: []string{"busy"}, NodeName: "solo@mgmt",
		Events: true, HeartbeatInterval: heartbeat})
	var plan []harness.Send
	for range 6 {
		plan = append(plan, harness.Send{Task: "sleep", Args: []any{120}, Queue: "busy"})
	}
	plan = append(plan, harness.Send{Task: "add", Args: []any{1, 1}, Queue: "nobody"})
	harness.Produce(t, url, nil, plan)

	exp := harness.StartExporter(t, "--broker.url="+url, "--broker.management-url="+r.MgmtURL(), "--control.disabled")
	exp.WaitReady(t, 30*time.Second)
	var list map[string]harness.QueueInfo
	agreeWith(t, exp, 60*time.Second, func(harness.Metrics) []harness.Sample {
		list = r.ListQueues(t, vh)
		var want []harness.Sample
		for _, n := range []string{"busy", "nobody"} {
			q := list[n]
			l := map[string]string{"queue_name": n}
			want = append(want,
				harness.Sample{Name: "celery_queue_length", Labels: l, Value: float64(q.Ready)},
				harness.Sample{Name: "celery_queue_unacked", Labels: l, Value: float64(q.Unacked)},
				harness.Sample{Name: "celery_queue_consumers", Labels: l, Value: float64(q.Consumers)})
		}
		return want
	}, "celery_queue_length", "celery_queue_unacked", "celery_queue_consumers")
	if q := list["busy"]; q.Ready != 2 || q.Unacked != 4 {
		t.Errorf("list_queues busy = %+v: the test did not set up 2 ready and 4 unacked", q)
	}
	m := exp.MustScrape(t)
	for name := range list {
		if strings.HasPrefix(name, "celeryev.") || strings.HasSuffix(name, ".pidbox") {
			if _, ok := m.Value("celery_queue_length", map[string]string{"queue_name": name}); ok {
				t.Errorf("%s is reported as a task queue", name)
			}
		}
	}
}
