package amqp

import (
	"context"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/pidbox"
)

// Celery's control queue settings (celery/app/defaults.py control_queue_ttl and
// control_queue_expires), which kombu's Mailbox.get_reply_queue turns into queue arguments.
const (
	ReplyQueueTTL     = 300 * time.Second
	ReplyQueueExpires = 10 * time.Second
)

// ReplyQueueArgs are the reply queue's arguments, in ms as kombu sends them.
func ReplyQueueArgs() amqp.Table {
	return amqp.Table{"x-message-ttl": int32(ReplyQueueTTL / time.Millisecond), "x-expires": int32(ReplyQueueExpires / time.Millisecond)}
}

// ControlClient is a remote-control client over AMQP, as kombu's Mailbox with Celery's settings
// (type fanout) does on the wire, one round at a time:
//
//  1. declare the reply exchange "reply.<control>.pidbox" (direct, not durable) and the reply
//     queue "<oid>.reply.<control>.pidbox" (not durable, auto-delete, x-expires 10 s,
//     x-message-ttl 300 s) bound to it with the oid, and consume it;
//  2. declare the "<control>.pidbox" exchange (fanout, not durable) and publish one request per
//     command (JSON, transient, headers clock and expires);
//  3. collect replies until the idle timeout, the deadline, or every expected reply;
//  4. cancel the consumer: the auto-delete queue goes with it.
type ControlClient struct {
	mu       sync.Mutex
	dialer   *Dialer
	conn     *amqp.Connection
	exchange string
	clock    pidbox.Clock
	now      func() time.Time
	newID    func() string
}

// NewControlClient returns a remote-control client for the control exchange (Celery's
// control_exchange, "celery"). It connects on first use and reuses the connection.
func NewControlClient(endpoints []Endpoint, controlExchange string) *ControlClient {
	if controlExchange == "" {
		controlExchange = kombu.DefaultControlExchange
	}
	return &ControlClient{dialer: &Dialer{Endpoints: endpoints}, exchange: controlExchange, now: time.Now, newID: kombu.NewUUID}
}

// Close closes the client's connection.
func (c *ControlClient) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

func (c *ControlClient) channel() (*amqp.Channel, error) {
	if c.conn == nil || c.conn.IsClosed() {
		conn, err := c.dialer.Dial("control")
		if err != nil {
			return nil, err
		}
		c.conn = conn
	}
	ch, err := c.conn.Channel()
	if err != nil {
		c.conn.Close()
		c.conn = nil
		return nil, fmt.Errorf("open channel: %w", err)
	}
	return ch, nil
}

// Broadcast sends the calls in one round and collects the replies. The error is about the broker
// (or ctx); replies collected before it are returned with it.
func (c *ControlClient) Broadcast(ctx context.Context, calls []pidbox.Call, o pidbox.Options) (pidbox.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	replyExchange := kombu.ReplyExchange(c.exchange)
	r, err := pidbox.NewRound(calls, o, replyExchange, &c.clock, c.now(), c.newID)
	if err != nil {
		return pidbox.Result{}, err
	}
	ch, err := c.channel()
	if err != nil {
		return pidbox.Result{}, fmt.Errorf("pidbox: %w", err)
	}
	defer ch.Close()
	var replies <-chan amqp.Delivery
	if r.WantsReplies() {
		queue := kombu.ReplyQueue(r.OID, c.exchange)
		if err := ch.ExchangeDeclare(replyExchange, "direct", false, false, false, false, nil); err != nil {
			return pidbox.Result{}, fmt.Errorf("pidbox: declare %s: %w", replyExchange, err)
		}
		if _, err := ch.QueueDeclare(queue, false, true, false, false, ReplyQueueArgs()); err != nil {
			return pidbox.Result{}, fmt.Errorf("pidbox: declare reply queue: %w", err)
		}
		if err := ch.QueueBind(queue, r.OID, replyExchange, false, nil); err != nil {
			return pidbox.Result{}, fmt.Errorf("pidbox: bind reply queue: %w", err)
		}
		if replies, err = ch.Consume(queue, "", true, false, false, false, nil); err != nil {
			return pidbox.Result{}, fmt.Errorf("pidbox: consume reply queue: %w", err)
		}
	}
	exchange := kombu.PidboxExchange(c.exchange)
	if err := ch.ExchangeDeclare(exchange, "fanout", false, false, false, false, nil); err != nil {
		return pidbox.Result{}, fmt.Errorf("pidbox: declare %s: %w", exchange, err)
	}
	for _, req := range r.Requests {
		err := ch.PublishWithContext(ctx, exchange, "", false, false, amqp.Publishing{
			ContentType: contentTypeJSON, ContentEncoding: "utf-8", DeliveryMode: amqp.Transient,
			Headers: amqp.Table(req.Headers), Body: req.Body,
		})
		if err != nil {
			return pidbox.Result{}, fmt.Errorf("pidbox: publish %s: %w", req.Method, err)
		}
	}
	if replies == nil {
		return pidbox.Result{}, nil
	}
	return c.collect(ctx, ch, replies, r)
}

func (c *ControlClient) collect(ctx context.Context, ch *amqp.Channel, replies <-chan amqp.Delivery, r *pidbox.Round) (pidbox.Result, error) {
	deadline := time.NewTimer(r.Options.Deadline)
	defer deadline.Stop()
	idle := time.NewTimer(r.Options.Timeout)
	defer idle.Stop()
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	for {
		select {
		case <-ctx.Done():
			return r.Result(), fmt.Errorf("pidbox: collect: %w", ctx.Err())
		case <-deadline.C:
			return r.Result(), nil
		case <-idle.C:
			return r.Result(), nil
		case e := <-closed:
			return r.Result(), fmt.Errorf("pidbox: collect: channel closed: %v", e)
		case d, ok := <-replies:
			if !ok {
				return r.Result(), fmt.Errorf("pidbox: collect: reply consumer cancelled")
			}
			idle.Reset(r.Options.Timeout)
			if clk, ok := pidbox.ToInt(d.Headers["clock"]); ok {
				c.clock.Adjust(clk)
			}
			ticket, _ := d.Headers["ticket"].(string)
			if d.ContentType != "" && d.ContentType != contentTypeJSON {
				r.Malformed()
				continue
			}
			if r.Add(ticket, d.Body) {
				return r.Result(), nil
			}
		}
	}
}
