package pidbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
)

// Call is one command of a round.
type Call struct {
	Method string
	// Arguments are the command's keyword arguments; nil sends {}.
	Arguments map[string]any
	// Cast sends the command without asking for a reply (no ticket, no reply_to), as Celery's
	// control.broadcast(..., reply=False) does.
	Cast bool
}

// Options bound the collection of replies.
type Options struct {
	// Timeout is the idle timeout between two replies (Celery's `timeout`, default 1s).
	Timeout time.Duration
	// Deadline bounds the whole collection, however often replies trickle in (default 10×Timeout).
	Deadline time.Duration
	// Limit ends the collection once this many replies arrived (kombu's `limit`); 0: no limit.
	Limit int
	// Expect ends the collection once each of these workers answered every call that wants a
	// reply. Replies of other workers are still collected until then.
	Expect []string
	// Destination limits the request to these workers (Celery's `destination`); nil: all.
	Destination []string
	// MaxReplies bounds how many replies are kept; more are read and dropped (default 10000).
	MaxReplies int
}

// Reply is one worker's answer to one call.
type Reply struct {
	Method   string
	Hostname string
	// Result is the reply's JSON value, e.g. {"ok": "pong"}.
	Result json.RawMessage
}

// Result is what a round collected.
type Result struct {
	Replies []Reply
	// Malformed counts replies that could not be decoded; Foreign counts replies for tickets of no
	// call of this round (a late reply of an earlier client that used the same list); Dropped
	// counts replies read past Options.MaxReplies.
	Malformed, Foreign, Dropped int
}

// Client sends remote-control commands. It is safe for concurrent use; each round has its own oid.
type Client struct {
	rdb      redis.UniversalClient
	ks       kombu.Keyspace
	exchange string // control_exchange, "celery" by default
	clock    Clock
	now      func() time.Time
	newID    func() string
	// intSecond is set once the server refused a fractional BRPOP timeout (Redis < 6): whole
	// seconds from then on.
	intSecond atomic.Bool
}

// New returns a client for the control exchange (Celery's control_exchange setting, "celery").
func New(rdb redis.UniversalClient, ks kombu.Keyspace, controlExchange string) *Client {
	if controlExchange == "" {
		controlExchange = kombu.DefaultControlExchange
	}
	return &Client{rdb: rdb, ks: ks, exchange: controlExchange, now: time.Now, newID: kombu.NewUUID}
}

// request is the body kombu's Mailbox._publish sends, keys in its order.
type request struct {
	Method      string         `json:"method"`
	Arguments   map[string]any `json:"arguments"`
	Destination []string       `json:"destination"`
	Pattern     *string        `json:"pattern"`
	Matcher     *string        `json:"matcher"`
	Ticket      string         `json:"ticket,omitempty"`
	ReplyTo     *replyTo       `json:"reply_to,omitempty"`
}

type replyTo struct {
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routing_key"`
}

// Request is one encoded call: the JSON body and the headers kombu's Mailbox._publish sends.
type Request struct {
	Method  string
	Body    []byte
	Headers map[string]any
}

// Round is one broadcast, whatever the broker: the encoded requests, and the replies collected
// against their tickets. The transport publishes Requests, routes replies for OID to its reply
// queue and hands each reply's ticket and body to Add.
type Round struct {
	OID      string
	Requests []Request
	Options  Options

	tickets map[string]string          // ticket -> method
	pending map[string]map[string]bool // ticket -> expected hostnames not yet heard
	res     Result
	got     int
}

// NewRound encodes the calls of one round. replyExchange is where workers send replies (with OID
// as routing key); clock is the caller's Lamport clock.
func NewRound(calls []Call, o Options, replyExchange string, clock *Clock, now time.Time, newID func() string) (*Round, error) {
	o = withDefaults(o)
	r := &Round{OID: newID(), Options: o, tickets: map[string]string{}, pending: map[string]map[string]bool{}}
	expires := float64(now.Add(o.Timeout).UnixNano()) / 1e9
	for _, call := range calls {
		req := request{Method: call.Method, Arguments: call.Arguments, Destination: o.Destination}
		if req.Arguments == nil {
			req.Arguments = map[string]any{}
		}
		if !call.Cast {
			req.Ticket = newID()
			req.ReplyTo = &replyTo{Exchange: replyExchange, RoutingKey: r.OID}
			r.tickets[req.Ticket] = call.Method
		}
		body, err := json.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("pidbox: encode %s: %w", call.Method, err)
		}
		r.Requests = append(r.Requests, Request{Method: call.Method, Body: body,
			Headers: map[string]any{"clock": clock.Next(), "expires": expires}})
	}
	if len(o.Expect) > 0 {
		for t := range r.tickets {
			m := make(map[string]bool, len(o.Expect))
			for _, h := range o.Expect {
				m[h] = true
			}
			r.pending[t] = m
		}
	}
	return r, nil
}

