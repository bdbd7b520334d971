package collector

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/celery-exporter/celery_exporter/internal/listener"
)

var (
	subDownDesc = desc("exporter_subscription_down_seconds_total",
		"Time without the event subscription since it was first established: events published meanwhile were lost (Redis pub/sub keeps nothing).")
	bufferedDesc = desc("exporter_event_buffer_messages",
		"Event messages waiting between the Redis reader and the decoder.")
	bufferedBytesDesc = desc("exporter_event_buffer_bytes",
		"Bytes of the event messages waiting between the Redis reader and the decoder (bounded by --events.buffer-bytes).")
)

// SubscriptionCollector reports the event subscription's gaps and its hand-off buffer.
type SubscriptionCollector struct{ sub *listener.Subscriber }

// NewSubscriptionCollector returns a collector of sub's own metrics.
func NewSubscriptionCollector(sub *listener.Subscriber) SubscriptionCollector {
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
