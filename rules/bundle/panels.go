package bundle

import (
	"fmt"
	"strings"
)

// obj is a JSON object; encoding/json sorts its keys, which keeps rendered files stable.
type obj = map[string]any

// schemaVersion is the dashboard schema of Grafana 10.4; later versions migrate it on load.
const schemaVersion = 39

var dsRef = obj{"type": "prometheus", "uid": "${datasource}"}

// target is one query of a panel.
type target struct {
	expr, legend string
	instant      bool
	format       string // "", "table" or "heatmap"
}

func (t target) json(ref string) obj {
	o := obj{
		"datasource":   dsRef,
		"editorMode":   "code",
		"expr":         t.expr,
		"legendFormat": t.legend,
		"refId":        ref,
		"range":        !t.instant,
		"instant":      t.instant,
	}
	if t.legend == "" {
		o["legendFormat"] = "__auto"
	}
	if t.format != "" {
		o["format"] = t.format
	}
	return o
}

func targets(ts []target) []any {
	out := make([]any, len(ts))
	for i, t := range ts {
		out[i] = t.json(string(rune('A' + i)))
	}
	return out
}

// step is a threshold step; value nil is the base.
type step struct {
	color string
	value any
}

func thresholds(steps ...step) obj {
	s := make([]any, len(steps))
	for i, st := range steps {
		s[i] = obj{"color": st.color, "value": st.value}
	}
	return obj{"mode": "absolute", "steps": s}
}

// redAtOrAbove is green below limit, red from limit on.
func redAtOrAbove(limit float64) obj { return thresholds(step{"green", nil}, step{"red", limit}) }

// greenAtOrAbove is red below limit, green from limit on.
func greenAtOrAbove(limit float64) obj { return thresholds(step{"red", nil}, step{"green", limit}) }

func neutral() obj { return thresholds(step{"text", nil}) }

// valueMap maps exact values to text and colour.
func valueMap(entries ...[3]string) []any {
	opts := obj{}
	for i, e := range entries {
		opts[e[0]] = obj{"text": e[1], "color": e[2], "index": i}
	}
	return []any{obj{"type": "value", "options": opts}}
}

var (
	upDownMap     = valueMap([3]string{"0", "down", "red"}, [3]string{"1", "up", "green"})
	okFailMap     = valueMap([3]string{"0", "failing", "red"}, [3]string{"1", "ok", "green"})
	openClosedMap = valueMap([3]string{"0", "closed", "green"}, [3]string{"1", "open", "red"})
	onOffMap      = valueMap([3]string{"0", "off", "red"}, [3]string{"1", "on", "green"})
)

// board lays panels out left to right in rows of 24 grid units.
type board struct {
	d        Dashboard
	descr    string
	vars     []any
	panels   []any
	id       int
	x, y, lh int
}

func (b *board) place(w, h int) obj {
	if b.x+w > 24 {
		b.x, b.y, b.lh = 0, b.y+b.lh, 0
	}
	pos := obj{"x": b.x, "y": b.y, "w": w, "h": h}
	b.x += w
	if h > b.lh {
		b.lh = h
	}
	return pos
}

func (b *board) row(title string) {
	if b.x > 0 || b.lh > 0 {
		b.x, b.y, b.lh = 0, b.y+b.lh, 0
	}
	b.id++
	b.panels = append(b.panels, obj{
		"type": "row", "title": title, "id": b.id, "collapsed": false, "panels": []any{},
		"gridPos": obj{"x": 0, "y": b.y, "w": 24, "h": 1},
	})
	b.y++
}

// instanceNote ends the description of a panel whose queries do not use the instance variable:
// dashboard linters (and users) expect every panel to honour it or to say why not.
const instanceNote = " All instances: reads series aggregated over the exporter replicas, so the instance variable does not apply."

func (b *board) add(w, h int, p obj) {
	if ts, ok := p["targets"].([]any); ok && len(ts) > 0 {
		uses := false
		for _, t := range ts {
			if e, _ := t.(obj)["expr"].(string); strings.Contains(e, "$instance") {
				uses = true
			}
		}
		if d, _ := p["description"].(string); !uses && !strings.HasSuffix(d, instanceNote) {
			p["description"] = d + instanceNote
		}
	}
	b.id++
	p["id"] = b.id
	p["gridPos"] = b.place(w, h)
	p["datasource"] = dsRef
	b.panels = append(b.panels, p)
}

