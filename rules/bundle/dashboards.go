package bundle

import (
	"slices"
	"strings"
)

// Label matchers on Grafana variables.
const (
	mJob      = `job=~"$job"`
	mInstance = `instance=~"$instance"`
	mQueue    = `queue_name=~"$queue"`
	mTask     = `name=~"$task"`
)

// dashConfig is the config with the job variable as selector, for queries shared with rules.
func (c *Config) dashConfig() *Config {
	dc := *c
	dc.Selector = mJob
	return &dc
}

// DashboardJSON builds every dashboard document, keyed by dashboard.
func (c *Config) DashboardJSON() map[Dashboard]obj {
	out := map[Dashboard]obj{}
	for _, b := range []*board{c.successDashboard(), c.tasksDashboard(), c.workersDashboard(), c.appDashboard()} {
		c.withTenants(b)
		out[b.d] = b.json(c)
	}
	return out
}

func (c *Config) successDashboard() *board {
	dc := c.dashConfig()
	b := &board{d: DashSuccess, vars: variables(),
		descr: "One stat per success criterion: green when it holds, red at the threshold the alerts use."}
	ji := matchers(mJob, mInstance)
	wl, tl := c.Windows[WindowWorkerLost], c.Windows[WindowTimeLimit]
	zero := "\nor vector(0)"

	b.row("Queues and workers")
	b.add(4, 5, stat("Max queue depth", "Deepest selected queue (all priorities). Alerts at "+fmtFloat(c.Queues.BacklogWarning)+
		" for "+c.For["CeleryQueueBacklog"].String()+" (warning) and "+fmtFloat(c.Queues.BacklogCritical)+" for "+
		c.For["CeleryQueueBacklogCritical"].String()+" (critical).", "short", redAtOrAbove(c.Queues.BacklogWarning), nil, &DashWorkers,
		target{expr: "max(" + RecQueueLength + matchers(mJob, mQueue) + ")"}))
	b.add(4, 5, stat("Workers up", "Live workers (heartbeating); "+fmtFloat(float64(c.Workers.Expected))+" expected.",
		"short", greenAtOrAbove(float64(c.Workers.Expected)), nil, &DashWorkers,
		target{expr: "sum(" + RecWorkersUpCount + matchers(mJob) + ")" + zero}))
	b.add(4, 5, stat("Queues without consumer", "Queues with messages (or expected: "+strings.Join(c.Queues.Expected, ", ")+
		") and no live consumer.", "short", redAtOrAbove(1), nil, &DashWorkers,
		target{expr: "count(\n" + indent(dc.queuesWithoutConsumers(mJob, mQueue)) + "\n)" + zero}))
	b.add(4, 5, stat("Unresponsive workers", "Workers that heartbeat but do not answer ping (stuck after a broker reconnect).",
		"short", redAtOrAbove(1), nil, &DashWorkers,
		target{expr: "count(\n" + indent(dc.workersUnresponsive(mJob)) + "\n)" + zero}))
	b.add(4, 5, stat("Broker reachable", "celery_up: the exporter reads the Redis broker.", "short", greenAtOrAbove(1), upDownMap, &DashWorkers,
		target{expr: "min(celery_up" + ji + ")"}))
	b.add(4, 5, stat("Exporter up", "Prometheus scrapes the exporter.", "short", greenAtOrAbove(1), upDownMap, &DashWorkers,
		target{expr: "min(up" + ji + ")"}))

	b.row("Tasks")
	b.add(4, 5, stat("Worst task failure ratio", "Highest failures / outcomes of a task over "+c.Windows[WindowTaskFailureRatio].String()+
		"; alert above "+fmtFloat(c.Tasks.FailureRatio*100)+"%.", "percentunit", redAtOrAbove(c.Tasks.FailureRatio), nil, &DashTasks,
		target{expr: "max(" + RecTaskFailureRatio + matchers(mJob, mQueue) + ")" + zero}))
	b.add(4, 5, stat("Worst task p95 runtime", "Highest p95 runtime of a task over "+c.Windows[WindowTaskRuntime].String()+
		"; alert above "+fmtFloat(c.Tasks.RuntimeP95Seconds)+"s.", "s", redAtOrAbove(c.Tasks.RuntimeP95Seconds), nil, &DashTasks,
		target{expr: "max(" + RecTaskRuntimeP95 + matchers(mJob, mQueue) + ")" + zero}))
	b.add(4, 5, stat("Oldest running task", "Age of the oldest task running now (events and inspect active; also on the threads pool, "+
		"which has no time limits); alert above "+fmtFloat(c.Tasks.StuckSeconds)+"s.", "s", redAtOrAbove(c.Tasks.StuckSeconds), nil, &DashTasks,
		target{expr: "max(celery_task_running_oldest_age_seconds" + matchers(mJob, mQueue) + ")" + zero}))
	b.add(4, 5, stat(windowTitle("Lost or requeued tasks", wl), "Tasks failed with "+strings.Join(c.Tasks.WorkerLostExceptions, ", ")+
		" or rejected (requeued) when a pool process died.", "short", redAtOrAbove(1), nil, &DashTasks,
		target{expr: "sum(\n  " + dc.tasksLost(mQueue) + "\n)" + zero}))
	b.add(4, 5, stat(windowTitle("Time limits hit", tl), "Task failures with "+strings.Join(c.Tasks.TimeLimitExceptions, " or ")+".",
		"short", redAtOrAbove(1), nil, &DashTasks,
		target{expr: "sum(\n  " + dc.timeLimitsHit(mQueue) + "\n)" + zero}))
	b.add(4, 5, stat("Seconds since last event", "Age of the last Celery event the exporter received (heartbeats every 2s); alert after "+
		c.Events.StaleAfter.String()+".", "s", redAtOrAbove(c.Events.StaleAfter.Seconds()), nil, &DashWorkers,
		target{expr: "max(" + RecLastEventAge + ji + ")"}))
	b.add(4, 5, stat("Workers without task events", "Live workers whose task events do not arrive (events disabled).",
		"short", redAtOrAbove(1), nil, &DashWorkers,
		target{expr: "count(\n" + indent(dc.workersWithoutTaskEvents(mJob)) + "\n)" + zero}))

	b.row("App and resources")
	for _, a := range c.enabledAppAlerts() {
		b.add(4, 5, c.appStat(dc, a))
	}
	b.add(4, 5, stat("Max worker memory", "Highest memory of a live worker ("+c.memoryFigure()+"); alert above "+
		fmtFloat(c.Workers.Memory.MaxMiB)+" MiB.", "bytes", redAtOrAbove(mib(c.Workers.Memory.MaxMiB)), nil, &DashWorkers,
		target{expr: "max(" + RecWorkerMemory + matchers(mJob) + ")"}))
	b.add(4, 5, stat("Max worker CPU", "Highest CPU use of a worker's main process (1 = one core); criterion below "+
		fmtFloat(c.Workers.CPURatio*100)+"%.", "percentunit", redAtOrAbove(c.Workers.CPURatio), nil, &DashWorkers,
		// Summed per exporter replica: two replicas report the same worker's CPU twice.
		target{expr: "max(sum by (instance, hostname) (rate(celery_worker_cpu_seconds_total" + ji + "[$__rate_interval])))"}))
	b.add(4, 5, stat("Celery alerts firing", "Alerts of this bundle firing now for the selected job.", "short", redAtOrAbove(1), nil, nil,
		target{expr: "count(ALERTS" + matchers(`alertstate="firing"`, mJob, anyOf("alertname", c.AlertNames())) + ")" + zero}))
	return b
}

