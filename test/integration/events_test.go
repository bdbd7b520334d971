package integration

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// The task counters of the metric contract (rules/bundle.ContractMetrics).
var taskCounters = []string{
	"celery_task_sent_total", "celery_task_received_total", "celery_task_started_total",
	"celery_task_succeeded_total", "celery_task_failed_total", "celery_task_retried_total",
	"celery_task_rejected_total", "celery_task_revoked_total",
}

const (
	heartbeat     = time.Second     // the workers' --heartbeat-interval
	workerTimeout = 2 * time.Second // the exporter's --worker.timeout
)

// e2e is one broker with the three pools' workers, the recorder and (optionally) the exporter.
type e2e struct {
	url                     string // the broker's
	rec                     *harness.Recorder
	prefork, threads, solo  *harness.Worker
	preforkIDs, reliableIDs []string // tasks on pools whose events are reliable (prefork, solo)
}

// startWorkers starts one worker per pool, each on its own queues so every task's worker is known.
func (s *e2e) startWorkers(t *testing.T) {
	url := s.url
	ws := harness.StartWorkers(t,
		harness.WorkerOptions{BrokerURL: url, Pool: "prefork", Concurrency: 2, Queues: []string{"celery", "limits"},
			NodeName: "prefork@e2e", Events: true, HeartbeatInterval: heartbeat},
		harness.WorkerOptions{BrokerURL: url, Pool: "threads", Concurrency: 2, Queues: []string{"threads"},
			NodeName: "threads@e2e", Events: true, HeartbeatInterval: heartbeat},
		harness.WorkerOptions{BrokerURL: url, Pool: "solo", Queues: []string{"solo"},
			NodeName: "solo@e2e", Events: true, HeartbeatInterval: heartbeat},
	)
	s.prefork, s.threads, s.solo = ws[0], ws[1], ws[2]
}

// produceMix sends successes, failures, retries, a soft and a hard time limit (prefork), every
// revoke reason (prefork), priorities, and several queues, one of them without a consumer.
func (s *e2e) produceMix(t *testing.T) {
	prefork := []harness.Send{
		{Task: "add", Args: []any{1, 2}},
		{Task: "add", Args: []any{3, 4}},
		{Task: "add", Args: []any{5, 6}, Priority: harness.Prio(9)},
		{Task: "fail", Args: []any{"prefork boom"}},
		{Task: "retry_once"},
		{Task: "soft_limited", Args: []any{3}, Queue: "limits"},
		{Task: "hard_limited", Args: []any{3}, Queue: "limits"},
		// revoked while waiting for its ETA: task-received, then task-revoked at the ETA
		{Task: "revokable", Args: []any{0.1}, Countdown: 3, RevokeAfter: 1},
		// terminated while running
		{Task: "revokable", Args: []any{10}, RevokeAfter: 1.5, Terminate: true},
		// expired before its ETA came
		{Task: "add", Args: []any{0, 0}, Countdown: 2, Expires: 1},
	}
	others := []harness.Send{
		{Task: "add", Args: []any{1, 1}, Queue: "threads"},
		{Task: "add", Args: []any{2, 2}, Queue: "threads"},
		{Task: "sleep", Args: []any{0.2}, Queue: "threads"},
		{Task: "fail", Args: []any{"threads boom"}, Queue: "threads"},
		{Task: "fail", Args: []any{"threads boom 2"}, Queue: "threads"},
		{Task: "retry_once", Queue: "threads"},
		// solo runs one at a time: the first keeps it busy while the others queue by priority
		{Task: "sleep", Args: []any{0.5}, Queue: "solo", Priority: harness.Prio(0)},
		{Task: "add", Args: []any{7, 7}, Queue: "solo", Priority: harness.Prio(9)},
		{Task: "add", Args: []any{8, 8}, Queue: "solo", Priority: harness.Prio(0)},
		{Task: "fail", Args: []any{"solo boom"}, Queue: "solo", Priority: harness.Prio(5)},
		{Task: "retry_once", Queue: "solo", Priority: harness.Prio(3)},
		// nobody consumes this queue: only task-sent
		{Task: "add", Args: []any{9, 9}, Queue: "nobody"},
		{Task: "add", Args: []any{9, 9}, Queue: "nobody", Priority: harness.Prio(6)},
	}
	ids := harness.Produce(t, s.url, nil, append(prefork, others...))
	s.preforkIDs = ids[:len(prefork)]
	s.reliableIDs = append(append([]string{}, s.preforkIDs...), ids[len(prefork)+6:len(prefork)+11]...)
}

