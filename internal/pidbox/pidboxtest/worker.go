package pidboxtest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
)

// Handler answers one command; ok=false sends no reply (a stuck or unaware worker).
type Handler func(method string, args map[string]any) (result any, ok bool)

// Request is a request as the worker received it.
type Request struct {
	Body map[string]any // the decoded body (method, arguments, ticket, reply_to, ...)
}

// Worker is one fake worker.
type Worker struct {
	Hostname string
	Handler  Handler
	// Delay is waited before each reply.
	Delay time.Duration

	rdb      redis.UniversalClient
	ks       kombu.Keyspace
	exchange string
	mu       sync.Mutex
	requests []Request
	cancel   context.CancelFunc
	done     chan struct{}
}

// Start subscribes a fake worker to the pidbox of the control exchange and serves until the test
// ends. It returns once the subscription is active.
func Start(t testing.TB, rdb redis.UniversalClient, ks kombu.Keyspace, controlExchange, hostname string, h Handler) *Worker {
	t.Helper()
	w := &Worker{Hostname: hostname, Handler: h, rdb: rdb, ks: ks, exchange: controlExchange, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	ps := rdb.PSubscribe(ctx, ks.FanoutChannels(kombu.PidboxExchange(controlExchange))...)
	if _, err := ps.Receive(ctx); err != nil {
		cancel()
		t.Fatalf("fake worker %s: psubscribe: %v", hostname, err)
	}
	go w.serve(ctx, ps)
	t.Cleanup(w.Stop)
	return w
}

// Stop ends the worker.
func (w *Worker) Stop() {
	w.cancel()
	<-w.done
}

// Requests returns the requests received so far.
func (w *Worker) Requests() []Request {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Request(nil), w.requests...)
}

func (w *Worker) serve(ctx context.Context, ps *redis.PubSub) {
	defer close(w.done)
	defer ps.Close()
	ch := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			w.handle(ctx, []byte(m.Payload))
		}
	}
}

func (w *Worker) handle(ctx context.Context, payload []byte) {
	msg, err := kombu.ParseMessage(payload)
	if err != nil {
		return
	}
	if msg.Properties.DeliveryTag == "" {
		// kombu's virtual Message raises KeyError('delivery_tag'): a real worker dies here.
		return
	}
	var body map[string]any
	if err := json.Unmarshal(msg.Body, &body); err != nil {
		return
	}
	w.mu.Lock()
	w.requests = append(w.requests, Request{Body: body})
	w.mu.Unlock()
	if dest, ok := body["destination"].([]any); ok && len(dest) > 0 && !slices.Contains(dest, any(w.Hostname)) {
		return
	}
	method, _ := body["method"].(string)
	args, _ := body["arguments"].(map[string]any)
	result, ok := w.Handler(method, args)
	ticket, _ := body["ticket"].(string)
	rt, _ := body["reply_to"].(map[string]any)
	if !ok || ticket == "" || rt == nil {
		return
	}
	if w.Delay > 0 {
		time.Sleep(w.Delay)
	}
	exchange, _ := rt["exchange"].(string)
	rk, _ := rt["routing_key"].(string)
	replyBody, err := json.Marshal(map[string]any{w.Hostname: result})
	if err != nil {
		return
	}
	reply, err := kombu.NewMessage(replyBody, exchange, rk, map[string]any{"ticket": ticket, "clock": 7})
	if err != nil {
		return
	}
	// A direct exchange on Redis: the bound queues of routing key rk get the message.
	members, err := w.rdb.SMembers(ctx, w.ks.BindingKey(exchange)).Result()
	if err != nil {
		return
	}
	for _, m := range members {
		key, _, queue, ok := w.ks.ParseBindingMember(m)
		if ok && key == rk {
			w.rdb.LPush(ctx, w.ks.Key(queue), reply)
		}
	}
}

// Pong is a Handler for ping only.
func Pong(method string, _ map[string]any) (any, bool) {
	if method == "ping" {
		return map[string]string{"ok": "pong"}, true
	}
	return map[string]string{"error": fmt.Sprintf("KeyError('%s')", method)}, true
}
