package bundle

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
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
	// Lint is a comment rendered above the rule: a linter's disable with its reason.
	Lint string `yaml:"-"`
}

// MarshalYAML writes the rule with its Lint comment above it, where pint reads its
// `# pint disable` comments.
func (r Rule) MarshalYAML() (any, error) {
	type plain Rule // without this method
	var n yaml.Node
	if err := n.Encode(plain(r)); err != nil {
		return nil, fmt.Errorf("encode rule %s%s: %w", r.Record, r.Alert, err)
	}
	n.HeadComment = r.Lint
	return &n, nil
}

// bornCounter is what increaseNew's expressions hold: the counter's raw value, on purpose.
const bornCounter = " and on (job, instance) (time() - celery_exporter_start_time_seconds"

// pintCounterDisable answers pint's promql/counter on the rules that count a counter's first
// events with increaseNew.
const pintCounterDisable = "A counter born inside the window counts with its whole value, which increase() cannot see\n" +
	"(increaseNew; docs/runbooks.md, \"How the rules count events\").\npint disable promql/counter"

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
	RecWorkerMemory      = "celery:worker_memory_bytes:max"
	RecTaskEventsLost    = "celery:task_events_lost:ratio"
	recordingGroupSuffix = ".rules"
)

// alertOrder is every alert of the bundle, in the order of the rule file and the runbooks.
var alertOrder = []string{
	"CeleryExporterDown", "CeleryBrokerUnreachable", "CeleryEventsStale",
	"CeleryExporterCollectorFailing", "CeleryExporterConfigReloadFailed", "CeleryExporterEventsDropped",
	"CeleryLogFilesMissing", "CeleryBreakerUnreadable",
	"CeleryWorkersBelowExpected", "CeleryWorkerUnresponsive", "CeleryTaskEventsDisabled",
	"CeleryTaskEventsLost", "CeleryWorkerHighMemory",
	"CeleryQueueWithoutConsumers", "CeleryQueueBacklog", "CeleryQueueBacklogCritical",
	"CeleryTaskFailureRateHigh", "CeleryTaskTimeLimitExceeded", "CeleryWorkerLost", "CeleryTaskSlow",
	"CeleryTaskStuck",
}

// AlertNames lists every built-in alert of the bundle (app alerts come from the config, see
// Config.AlertNames).
func AlertNames() []string { return append([]string(nil), alertOrder...) }

// RunbookAnchor is the anchor of an alert's section in docs/runbooks.md (GitHub's heading slug).
func RunbookAnchor(alert string) string { return strings.ToLower(alert) }

// alert is an alerting rule before rendering.
type alert struct {
	name, severity string
	expr           string
	summary, descr string
	dash           Dashboard
	// runbook is the anchor of the alert's section; empty uses RunbookAnchor(name).
	runbook string
	// forDur is the alert's `for`; built-ins take it from Config.For.
	forDur Duration
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
				if slices.Contains(alertOrder, a.name) {
					a.forDur = c.For[a.name]
				}
				rg.Rules = append(rg.Rules, c.renderAlert(a))
			}
		}
		if len(rg.Rules) > 0 { // a group without rules is an error for promtool
			groups = append(groups, rg)
		}
	}
	for i := range groups {
		for j := range groups[i].Rules {
			r := &groups[i].Rules[j]
			if strings.Contains(r.Expr, bornCounter) {
				r.Lint = pintCounterDisable
			}
			r.Expr = c.aggregate(r.Expr)
		}
	}
	if c.Interval > 0 {
		for i := range groups {
			groups[i].Interval = c.Interval.String()
		}
	}
	return groups
}

// byJob is every grouping of the rules: they all start with job.
var byJob = regexp.MustCompile(`\b(by|on) \(job\b`)