// waitTasksDone waits for the final events of the reliable pools, then for the task traffic to
// be quiet (the threads pool may drop some of its events, so its tasks are not waited for one
// by one).
func (s *e2e) waitTasksDone(t *testing.T) {
	s.rec.WaitFinished(t, 60*time.Second, s.reliableIDs...)
	s.rec.WaitQuiet(t, "task-", 2*time.Second, 30*time.Second)
}

// checkRecorded makes sure the wire really carried the mix the test is about, so that a broken
// test app cannot turn into an easy pass.
func (s *e2e) checkRecorded(t *testing.T) {
	t.Helper()
	recorded := s.rec.ExpectedTaskCounters("celery")
	has := func(metric string, labels map[string]string) bool {
		for _, smp := range recorded {
			if smp.Name != metric {
				continue
			}
			match := true
			for k, v := range labels {
				if smp.Labels[k] != v {
					match = false
				}
			}
			if match {
				return true
			}
		}
		return false
	}
	for _, c := range []struct {
		metric string
		labels map[string]string
	}{
		{"celery_task_failed_total", map[string]string{"hostname": "prefork@e2e", "queue_name": "limits", "exception": "SoftTimeLimitExceeded"}},
		{"celery_task_failed_total", map[string]string{"hostname": "prefork@e2e", "queue_name": "limits", "exception": "TimeLimitExceeded"}},
		{"celery_task_failed_total", map[string]string{"hostname": "prefork@e2e", "exception": "ValueError"}},
		{"celery_task_failed_total", map[string]string{"hostname": "solo@e2e", "queue_name": "solo", "exception": "ValueError"}},
		{"celery_task_retried_total", map[string]string{"hostname": "prefork@e2e"}},
		{"celery_task_retried_total", map[string]string{"hostname": "solo@e2e"}},
		{"celery_task_revoked_total", map[string]string{"hostname": "prefork@e2e", "reason": "revoked"}},
		{"celery_task_revoked_total", map[string]string{"hostname": "prefork@e2e", "reason": "terminated"}},
		{"celery_task_revoked_total", map[string]string{"hostname": "prefork@e2e", "reason": "expired"}},
		{"celery_task_succeeded_total", map[string]string{"hostname": "threads@e2e", "queue_name": "threads"}},
		{"celery_task_sent_total", map[string]string{"queue_name": "nobody"}},
	} {
		if !has(c.metric, c.labels) {
			t.Errorf("the recorder saw no %s%v: the test app did not produce the mix", c.metric, c.labels)
		}
	}
	if errs := s.rec.Errors(); len(errs) > 0 {
		t.Errorf("the recorder could not decode %d messages: %v", len(errs), errs)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// expectedHistogramCounts derives the observation counts of the runtime and queue-wait histograms:
// a runtime per task-succeeded, and per task-failed whose task-started was seen on the same
// worker; a queue wait per task-started of a task whose name is known.
func (s *e2e) expectedHistogramCounts() []harness.Sample {
	tasks := s.rec.Tasks()
	queueOf := func(uuid string) string {
		if q := tasks[uuid].Queue; q != "" {
			return q
		}
		return "celery"
	}
	started := map[string]bool{} // uuid|hostname
	counts := map[string]*harness.Sample{}
	add := func(name string, labels map[string]string) {
		k := harness.Sample{Name: name, Labels: labels}.String()
		if c, ok := counts[k]; ok {
			c.Value++
			return
		}
		counts[k] = &harness.Sample{Name: name, Labels: labels, Value: 1}
	}
	for _, e := range s.rec.Events() {
		ti := tasks[e.UUID]
		switch e.Type {
		case "task-started":
			started[e.UUID+"|"+e.Hostname] = true
			if ti.Name != "" {
				add("celery_task_queue_wait_seconds_count", map[string]string{"name": ti.Name, "queue_name": queueOf(e.UUID)})
			}
		case "task-succeeded":
			add("celery_task_runtime_seconds_count", map[string]string{"name": ti.Name, "hostname": e.Hostname, "queue_name": queueOf(e.UUID), "state": "succeeded"})
		case "task-failed":
			if started[e.UUID+"|"+e.Hostname] {
				add("celery_task_runtime_seconds_count", map[string]string{"name": ti.Name, "hostname": e.Hostname, "queue_name": queueOf(e.UUID), "state": "failed"})
			}
		}
	}
	out := make([]harness.Sample, 0, len(counts))
	for _, c := range counts {
		out = append(out, *c)
	}
	return out
}

// eventTotals is celery_exporter_events_total as the recorder counted it; types the wire never
// carried may be exported (pre-initialised), and then must be 0.
func (s *e2e) eventTotals(m harness.Metrics) []harness.Sample {
	seen := s.rec.CountByType()
	var out []harness.Sample
	for typ, n := range seen {
		out = append(out, harness.Sample{Name: "celery_exporter_events_total", Labels: map[string]string{"type": typ}, Value: float64(n)})
	}
	for _, l := range m.Series("celery_exporter_events_total") {
		if _, ok := seen[l["type"]]; !ok {
			out = append(out, harness.Sample{Name: "celery_exporter_events_total", Labels: l, Value: 0})
		}
	}
	return out
}

// agree polls the exporter until the samples match (every series of the exhaustive metrics must
// be expected), and reports the differences of the last scrape otherwise.
func agree(t *testing.T, exp *harness.Exporter, timeout time.Duration, want []harness.Sample, exhaustive ...string) harness.Metrics {
	t.Helper()
	return agreeWith(t, exp, timeout, func(harness.Metrics) []harness.Sample { return want }, exhaustive...)
}

// agreeWith is agree with the expectation computed from each scrape.
func agreeWith(t *testing.T, exp *harness.Exporter, timeout time.Duration, want func(harness.Metrics) []harness.Sample, exhaustive ...string) harness.Metrics {
	t.Helper()
	var diffs []string
	m, ok := exp.Poll(timeout, func(m harness.Metrics) bool {
		diffs = harness.DiffSamples(m, want(m), exhaustive...)
		return len(diffs) == 0
	})
	if !ok {
		sort.Strings(diffs)
		t.Errorf("/metrics disagrees with the wire after %v:\n  %s", timeout, strings.Join(diffs, "\n  "))
	}
	return m
}

func workerUp(m harness.Metrics, node string) (float64, bool) {
	return m.Value("celery_worker_up", map[string]string{"hostname": node})
}

// TestEventsEndToEnd: real Celery 5.2.6 workers on the prefork, threads and solo pools, a known
// mix of tasks, and the exporter's counters equal to what went over the wire; then worker
// liveness on SIGKILL and on a graceful stop. On each broker of the table.
func TestEventsEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: real brokers, Celery workers and the exporter binary")
	}
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) { testEventsEndToEnd(t, b) })
	}
}