// WantsReplies reports whether any call asked for a reply.
func (r *Round) WantsReplies() bool { return len(r.tickets) > 0 }

// Malformed counts a reply that could not be decoded.
func (r *Round) Malformed() { r.res.Malformed++ }

// Add takes one reply message (body {"<nodename>": <result>}) and reports whether the round is
// complete: the limit reached, or every expected worker answered every call.
func (r *Round) Add(ticket string, body []byte) (done bool) {
	method, ok := r.tickets[ticket]
	if !ok {
		r.res.Foreign++
		return false
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil || len(m) == 0 {
		r.res.Malformed++
		return false
	}
	for host, res := range m {
		if len(r.res.Replies) >= r.Options.MaxReplies {
			r.res.Dropped++
			continue
		}
		r.res.Replies = append(r.res.Replies, Reply{Method: method, Hostname: host, Result: res})
		if p := r.pending[ticket]; p != nil {
			delete(p, host)
		}
	}
	// kombu counts one message as one reply towards the limit.
	r.got++
	if r.Options.Limit > 0 && r.got >= r.Options.Limit {
		return true
	}
	return len(r.pending) > 0 && allHeard(r.pending)
}

// Result is what the round collected so far.
func (r *Round) Result() Result { return r.res }

// Clock is kombu's Lamport clock: every request carries the next value, and every clock seen in a
// reply moves it forward.
type Clock struct{ v atomic.Int64 }

// Next returns the clock's next value.
func (c *Clock) Next() int64 { return c.v.Add(1) }

// Adjust keeps the clock ahead of a clock seen, as kombu's clock.adjust does.
func (c *Clock) Adjust(other int64) {
	for {
		cur := c.v.Load()
		if other <= cur || c.v.CompareAndSwap(cur, other) {
			return
		}
	}
}

// Broadcast sends the calls in one round and collects the replies. The error is about Redis (or
// ctx); replies collected before it are returned with it.
func (c *Client) Broadcast(ctx context.Context, calls []Call, o Options) (Result, error) {
	r, err := NewRound(calls, o, kombu.ReplyExchange(c.exchange), &c.clock, c.now(), c.newID)
	if err != nil {
		return Result{}, err
	}
	replyQueue := kombu.ReplyQueue(r.OID, c.exchange)
	binding := c.ks.BindingMember(r.OID, "", replyQueue)
	bindingKey := c.ks.BindingKey(kombu.ReplyExchange(c.exchange))
	var replyKeys []string
	for _, pk := range c.ks.QueueKeys(replyQueue) {
		replyKeys = append(replyKeys, pk.Key)
	}

	msgs := make([][]byte, 0, len(r.Requests))
	for _, req := range r.Requests {
		msg, err := kombu.NewMessage(req.Body, kombu.PidboxExchange(c.exchange), "", req.Headers)
		if err != nil {
			return Result{}, fmt.Errorf("pidbox: envelope %s: %w", req.Method, err)
		}
		msgs = append(msgs, msg)
	}
	channels := c.ks.FanoutChannels(kombu.PidboxExchange(c.exchange))

	wantReplies := r.WantsReplies()
	if wantReplies {
		// Remove what this round created whatever happens next, with a context of its own: the
		// caller's may be the reason we stop.
		defer c.cleanup(bindingKey, binding, replyKeys)
	}

	// One round trip: pipelining keeps the order, so the binding exists before any request.
	pipe := c.rdb.Pipeline()
	if wantReplies {
		pipe.SAdd(ctx, bindingKey, binding)
	}
	for _, msg := range msgs {
		for _, ch := range channels {
			pipe.Publish(ctx, ch, msg)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return Result{}, fmt.Errorf("pidbox: publish: %w", err)
	}
	if !wantReplies {
		return Result{}, nil
	}
	return c.collect(ctx, replyKeys, r)
}

// Cast sends commands that want no reply (enable_events, heartbeat, ...).
func (c *Client) Cast(ctx context.Context, calls ...Call) error {
	casts := make([]Call, len(calls)) // not in place: calls may be the caller's slice
	for i, call := range calls {
		call.Cast = true
		casts[i] = call
	}
	_, err := c.Broadcast(ctx, casts, Options{})
	return err
}

func withDefaults(o Options) Options {
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.Deadline <= 0 {
		o.Deadline = 10 * o.Timeout
	}
	if o.MaxReplies <= 0 {
		o.MaxReplies = 10000
	}
	return o
}

// maxWait bounds a single BRPOP: go-redis reads with its ReadTimeout (3s by default) plus nothing
// for a plain Do, so a longer block would be cut as a network error. The idle timer is ours.
const maxWait = time.Second

func (c *Client) collect(ctx context.Context, keys []string, r *Round) (Result, error) {
	start := c.now()
	deadline := start.Add(r.Options.Deadline)
	idleUntil := start.Add(r.Options.Timeout)
	for {
		now := c.now()
		until := idleUntil
		if deadline.Before(until) {
			until = deadline
		}
		wait := until.Sub(now)
		if wait <= 0 {
			return r.Result(), nil
		}
		if err := ctx.Err(); err != nil {
			return r.Result(), fmt.Errorf("pidbox: collect: %w", err)
		}
		if wait > maxWait {
			wait = maxWait
		}
		val, err := c.brpop(ctx, keys, wait)
		if errors.Is(err, redis.Nil) {
			continue // the loop re-checks the idle timer and the deadline
		}
		if err != nil {
			return r.Result(), fmt.Errorf("pidbox: collect: %w", err)
		}
		idleUntil = c.now().Add(r.Options.Timeout)
		if c.decode(r, val) {
			return r.Result(), nil
		}
	}
}

func allHeard(pending map[string]map[string]bool) bool {
	for _, m := range pending {
		if len(m) > 0 {
			return false
		}
	}
	return true
}

// decode adds one reply message to the round and reports whether the round is complete.
func (c *Client) decode(r *Round, val []byte) bool {
	msg, err := kombu.ParseMessage(val)
	if err != nil {
		r.Malformed()
		return false
	}
	if clk, ok := ToInt(msg.Headers["clock"]); ok {
		c.clock.Adjust(clk)
	}
	return r.Add(msg.HeaderString("ticket"), msg.Body)
}

// ToInt reads an integer header as kombu may have encoded it (JSON number, string, or an AMQP
// table's integer types).
func ToInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case int32:
		return int64(x), true
	case int16:
		return int64(x), true
	case int8:
		return int64(x), true
	case int:
		return int64(x), true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case float64:
		if x >= 0 && x < math.MaxInt64 {
			return int64(x), true
		}
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		return n, err == nil
	}
	return 0, false
}