// aggregate makes every grouping of a rule's expression keep the aggregation labels, where the
// rules are written with job alone: `by (job, queue_name)` becomes `by (namespace, job,
// queue_name)` with aggregation_labels [namespace, job]. One place, so no rule can forget it.
func (c *Config) aggregate(expr string) string {
	if len(c.AggregationLabels) == 0 || slices.Equal(c.AggregationLabels, []string{"job"}) {
		return expr
	}
	return byJob.ReplaceAllString(expr, "$1 ("+strings.Join(c.AggregationLabels, ", "))
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
		// The main process' peak RSS only (prefork pool children are not in it).
		{Record: RecWorkerMaxRSS, Expr: "max by (job, hostname) (celery_worker_max_rss_bytes" + c.sel() + ")\nand on (job, hostname)\n" + RecWorkerUp + " == 1"},
		{Record: RecWorkerMemory, Expr: c.workerMemory()},
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
		{Record: RecTaskEventsLost, Expr: c.taskEventsLost(true)},
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
	}, {
		// Watch the watchers: each source reports its own health, and a failing one makes the
		// alerts that read it blind (control: consumers, ping, memory; breakers; logs).
		name: "CeleryExporterCollectorFailing", severity: "warning",
		expr:    "celery_exporter_collector_success" + c.sel() + " == 0",
		summary: "A source of the Celery exporter fails.",
		descr: "Collector {{ $labels.collector }} of exporter {{ $labels.instance }} has failed for " + c.forText("CeleryExporterCollectorFailing") +
			": its series are missing or stale, and the alerts reading them cannot fire (see the runbook's table).",
		dash: DashSuccess,
	}, {
		name: "CeleryExporterConfigReloadFailed", severity: "warning",
		expr:    "celery_exporter_config_last_reload_successful" + c.sel() + " == 0",
		summary: "The Celery exporter rejected its configuration file.",
		descr: "The last load or reload of --config.file by exporter {{ $labels.instance }} failed: the previous configuration stays in force " +
			"(or none, if it never loaded), so changed breakers and log sources are not watched.",
		dash: DashApp,
	}, {
		name: "CeleryExporterEventsDropped", severity: "warning",
		expr: "sum by (job, instance, reason) (\n  " + c.eventsDropped() + "\n) > 0\nor\nsum by (job, instance, label) (\n  " +
			c.increaseNew("celery_exporter_label_overflow_total"+c.sel(), c.Windows[WindowEventsDropped]) + "\n) > 0",
		summary: "The Celery exporter drops events or label values.",
		descr: "Exporter {{ $labels.instance }} dropped {{ $value | humanize }} {{ if $labels.reason }}events ({{ $labels.reason }}){{ else }}" +
			"values of label {{ $labels.label }} (series cap reached){{ end }} in the last " + c.Windows[WindowEventsDropped].String() +
			": task counts and the alerts on them are lower than the truth.",
		dash: DashSuccess,
	}, {
		name: "CeleryLogFilesMissing", severity: "warning",
		expr:    c.logFilesMissing(),
		summary: "The Celery exporter watches no log file.",
		descr: "Exporter {{ $labels.instance }} has log events configured but has followed no log file for " + c.forText("CeleryLogFilesMissing") +
			": the paths globs match nothing (or cannot be read), so the alerts on log events cannot fire.",
		dash: DashApp,
	}, {
		name: "CeleryBreakerUnreadable", severity: "warning",
		expr:    "max by (job, breaker) (celery_breaker_read_ok" + c.sel() + ") == 0",
		summary: "The Celery exporter cannot read a circuit breaker.",
		descr: "No exporter of job {{ $labels.job }} could read breaker {{ $labels.breaker }} for " + c.forText("CeleryBreakerUnreadable") +
			" (wrong Redis DB, key or value format): its open state is unknown and its alert cannot fire.",
		dash: DashApp,
	}}
}

