package collector

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	subDownDesc = desc("exporter_subscription_down_seconds_total",
		"Time without the event subscription (Redis) or consumer (AMQP) since it was first established: events published meanwhile were lost.")
	bufferedDesc = desc("exporter_event_buffer_messages",
		"Event messages waiting between the broker reader and the decoder.")
	bufferedBytesDesc = desc("exporter_event_buffer_bytes",
		"Bytes of the event messages waiting between the broker reader and the decoder (bounded by --events.buffer-bytes).")
)

// SubscriptionStats is what an event stream tells of its gaps and its hand-off buffer: the Redis
// listener and the AMQP consumer.
type SubscriptionStats interface {
	DownSeconds() float64
	Pending() (messages, bytes int)
}

// SubscriptionCollector reports the event subscription's gaps and its hand-off buffer.
type SubscriptionCollector struct{ sub SubscriptionStats }

// NewSubscriptionCollector returns a collector of sub's own metrics.
func NewSubscriptionCollector(sub SubscriptionStats) SubscriptionCollector {
	return SubscriptionCollector{sub}
}

// Describe implements prometheus.Collector.
func (c SubscriptionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- subDownDesc
	ch <- bufferedDesc
	ch <- bufferedBytesDesc
}

// Collect implements prometheus.Collector.
func (c SubscriptionCollector) Collect(ch chan<- prometheus.Metric) {
	n, b := c.sub.Pending()
	ch <- prometheus.MustNewConstMetric(subDownDesc, prometheus.CounterValue, c.sub.DownSeconds())
	ch <- prometheus.MustNewConstMetric(bufferedDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(bufferedBytesDesc, prometheus.GaugeValue, float64(b))
}
