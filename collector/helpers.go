package collector

import "github.com/prometheus/client_golang/prometheus"

// Helpers every source uses to build its metrics.

// overflowValue replaces a label value past its cardinality cap (see labelSet).
const overflowValue = "other"

// desc is the Desc of a metric under the celery_ prefix.
func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

// emitConst adds a metric, skipping a series Prometheus refuses (invalid UTF-8 in a queue or host
// name read from Redis) instead of panicking as MustNewConstMetric would.
func emitConst(emit func(prometheus.Metric), d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	if m, err := prometheus.NewConstMetric(d, t, v, labels...); err == nil {
		emit(m)
	}
}

// gaugeBool is a gauge's value of a yes/no fact.
func gaugeBool(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