// stat is a single-number panel coloured by thresholds (background, so red is visible from afar).
func stat(title, descr, unit string, th obj, mappings []any, link *Dashboard, t target) obj {
	t.instant = true
	if mappings == nil {
		mappings = []any{}
	}
	p := obj{
		"type": "stat", "title": title, "description": descr,
		"targets": targets([]target{t}),
		"fieldConfig": obj{
			"defaults": obj{
				"unit": unit, "thresholds": th, "mappings": mappings,
				"color": obj{"mode": "thresholds"}, "noValue": "no data",
			},
			"overrides": []any{},
		},
		"options": obj{
			"reduceOptions": obj{"calcs": []any{"lastNotNull"}, "fields": "", "values": false},
			"colorMode":     "background", "graphMode": "none", "justifyMode": "center",
			"orientation": "auto", "textMode": "value", "wideLayout": true, "showPercentChange": false,
		},
	}
	if link != nil {
		p["links"] = []any{obj{
			"title": link.Title, "targetBlank": false,
			"url": link.Path() + "?${__url_time_range}&${job:queryparam}&${queue:queryparam}",
		}}
	}
	return p
}

// series is a time series panel; th draws threshold lines when not nil.
func series(title, descr, unit string, th obj, ts ...target) obj {
	custom := obj{
		"drawStyle": "line", "lineInterpolation": "linear", "lineWidth": 1, "fillOpacity": 10,
		"showPoints": "never", "spanNulls": false, "stacking": obj{"mode": "none", "group": "A"},
		"axisPlacement": "auto", "gradientMode": "none",
		"thresholdsStyle": obj{"mode": "off"},
	}
	if th == nil {
		th = thresholds(step{"green", nil})
	} else {
		custom["thresholdsStyle"] = obj{"mode": "dashed"}
	}
	return obj{
		"type": "timeseries", "title": title, "description": descr,
		"targets": targets(ts),
		"fieldConfig": obj{
			"defaults": obj{
				"unit": unit, "thresholds": th, "custom": custom,
				"color": obj{"mode": "palette-classic"}, "min": 0, "mappings": []any{},
			},
			"overrides": []any{},
		},
		"options": obj{
			"legend":  obj{"displayMode": "table", "placement": "bottom", "showLegend": true, "calcs": []any{"lastNotNull", "max"}},
			"tooltip": obj{"mode": "multi", "sort": "desc"},
		},
	}
}

// bars is series drawn as bars, for counts per interval.
func bars(title, descr, unit string, ts ...target) obj {
	p := series(title, descr, unit, nil, ts...)
	custom := p["fieldConfig"].(obj)["defaults"].(obj)["custom"].(obj)
	custom["drawStyle"] = "bars"
	custom["fillOpacity"] = 80
	custom["stacking"] = obj{"mode": "normal", "group": "A"}
	return p
}

// timeline is a state timeline (up/down, open/closed per series).
func timeline(title, descr string, mappings []any, th obj, ts ...target) obj {
	return obj{
		"type": "state-timeline", "title": title, "description": descr,
		"targets": targets(ts),
		"fieldConfig": obj{
			"defaults": obj{
				"thresholds": th, "mappings": mappings, "color": obj{"mode": "thresholds"},
				"custom": obj{"fillOpacity": 80, "lineWidth": 0},
			},
			"overrides": []any{},
		},
		"options": obj{
			"mergeValues": true, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
			"legend":  obj{"displayMode": "list", "placement": "bottom", "showLegend": true},
			"tooltip": obj{"mode": "single", "sort": "none"},
		},
	}
}

// heatmap shows a histogram's buckets over time (Prometheus buckets, no Grafana bucketing).
func heatmap(title, descr, unit, expr string) obj {
	return obj{
		"type": "heatmap", "title": title, "description": descr,
		"targets": targets([]target{{expr: expr, legend: "{{le}}", format: "heatmap"}}),
		"fieldConfig": obj{
			"defaults":  obj{"custom": obj{"scaleDistribution": obj{"type": "linear"}, "hideFrom": obj{"legend": false, "tooltip": false, "viz": false}}},
			"overrides": []any{},
		},
		"options": obj{
			"calculate": false,
			"yAxis":     obj{"unit": unit, "axisPlacement": "left", "reverse": false},
			"rowsFrame": obj{"layout": "le"},
			"color": obj{
				"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5,
				"fill": "dark-orange", "reverse": false,
			},
			"cellGap":      1,
			"filterValues": obj{"le": 1e-9},
			"tooltip":      obj{"mode": "single", "yHistogram": true, "showColorScale": false},
			"legend":       obj{"show": true},
			"exemplars":    obj{"color": "rgba(255,0,255,0.7)"},
			"showValue":    "never",
		},
	}
}

