package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/celery-exporter/celery_exporter/internal/handoff"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
)

// Celery's event receiver defaults (celery/app/defaults.py, event_queue_*; the same from 5.2 to
// 5.5): a queue named "<event_queue_prefix>.<uuid>", bound with "#", not durable, deleted when its
// last consumer goes, whose messages expire after 5 s and which the broker removes 60 s after it
// was last used: an exporter that dies leaves nothing behind.
const (
	EventQueuePrefix  = "celeryev"
	EventQueueTTL     = 5 * time.Second
	EventQueueExpires = 60 * time.Second
	eventBindingKey   = "#"
	contentTypeJSON   = "application/json"
	eventConsumerTag  = "celery_exporter"
)

// EventQueueArgs are the queue arguments kombu derives from message_ttl and expires (in ms).
func EventQueueArgs() amqp.Table {
	return amqp.Table{"x-message-ttl": int32(EventQueueTTL / time.Millisecond), "x-expires": int32(EventQueueExpires / time.Millisecond)}
}

// Consumer reads Celery's event stream from RabbitMQ, as celery.events.receiver.EventReceiver
// does: it declares the event exchange (topic, durable, as celery.events.event_exchange; only
// checked passively in read-only mode) and its own queue bound with "#", and consumes with no-ack.
// Like the Redis listener it hands bodies on without waiting for the code that applies them,
// through the same hand-off buffer, bounded in messages and bytes: a full one drops and counts.
// Messages published while it is disconnected go to no queue of its (its queue is deleted with
// its last consumer, or expires): they are lost, and the gap is counted as for Redis.
type Consumer struct {
	dialer   *Dialer
	exchange string
	queue    string
	readOnly bool
	logger   log.Logger
	out      chan string
	buf      *handoff.Buffer
	size     int          // of buf, in messages
	gaps     handoff.Gaps // since the first connection

	// OnReject is called with a kombu.Reason* for a message that is not JSON or is compressed.
	OnReject func(reason string)
	// MinBackoff and MaxBackoff bound the wait between reconnection attempts. MaxBackoff is low
	// for the reason the Redis listener's is: every second without the consumer loses events.
	MinBackoff, MaxBackoff time.Duration

	up         atomic.Bool
	ready      atomic.Bool
	reconnects atomic.Uint64
	dropped    atomic.Uint64
	received   atomic.Uint64
}

// NewConsumer returns a consumer of the event exchange with a hand-off buffer of size messages
// (see SetBufferBytes). readOnly makes it declare nothing but its queue and binding.
func NewConsumer(logger log.Logger, endpoints []Endpoint, exchange string, readOnly bool, size int) *Consumer {
	if exchange == "" {
		exchange = kombu.DefaultEventExchange
	}
	return &Consumer{
		dialer: &Dialer{Endpoints: endpoints}, exchange: exchange, readOnly: readOnly, logger: logger,
		queue: EventQueuePrefix + "." + kombu.NewUUID(), out: make(chan string), buf: handoff.NewBuffer(size, 0), size: size,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second,
	}
}

// SetBufferBytes bounds the hand-off buffer in bytes as well (n <= 0: no byte bound). Call it
// before Run.
func (c *Consumer) SetBufferBytes(n int) {
	c.buf = handoff.NewBuffer(c.size, n)
}

// Queue is the name of the consumer's own event queue.
func (c *Consumer) Queue() string { return c.queue }

// Out is the stream of message bodies, closed when Run returns.
func (c *Consumer) Out() <-chan string { return c.out }

// RawBodies: AMQP messages carry the event JSON as their body, with no kombu envelope.
func (c *Consumer) RawBodies() bool { return true }

// Up reports whether the consumer is established now.
func (c *Consumer) Up() bool { return c.up.Load() }

// Ready reports whether the consumer was established at least once.
func (c *Consumer) Ready() bool { return c.ready.Load() }

