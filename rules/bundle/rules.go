package bundle

import (
	"fmt"
	"slices"
	"strings"
)

// RuleGroup is one Prometheus rule group, in the rule-file layout.
type RuleGroup struct {
	Name     string `yaml:"name"`
	Interval string `yaml:"interval,omitempty"`
	Rules    []Rule `yaml:"rules"`
}

// Rule is a recording or an alerting rule.
type Rule struct {
	Record      string            `yaml:"record,omitempty"`
	Alert       string            `yaml:"alert,omitempty"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

// Names of the recorded series; dashboards and alerts share them.
const (
	RecQueueLength       = "celery:queue_length:max"
	RecQueueConsumers    = "celery:queue_consumers:max"
	RecWorkerUp          = "celery:worker_up:max"
	RecWorkersUpCount    = "celery:workers_up:count"
	RecWorkerMaxRSS      = "celery:worker_max_rss_bytes:max"
	RecTaskFailures      = "celery:task_failures:increase"
	RecTaskOutcomes      = "celery:task_outcomes:increase"
	RecTaskFailureRatio  = "celery:task_failure:ratio"
	RecTaskRuntimeP95    = "celery:task_runtime_seconds:p95"
	RecLastEventAge      = "celery:exporter_last_event_age:seconds"
	RecBreakerOpen       = "celery:breaker_open:max"
	recordingGroupSuffix = ".rules"
)

// alertOrder is every alert of the bundle, in the order of the rule file and the runbooks.
var alertOrder = []string{
	"CeleryExporterDown", "CeleryBrokerUnreachable", "CeleryEventsStale",
	"CeleryWorkersBelowExpected", "CeleryWorkerUnresponsive", "CeleryTaskEventsDisabled",
	"CeleryWorkerHighMemory",
	"CeleryQueueWithoutConsumers", "CeleryQueueBacklog", "CeleryQueueBacklogCritical",
	"CeleryTaskFailureRateHigh", "CeleryTaskTimeLimitExceeded", "CeleryWorkerLost", "CeleryTaskSlow",
	"ZepCallErrors", "ZepMemoryDegraded", "PreferenceExtractionFailing",
}

// AlertNames lists every alert the bundle defines.
func AlertNames() []string { return append([]string(nil), alertOrder...) }

// RunbookAnchor is the anchor of an alert's section in docs/runbooks.md (GitHub's heading slug).
func RunbookAnchor(alert string) string { return strings.ToLower(alert) }

// alert is an alerting rule before rendering.
type alert struct {
	name, severity string
	expr           string
	summary, descr string
	dash           Dashboard
	// dashVars are extra Grafana variables filled from the alert's labels (var name → label).
	dashVars [][2]string
}

// RuleGroups builds every group: the recording rules first (Prometheus evaluates groups
// independently, so alerts may see recorded series one interval late; `for` absorbs it).
func (c *Config) RuleGroups() []RuleGroup {
	groups := []RuleGroup{{Name: "celery" + recordingGroupSuffix, Rules: c.recordingRules()}}
	for _, g := range []struct {
		name   string
		alerts []alert
	}{
		{"celery.exporter", c.exporterAlerts()},
		{"celery.workers", c.workerAlerts()},
		{"celery.queues", c.queueAlerts()},
		{"celery.tasks", c.taskAlerts()},
		{"celery.app", c.appAlerts()},
	} {
		rg := RuleGroup{Name: g.name}
		for _, a := range g.alerts {
			if c.AlertEnabled(a.name) {
				rg.Rules = append(rg.Rules, c.renderAlert(a))
			}
		}
		if len(rg.Rules) > 0 { // a group without rules is an error for promtool
			groups = append(groups, rg)
		}
	}
	if c.Interval > 0 {
		for i := range groups {
			groups[i].Interval = c.Interval.String()
		}
	}
	return groups
}

func (c *Config) recordingRules() []Rule {
	wf, wr := c.Windows[WindowTaskFailureRatio], c.Windows[WindowTaskRuntime]
	failed := "celery_task_failed_total" + c.sel()
	succeeded := "celery_task_succeeded_total" + c.sel()
	return []Rule{
		// max over exporter replicas: two exporters watching one broker report the same queues.
		{Record: RecQueueLength, Expr: "max by (job, queue_name) (celery_queue_length" + c.sel() + ")"},
		{Record: RecQueueConsumers, Expr: "max by (job, queue_name) (celery_queue_consumers" + c.sel() + ")"},
		{Record: RecWorkerUp, Expr: "max by (job, hostname) (celery_worker_up" + c.sel() + ")"},
		// Falls back to 0 while the exporter's target exists, so the count does not vanish when
		// the last worker's series are purged (or were never there).
		{Record: RecWorkersUpCount, Expr: "count by (job) (" + RecWorkerUp + " == 1)\nor on (job)\n0 * max by (job) (up" + c.sel() + ")"},
		{Record: RecWorkerMaxRSS, Expr: "max by (job, hostname) (celery_worker_max_rss_bytes" + c.sel() + ")\nand on (job, hostname)\n" + RecWorkerUp + " == 1"},
		{Record: RecTaskFailures, Expr: "sum by (job, queue_name, name) (\n  " + c.increaseNew(failed, wf) + "\n)"},
		{Record: RecTaskOutcomes, Expr: "sum by (job, queue_name, name) (\n  " + c.increaseNew(succeeded, wf) + "\n  or\n  " + c.increaseNew(failed, wf) + "\n)"},
		// Tasks with no outcome in the window have no ratio rather than 0/0.
		{Record: RecTaskFailureRatio, Expr: "(" + RecTaskFailures + " or 0 * " + RecTaskOutcomes + ")\n/\n(" + RecTaskOutcomes + " > 0)"},
		// Over increaseNew, not rate(): a task's histogram series appears with its first
		// observation, which rate() would never see. `>= 0` drops the NaN of windows with no run.
		{Record: RecTaskRuntimeP95, Expr: "histogram_quantile(0.95, sum by (job, queue_name, name, le) (\n  " +
			c.increaseNew("celery_task_runtime_seconds_bucket"+c.sel(), wr) + "\n)) >= 0"},
		{Record: RecLastEventAge, Expr: "time() - celery_exporter_last_event_timestamp_seconds" + c.sel()},
		{Record: RecBreakerOpen, Expr: "max by (job, breaker) (celery_breaker_open" + c.sel() + ")"},
	}
}

func (c *Config) exporterAlerts() []alert {
	return []alert{{
		name: "CeleryExporterDown", severity: "critical",
		// One alert per down target, plus one without `instance` while no target of the job is up
		// (all down, or none discovered). Only the latter makes the job's other alerts blind, so
		// Alertmanager inhibits on equal [job, instance]: with two replicas, one down silences
		// nothing the other still sees. (Not absent(up == 1): absent() of an expression other
		// than a selector has no labels, not even job.)
		expr:    "up" + c.sel() + " == 0\nor\nmax by (job) (up" + c.sel() + ") == 0\nor\nabsent(up" + c.sel() + ")",
		summary: "The Celery exporter is down or not scraped.",
		descr: "{{ if $labels.instance }}Prometheus cannot scrape the Celery exporter {{ $labels.instance }} of job {{ $labels.job }}: " +
			"the target is down. Another replica of the job, if any, keeps the other Celery alerts working." +
			"{{ else }}No Celery exporter of job {{ $labels.job }} is up (all targets down, or none discovered): " +
			"every other Celery alert of the job is blind until one is back.{{ end }}",
		dash: DashSuccess,
	}, {
		name: "CeleryBrokerUnreachable", severity: "critical",
		expr:    "max by (job) (celery_up" + c.sel() + ") == 0",
		summary: "The Celery broker (Redis) does not answer the exporter.",
		descr: "No exporter of job {{ $labels.job }} could read the Redis broker for " + c.forText("CeleryBrokerUnreachable") +
			": workers cannot receive tasks and producers cannot send them.",
		dash: DashWorkers,
	}, {
		name: "CeleryEventsStale", severity: "warning",
		expr: RecLastEventAge + " > " + fmtFloat(c.Events.StaleAfter.Seconds()) +
			"\nand on (job, instance)\nup" + c.sel() + " == 1",
		summary: "The exporter receives no Celery events.",
		descr: "Exporter {{ $labels.instance }} received its last Celery event {{ $value | humanizeDuration }} ago " +
			"(threshold " + c.Events.StaleAfter.String() + "). Workers send heartbeats every 2s, so either no worker is alive, " +
			"workers run without events (-E / worker_send_task_events) or the exporter lost its subscription.",
		dash: DashWorkers,
	}}
}

func (c *Config) workerAlerts() []alert {
	n := fmt.Sprint(c.Workers.Expected)
	rss := fmtFloat(c.Workers.MaxRSSMiB * 1024 * 1024)
	return []alert{{
		name: "CeleryWorkersBelowExpected", severity: "critical",
		// absent(up) covers a target gone from discovery: no series at all is still too few workers.
		expr:    RecWorkersUpCount + " < " + n + "\nor\n0 * absent(up" + c.sel() + ")",
		summary: "Fewer Celery workers are up than expected.",
		descr: "Only {{ $value }} of " + n + " expected Celery workers of job {{ $labels.job }} are up (for " +
			c.forText("CeleryWorkersBelowExpected") + "). Queues served only by the missing workers are not processed.",
		dash: DashWorkers,
	}, {
		name: "CeleryWorkerUnresponsive", severity: "critical",
		expr:    c.workersUnresponsive(),
		summary: "A Celery worker heartbeats but does not answer remote control.",
		descr: "Worker {{ $labels.hostname }} sends heartbeats but has not answered ping for " + c.forText("CeleryWorkerUnresponsive") +
			". It is probably stuck after a broker reconnect and no longer consumes its queues.",
		dash: DashWorkers,
	}, {
		name: "CeleryTaskEventsDisabled", severity: "warning",
		expr:    c.workersWithoutTaskEvents(),
		summary: "A live Celery worker sends no task events.",
		descr: "Worker {{ $labels.hostname }} processes tasks but none of its task events arrive (for " +
			c.forText("CeleryTaskEventsDisabled") + "): task rates, failures and runtimes of this worker are not measured.",
		dash: DashWorkers,
	}, {
		name: "CeleryWorkerHighMemory", severity: "warning",
		expr:    RecWorkerMaxRSS + " > " + rss,
		summary: "A Celery worker uses too much memory.",
		descr: "Worker {{ $labels.hostname }} has a max RSS of {{ $value | humanize1024 }}B, above " +
			fmtFloat(c.Workers.MaxRSSMiB) + " MiB for " + c.forText("CeleryWorkerHighMemory") + ".",
		dash: DashWorkers,
	}}
}

func (c *Config) queueAlerts() []alert {
	queueVars := [][2]string{{"queue", "queue_name"}}
	backlog := func(name, severity string, limit float64) alert {
		return alert{
			name: name, severity: severity,
			expr:    RecQueueLength + " >= " + fmtFloat(limit),
			summary: "A Celery queue is backing up.",
			descr: "Queue {{ $labels.queue_name }} holds {{ $value }} messages, at or above " + fmtFloat(limit) +
				" for " + c.forText(name) + ".",
			dash: DashWorkers, dashVars: queueVars,
		}
	}
	return []alert{{
		name: "CeleryQueueWithoutConsumers", severity: "critical",
		expr:    c.queuesWithoutConsumers(),
		summary: "A Celery queue has no live consumer.",
		descr: "Queue {{ $labels.queue_name }} ({{ $value }} messages) has had no live consumer for " +
			c.forText("CeleryQueueWithoutConsumers") + ": its tasks are not processed.",
		dash: DashWorkers, dashVars: queueVars,
	},
		backlog("CeleryQueueBacklog", "warning", c.Queues.BacklogWarning),
		backlog("CeleryQueueBacklogCritical", "critical", c.Queues.BacklogCritical),
	}
}

func (c *Config) taskAlerts() []alert {
	taskVars := [][2]string{{"queue", "queue_name"}, {"task", "name"}}
	return []alert{{
		name: "CeleryTaskFailureRateHigh", severity: "warning",
		expr:    RecTaskFailureRatio + " > " + fmtFloat(c.Tasks.FailureRatio),
		summary: "A Celery task fails too often.",
		descr: "{{ $value | humanizePercentage }} of the outcomes of task {{ $labels.name }} (queue {{ $labels.queue_name }}) " +
			"in the last " + c.Windows[WindowTaskFailureRatio].String() + " were failures (threshold " +
			fmtFloat(c.Tasks.FailureRatio*100) + "%).",
		dash: DashTasks, dashVars: taskVars,
	}, {
		name: "CeleryTaskTimeLimitExceeded", severity: "warning",
		expr:    "sum by (job, queue_name, name, exception) (\n  " + c.timeLimitsHit() + "\n) > 0",
		summary: "Celery tasks hit their time limit.",
		descr: "Task {{ $labels.name }} (queue {{ $labels.queue_name }}) failed {{ $value | humanize }} times with " +
			"{{ $labels.exception }} in the last " + c.Windows[WindowTimeLimit].String() + ".",
		dash: DashTasks, dashVars: taskVars,
	}, {
		name: "CeleryWorkerLost", severity: "warning",
		expr:    "sum by (job, queue_name, name) (\n  " + c.tasksLost() + "\n) > 0",
		summary: "Celery worker processes died while running tasks.",
		descr: "Task {{ $labels.name }} (queue {{ $labels.queue_name }}) was lost or requeued {{ $value | humanize }} times " +
			"in the last " + c.Windows[WindowWorkerLost].String() + " (WorkerLostError or task-rejected): a pool process was " +
			"killed, often by the OOM killer or a hard time limit.",
		dash: DashTasks, dashVars: taskVars,
	}, {
		name: "CeleryTaskSlow", severity: "warning",
		expr:    RecTaskRuntimeP95 + " > " + fmtFloat(c.Tasks.RuntimeP95Seconds),
		summary: "A Celery task runs too long.",
		descr: "The p95 runtime of task {{ $labels.name }} (queue {{ $labels.queue_name }}) is {{ $value | humanizeDuration }}, " +
			"above " + fmtFloat(c.Tasks.RuntimeP95Seconds) + "s for " + c.forText("CeleryTaskSlow") + ".",
		dash: DashTasks, dashVars: taskVars,
	}}
}

func (c *Config) appAlerts() []alert {
	return []alert{{
		name: "ZepCallErrors", severity: "warning",
		expr:    "sum by (job, event) (\n  " + c.logEvents(c.App.ZepErrorEvent, c.Windows[WindowZepCallErrors]) + "\n) > 0",
		summary: "The app logged Zep call errors.",
		descr: "{{ $value | humanize }} {{ $labels.event }} log events in the last " + c.Windows[WindowZepCallErrors].String() +
			": Zep memory writes failed with an unexpected exception (swallowed, so tasks still succeed).",
		dash: DashApp,
	}, {
		name: "ZepMemoryDegraded", severity: "warning",
		expr:    RecBreakerOpen + "{" + eq("breaker", c.App.Breaker) + "} == 1",
		summary: "The Zep circuit breaker is open: memory runs degraded.",
		// The reason lives on celery_breaker_info, which the alert itself must not depend on.
		descr: "Breaker {{ $labels.breaker }} has been open for " + c.forText("ZepMemoryDegraded") +
			`{{ range printf "celery_breaker_info{job=%q,breaker=%q} == 1" $labels.job $labels.breaker | query }}` +
			` (mode {{ .Labels.mode }}, reason {{ .Labels.reason }}){{ end }}: Zep writes are skipped.`,
		dash: DashApp,
	}, {
		name: "PreferenceExtractionFailing", severity: "warning",
		expr:    "sum by (job) (\n  " + c.preferenceFailures() + "\n) > 0",
		summary: "Preference extraction is failing.",
		descr: "{{ $value | humanize }} " + c.App.PreferenceTask + " failures (task failures plus " + c.App.PreferenceFailedEvent +
			" log events) in the last " + c.Windows[WindowPreferenceFailure].String() + ".",
		dash: DashApp,
	}}
}

// The conditions below are shared by an alert and its stat on the success criteria dashboard, so
// the two cannot drift apart. The dashboards call them on dashConfig (raw series selected by
// $job) and pass matchers for the recorded series and the panel's filters (mJob, mQueue); the
// rules pass none, as recorded series only hold the selected jobs.

// queuesWithoutConsumers: queues with messages, or expected ones, that no live worker consumes.
func (c *Config) queuesWithoutConsumers(rec ...string) string {
	hasWork := RecQueueLength + matchers(rec...) + " > 0"
	if len(c.Queues.Expected) > 0 {
		hasWork += " or " + RecQueueLength + matchers(slices.Concat(rec, []string{anyOf("queue_name", c.Queues.Expected)})...)
	}
	return "(" + hasWork + ")\nand on (job, queue_name)\n" + RecQueueConsumers + matchers(rec...) + " == 0"
}

// workersUnresponsive: live workers that do not answer ping.
func (c *Config) workersUnresponsive(rec ...string) string {
	return RecWorkerUp + matchers(rec...) + " == 1\nand on (job, hostname)\nmax by (job, hostname) (celery_worker_ping_ok" + c.sel() + ") == 0"
}

// workersWithoutTaskEvents: live workers whose task events do not arrive.
func (c *Config) workersWithoutTaskEvents(rec ...string) string {
	return "max by (job, hostname) (celery_worker_task_events_enabled" + c.sel() + ") == 0\nand on (job, hostname)\n" +
		RecWorkerUp + matchers(rec...) + " == 1"
}

// timeLimitsHit: task failures with a time-limit exception in the window, per series.
func (c *Config) timeLimitsHit(extra ...string) string {
	return c.increaseNew("celery_task_failed_total"+c.sel(slices.Concat(extra, []string{anyOf("exception", c.Tasks.TimeLimitExceptions)})...),
		c.Windows[WindowTimeLimit])
}

// tasksLost: task failures with a worker-lost exception plus rejections (requeues) in the window.
func (c *Config) tasksLost(extra ...string) string {
	w := c.Windows[WindowWorkerLost]
	return c.increaseNew("celery_task_failed_total"+c.sel(slices.Concat(extra, []string{anyOf("exception", c.Tasks.WorkerLostExceptions)})...), w) +
		"\n  or\n  " + c.increaseNew("celery_task_rejected_total"+c.sel(extra...), w)
}

// logEvents: log lines with the event in the window.
func (c *Config) logEvents(event string, w Duration, extra ...string) string {
	return c.increaseNew("celery_log_events_total"+c.sel(slices.Concat(extra, []string{eq("event", event)})...), w)
}

// preferenceFailures: failures of the preference task plus its failure log events in the window.
func (c *Config) preferenceFailures() string {
	w := c.Windows[WindowPreferenceFailure]
	return c.increaseNew("celery_task_failed_total"+c.sel(taskName(c.App.PreferenceTask)), w) +
		"\n  or\n  " + c.logEvents(c.App.PreferenceFailedEvent, w)
}

// forText is an alert's `for` in words for its description.
func (c *Config) forText(alert string) string {
	if d := c.For[alert]; d > 0 {
		return d.String()
	}
	return "one evaluation"
}

func (c *Config) renderAlert(a alert) Rule {
	labels := map[string]string{"severity": a.severity}
	if o := c.Alerts[a.name]; o.Severity != "" {
		labels["severity"] = o.Severity
	}
	for k, v := range c.AlertLabels {
		labels[k] = v
	}
	url := c.DashboardURL(a.dash) + "?var-job={{ $labels.job | urlquery }}"
	for _, v := range a.dashVars {
		url += "&var-" + v[0] + "={{ $labels." + v[1] + " | urlquery }}"
	}
	r := Rule{
		Alert:  a.name,
		Expr:   a.expr,
		Labels: labels,
		Annotations: map[string]string{
			"summary":       a.summary,
			"description":   a.descr,
			"runbook_url":   c.URLs.Runbooks + "#" + RunbookAnchor(a.name),
			"dashboard_url": url,
		},
	}
	if d := c.For[a.name]; d > 0 {
		r.For = d.String()
	}
	return r
}
