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
	quoted := make([]string, len(values))
	for i, v := range values {
		quoted[i] = regexp.QuoteMeta(v)
	}
	return label + "=~" + strconv.Quote(strings.Join(quoted, "|"))
}

// taskName matches a task by its short name or any dotted module path ending in it
// (`assistant.tasks.extract_preferences_async` for a @shared_task in assistant/tasks.py).
func taskName(name string) string {
	return "name=~" + strconv.Quote("(.+[.])?"+regexp.QuoteMeta(name))
}

// increaseNew is the increase of counter series over window, counting series born inside the
// window from zero.
//
// increase() alone needs two samples in the window and extrapolates from the first one, so a
// labelled counter that appears at 1 (the first failure of a task, the first zep_call_error)
// reads as no increase and the alert never fires. Series that did not exist one window ago
// (`unless … offset`) therefore contribute their whole value, which is exact because the
// exporter creates them at their first event. Older series go through increase() and its
// counter-reset handling (an exporter restart keeps series identities).
//
// "Did not exist one window ago" is only trusted when the target was scraped and up one window
// ago (`up offset W == 1`): after a gap longer than the lookback (Prometheus or the network down
// for more than 5m) every old counter would otherwise look newborn and fire with its lifetime
// total. The cost is that a series born within one window after such a gap, or after
// Prometheus starts, is counted by increase() only.
func (c *Config) increaseNew(series string, window Duration) string {
	w := window.String()
	return "((" + series + " unless " + series + " offset " + w + ")" +
		" and on (job, instance) (up" + c.sel() + " offset " + w + " == 1))" +
		" or increase(" + series + "[" + w + "])"
}

// increaseNewInRange is increaseNew over Grafana's $__range for a table, without the `up offset`
// guard: a range reaching before Prometheus' first scrape must still count the failures inside it,
// and a table has no pager to wake if a gap makes old totals show.
func increaseNewInRange(series string) string {
	return "(" + series + " unless " + series + " offset $__range) or increase(" + series + "[$__range])"
}

// fmtFloat renders a threshold without exponent or trailing zeros.
func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