// Reconnects counts lost consumers (connection or channel closed, broker restarted).
func (c *Consumer) Reconnects() uint64 { return c.reconnects.Load() }

// Dropped counts messages dropped because the hand-off buffer was full.
func (c *Consumer) Dropped() uint64 { return c.dropped.Load() }

// Received counts messages read from the broker.
func (c *Consumer) Received() uint64 { return c.received.Load() }

// Pending is the number of messages waiting in the hand-off buffer, and their bytes.
func (c *Consumer) Pending() (messages, bytes int) { return c.buf.Size() }

// DownSeconds is how long the consumer has been lost in total since it was first established,
// the current gap included: events published meanwhile were not received.
func (c *Consumer) DownSeconds() float64 { return c.gaps.DownSeconds() }

// GapsBefore is the number of times the consumer was lost before the message at position n of
// Out (0 is the first).
func (c *Consumer) GapsBefore(n uint64) uint64 { return c.gaps.Before(n) }

// Run consumes until ctx is done, reconnecting with capped exponential backoff. It logs once per
// outage, not once per attempt.
func (c *Consumer) Run(ctx context.Context) {
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		c.buf.Forward(ctx, c.out)
	}()
	defer func() {
		<-forwarded
		close(c.out)
	}()
	backoff := c.MinBackoff
	failing := false
	for ctx.Err() == nil {
		err := c.session(ctx, func() {
			backoff = c.MinBackoff
			if failing {
				level.Info(c.logger).Log("msg", "event consumer re-established", "queue", c.queue)
			}
			failing = false
		})
		if ctx.Err() != nil {
			return
		}
		if c.up.Swap(false) {
			c.reconnects.Add(1)
			c.gaps.Down(c.buf.Pushed())
		}
		if !failing {
			level.Warn(c.logger).Log("msg", "event consumer lost; retrying", "err", err)
			failing = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, c.MaxBackoff)
	}
}

// session runs one connection until it fails.
func (c *Consumer) session(ctx context.Context, established func()) error {
	conn, err := c.dialer.Dial("events")
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	if c.readOnly {
		err = ch.ExchangeDeclarePassive(c.exchange, "topic", true, false, false, false, nil)
	} else {
		err = ch.ExchangeDeclare(c.exchange, "topic", true, false, false, false, nil)
	}
	if err != nil {
		return fmt.Errorf("event exchange %q: %w", c.exchange, err)
	}
	if _, err := ch.QueueDeclare(c.queue, false, true, false, false, EventQueueArgs()); err != nil {
		return fmt.Errorf("declare event queue: %w", err)
	}
	if err := ch.QueueBind(c.queue, eventBindingKey, c.exchange, false, nil); err != nil {
		return fmt.Errorf("bind event queue: %w", err)
	}
	deliveries, err := ch.Consume(c.queue, eventConsumerTag, true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume event queue: %w", err)
	}
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	c.up.Store(true)
	c.ready.Store(true)
	c.gaps.Up()
	established()
	level.Info(c.logger).Log("msg", "consuming events", "exchange", c.exchange, "queue", c.queue)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-closed:
			if e == nil {
				return errors.New("connection closed")
			}
			return e
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("event consumer cancelled by the broker")
			}
			c.received.Add(1)
			if reason := rejectReason(d); reason != "" {
				if c.OnReject != nil {
					c.OnReject(reason)
				}
				continue
			}
			if !c.buf.Push(string(d.Body)) {
				c.dropped.Add(1)
			}
		}
	}
}

// rejectReason says why an event message cannot be decoded, as the kombu envelope decoder would:
// events are always JSON (event_serializer) and never compressed.
func rejectReason(d amqp.Delivery) string {
	if d.ContentType != "" && d.ContentType != contentTypeJSON {
		return kombu.ReasonContentType
	}
	if _, ok := d.Headers["compression"]; ok {
		return kombu.ReasonCompressed
	}
	return ""
}
