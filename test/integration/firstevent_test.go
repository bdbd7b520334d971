package integration

// First events page: with the SHIPPED rules file (rules/celery.rules.yml, unmodified:
// 15m windows, `for: 0s` on the counter alerts), a Prometheus that has only just started, the real
// exporter and a real prefork worker, the first hard time limit, the first WorkerLostError (a pool
// child killed under its task) and the first configured log error event each fire their alert.
//
// Two Prometheus servers scrape the same exporter. A sees it as it is: an exporter that started
// moments ago, whose every count is recent. B drops celery_exporter_start_time_seconds at scrape
// time, so to its rules the exporter looks as if it had run for days: there the first events must
// page through the counters themselves (pre-created at 0, or born after B's first scrapes), and a
// failure counted before B started must NOT page. Rules built on `up offset 15m` paged on
// neither: B had no history, and A none either.

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

func TestFirstEventsPageWithShippedRules(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: real redis-server, a Celery worker, the exporter binary and Prometheus")
	}
	besideTheDemo(t)
	harness.Require(t, "prometheus")
	harness.RequirePython(t, "celery")
	rules, err := filepath.Abs("../../rules/celery.rules.yml")
	if err != nil {
		t.Fatal(err)
	}

	r := harness.StartRedis(t)
	brokerURL := r.URL(1)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "app.log")
	if err := os.WriteFile(logFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "celery_exporter.yml")
	// The seed's log source (deploy/celery_exporter.yml) on this test's log file.
	if err := os.WriteFile(cfgFile, []byte(`logs:
  - paths: [`+logFile+`]
    format: json
    event_field: message
    level_field: level
    events: [zep_call_error, zep_call_failure, preferences_extract_failed]
    poll_interval: 200ms
`), 0o644); err != nil {
		t.Fatal(err)
	}
	exp := harness.StartExporter(t,
		"--broker.url="+brokerURL,
		"--config.file="+cfgFile,
		"--celery.default-queue=default",
		"--control.interval=2s",
		"--scrape.timeout=800ms")
	exp.WaitReady(t, 15*time.Second)
	// No acks_late/reject_on_worker_lost: a killed pool child fails its task with WorkerLostError.
	w := harness.StartWorker(t, harness.WorkerOptions{
		BrokerURL: brokerURL, Queues: []string{"background", "chat"}, Pool: "prefork", Concurrency: 2,
		NodeName: "celery@background", Env: []string{"CELERY_DEFAULT_QUEUE=default", "CELERYAPP_LOG_FILE=" + logFile},
	})

	// An old failure, counted before either Prometheus starts: a soft time limit.
	harness.Produce(t, brokerURL, nil, []harness.Send{{Task: "soft_limited", Kwargs: map[string]any{"seconds": 3}, Queue: "background"}})
	soft := map[string]string{"name": "celeryapp.app.soft_limited", "exception": "SoftTimeLimitExceeded"}
	exp.WaitFor(t, 60*time.Second, func(m harness.Metrics) bool { return m.Sum("celery_task_failed_total", soft) == 1 })

	prom := func(drop ...string) *harness.Prometheus {
		return harness.StartPrometheus(t, harness.PrometheusConfig(harness.PromConfig{
			ScrapeInterval: time.Second, EvaluationInterval: time.Second,
			Jobs: map[string][]string{"celery": {exp.Addr}}, DropMetrics: drop,
		}), rules)
	}
	promA, promB := prom(), prom("celery_exporter_start_time_seconds")
	for _, p := range []*harness.Prometheus{promA, promB} {
		// "Once Prometheus has scraped the exporter for two scrape intervals."
		p.WaitForQuery(t, `sum_over_time(up{job="celery"}[1m]) >= 3`, time.Minute, func(r []harness.QuerySample) bool { return len(r) == 1 })
	}
	if got, err := promB.Query(`celery_exporter_start_time_seconds`); err != nil || len(got) != 0 {
		t.Fatalf("Prometheus B must not see the start time: %v %v", got, err)
	}

	// A counts the old failure (its exporter started within the window: every count is recent);
	// B, to which the exporter looks old, must not page it. Its rules are evaluated every second:
	// ten evaluations in a row without it.
	promA.WaitForAlert(t, "CeleryTaskTimeLimitExceeded", "firing", 30*time.Second)
	for i := 0; i < 10; i++ {
		if alerts, err := promB.Alerts(); err != nil {
			t.Fatal(err)
		} else if slices.ContainsFunc(alerts, func(a harness.Alert) bool { return a.Name() == "CeleryTaskTimeLimitExceeded" }) {
			t.Fatalf("Prometheus B pages the soft time limit counted before it started: %v", alerts)
		}
		time.Sleep(time.Second)
	}

	// The first hard time limit.
	harness.Produce(t, brokerURL, nil, []harness.Send{{Task: "hard_limited", Kwargs: map[string]any{"seconds": 3}, Queue: "background"}})
	hard := map[string]string{"name": "celeryapp.app.hard_limited", "queue_name": "background", "exception": "TimeLimitExceeded"}
	exp.WaitFor(t, 60*time.Second, func(m harness.Metrics) bool { return m.Sum("celery_task_failed_total", hard) == 1 })
	waitFirstAlert(t, "CeleryTaskTimeLimitExceeded", hard, promA, promB)

	// The first WorkerLostError: a pool child killed under its task, as the OOM killer does.
	harness.Produce(t, brokerURL, nil, []harness.Send{{Task: "sleep", Kwargs: map[string]any{"seconds": 30}, Queue: "background"}})
	exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		return m.Sum("celery_task_started_total", map[string]string{"name": "celeryapp.app.sleep"}) >= 1
	})
	children, err := childPIDs(w.PID())
	if err != nil || len(children) == 0 {
		t.Fatalf("pool children of %s: %v %v", w.NodeName, children, err)
	}
	for _, pid := range children {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	lost := map[string]string{"name": "celeryapp.app.sleep", "queue_name": "background"}
	exp.WaitFor(t, 60*time.Second, func(m harness.Metrics) bool {
		return m.Sum("celery_task_failed_total", map[string]string{"name": "celeryapp.app.sleep", "exception": "WorkerLostError"}) == 1
	})
	waitFirstAlert(t, "CeleryWorkerLost", lost, promA, promB)

	// The first zep_call_error, logged by the chat task.
	harness.Produce(t, brokerURL, nil, []harness.Send{{Task: "assistant.tasks.process_chat_message",
		Kwargs: map[string]any{"message": "zep down", "seconds": 0.1, "zep_error": true}, Queue: "chat"}})
	exp.WaitFor(t, 60*time.Second, func(m harness.Metrics) bool {
		return m.Sum("celery_log_events_total", map[string]string{"event": "zep_call_error"}) == 1
	})
	waitFirstAlert(t, "ZepCallErrors", map[string]string{"event": "zep_call_error"}, promA, promB)
}

// waitFirstAlert waits until every Prometheus fires the alert with the labels: within 15s of the
// exporter counting the event (scrape and evaluation every second; the alerts have no `for`).
func waitFirstAlert(t *testing.T, name string, labels map[string]string, proms ...*harness.Prometheus) {
	t.Helper()
	for i, p := range proms {
		deadline := time.Now().Add(15 * time.Second)
		for {
			alerts, err := p.Alerts()
			if err != nil {
				t.Fatal(err)
			}
			if slices.ContainsFunc(alerts, func(a harness.Alert) bool {
				if a.Name() != name || a.State != "firing" {
					return false
				}
				for k, v := range labels {
					if a.Labels[k] != v {
						return false
					}
				}
				return true
			}) {
				break
			}
			if time.Now().After(deadline) {
				var have []string
				for _, a := range alerts {
					have = append(have, a.Name()+"/"+a.State)
				}
				t.Fatalf("Prometheus %c: %s%v not firing within 15s of the first event; alerts: %s",
					'A'+i, name, labels, strings.Join(have, " "))
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
}
