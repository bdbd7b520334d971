package bundle

import (
	"regexp"
	"slices"
	"strings"
)

// Tenants: with aggregation_labels beyond job (Kubernetes' namespace, a cluster label), the
// dashboards get one Grafana variable per such label, chained before job (cluster → namespace →
// job → instance), and every query honours them: each selector on $job also matches them, and
// every grouping keeps them, so two apps sharing a job name in two namespaces never add up on a
// panel. Like aggregate() for the rules, this is one pass over the finished dashboards, so no
// panel can forget it; with aggregation_labels [job] it changes nothing.

// tenantLabels are the aggregation labels other than job, in their configured order.
func (c *Config) tenantLabels() []string {
	return slices.DeleteFunc(slices.Clone(c.AggregationLabels), func(l string) bool { return l == "job" })
}

// aggregationLabels are the labels that tell apps apart: [job] unless configured.
func (c *Config) aggregationLabels() []string {
	if len(c.AggregationLabels) == 0 {
		return []string{"job"}
	}
	return c.AggregationLabels
}

// varMatcher is the matcher of a label on its multi-select variable (`namespace=~"$namespace"`).
func varMatcher(label string) string { return label + `=~"$` + label + `"` }

var (
	// grouping is a `by (…)` or `on (…)` clause and its labels.
	grouping = regexp.MustCompile(`\b(by|on) \(([^)]*)\)`)
	// bareAggregation is an aggregation without a grouping: one series for every selected tenant.
	bareAggregation = regexp.MustCompile(`\b(sum|max|min|count|avg)\(`)
)

// withTenants adds the tenant variables and matchers to a finished board.
func (c *Config) withTenants(b *board) {
	tenants := c.tenantLabels()
	if len(tenants) == 0 {
		return
	}
	// Every query and variable is scoped by $job: the tenant matchers go before it.
	scoped := strings.Join(varMatchers(tenants), ", ") + ", " + mJob
	scope := func(s string) string { return strings.ReplaceAll(s, mJob, scoped) }

	vars := []any{}
	for _, v := range b.vars {
		vm := v.(obj)
		switch vm["name"] {
		case "job":
			// The chain: each tenant variable lists the values under the ones before it.
			for i, l := range tenants {
				vars = append(vars, queryVar(l, varLabel(l), "label_values(celery_up"+matchers(varMatchers(tenants[:i])...)+", "+l+")", true))
			}
			vars = append(vars, queryVar("job", "Job", "label_values(celery_up"+matchers(varMatchers(tenants)...)+", job)", true))
			continue
		case "datasource": // kept as it is
		default:
			def := scope(vm["definition"].(string))
			vm["definition"] = def
			vm["query"].(obj)["query"] = def
		}
		vars = append(vars, vm)
	}
	b.vars = vars

	legendPrefix := ""
	for _, l := range tenants {
		legendPrefix += "{{" + l + "}} "
	}
	for _, p := range b.panels {
		pm := p.(obj)
		// A stat reduces the selection to one number (the worst queue of every selected
		// namespace); a heatmap draws one distribution. Both keep their outer aggregation.
		oneValue := pm["type"] == "stat" || pm["type"] == "heatmap"
		if pm["type"] == "heatmap" {
			pm["description"] = pm["description"].(string) + " One distribution for every selected " + strings.Join(tenants, " and ") + "."
		}
		ts, _ := pm["targets"].([]any)
		for _, t := range ts {
			tg := t.(obj)
			expr := scope(tg["expr"].(string))
			expr = grouping.ReplaceAllStringFunc(expr, func(g string) string {
				m := grouping.FindStringSubmatch(g)
				if m[2] == "le" && pm["type"] == "heatmap" {
					return g
				}
				return m[1] + " (" + strings.Join(tenants, ", ") + ", " + m[2] + ")"
			})
			if !oneValue {
				expr = bareAggregation.ReplaceAllString(expr, "$1 by ("+strings.Join(tenants, ", ")+") (")
			}
			tg["expr"] = expr
			if l, _ := tg["legendFormat"].(string); !oneValue && tg["format"] != "table" && l != "__auto" {
				tg["legendFormat"] = legendPrefix + l
			}
		}
		for _, l := range asList(pm["links"]) {
			lm := l.(obj)
			params := ""
			for _, t := range tenants {
				params += "${" + t + ":queryparam}&"
			}
			lm["url"] = strings.Replace(lm["url"].(string), "${job:queryparam}", params+"${job:queryparam}", 1)
		}
	}
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// varMatchers are the variable matchers of labels.
func varMatchers(labels []string) []string {
	out := make([]string, len(labels))
	for i, l := range labels {
		out[i] = varMatcher(l)
	}
	return out
}

// varLabel is a variable's title: its label name capitalised (Namespace, Cluster).
func varLabel(l string) string { return strings.ToUpper(l[:1]) + strings.ReplaceAll(l[1:], "_", " ") }
