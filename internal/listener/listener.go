package listener

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/internal/handoff"
)

// Subscriber PSUBSCRIBEs to patterns and sends every message payload to Out.
type Subscriber struct {
	client   redis.UniversalClient
	patterns []string
	logger   log.Logger
	out      chan string
	buf      *handoff.Buffer

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

	gaps handoff.Gaps // since the first subscription
}

// New returns a Subscriber with a hand-off buffer of at most size payloads and maxBytes bytes
// (maxBytes <= 0: no byte bound).
func New(logger log.Logger, client redis.UniversalClient, patterns []string, size, maxBytes int) *Subscriber {
	return &Subscriber{
		client: client, patterns: patterns, logger: logger, out: make(chan string), buf: handoff.NewBuffer(size, maxBytes),
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second, IdleCheck: 15 * time.Second,
	}
}

// Pending is the number of payloads waiting in the hand-off buffer, and their bytes.
func (s *Subscriber) Pending() (payloads, bytes int) { return s.buf.Size() }

// DownSeconds is how long the subscription has been lost in total since it was first
// established, the current gap included: events published meanwhile were not received.
func (s *Subscriber) DownSeconds() float64 { return s.gaps.DownSeconds() }

// GapsBefore is the number of times the subscription was lost before the payload at position n
// of Out (0 is the first).
func (s *Subscriber) GapsBefore(n uint64) uint64 { return s.gaps.Before(n) }

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
		s.buf.Forward(ctx, s.out)
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
			s.gaps.Down(s.buf.Pushed())
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
			if !s.buf.Push(m.Payload) {
				s.dropped.Add(1)
			}
		case *redis.Subscription:
			if m.Kind == "psubscribe" && m.Count == len(s.patterns) && !s.up.Swap(true) {
				s.ready.Store(true)
				s.gaps.Up()
				established()
				level.Info(s.logger).Log("msg", "subscribed to events", "patterns", len(s.patterns))
			}
		}
	}
}