func (c *Config) tasksDashboard() *board {
	b := &board{d: DashTasks, descr: "Task rates by state and name, failures by exception, runtime and queue wait.",
		vars: variables(queryVar("task", "Task", `label_values(celery_task_received_total{job=~"$job"}, name)`, true))}
	sel := matchers(mJob, mInstance, mQueue, mTask)
	rate := func(m string) string { return "rate(" + m + sel + "[$__rate_interval])" }

	b.row("Throughput")
	var byState []target
	for _, s := range []string{"sent", "received", "started", "succeeded", "failed", "retried", "rejected", "revoked"} {
		byState = append(byState, target{expr: "sum(" + rate("celery_task_"+s+"_total") + ")", legend: s})
	}
	b.add(12, 8, series("Tasks by state", "Task events per second by state.", "ops", nil, byState...))
	b.add(12, 8, series("Succeeded by task", "Tasks that succeeded per second, by task name (task-succeeded events).", "ops", nil,
		target{expr: "sum by (name) (" + rate("celery_task_succeeded_total") + ")", legend: "{{name}}"}))
	b.add(12, 8, series("Failed by task and exception", "Task failures per second, by task name and exception class (task-failed events).", "ops", nil,
		target{expr: "sum by (name, exception) (" + rate("celery_task_failed_total") + ")", legend: "{{name}}: {{exception}}"}))
	b.add(12, 8, series("Failure ratio by task", "Failures / outcomes over "+c.Windows[WindowTaskFailureRatio].String()+" (recorded); alert above "+
		fmtFloat(c.Tasks.FailureRatio*100)+"%.", "percentunit", redAtOrAbove(c.Tasks.FailureRatio),
		target{expr: RecTaskFailureRatio + matchers(mJob, mQueue, mTask), legend: "{{name}}"}))
	b.add(8, 8, series("Retried by task and exception", "Task retries per second, by task name and the exception that caused them (task-retried events).", "ops", nil,
		target{expr: "sum by (name, exception) (" + rate("celery_task_retried_total") + ")", legend: "{{name}}: {{exception}}"}))
	b.add(8, 8, series("Rejected and revoked", "Rejected (requeued after a lost worker) and revoked by reason.", "ops", nil,
		target{expr: "sum by (name) (" + rate("celery_task_rejected_total") + ")", legend: "rejected {{name}}"},
		target{expr: "sum by (name, reason) (" + rate("celery_task_revoked_total") + ")", legend: "{{reason}} {{name}}"}))
	b.add(8, 8, series("Accepted by worker (no task events needed)", "From the workers' stats replies: counts work even when task events are off.", "ops", nil,
		target{expr: "sum by (hostname) (rate(celery_worker_tasks_accepted_total" + matchers(mJob, mInstance, mTask) + "[$__rate_interval]))", legend: "{{hostname}}"}))

	b.row("Runtime")
	pct := func(metric, by string) []target {
		var ts []target
		for _, q := range []string{"0.5", "0.95", "0.99"} {
			ts = append(ts, target{
				expr:   "histogram_quantile(" + q + ", sum by (" + by + ", le) (" + rate(metric) + "))",
				legend: "p" + strings.TrimPrefix(q, "0.") + " {{" + by + "}}",
			})
		}
		return ts
	}
	b.add(12, 8, series("Runtime percentiles by task", "Alert when the p95 stays above "+fmtFloat(c.Tasks.RuntimeP95Seconds)+"s.", "s",
		redAtOrAbove(c.Tasks.RuntimeP95Seconds), pct("celery_task_runtime_seconds_bucket", "name")...))
	b.add(12, 8, heatmap("Runtime distribution", "Succeeded and failed task runtimes.", "s",
		"sum by (le) (increase(celery_task_runtime_seconds_bucket"+sel+"[$__rate_interval]))"))

	b.row("Queue wait")
	b.add(12, 8, series("Queue wait percentiles by queue", "From sent (or ETA) to started.", "s", nil,
		pct("celery_task_queue_wait_seconds_bucket", "queue_name")...))
	b.add(12, 8, heatmap("Queue wait distribution", "Time from sent (or ETA) to started, as a heatmap of celery_task_queue_wait_seconds; needs task-sent events (task_send_sent_event).", "s",
		"sum by (le) (increase(celery_task_queue_wait_seconds_bucket"+matchers(mJob, mInstance, mQueue, mTask)+"[$__rate_interval]))"))

	b.row("Totals")
	b.add(24, 8, table("Failures in the time range", "Failed tasks by name, queue and exception over the dashboard's time range.",
		nil, map[string]string{"Value": "failures", "name": "task", "queue_name": "queue"},
		target{expr: "sum by (name, queue_name, exception) (\n  " + increaseNewInRange("celery_task_failed_total"+sel) + "\n) > 0"}))
	return b
}