func testEventsEndToEnd(t *testing.T, b brokerCase) {
	harness.RequirePython(t, "celery")
	s := &e2e{}
	s.url, s.rec = b.start(t)
	exp := harness.StartExporter(t, "--broker.url="+s.url,
		"--worker.timeout="+workerTimeout.String(), "--log.level=debug")
	// Subscribed before any worker or producer publishes: nothing may be missed.
	exp.WaitReady(t, 15*time.Second)
	start := time.Now()

	s.startWorkers(t)
	nodes := []string{s.prefork.NodeName, s.threads.NodeName, s.solo.NodeName}
	t.Run("workers up", func(t *testing.T) {
		m, ok := exp.Poll(10*time.Second, func(m harness.Metrics) bool {
			for _, n := range nodes {
				if v, ok := workerUp(m, n); !ok || v != 1 {
					return false
				}
			}
			return true
		})
		if !ok {
			t.Errorf("celery_worker_up is not 1 for each of %v:\n%v", nodes, m.Samples("celery_worker_up"))
		}
	})

	s.produceMix(t)
	s.waitTasksDone(t)
	s.checkRecorded(t)

	t.Run("task counters", func(t *testing.T) {
		m := agree(t, exp, 15*time.Second, harness.WithZeroSeries(s.rec.ExpectedTaskCounters("celery"), harness.DefaultInitialExceptions...), taskCounters...)
		for _, name := range taskCounters {
			if typ := m.Type(name); typ != "" && typ != "counter" {
				t.Errorf("%s is a %s, want a counter", name, typ)
			}
		}
	})
	t.Run("histogram counts", func(t *testing.T) {
		agree(t, exp, 5*time.Second, s.expectedHistogramCounts(),
			"celery_task_runtime_seconds_count", "celery_task_queue_wait_seconds_count")
	})
	t.Run("no event errors", func(t *testing.T) {
		m := exp.MustScrape(t)
		if n := m.Sum("celery_exporter_event_errors_total", nil); n != 0 {
			t.Errorf("celery_exporter_event_errors_total = %v on real Celery traffic: %v", n, m.Samples("celery_exporter_event_errors_total"))
		}
		if v, ok := m.Value("celery_exporter_subscription_up", nil); !ok || v != 1 {
			t.Errorf("celery_exporter_subscription_up = %v (found %v), want 1", v, ok)
		}
	})

	// A crash: no worker-offline. The worker's last heartbeat came at most one interval before
	// the kill, so it must read 0 within 2×freq + timeout of the kill, and not before timeout.
	t.Run("SIGKILL", func(t *testing.T) {
		s.threads.Kill()
		killed := time.Now()
		bound := 2*heartbeat + workerTimeout
		var downAfter time.Duration
		m, ok := exp.Poll(bound+3*time.Second, func(m harness.Metrics) bool {
			v, found := workerUp(m, s.threads.NodeName)
			if found && v == 0 {
				downAfter = time.Since(killed)
				return true
			}
			return false
		})
		if !ok {
			t.Fatalf("celery_worker_up{hostname=%q} not 0 within %v of SIGKILL: %v", s.threads.NodeName, bound+3*time.Second, m.Samples("celery_worker_up"))
		}
		t.Logf("celery_worker_up 0 after %v (bound %v)", downAfter.Round(10*time.Millisecond), bound)
		// 500ms of slack for the polling and a loaded machine.
		if downAfter > bound+500*time.Millisecond {
			t.Errorf("celery_worker_up went to 0 %v after SIGKILL, want within 2×freq + timeout = %v", downAfter, bound)
		}
		if downAfter < workerTimeout {
			t.Errorf("celery_worker_up went to 0 only %v after SIGKILL: --worker.timeout=%v is not honoured", downAfter, workerTimeout)
		}
		for _, n := range []string{s.prefork.NodeName, s.solo.NodeName} {
			if v, _ := workerUp(m, n); v != 1 {
				t.Errorf("celery_worker_up{hostname=%q} = %v, want 1: only the killed worker is down", n, v)
			}
		}
	})

	// A graceful stop sends worker-offline: 0 at once, long before any expiry.
	for _, w := range []*harness.Worker{s.solo, s.prefork} {
		t.Run("graceful stop "+w.Options.Pool, func(t *testing.T) {
			if err := w.Stop(); err != nil {
				t.Fatal(err)
			}
			s.rec.WaitFor(t, 2*time.Second, "worker-offline from "+w.NodeName, func(r *harness.Recorder) bool {
				return len(r.Find(func(e harness.Event) bool { return e.Type == "worker-offline" && e.Hostname == w.NodeName })) == 1
			})
			m, ok := exp.Poll(time.Second, func(m harness.Metrics) bool {
				v, found := workerUp(m, w.NodeName)
				return found && v == 0
			})
			if !ok {
				t.Errorf("celery_worker_up{hostname=%q} not 0 within 1s of worker-offline: %v", w.NodeName, m.Samples("celery_worker_up"))
			}
		})
	}

	// Everything is quiet now: every event type must have been counted exactly.
	s.rec.WaitQuiet(t, "", time.Second, 10*time.Second)
	t.Run("events total", func(t *testing.T) {
		agreeWith(t, exp, 10*time.Second, s.eventTotals, "celery_exporter_events_total")
	})
	t.Run("task counters after shutdown", func(t *testing.T) {
		agree(t, exp, 5*time.Second, harness.WithZeroSeries(s.rec.ExpectedTaskCounters("celery"), harness.DefaultInitialExceptions...), taskCounters...)
	})
	t.Logf("wall time from exporter ready: %v; events: %v", time.Since(start).Round(time.Millisecond), fmt.Sprint(s.rec.CountByType()))
}
