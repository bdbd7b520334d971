package bundle

import (
	"fmt"
	"slices"
	"strings"
)

// Kinds of app alerts (app_alerts[].kind). The bundle knows only these shapes; the names of
// breakers, log events, tasks and values come from the config.
const (
	// KindBreakerOpen fires while a circuit breaker (exporter --config.file) is open.
	KindBreakerOpen = "breaker_open"
	// KindLogEvent fires on any log line with one of the events within the window.
	KindLogEvent = "log_event"
	// KindTaskFailures fires on any failure of a task (short name) within the window, plus any
	// log line with one of the optional events.
	KindTaskFailures = "task_failures"
	// KindAppValueAbove fires while an app value (celery_app_value) is above the threshold.
	KindAppValueAbove = "app_value_above"
)

// AppKinds lists every kind of app alert.
var AppKinds = []string{KindBreakerOpen, KindLogEvent, KindTaskFailures, KindAppValueAbove}

// AppAlert is one alert on the application's own signals (rules/config.yaml app_alerts).
type AppAlert struct {
	Alert    string   `yaml:"alert"`
	Kind     string   `yaml:"kind"`
	Enabled  *bool    `yaml:"enabled"`
	Severity string   `yaml:"severity"`
	For      Duration `yaml:"for"`
	// Window of the log_event and task_failures kinds; empty uses windows.app_events.
	Window Duration `yaml:"window"`
	// Summary and Description are the annotations; %for%, %window% and %threshold% in them are
	// replaced by the alert's values, so a shortened variant still says the truth.
	Summary     string `yaml:"summary"`
	Description string `yaml:"description"`
	// Runbook is the anchor of the alert's section at urls.runbooks; empty uses the lower-case
	// alert name (the slug of a heading named after the alert).
	Runbook string `yaml:"runbook"`
	// Title of the alert's stat on the success criteria dashboard; empty uses a default per kind.
	Title     string   `yaml:"title"`
	Breaker   string   `yaml:"breaker"`
	Events    []string `yaml:"events"`
	Task      string   `yaml:"task"`
	Value     string   `yaml:"value"`
	Threshold float64  `yaml:"threshold"`
}

// On says whether the render holds the alert.
func (a *AppAlert) On() bool { return a.Enabled == nil || *a.Enabled }

// enabledAppAlerts are the app alerts the render holds, in config order.
func (c *Config) enabledAppAlerts() []AppAlert {
	var out []AppAlert
	for _, a := range c.AppAlerts {
		if a.On() {
			out = append(out, a)
		}
	}
	return out
}

// AlertNames lists every alert this config renders: the enabled built-ins, then the enabled app
// alerts.
func (c *Config) AlertNames() []string {
	var out []string
	for _, n := range alertOrder {
		if c.AlertEnabled(n) {
			out = append(out, n)
		}
	}
	for _, a := range c.enabledAppAlerts() {
		out = append(out, a.Alert)
	}
	return out
}

// appWindow is the window of a log_event or task_failures alert.
func (c *Config) appWindow(a AppAlert) Duration {
	if a.Window > 0 {
		return a.Window
	}
	return c.Windows[WindowAppEvents]
}

// appFor is an app alert's `for`: the for map overrides the entry (so an overlay can shorten it).
func (c *Config) appFor(a AppAlert) Duration {
	if d, ok := c.For[a.Alert]; ok {
		return d
	}
	return a.For
}

// appCondition is the alert's condition without its threshold comparison, with extra matchers
// (a dashboard's $job filter) on the raw series; the rules pass none.
func (c *Config) appCondition(a AppAlert, extra ...string) (expr, by string) {
	switch a.Kind {
	case KindBreakerOpen:
		return RecBreakerOpen + matchers(slices.Concat(extra, []string{eq("breaker", a.Breaker)})...), ""
	case KindLogEvent:
		return c.increaseNew("celery_log_events_total"+c.sel(slices.Concat(extra, []string{anyOf("event", a.Events)})...), c.appWindow(a)), "job, event"
	case KindTaskFailures:
		w := c.appWindow(a)
		e := c.increaseNew("celery_task_failed_total"+c.sel(slices.Concat(extra, []string{taskName(a.Task)})...), w)
		if len(a.Events) > 0 {
			e += "\n  or\n  " + c.increaseNew("celery_log_events_total"+c.sel(slices.Concat(extra, []string{anyOf("event", a.Events)})...), w)
		}
		return e, "job"
	case KindAppValueAbove:
		return "celery_app_value" + c.sel(slices.Concat(extra, []string{eq("name", a.Value)})...), ""
	}
	return "", ""
}

