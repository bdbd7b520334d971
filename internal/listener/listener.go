package listener

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/redis/go-redis/v9"
)

// Subscriber PSUBSCRIBEs to patterns and sends every message payload to Out.
type Subscriber struct {
	client   redis.UniversalClient
	patterns []string
	logger   log.Logger
	out      chan string
	buf      *buffer

	// MinBackoff and MaxBackoff bound the wait between reconnection attempts. MaxBackoff is low:
	// every second without the subscription loses the events published in it (Redis pub/sub
	// keeps nothing), so a broker back after a long outage must be found again within seconds.
	MinBackoff, MaxBackoff time.Duration
	// IdleCheck is how long a silent connection waits before a PING proves it alive.
	IdleCheck time.Duration

	up         atomic.Bool
	ready      atomic.Bool
	reconnects atomic.Uint64
	dropped    atomic.Uint64
	received   atomic.Uint64

	downMu    sync.Mutex
	downSince time.Time     // zero while subscribed or before the first subscription
	downTotal time.Duration // closed gaps since the first subscription
}

// New returns a Subscriber with a hand-off buffer of at most size payloads and maxBytes bytes
// (maxBytes <= 0: no byte bound).
func New(logger log.Logger, client redis.UniversalClient, patterns []string, size, maxBytes int) *Subscriber {
	return &Subscriber{
		client: client, patterns: patterns, logger: logger, out: make(chan string), buf: newBuffer(size, maxBytes),
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second, IdleCheck: 15 * time.Second,
	}
}

// Pending is the number of payloads waiting in the hand-off buffer, and their bytes.
func (s *Subscriber) Pending() (payloads, bytes int) { return s.buf.size() }

// DownSeconds is how long the subscription has been lost in total since it was first
// established, the current gap included: events published meanwhile were not received.
func (s *Subscriber) DownSeconds() float64 {
	s.downMu.Lock()
	defer s.downMu.Unlock()
	d := s.downTotal
	if !s.downSince.IsZero() {
		d += time.Since(s.downSince)
	}
	return d.Seconds()
}

func (s *Subscriber) markDown() {
	s.downMu.Lock()
	if s.downSince.IsZero() {
		s.downSince = time.Now()
	}
	s.downMu.Unlock()
}

func (s *Subscriber) markUp() {
	s.downMu.Lock()
	if !s.downSince.IsZero() {
		s.downTotal += time.Since(s.downSince)
		s.downSince = time.Time{}
	}
	s.downMu.Unlock()
}

// Out is the stream of payloads, closed when Run returns.
func (s *Subscriber) Out() <-chan string { return s.out }

// Up reports whether the subscription is established now.
func (s *Subscriber) Up() bool { return s.up.Load() }

// Ready reports whether the subscription was established at least once.
func (s *Subscriber) Ready() bool { return s.ready.Load() }

// Reconnects counts lost subscriptions.
func (s *Subscriber) Reconnects() uint64 { return s.reconnects.Load() }

// Dropped counts payloads dropped because the hand-off buffer was full.
func (s *Subscriber) Dropped() uint64 { return s.dropped.Load() }

// Received counts payloads read from Redis.
func (s *Subscriber) Received() uint64 { return s.received.Load() }

// Run subscribes and reads until ctx is done, reconnecting with capped exponential backoff. It
// logs once per change of state, not once per attempt.
func (s *Subscriber) Run(ctx context.Context) {
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		s.forward(ctx)
	}()
	defer func() {
		<-forwarded
		close(s.out)
	}()
	backoff := s.MinBackoff
	failing := false
	for ctx.Err() == nil {
		err := s.session(ctx, func() { backoff = s.MinBackoff; failing = false })
		if ctx.Err() != nil {
			return
		}
		if s.up.Swap(false) {
			s.reconnects.Add(1)
			s.markDown()
		}
		if !failing {
			level.Warn(s.logger).Log("msg", "event subscription lost; retrying", "err", err)
			failing = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, s.MaxBackoff)
	}
}

// session runs one subscription until it fails.
func (s *Subscriber) session(ctx context.Context, established func()) error {
	ps := s.client.PSubscribe(ctx)
	defer ps.Close()
	// A blocked read does not see ctx being cancelled; closing the connection ends it.
	ended := make(chan struct{})
	defer close(ended)
	go func() {
		select {
		case <-ctx.Done():
			ps.Close()
		case <-ended:
		}
	}()
	if err := ps.PSubscribe(ctx, s.patterns...); err != nil {
		return err
	}
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, s.IdleCheck)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
				// Quiet is normal between heartbeats; silence past IdleCheck must still prove the
				// connection is alive, or a half-open TCP connection would hide an outage.
				if pinged {
					return errors.New("no answer to PING on the event subscription")
				}
				if err := ps.Ping(ctx); err != nil {
					return err
				}
				pinged = true
				continue
			}
			return err
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Message:
			s.received.Add(1)
			if !s.buf.push(m.Payload) {
				s.dropped.Add(1)
			}
		case *redis.Subscription:
			if m.Kind == "psubscribe" && m.Count == len(s.patterns) && !s.up.Swap(true) {
				s.ready.Store(true)
				s.markUp()
				established()
				level.Info(s.logger).Log("msg", "subscribed to events", "patterns", len(s.patterns))
			}
		}
	}
}

// forward hands buffered payloads to Out, one at a time, until ctx is done. A payload leaves the
// buffer (and its bytes stop counting) only once the consumer took it.
func (s *Subscriber) forward(ctx context.Context) {
	for {
		p, ok := s.buf.peek()
		if !ok {
			select {
			case <-s.buf.notify:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case s.out <- p:
			s.buf.pop()
		case <-ctx.Done():
			return
		}
	}
}

// buffer is a FIFO of payloads bounded in count and in bytes: 65,536 events of a few KB each
// held 122-230 MiB while the decoder fell behind, more than the container's memory limit.
type buffer struct {
	maxCount, maxBytes int
	notify             chan struct{}

	mu    sync.Mutex
	items []string
	head  int
	bytes int
}

func newBuffer(maxCount, maxBytes int) *buffer {
	if maxCount <= 0 {
		maxCount = 1
	}
	if maxBytes <= 0 {
		maxBytes = int(^uint(0) >> 1)
	}
	return &buffer{maxCount: maxCount, maxBytes: maxBytes, notify: make(chan struct{}, 1)}
}

func (b *buffer) push(p string) bool {
	b.mu.Lock()
	if len(b.items)-b.head >= b.maxCount || b.bytes+len(p) > b.maxBytes {
		b.mu.Unlock()
		return false
	}
	if b.head > 0 && b.head >= len(b.items)/2 { // reuse the consumed front
		n := copy(b.items, b.items[b.head:])
		clear(b.items[n:])
		b.items, b.head = b.items[:n], 0
	}
	b.items = append(b.items, p)
	b.bytes += len(p)
	b.mu.Unlock()
	select {
	case b.notify <- struct{}{}:
	default:
	}
	return true
}

func (b *buffer) peek() (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.head == len(b.items) {
		return "", false
	}
	return b.items[b.head], true
}

func (b *buffer) pop() {
	b.mu.Lock()
	b.bytes -= len(b.items[b.head])
	b.items[b.head] = ""
	b.head++
	if b.head == len(b.items) {
		b.items, b.head = b.items[:0], 0
	}
	b.mu.Unlock()
}

func (b *buffer) size() (int, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.items) - b.head, b.bytes
}