func (c *Config) workerAlerts() []alert {
	n := fmt.Sprint(c.Workers.Expected)
	mem := c.Workers.Memory
	return []alert{{
		name: "CeleryWorkersBelowExpected", severity: "critical",
		// absent(up) covers a target gone from discovery: no series at all is still too few workers.
		expr:    RecWorkersUpCount + " < " + n + "\nor\n0 * absent(up" + c.sel() + ")",
		summary: "Fewer Celery workers are up than expected.",
		// Alertmanager holds CeleryQueueWithoutConsumers back while this fires (one dead worker,
		// one page), so the page names the queues left without a consumer itself.
		descr: "Only {{ $value }} of " + n + " expected Celery workers of job {{ $labels.job }} are up (for " +
			c.forText("CeleryWorkersBelowExpected") + "). Queues served only by the missing workers are not processed" +
			`{{ with printf "` + RecQueueConsumers + c.appMatchersTemplate() + ` == 0" ` + c.appLabelsTemplate() + ` | query | sortByLabel "queue_name" }}; without a live consumer now:` +
			`{{ range . }} {{ .Labels.queue_name }}{{ end }}{{ end }}.`,
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
		name: "CeleryTaskEventsLost", severity: "warning",
		expr: RecTaskEventsLost + " > " + fmtFloat(c.Tasks.EventsLostRatio) +
			"\nunless on (job, hostname)\nmax by (job, hostname) (celery_worker_task_events_enabled" + c.sel() + ") == 0",
		summary: "Task events of a Celery worker get lost.",
		descr: "{{ $value | humanizePercentage }} of the tasks worker {{ $labels.hostname }} processed in the last " +
			c.Windows[WindowTaskEventsLost].String() + " reached the exporter without their task events (threshold " +
			fmtFloat(c.Tasks.EventsLostRatio*100) + "%, for " + c.forText("CeleryTaskEventsLost") +
			"): task rates, failures and runtimes of this worker are undercounted.",
		dash: DashWorkers,
	}, {
		name: "CeleryWorkerHighMemory", severity: "warning",
		expr:    RecWorkerMemory + " > " + fmtFloat(mib(mem.MaxMiB)),
		summary: "A Celery worker uses too much memory.",
		descr: "Worker {{ $labels.hostname }} uses {{ $value | humanize1024 }}B (" + c.memoryFigure() + "), above " +
			fmtFloat(mem.MaxMiB) + " MiB for " + c.forText("CeleryWorkerHighMemory") + ".",
		dash: DashWorkers,
	}}
}