func (c *Config) workersDashboard() *board {
	b := &board{d: DashWorkers, vars: variables(),
		descr: "Queue depth, consumers and unacked messages; worker liveness, remote control and resources; the exporter itself."}
	q := matchers(mJob, mInstance, mQueue)
	w := matchers(mJob, mInstance)

	b.row("Queues")
	b.add(12, 8, series("Queue depth", "Messages waiting, all priorities summed. Alerts at "+fmtFloat(c.Queues.BacklogWarning)+" and "+
		fmtFloat(c.Queues.BacklogCritical)+".", "short",
		thresholds(step{"green", nil}, step{"orange", c.Queues.BacklogWarning}, step{"red", c.Queues.BacklogCritical}),
		target{expr: "max by (queue_name) (celery_queue_length" + q + ")", legend: "{{queue_name}}"}))
	b.add(12, 8, series("Depth by priority", "Messages waiting in each queue, per priority sub-queue (Redis keeps one list per priority step).", "short", nil,
		target{expr: "max by (queue_name, priority) (celery_queue_priority_length" + q + ")", legend: "{{queue_name}} p{{priority}}"}))
	b.add(8, 8, series("Consumers", "Live workers consuming each queue (0: nobody processes it).", "short", nil,
		target{expr: "max by (queue_name) (celery_queue_consumers" + q + ")", legend: "{{queue_name}}"}))
	b.add(8, 8, series("Unacked (reserved, prefetched, ETA)", "Messages delivered to a worker and not yet acknowledged: prefetched, reserved, waiting for an ETA, or running with acks_late.", "short", nil,
		target{expr: "max by (queue_name) (celery_queue_unacked" + q + ")", legend: "{{queue_name}}"},
		target{expr: "max(celery_broker_unacked_messages" + w + ")", legend: "total"}))
	b.add(8, 8, series("Oldest message age", "Age of the next message to be consumed, when its task-sent event was seen.", "s", nil,
		target{expr: "max by (queue_name) (celery_queue_oldest_message_age_seconds" + q + ")", legend: "{{queue_name}}"}))
	b.add(12, 8, series("Active workers and processes per queue", "Workers consuming each queue and their pool processes, from the workers' active_queues and stats replies.", "short", nil,
		target{expr: "max by (queue_name) (celery_active_worker_count" + q + ")", legend: "workers {{queue_name}}"},
		target{expr: "max by (queue_name) (celery_active_process_count" + q + ")", legend: "processes {{queue_name}}"}))
	b.add(12, 8, table("Worker → queue", "Which worker consumes which queue (celery inspect active_queues).",
		[]string{"Value", "job", "instance", "__name__"}, map[string]string{"hostname": "worker", "queue_name": "queue"},
		target{expr: "max by (hostname, queue_name) (celery_worker_queue_info" + q + ")"}))

	b.row("Workers")
	b.add(12, 8, timeline("Worker up", "Heartbeating within 2×interval + --worker.timeout.", upDownMap, greenAtOrAbove(1),
		target{expr: "max by (hostname) (celery_worker_up" + w + ")", legend: "{{hostname}}"}))
	b.add(12, 8, timeline("Answers ping", "0 while up: heartbeats but no remote control (stuck consumer).", okFailMap, greenAtOrAbove(1),
		target{expr: "max by (hostname) (celery_worker_ping_ok" + w + ")", legend: "{{hostname}}"}))
	b.add(8, 8, series("Heartbeat age", "Seconds since each worker's last heartbeat; a worker is down past 2× its heartbeat interval plus --worker.timeout.", "s", nil,
		target{expr: "max by (hostname) (time() - celery_worker_last_heartbeat_timestamp_seconds" + w + ")", legend: "{{hostname}}"}))
	b.add(8, 8, series("Active tasks", "Tasks each worker is executing, from its last heartbeat.", "short", nil,
		target{expr: "max by (hostname) (celery_worker_tasks_active" + w + ")", legend: "{{hostname}}"}))
	b.add(8, 8, series("Processed (from heartbeats)", "Tasks per second, counted even without task events.", "ops", nil,
		target{expr: "max by (hostname) (rate(celery_worker_tasks_processed_total" + w + "[$__rate_interval]))", legend: "{{hostname}}"}))
	b.add(8, 8, series("Worker memory", "The memory criterion ("+c.memoryFigure()+"); alert above "+
		fmtFloat(c.Workers.Memory.MaxMiB)+" MiB. Main process max RSS: celery_worker_max_rss_bytes, without prefork pool children.", "bytes",
		redAtOrAbove(mib(c.Workers.Memory.MaxMiB)),
		target{expr: "max by (hostname) (" + RecWorkerMemory + matchers(mJob) + ")", legend: "{{hostname}}"},
		target{expr: "max by (hostname) (celery_worker_max_rss_bytes" + w + ")", legend: "main process max RSS {{hostname}}"}))
	b.add(8, 8, series("CPU", "CPU seconds per second of the worker's main process, user + system.", "percentunit",
		redAtOrAbove(c.Workers.CPURatio),
		target{expr: "max by (hostname) (sum by (hostname, instance) (rate(celery_worker_cpu_seconds_total" + w + "[$__rate_interval])))", legend: "{{hostname}}"}))
	b.add(8, 8, series("Load average (1m)", "The worker host's 1-minute load average, from its heartbeats.", "short", nil,
		target{expr: "max by (hostname) (celery_worker_load_average" + matchers(mJob, mInstance, `period="1m"`) + ")", legend: "{{hostname}}"}))
	b.add(12, 8, timeline("Task events enabled", "0: the worker processes tasks but sends no task events.", onOffMap, greenAtOrAbove(1),
		target{expr: "max by (hostname) (celery_worker_task_events_enabled" + w + ")", legend: "{{hostname}}"}))
	b.add(12, 8, series("Task events lost", "Share of the tasks a worker processed (heartbeat count) whose task events did not arrive, over "+
		c.Windows[WindowTaskEventsLost].String()+"; alert above "+fmtFloat(c.Tasks.EventsLostRatio*100)+"% once "+
		fmtFloat(c.Tasks.EventsLostMinTasks)+" tasks were processed (shown from the first).", "percentunit",
		redAtOrAbove(c.Tasks.EventsLostRatio),
		target{expr: "max by (hostname) (\n" + indent(c.dashConfig().taskEventsLost(false)) + "\n)", legend: "{{hostname}}"}))
	b.add(12, 8, table("Workers", "Pool, prefetch, uptime and version per worker.",
		[]string{"job", "instance", "__name__"},
		map[string]string{"hostname": "worker", "sw_ver": "celery", "sw_sys": "system",
			"Value #A": "concurrency", "Value #B": "prefetch", "Value #C": "uptime (s)", "Value #D": "info"},
		target{expr: "max by (hostname) (celery_worker_pool_max_concurrency" + w + ")"},
		target{expr: "max by (hostname) (celery_worker_prefetch_messages" + w + ")"},
		target{expr: "max by (hostname) (celery_worker_uptime_seconds" + w + ")"},
		target{expr: "max by (hostname, sw_ver, sw_sys) (celery_worker_info" + w + ")"}))

	b.row("Exporter")
	b.add(8, 8, series("Events received by type", "Celery events the exporter received per second, by event type.", "ops", nil,
		target{expr: "sum by (type) (rate(celery_exporter_events_total" + w + "[$__rate_interval]))", legend: "{{type}}"}))
	b.add(8, 8, series("Event errors by reason", "Malformed or unknown events the exporter skipped.", "ops", nil,
		target{expr: "sum by (reason) (rate(celery_exporter_event_errors_total" + w + "[$__rate_interval]))", legend: "{{reason}}"}))
	b.add(8, 8, series("Seconds since last event", "Alert after "+c.Events.StaleAfter.String()+".", "s",
		redAtOrAbove(c.Events.StaleAfter.Seconds()),
		target{expr: RecLastEventAge + w, legend: "{{instance}}"}))
	b.add(8, 8, timeline("Sources up", "Broker reachable, event subscription and each collector.", okFailMap, greenAtOrAbove(1),
		target{expr: "min by (instance) (celery_up" + w + ")", legend: "broker {{instance}}"},
		target{expr: "min by (instance) (celery_exporter_subscription_up" + w + ")", legend: "events {{instance}}"},
		target{expr: "min by (collector) (celery_exporter_collector_success" + w + ")", legend: "{{collector}}"}))
	b.add(8, 8, series("Collector duration", "How long each of the exporter's sources took to answer the last scrape.", "s", nil,
		target{expr: "max by (collector) (celery_exporter_collector_duration_seconds" + w + ")", legend: "{{collector}}"}))
	b.add(8, 8, series("Tracked tasks", "Task uuids held to learn names and queues; evictions mean the cap or TTL is too small.", "short", nil,
		target{expr: "sum by (instance) (celery_exporter_tracked_tasks" + w + ")", legend: "tracked {{instance}}"},
		target{expr: "sum by (instance) (rate(celery_exporter_tracked_tasks_evicted_total" + w + "[$__rate_interval]))", legend: "evicted/s {{instance}}"}))
	return b
}

