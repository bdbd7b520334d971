package bundle

// ContractMetrics is the exporter's metric contract: every metric the rules
// and dashboards may read, with its labels (job and instance come from the scrape). Tests check
// every selector against it, so a misspelt metric or label fails before it reaches a dashboard.
var ContractMetrics = map[string][]string{
	// Events.
	"celery_task_sent_total":                         {"name", "queue_name"},
	"celery_task_received_total":                     {"name", "hostname", "queue_name"},
	"celery_task_started_total":                      {"name", "hostname", "queue_name"},
	"celery_task_succeeded_total":                    {"name", "hostname", "queue_name"},
	"celery_task_rejected_total":                     {"name", "hostname", "queue_name"},
	"celery_task_failed_total":                       {"name", "hostname", "queue_name", "exception"},
	"celery_task_retried_total":                      {"name", "hostname", "queue_name", "exception"},
	"celery_task_revoked_total":                      {"name", "hostname", "queue_name", "reason"},
	"celery_task_runtime_seconds_bucket":             {"name", "hostname", "queue_name", "state", "le"},
	"celery_task_runtime_seconds_sum":                {"name", "hostname", "queue_name", "state"},
	"celery_task_runtime_seconds_count":              {"name", "hostname", "queue_name", "state"},
	"celery_task_queue_wait_seconds_bucket":          {"name", "queue_name", "le"},
	"celery_task_queue_wait_seconds_sum":             {"name", "queue_name"},
	"celery_task_queue_wait_seconds_count":           {"name", "queue_name"},
	"celery_worker_up":                               {"hostname"},
	"celery_worker_tasks_active":                     {"hostname"},
	"celery_worker_tasks_processed_total":            {"hostname"},
	"celery_worker_last_heartbeat_timestamp_seconds": {"hostname"},
	"celery_worker_heartbeat_interval_seconds":       {"hostname"},
	"celery_worker_load_average":                     {"hostname", "period"},
	"celery_worker_info":                             {"hostname", "sw_ident", "sw_ver", "sw_sys"},
	"celery_worker_task_events_enabled":              {"hostname"},
	"celery_exporter_events_total":                   {"type"},
	"celery_exporter_event_errors_total":             {"reason"},
	"celery_exporter_subscription_up":                {},
	"celery_exporter_last_event_timestamp_seconds":   {},
	"celery_exporter_subscription_reconnects_total":  {},
	"celery_exporter_tracked_tasks":                  {},
	"celery_exporter_tracked_tasks_evicted_total":    {},
	"celery_exporter_build_info":                     {"version", "revision", "goversion"},
	"celery_exporter_label_overflow_total":           {"label"},
	"celery_exporter_start_time_seconds":             {},
	"celery_worker_tasks_seen_total":                 {"hostname"},
	"celery_task_running":                            {"name", "queue_name"},
	"celery_task_running_oldest_age_seconds":         {"name", "queue_name"},
	// Broker state and remote control.
	"celery_queue_length":                     {"queue_name"},
	"celery_queue_priority_length":            {"queue_name", "priority"},
	"celery_queue_unacked":                    {"queue_name"},
	"celery_broker_unacked_messages":          {},
	"celery_queue_oldest_message_age_seconds": {"queue_name"},
	"celery_up":                                              {},
	"celery_exporter_collector_success":                      {"collector"},
	"celery_exporter_collector_duration_seconds":             {"collector"},
	"celery_worker_queue_info":                               {"hostname", "queue_name"},
	"celery_queue_consumers":                                 {"queue_name"},
	"celery_active_worker_count":                             {"queue_name"},
	"celery_active_process_count":                            {"queue_name"},
	"celery_worker_pool_max_concurrency":                     {"hostname"},
	"celery_worker_prefetch_messages":                        {"hostname"},
	"celery_worker_uptime_seconds":                           {"hostname"},
	"celery_worker_max_rss_bytes":                            {"hostname"},
	"celery_worker_cpu_seconds_total":                        {"hostname", "mode"},
	"celery_worker_tasks_accepted_total":                     {"hostname", "name"},
	"celery_worker_ping_ok":                                  {"hostname"},
	"celery_exporter_control_last_success_timestamp_seconds": {},
	// App signals.
	"celery_breaker_open":                           {"breaker"},
	"celery_breaker_info":                           {"breaker", "mode", "reason"},
	"celery_breaker_open_until_timestamp_seconds":   {"breaker"},
	"celery_breaker_opened_timestamp_seconds":       {"breaker"},
	"celery_breaker_trips_total":                    {"breaker", "reason"},
	"celery_breaker_read_ok":                        {"breaker"},
	"celery_app_value":                              {"name"},
	"celery_log_events_total":                       {"event", "level"},
	"celery_log_lines_total":                        {"level"},
	"celery_log_lines_skipped_total":                {"reason"},
	"celery_log_files_watched":                      {},
	"celery_exporter_config_last_reload_successful": {},
	// Prometheus' own series.
	"up": {},
	// cAdvisor (kubelet), for the memory criterion with workers.memory.source cadvisor; the
	// join label comes from the config.
	"container_memory_working_set_bytes": {"namespace", "pod", "container", "image", "name", "id"},
	"ALERTS":                             {"alertname", "alertstate", "severity", "queue_name", "hostname", "name", "exception", "event", "breaker", "collector", "reason", "label"},
}

// RecordedMetrics are the series the recording rules produce, with their labels.
var RecordedMetrics = map[string][]string{
	RecQueueLength:      {"queue_name"},
	RecQueueConsumers:   {"queue_name"},
	RecWorkerUp:         {"hostname"},
	RecWorkersUpCount:   {},
	RecWorkerMaxRSS:     {"hostname"},
	RecTaskFailures:     {"queue_name", "name"},
	RecTaskOutcomes:     {"queue_name", "name"},
	RecTaskFailureRatio: {"queue_name", "name"},
	RecTaskRuntimeP95:   {"queue_name", "name"},
	RecLastEventAge:     {"instance"},
	RecBreakerOpen:      {"breaker"},
	RecWorkerMemory:     {"hostname"},
	RecTaskEventsLost:   {"hostname"},
}

// TargetLabels are attached by Prometheus to every scraped series.
var TargetLabels = []string{"job", "instance"}