// appAlerts turns the enabled app_alerts entries into alerts.
func (c *Config) appAlerts() []alert {
	var out []alert
	for _, a := range c.enabledAppAlerts() {
		cond, by := c.appCondition(a)
		var expr string
		switch a.Kind {
		case KindBreakerOpen:
			expr = cond + " == 1"
		case KindAppValueAbove:
			expr = "max by (job, name) (" + cond + ") > " + fmtFloat(a.Threshold)
		default:
			expr = "sum by (" + by + ") (\n  " + cond + "\n) > 0"
		}
		forDur := c.appFor(a)
		forText := "one evaluation"
		if forDur > 0 {
			forText = forDur.String()
		}
		texts := strings.NewReplacer("%for%", forText, "%window%", c.appWindow(a).String(), "%threshold%", fmtFloat(a.Threshold))
		out = append(out, alert{
			name: a.Alert, severity: a.Severity, expr: expr,
			summary: texts.Replace(a.Summary), descr: texts.Replace(a.Description), dash: DashApp,
			runbook: a.Runbook, forDur: forDur,
		})
	}
	return out
}

// validateAppAlerts reports bad app_alerts entries through bad.
func (c *Config) validateAppAlerts(bad func(field, format string, args ...any)) {
	seen := map[string]bool{}
	for i, a := range c.AppAlerts {
		f := fmt.Sprintf("app_alerts[%d]", i)
		switch {
		case !labelName.MatchString(a.Alert):
			bad(f+".alert", "must be an alert name, got %q", a.Alert)
		case slices.Contains(alertOrder, a.Alert):
			bad(f+".alert", "%s is a built-in alert (tune it under alerts:)", a.Alert)
		case seen[a.Alert]:
			bad(f+".alert", "duplicate alert name %s", a.Alert)
		}
		seen[a.Alert] = true
		if !labelValue.MatchString(a.Severity) {
			bad(f+".severity", "must be a plain label value, got %q", a.Severity)
		}
		if strings.TrimSpace(a.Summary) == "" || strings.TrimSpace(a.Description) == "" {
			bad(f, "summary and description must not be empty")
		}
		if a.For < 0 || a.Window < 0 {
			bad(f, "for and window must not be negative")
		}
		if a.Runbook != "" && !labelName.MatchString(strings.ReplaceAll(a.Runbook, "-", "_")) {
			bad(f+".runbook", "must be an anchor without #, got %q", a.Runbook)
		}
		// Fields a kind does not read are errors, so a misplaced one cannot look like it works.
		used := map[string]bool{}
		switch a.Kind {
		case KindBreakerOpen:
			used["breaker"] = true
			if a.Breaker == "" {
				bad(f+".breaker", "must name the breaker")
			}
		case KindLogEvent:
			used["events"], used["window"] = true, true
			if len(a.Events) == 0 {
				bad(f+".events", "must list at least one log event")
			}
		case KindTaskFailures:
			used["task"], used["events"], used["window"] = true, true, true
			if a.Task == "" {
				bad(f+".task", "must name the task (short name)")
			}
		case KindAppValueAbove:
			used["value"], used["threshold"] = true, true
			if a.Value == "" {
				bad(f+".value", "must name the app value")
			}
		default:
			bad(f+".kind", "must be one of %s, got %q", strings.Join(AppKinds, ", "), a.Kind)
			continue
		}
		for field, set := range map[string]bool{
			"breaker": a.Breaker != "", "events": len(a.Events) > 0, "window": a.Window != 0,
			"task": a.Task != "", "value": a.Value != "", "threshold": a.Threshold != 0,
		} {
			if set && !used[field] {
				bad(f+"."+field, "not read by kind %s", a.Kind)
			}
		}
		for _, e := range a.Events {
			if e == "" {
				bad(f+".events", "empty event name")
			}
		}
	}
}

// AlertFor is the `for` the render gives an alert (built-in or app alert).
func (c *Config) AlertFor(name string) Duration {
	for _, a := range c.AppAlerts {
		if a.Alert == name {
			return c.appFor(a)
		}
	}
	return c.For[name]
}