func (c *Config) appDashboard() *board {
	dc := c.dashConfig()
	b := &board{d: DashApp, vars: variables(),
		descr: "Circuit breakers read from Redis and named events from the app's logs."}
	w := matchers(mJob, mInstance)

	b.row("Circuit breakers")
	b.add(12, 7, timeline("Breaker state", "Open: the app skips the calls the breaker protects.",
		openClosedMap, redAtOrAbove(1),
		target{expr: "max by (breaker) (celery_breaker_open" + w + ")", legend: "{{breaker}}"}))
	b.add(12, 7, timeline("Breaker mode and reason", "Mode and reason of each open breaker.",
		valueMap([3]string{"1", "open", "red"}), redAtOrAbove(1),
		target{expr: "max by (breaker, mode, reason) (celery_breaker_info" + w + " == 1)", legend: "{{breaker}}: {{mode}} ({{reason}})"}))
	b.add(8, 7, bars("Breaker trips", "Closed → open transitions by reason.", "short",
		target{expr: "sum by (breaker, reason) (increase(celery_breaker_trips_total" + w + "[$__rate_interval]))", legend: "{{breaker}}: {{reason}}"}))
	b.add(8, 7, series("Time until the breaker closes", "Seconds until each open circuit breaker's `until` time; no series when it is closed or has none.", "s", nil,
		target{expr: "max by (breaker) (celery_breaker_open_until_timestamp_seconds" + w + " - time()) > 0", legend: "{{breaker}}"}))
	b.add(8, 7, timeline("Breaker readable", "0: the breaker's key could not be read or decoded.", okFailMap, greenAtOrAbove(1),
		target{expr: "min by (breaker) (celery_breaker_read_ok" + w + ")", legend: "{{breaker}}"}))
	b.add(24, 7, series("App values", "Integer values the app keeps in Redis (e.g. consecutive failures).", "short", nil,
		target{expr: "max by (name) (celery_app_value" + w + ")", legend: "{{name}}"}))

	b.row("Log events")
	for _, ev := range c.App.LogEvents {
		th := neutral()
		if c.alertedEvent(ev) {
			th = redAtOrAbove(1)
		}
		win := c.Windows[WindowAppEvents]
		b.add(4, 4, stat(windowTitle(ev, win), "Log lines with event "+ev+".", "short", th, nil, nil,
			target{expr: "sum(\n  " + dc.logEvents(ev, win, mInstance) + "\n)\nor vector(0)"}))
	}
	b.add(12, 8, bars("Log events", "Configured events per interval.", "short",
		target{expr: "sum by (event) (increase(celery_log_events_total" + w + "[$__rate_interval]))", legend: "{{event}}"}))
	b.add(12, 8, series("Log lines by level", "Lines per second read from the app's log files, by level.", "ops", nil,
		target{expr: "sum by (level) (rate(celery_log_lines_total" + w + "[$__rate_interval]))", legend: "{{level}}"}))
	b.add(12, 6, series("Skipped log lines", "Lines over the size limit or unreadable.", "ops", nil,
		target{expr: "sum by (reason) (rate(celery_log_lines_skipped_total" + w + "[$__rate_interval]))", legend: "{{reason}}"}))
	b.add(12, 6, series("Log files watched", "Log files the exporter is reading (its log source's globs).", "short", nil,
		target{expr: "sum by (instance) (celery_log_files_watched" + w + ")", legend: "{{instance}}"}))
	return b
}