func (c *Config) queueAlerts() []alert {
	queueVars := [][2]string{{"queue", "queue_name"}}
	ign := notQueues(c.Queues.Ignore)
	backlog := func(name, severity string, limit float64) alert {
		return alert{
			name: name, severity: severity,
			expr:    RecQueueLength + matchers(ign...) + " >= " + fmtFloat(limit),
			summary: "A Celery queue is backing up.",
			descr: "Queue {{ $labels.queue_name }} holds {{ $value }} messages, at or above " + fmtFloat(limit) +
				" for " + c.forText(name) + ".",
			dash: DashWorkers, dashVars: queueVars,
		}
	}
	return []alert{{
		name: "CeleryQueueWithoutConsumers", severity: "critical",
		expr:    c.queuesWithoutConsumers(ign...),
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
	ign := notTasks(c.Tasks.Ignore)
	return []alert{{
		name: "CeleryTaskFailureRateHigh", severity: "warning",
		expr:    RecTaskFailureRatio + matchers(ign...) + " > " + fmtFloat(c.Tasks.FailureRatio),
		summary: "A Celery task fails too often.",
		descr: "{{ $value | humanizePercentage }} of the outcomes of task {{ $labels.name }} (queue {{ $labels.queue_name }}) " +
			"in the last " + c.Windows[WindowTaskFailureRatio].String() + " were failures (threshold " +
			fmtFloat(c.Tasks.FailureRatio*100) + "%).",
		dash: DashTasks, dashVars: taskVars,
	}, {
		name: "CeleryTaskTimeLimitExceeded", severity: "warning",
		expr:    "sum by (job, queue_name, name, exception) (\n  " + c.timeLimitsHit(ign...) + "\n) > 0",
		summary: "Celery tasks hit their time limit.",
		descr: "Task {{ $labels.name }} (queue {{ $labels.queue_name }}) failed {{ $value | humanize }} times with " +
			"{{ $labels.exception }} in the last " + c.Windows[WindowTimeLimit].String() + ".",
		dash: DashTasks, dashVars: taskVars,
	}, {
		name: "CeleryWorkerLost", severity: "warning",
		expr:    "sum by (job, queue_name, name) (\n  " + c.tasksLost(ign...) + "\n) > 0",
		summary: "Celery worker processes died while running tasks.",
		descr: "Task {{ $labels.name }} (queue {{ $labels.queue_name }}) was lost or requeued {{ $value | humanize }} times " +
			"in the last " + c.Windows[WindowWorkerLost].String() + " (WorkerLostError or task-rejected): a pool process was " +
			"killed, often by the OOM killer or a hard time limit.",
		dash: DashTasks, dashVars: taskVars,
	}, {
		name: "CeleryTaskSlow", severity: "warning",
		expr:    RecTaskRuntimeP95 + matchers(ign...) + " > " + fmtFloat(c.Tasks.RuntimeP95Seconds),
		summary: "A Celery task runs too long.",
		descr: "The p95 runtime of task {{ $labels.name }} (queue {{ $labels.queue_name }}) is {{ $value | humanizeDuration }}, " +
			"above " + fmtFloat(c.Tasks.RuntimeP95Seconds) + "s for " + c.forText("CeleryTaskSlow") + ".",
		dash: DashTasks, dashVars: taskVars,
	}, {
		// Running tasks, not finished ones: a hung task on the threads pool (no time limit there)
		// never finishes, so CeleryTaskSlow never sees it.
		name: "CeleryTaskStuck", severity: "warning",
		expr:    "max by (job, queue_name, name) (celery_task_running_oldest_age_seconds" + c.sel(ign...) + ") > " + fmtFloat(c.Tasks.StuckSeconds),
		summary: "A Celery task has been running too long.",
		descr: "The oldest running {{ $labels.name }} task (queue {{ $labels.queue_name }}) has been running for {{ $value | humanizeDuration }}, " +
			"above " + fmtFloat(c.Tasks.StuckSeconds) + "s: it is probably hung.",
		dash: DashTasks, dashVars: taskVars,
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

// eventsDropped: events the exporter dropped because its buffer was full, in the window.
func (c *Config) eventsDropped(extra ...string) string {
	return c.increaseNew("celery_exporter_event_errors_total"+c.sel(slices.Concat(extra, []string{eq("reason", "buffer_full")})...),
		c.Windows[WindowEventsDropped])
}

// logFilesMissing: exporters with log events configured (their counters exist from the start,
// at 0) that follow no log file.
func (c *Config) logFilesMissing() string {
	return "max by (job, instance) (celery_log_files_watched" + c.sel() + ") == 0\nand on (job, instance)\n" +
		"count by (job, instance) (celery_log_events_total" + c.sel() + ")"
}

// taskEventsLost: per worker, the share of tasks processed (heartbeat count) whose task events
// did not arrive. Max over exporter replicas: they count the same worker. A worker with task
// events off has no seen counter (CeleryTaskEventsDisabled's case), nor has an exporter older
// than the counter: no share. The alert's share (judged) counts only windows with at least
// EventsLostMinTasks processed tasks, over seen counters that existed all through the window
// (as many samples as their target had successful scrapes): a seen counter born inside it, at its
// first task-started, misses the events before its first scrape. The dashboard shows it unjudged.
func (c *Config) taskEventsLost(judged bool) string {
	w := c.Windows[WindowTaskEventsLost].String()
	seen := "increase(celery_worker_tasks_seen_total" + c.sel() + "[" + w + "])"
	filter := " > 0"
	if judged {
		seen += "\n    and (count_over_time(celery_worker_tasks_seen_total" + c.sel() + "[" + w +
			"]) >= on (job, instance) group_left () sum_over_time(up" + c.sel() + "[" + w + "]))"
		filter = " >= " + fmtFloat(c.Tasks.EventsLostMinTasks)
	}
	return "clamp_min(1 - (\n  max by (job, hostname) (\n    " + seen + "\n  )\n" +
		"  /\n  (max by (job, hostname) (increase(celery_worker_tasks_processed_total" + c.sel() + "[" + w + "]))" + filter + ")\n), 0)"
}

// workerMemory: the figure of the memory criterion per live worker, from the configured source.
func (c *Config) workerMemory() string {
	m := c.Workers.Memory
	if m.Source != MemoryCAdvisor {
		return "max by (job, hostname) (celery_worker_max_rss_bytes" + c.sel() + ")\nand on (job, hostname)\n" + RecWorkerUp + " == 1"
	}
	// With tenants (namespace), a pod is known by its namespace and name: the same StatefulSet
	// pod name in two namespaces is two containers. cAdvisor's series carry the pod's namespace.
	l := strings.Join(append(c.tenantLabels(), m.CAdvisor.JoinLabel), ", ")
	return "max by (job, hostname) (\n  label_replace(" + RecWorkerUp + " == 1, " + strconv.Quote(m.CAdvisor.JoinLabel) + ", \"$1\", \"hostname\", " +
		strconv.Quote(m.CAdvisor.HostnameRegex) + ")\n  * on (" + l + ") group_left ()\n  sum by (" + l +
		") (container_memory_working_set_bytes{" + strings.TrimSpace(m.CAdvisor.Selector) + "})\n)"
}

// memoryFigure says in words which figure the memory criterion reads.
func (c *Config) memoryFigure() string {
	if c.Workers.Memory.Source == MemoryCAdvisor {
		return "working set of its container from cAdvisor, pool children included"
	}
	return "peak RSS of its main process from inspect stats; prefork pool children are not included"
}

// appMatchersTemplate is a printf format selecting the alert's app by its aggregation labels
// (`{namespace=%q,job=%q}`), for a query in an annotation; appLabelsTemplate gives its arguments.
func (c *Config) appMatchersTemplate() string {
	var ms []string
	for _, l := range c.aggregationLabels() {
		ms = append(ms, l+"=%q")
	}
	return "{" + strings.Join(ms, ",") + "}"
}

func (c *Config) appLabelsTemplate() string {
	var ls []string
	for _, l := range c.aggregationLabels() {
		ls = append(ls, "$labels."+l)
	}
	return strings.Join(ls, " ")
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
	maps.Copy(labels, c.AlertLabels)
	// The dashboard opens on the alert's app: its job and tenant labels (namespace, cluster).
	var vars []string
	for _, l := range c.aggregationLabels() {
		vars = append(vars, "var-"+l+"={{ $labels."+l+" | urlquery }}")
	}
	for _, v := range a.dashVars {
		vars = append(vars, "var-"+v[0]+"={{ $labels."+v[1]+" | urlquery }}")
	}
	url := c.DashboardURL(a.dash) + "?" + strings.Join(vars, "&")
	runbook := a.runbook
	if runbook == "" {
		runbook = RunbookAnchor(a.name)
	}
	r := Rule{
		Alert:  a.name,
		Expr:   a.expr,
		Labels: labels,
		Annotations: map[string]string{
			"summary":       a.summary,
			"description":   a.descr,
			"runbook_url":   c.URLs.Runbooks + "#" + runbook,
			"dashboard_url": url,
		},
	}
	if d := a.forDur; d > 0 {
		r.For = d.String()
	}
	return r
}
