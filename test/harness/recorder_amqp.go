package harness

import (
	"errors"
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// RecordAMQP records every event published to the celeryev exchange of an AMQP broker, from a
// queue of its own bound with "#" (as `celery events` does), independently of the exporter. It
// returns once the queue is bound, so no event published after it returns is missed. The exchange
// is declared as Celery declares it (topic, durable), so the recorder may start before any worker.
func RecordAMQP(t testing.TB, brokerURL string) *Recorder {
	t.Helper()
	rec, err := NewAMQPRecorder(brokerURL)
	if err != nil {
		t.Fatalf("AMQP recorder: %v", err)
	}
	t.Cleanup(rec.Close)
	return rec
}

// NewAMQPRecorder is RecordAMQP without a testing.TB; call Close.
func NewAMQPRecorder(brokerURL string) (*Recorder, error) {
	conn, err := amqp.Dial(amqpDialURL(brokerURL))
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, err
	}
	queue := fmt.Sprintf("harness.recorder.%d", time.Now().UnixNano())
	err = errors.Join(
		ch.ExchangeDeclare("celeryev", "topic", true, false, false, false, nil),
		declareBind(ch, queue),
	)
	if err != nil {
		conn.Close()
		return nil, err
	}
	deliveries, err := ch.Consume(queue, "", true, true, false, false, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	rec := &Recorder{Pattern: "celeryev #", stop: func() { _ = conn.Close() }, done: make(chan struct{})}
	go func() {
		defer close(rec.done)
		for d := range deliveries {
			var evs []Event
			var derr error
			if d.ContentType != "application/json" {
				derr = fmt.Errorf("content type %q is not JSON", d.ContentType)
			} else {
				evs, derr = DecodeEventBody(d.Body)
			}
			rec.add(d.RoutingKey, evs, derr)
		}
	}()
	return rec, nil
}

func declareBind(ch *amqp.Channel, queue string) error {
	if _, err := ch.QueueDeclare(queue, false, true, true, false, nil); err != nil {
		return err
	}
	return ch.QueueBind(queue, "#", "celeryev", false, nil)
}

// amqpDialURL turns a Celery AMQP URL into amqp091's form: "//" (kombu's "/" vhost) is "/%2F".
func amqpDialURL(u string) string {
	if len(u) > 1 && u[len(u)-2:] == "//" {
		return u[:len(u)-1] + "%2F"
	}
	return u
}