// brpop blocks for at most wait. go-redis's BRPop rounds timeouts down to whole seconds, so the
// command is sent by hand with a fractional timeout (Redis >= 6), falling back to whole seconds
// for older servers.
func (c *Client) brpop(ctx context.Context, keys []string, wait time.Duration) ([]byte, error) {
	intSecond := c.intSecond.Load()
	args := make([]any, 0, len(keys)+2)
	args = append(args, "brpop")
	for _, k := range keys {
		args = append(args, k)
	}
	if intSecond {
		args = append(args, int64(math.Ceil(wait.Seconds())))
	} else {
		args = append(args, strconv.FormatFloat(math.Ceil(wait.Seconds()*1000)/1000, 'f', -1, 64))
	}
	v, err := c.rdb.Do(ctx, args...).Slice()
	if err != nil {
		if !intSecond && strings.Contains(strings.ToLower(err.Error()), "timeout is not") {
			c.intSecond.Store(true)
			return nil, redis.Nil // retried by the caller's loop with whole seconds
		}
		return nil, err
	}
	// [key, value]
	if len(v) != 2 {
		return nil, fmt.Errorf("brpop: unexpected reply of %d elements", len(v))
	}
	s, ok := v[1].(string)
	if !ok {
		return nil, fmt.Errorf("brpop: unexpected value type %T", v[1])
	}
	return []byte(s), nil
}

// cleanupTimeout bounds the removal of a round's binding and list.
const cleanupTimeout = 5 * time.Second

func (c *Client) cleanup(bindingKey, binding string, replyKeys []string) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	// kombu's Channel._delete: SREM the binding, then DEL every priority list of the queue.
	pipe := c.rdb.Pipeline()
	pipe.SRem(ctx, bindingKey, binding)
	pipe.Del(ctx, replyKeys...)
	_, _ = pipe.Exec(ctx) // nothing to do about a failure here; the next round uses a new oid
}