// appStat is an app alert's stat on the success criteria dashboard, from the alert's condition.
func (c *Config) appStat(dc *Config, a AppAlert) obj {
	zero := "\nor vector(0)"
	title := func(def string) string {
		if a.Title != "" {
			return a.Title
		}
		return def
	}
	switch a.Kind {
	case KindBreakerOpen:
		cond, _ := dc.appCondition(a, mJob)
		return stat(title("Breaker "+a.Breaker), a.Summary, "short", redAtOrAbove(1), openClosedMap, &DashApp,
			target{expr: "max(" + cond + ")"})
	case KindAppValueAbove:
		cond, _ := dc.appCondition(a)
		return stat(title("App value "+a.Value), a.Summary+" Alert above "+fmtFloat(a.Threshold)+".", "short",
			redAtOrAbove(a.Threshold), nil, &DashApp, target{expr: "max(" + cond + ")"})
	}
	cond, _ := dc.appCondition(a)
	w := c.appWindow(a)
	what, descr := strings.Join(a.Events, ", "), "Log lines with event "+strings.Join(a.Events, " or ")+"; the criterion is none."
	if a.Kind == KindTaskFailures {
		what, descr = a.Task+" failures", a.Task+" task failures"
		if len(a.Events) > 0 {
			descr += " plus " + strings.Join(a.Events, ", ") + " log lines"
		}
		descr += "."
	}
	return stat(windowTitle(title(what), w), descr, "short", redAtOrAbove(1), nil, &DashApp,
		target{expr: "sum(\n  " + cond + "\n)" + zero})
}

// alertedEvent says whether an enabled app alert reads the log event.
func (c *Config) alertedEvent(ev string) bool {
	for _, a := range c.enabledAppAlerts() {
		if slices.Contains(a.Events, ev) {
			return true
		}
	}
	return false
}
