// Scrapes an AMQP broker (RabbitMQ) at scrape time: queue depths, consumers and, with the
// management API, unacked messages and the oldest message's age.

package collector

import (
	"context"
	"maps"
	"slices"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/celery-exporter/celery_exporter/internal/amqp"
	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

// QueueStateReader reads queue state from a broker that keeps it itself (RabbitMQ).
type QueueStateReader interface {
	Read(ctx context.Context, names []string) (map[string]amqp.QueueState, error)
}

// QueueStateScraper reports the queues of an AMQP broker under the metric names of the Redis
// broker source: celery_queue_length (ready messages), celery_queue_consumers (the broker's
// consumer count), and with the management API celery_queue_unacked and
// celery_queue_oldest_message_age_seconds. Metrics that only a Redis broker has
// (celery_queue_priority_length, celery_broker_unacked_messages,
// celery_exporter_unacked_scan_truncated) are not sent.
type QueueStateScraper struct {
	logger   log.Logger
	reader   QueueStateReader
	static   []string
	model    *state.Model
	clock    clock.Clock
	queueCap queueCap
}

// NewQueueStateScraper returns the broker-state source of an AMQP broker; it adds the queues
// remote control found (from the model) to staticQueues.
func NewQueueStateScraper(logger log.Logger, reader QueueStateReader, staticQueues []string, m *state.Model) *QueueStateScraper {
	if logger == nil {
		logger = log.NewNopLogger()
	}
	return &QueueStateScraper{logger: logger, reader: reader, static: staticQueues, model: m, clock: m.Clock()}
}

// Name implements Scraper.
func (q *QueueStateScraper) Name() string { return "broker" }

// Scrape implements Scraper. On a broker error only celery_up 0 is sent.
func (q *QueueStateScraper) Scrape(ctx context.Context, ch chan<- prometheus.Metric) error {
	set := map[string]bool{}
	for _, n := range q.static {
		set[n] = true
	}
	for _, n := range q.model.Queues.Names() {
		set[n] = true
	}
	delete(set, "")
	states, err := q.reader.Read(ctx, slices.Sorted(maps.Keys(set)))
	if err != nil {
		ch <- prometheus.MustNewConstMetric(brokerUpDesc, prometheus.GaugeValue, 0)
		return err
	}
	names := q.queueCap.apply(q.logger, slices.Sorted(maps.Keys(states)))
	emit := func(m prometheus.Metric) { ch <- m }
	now := q.clock.Now()
	for _, n := range names {
		st := states[n]
		emitConst(emit, queueLengthDesc, prometheus.GaugeValue, float64(st.Ready), n)
		emitConst(emit, queueConsumersDesc, prometheus.GaugeValue, float64(st.Consumers), n)
		if st.HasUnacked {
			emitConst(emit, queueUnackedDesc, prometheus.GaugeValue, float64(st.Unacked), n)
		}
		if !st.HeadTimestamp.IsZero() && st.Ready > 0 {
			emitConst(emit, queueOldestAgeDesc, prometheus.GaugeValue, max(now.Sub(st.HeadTimestamp).Seconds(), 0), n)
		}
	}
	emitQueueUse(emit, q.model.Queues, names, false)
	ch <- prometheus.MustNewConstMetric(brokerUpDesc, prometheus.GaugeValue, 1)
	return nil
}
