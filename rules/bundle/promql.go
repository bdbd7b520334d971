package bundle

import (
	"regexp"
	"strconv"
	"strings"
)

// sel returns a selector with the configured matchers plus extra ones: `{job="celery",x="y"}`.
func (c *Config) sel(extra ...string) string {
	parts := []string{strings.TrimSpace(c.Selector)}
	for _, e := range extra {
		if e != "" {
			parts = append(parts, e)
		}
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// eq is a `label="value"` matcher with the value quoted as a PromQL string.
func eq(label, value string) string { return label + "=" + strconv.Quote(value) }

// anyOf is a `label=~"a|b"` matcher matching exactly the given literal values; `label="a"` for
// one value (a regexp on a static string costs more and linters flag it).
func anyOf(label string, values []string) string {
	if len(values) == 1 {
		return eq(label, values[0])
	}
	return label + "=~" + strconv.Quote(alternatives(values))
}

// alternatives is a regexp matching exactly one of the literal values.
func alternatives(values []string) string {
	quoted := make([]string, len(values))
	for i, v := range values {
		quoted[i] = regexp.QuoteMeta(v)
	}
	return strings.Join(quoted, "|")
}

// taskName matches a task by its short name or any dotted module path ending in it
// (`billing.tasks.charge_card` for a @shared_task in billing/tasks.py).
func taskName(name string) string {
	return "name=~" + strconv.Quote("(.+[.])?"+regexp.QuoteMeta(name))
}

// notTasks excludes tasks by short name (any dotted module prefix), nil for none.
func notTasks(names []string) []string {
	if len(names) == 0 {
		return nil
	}
	return []string{"name!~" + strconv.Quote("(.+[.])?("+alternatives(names)+")")}
}

// notQueues excludes queues by name, nil for none.
func notQueues(names []string) []string {
	if len(names) == 0 {
		return nil
	}
	if len(names) == 1 { // a regexp on a static string costs more and linters flag it
		return []string{"queue_name!=" + strconv.Quote(names[0])}
	}
	return []string{"queue_name!~" + strconv.Quote(alternatives(names))}
}

// increaseNew is the number of events a counter counted in the window: the first event of a
// series pages at once, also right after Prometheus or the exporter (re)started.
//
// increase() alone needs two samples in the window and extrapolates from the first one, so a
// series that appears at 1 (the first failure with an exception nobody expected) reads as no
// increase. The exporter creates the series the alerts read at 0 beforehand (the configured
// exception classes once a task/worker/queue is seen, every configured log event), so increase()
// sees their first event; the two branches before it count the cases it cannot:
//
//  1. The exporter started less than a window ago (celery_exporter_start_time_seconds; in
//     Kubernetes a restarted pod is a new `instance` with no history at all): each of its
//     counters started at 0 inside the window, so its whole value is the window's count.
//  2. The series has fewer samples in the window than its target had successful scrapes
//     (sum_over_time(up)): it was born inside the window while Prometheus was already scraping
//     the exporter (at 0 or at 1), so again its whole value counts. Old counters seen by a
//     Prometheus that just started, or after a scrape gap, have as many samples as `up` has
//     successful scrapes and stay with increase(): they do not look newborn.
//
// The first branch wins over the second, the second over increase() (`or` keeps the left side).
func (c *Config) increaseNew(series string, window Duration) string {
	w := window.String()
	return "(" + series + " and on (job, instance) (time() - celery_exporter_start_time_seconds" + c.sel() + " < " + fmtFloat(window.Seconds()) + "))" +
		"\n  or (" + series + " and (count_over_time(" + series + "[" + w + "]) < on (job, instance) group_left () sum_over_time(up" + c.sel() + "[" + w + "])))" +
		"\n  or increase(" + series + "[" + w + "])"
}

// increaseNewInRange is a simpler increaseNew over Grafana's $__range for a table: series born
// inside the range count whole. A range reaching before Prometheus' first scrape may then show old
// totals, but a table has no pager to wake.
func increaseNewInRange(series string) string {
	return "(" + series + " unless " + series + " offset $__range) or increase(" + series + "[$__range])"
}

// fmtFloat renders a threshold without exponent or trailing zeros.
func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
