package bench

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	amqpbroker "github.com/celery-exporter/celery_exporter/internal/amqp"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

// amqpPublisher publishes generated traffic to the event exchange as a Celery worker does: bare
// JSON bodies, routing key = event type (task.multi, worker.heartbeat, task.sent).
type amqpPublisher struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	gen     *Traffic
	payload []byte
}

func dialAMQPPublisher(url string, gen *Traffic) (*amqpPublisher, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("publisher: %w", err)
	}
	return &amqpPublisher{conn: conn, ch: ch, gen: gen}, nil
}

func (p *amqpPublisher) Close() error { return p.conn.Close() }

// Run publishes for d at rate events per second. AMQP reports no receiver count: Receivers is
// the number of messages the broker accepted.
func (p *amqpPublisher) Run(ctx context.Context, rate float64, d time.Duration) (Published, error) {
	return paced(ctx, rate, d, func(now float64, more func(*Published) bool, out *Published) error {
		for n := 0; n < chunk && more(out); n++ {
			var m Message
			p.payload, m = p.gen.Next(now, p.payload[:0])
			key := m.Channel[strings.LastIndexByte(m.Channel, '/')+1:]
			err := p.ch.PublishWithContext(ctx, "celeryev", key, false, false, amqp.Publishing{
				ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: amqp.Transient, Body: p.payload,
			})
			if err != nil {
				return fmt.Errorf("publish: %w", err)
			}
			out.Messages++
			out.Receivers++
			out.Events += int64(m.Events)
		}
		return nil
	})
}

// bareAMQP is an amqp091 consumer of a queue bound to the event exchange that only counts
// messages: the ceiling of any AMQP event consumer on this machine.
type bareAMQP struct {
	conn *amqp.Connection
	n    atomic.Int64
	done chan struct{}
}

func newBareAMQP(b *testing.B, url string) consumer {
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, amqpbroker.EventQueueArgs())
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "#", "celeryev", false, nil); err != nil {
		b.Fatal(err)
	}
	ds, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	c := &bareAMQP{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for range ds {
			c.n.Add(1)
		}
	}()
	return c
}

func (c *bareAMQP) counts() (int64, int64)       { return c.n.Load(), -1 }
func (c *bareAMQP) busy() bool                   { return false }
func (c *bareAMQP) problems() map[string]float64 { return map[string]float64{} }
func (c *bareAMQP) close()                       { c.conn.Close(); <-c.done }

// BenchmarkIngestAMQP is BenchmarkIngest on RabbitMQ: the same batched traffic published to the
// celeryev exchange of a real rabbitmq-server, the exporter's AMQP event consumer next to a bare
// amqp091 consumer. It runs once, whatever b.N.
func BenchmarkIngestAMQP(b *testing.B) {
	r := harness.StartRabbitMQ(b, harness.RabbitMQOptions{})
	url := strings.TrimSuffix(r.URL(""), "/") + "/%2F"
	setup, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	ch, err := setup.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.ExchangeDeclare("celeryev", "topic", true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	setup.Close()

	x := &bench{b: b, brokerCPU: noCPU}
	for i := range *flagPublishers {
		p, err := dialAMQPPublisher(url, NewTraffic(uint32(i+1), 42, Options{Workers: 4, Raw: true}))
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		x.pubs = append(x.pubs, p)
	}
	endpoints, err := amqpbroker.ParseURL(r.URL("")) // as the binary parses --broker.url
	if err != nil {
		b.Fatal(err)
	}
	x.compare("amqp091 consumer", func() consumer { return newBareAMQP(b, url) }, func() consumer {
		c := amqpbroker.NewConsumer(benchLogger(), endpoints, "celeryev", false, 65536)
		return startExporter(b, c)
	})
}