// table shows instant queries as rows; hide lists columns to drop, rename maps column titles.
func table(title, descr string, hide []string, rename map[string]string, ts ...target) obj {
	for i := range ts {
		ts[i].instant, ts[i].format = true, "table"
	}
	exclude := obj{"Time": true}
	for _, h := range hide {
		exclude[h] = true
	}
	ren := obj{}
	for k, v := range rename {
		ren[k] = v
	}
	var transforms []any
	if len(ts) > 1 {
		transforms = append(transforms, obj{"id": "merge", "options": obj{}})
	}
	transforms = append(transforms, obj{"id": "organize", "options": obj{
		"excludeByName": exclude, "renameByName": ren, "indexByName": obj{},
	}})
	return obj{
		"type": "table", "title": title, "description": descr,
		"targets":         targets(ts),
		"transformations": transforms,
		"fieldConfig": obj{
			"defaults":  obj{"custom": obj{"align": "auto", "cellOptions": obj{"type": "auto"}}, "mappings": []any{}, "thresholds": neutral()},
			"overrides": []any{},
		},
		"options": obj{"showHeader": true, "cellHeight": "sm", "footer": obj{"show": false, "reducer": []any{"sum"}, "fields": ""}},
	}
}

// variables are the datasource/job/instance/queue selectors every dashboard has, plus extra.
func variables(extra ...obj) []any {
	vs := []any{
		obj{
			"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
			"current": obj{}, "hide": 0, "includeAll": false, "multi": false, "options": []any{},
			"refresh": 1, "regex": "", "skipUrlSync": false,
		},
		queryVar("job", "Job", "label_values(celery_up, job)", true),
		queryVar("instance", "Instance", `label_values(celery_up{job=~"$job"}, instance)`, true),
		queryVar("queue", "Queue", `label_values(celery_queue_length{job=~"$job"}, queue_name)`, true),
	}
	for _, e := range extra {
		vs = append(vs, e)
	}
	return vs
}

// queryVar is a label_values() variable; multi ones include "All" as `.+` (`.*` would also match
// series without the label).
func queryVar(name, label, query string, multi bool) obj {
	v := obj{
		"name": name, "label": label, "type": "query", "datasource": dsRef,
		"definition": query,
		"query":      obj{"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
		"refresh":    2, "regex": "", "sort": 1, "hide": 0, "skipUrlSync": false,
		"includeAll": multi, "multi": multi, "options": []any{}, "current": obj{},
	}
	if multi {
		v["allValue"] = ".+"
		v["current"] = obj{"selected": true, "text": []any{"All"}, "value": []any{"$__all"}}
	}
	return v
}

// json assembles the dashboard document.
func (b *board) json(cfg *Config) obj {
	var links []any
	for _, d := range Dashboards() {
		if d == b.d {
			continue
		}
		links = append(links, obj{
			"title": d.Title, "type": "link", "url": d.Path(), "icon": "dashboard",
			"keepTime": true, "includeVars": true, "targetBlank": false, "asDropdown": false,
			"tags": []any{}, "tooltip": "",
		})
	}
	links = append(links, obj{
		"title": "Runbooks", "type": "link", "url": cfg.URLs.Runbooks, "icon": "doc",
		"keepTime": false, "includeVars": false, "targetBlank": true, "asDropdown": false,
		"tags": []any{}, "tooltip": "What each Celery alert means and what to do",
	})
	return obj{
		"uid": b.d.UID, "title": b.d.Title, "description": b.descr,
		"tags":          []any{"celery", "celery-exporter"},
		"schemaVersion": schemaVersion, "version": 1, "editable": true, "graphTooltip": 1,
		"timezone": "", "refresh": "30s", "fiscalYearStartMonth": 0, "liveNow": false, "weekStart": "",
		"time":       obj{"from": "now-3h", "to": "now"},
		"timepicker": obj{},
		"templating": obj{"list": b.vars},
		"annotations": obj{"list": []any{obj{
			"builtIn": 1, "datasource": obj{"type": "grafana", "uid": "-- Grafana --"}, "enable": true,
			"hide": true, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
		}}},
		"links":  links,
		"panels": b.panels,
	}
}

// matchers joins label matchers into a selector; none gives "" (the bare metric name).
func matchers(ms ...string) string {
	if len(ms) == 0 {
		return ""
	}
	return "{" + strings.Join(ms, ", ") + "}"
}

// indent indents every line of a multi-line expression by two spaces, to nest it in a call.
func indent(expr string) string { return "  " + strings.ReplaceAll(expr, "\n", "\n  ") }

func mib(v float64) float64 { return v * 1024 * 1024 }

func windowTitle(what string, w Duration) string { return fmt.Sprintf("%s in %s", what, w) }
