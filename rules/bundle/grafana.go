package bundle

import (
	"regexp"
	"strings"
)

// Dashboard identifies one generated dashboard. UIDs are part of the contract: alert
// dashboard_url annotations and links between dashboards use them.
type Dashboard struct {
	UID   string
	Title string
}

// The generated dashboards.
var (
	DashSuccess = Dashboard{UID: "celery-success-criteria", Title: "Celery / Success criteria"}
	DashTasks   = Dashboard{UID: "celery-tasks", Title: "Celery / Tasks"}
	DashWorkers = Dashboard{UID: "celery-workers-queues", Title: "Celery / Workers and queues"}
	DashApp     = Dashboard{UID: "celery-app-signals", Title: "Celery / App signals"}
)

// Dashboards lists every generated dashboard.
func Dashboards() []Dashboard { return []Dashboard{DashSuccess, DashTasks, DashWorkers, DashApp} }

var nonSlug = regexp.MustCompile(`[^a-z0-9]+`)

// Slug is the URL slug Grafana derives from the title.
func (d Dashboard) Slug() string {
	return strings.Trim(nonSlug.ReplaceAllString(strings.ToLower(d.Title), "-"), "-")
}

// File is the dashboard's file name under dashboards/.
func (d Dashboard) File() string { return d.UID + ".json" }

// Path is the dashboard's URL path in Grafana (/d/uid/slug).
func (d Dashboard) Path() string { return "/d/" + d.UID + "/" + d.Slug() }

// DashboardURL is the absolute URL of a dashboard in the configured Grafana.
func (c *Config) DashboardURL(d Dashboard) string {
	return strings.TrimRight(c.URLs.Grafana, "/") + d.Path()
}

var grafanaVar = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::[A-Za-z0-9_]+)?\}|\[\[([A-Za-z0-9_]+)(?::[A-Za-z0-9_]+)?\]\]|\$([A-Za-z0-9_]+)`)

// ExpandVars replaces Grafana template variables in a panel query ($job, ${queue:regex},
// [[task]], $__rate_interval) with values, so the query can be parsed or sent to Prometheus.
// Variables missing from values are left as they are (and make the query fail to parse).
func ExpandVars(expr string, values map[string]string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		sub := grafanaVar.FindStringSubmatch(m)
		name := sub[1] + sub[2] + sub[3]
		if v, ok := values[name]; ok {
			return v
		}
		return m
	})
}

// DefaultVarValues are stand-ins for every variable the generated dashboards use.
func DefaultVarValues() map[string]string {
	return map[string]string{
		"datasource": "prometheus", "cluster": ".+", "namespace": ".+", "job": "celery", "instance": ".*", "queue": ".*", "task": ".*",
		"hostname": ".*", "breaker": ".*",
		"__rate_interval": "1m", "__interval": "30s", "__range": "1h", "__range_s": "3600",
	}
}

// Query is one panel query of a rendered dashboard.
type Query struct {
	Dashboard string // uid
	Panel     string // title
	RefID     string
	Expr      string
	Instant   bool
}

// PanelQueries lists every query of a dashboard JSON document (rows included), in panel order.
func PanelQueries(dash map[string]any) []Query {
	uid, _ := dash["uid"].(string)
	var out []Query
	var walk func(panels []any)
	walk = func(panels []any) {
		for _, p := range panels {
			pm, ok := p.(map[string]any)
			if !ok {
				continue
			}
			title, _ := pm["title"].(string)
			targets, _ := pm["targets"].([]any)
			for _, t := range targets {
				tm, ok := t.(map[string]any)
				if !ok {
					continue
				}
				expr, _ := tm["expr"].(string)
				ref, _ := tm["refId"].(string)
				inst, _ := tm["instant"].(bool)
				out = append(out, Query{Dashboard: uid, Panel: title, RefID: ref, Expr: expr, Instant: inst})
			}
			if sub, ok := pm["panels"].([]any); ok {
				walk(sub)
			}
		}
	}
	panels, _ := dash["panels"].([]any)
	walk(panels)
	return out
}

// VariableQueries lists the label_values() queries of a dashboard's query variables, by name.
func VariableQueries(dash map[string]any) map[string]string {
	out := map[string]string{}
	tl, _ := dash["templating"].(map[string]any)
	list, _ := tl["list"].([]any)
	for _, v := range list {
		vm, _ := v.(map[string]any)
		if vm["type"] != "query" {
			continue
		}
		name, _ := vm["name"].(string)
		def, _ := vm["definition"].(string)
		out[name] = def
	}
	return out
}
