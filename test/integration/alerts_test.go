package integration

// End to end for the rule bundle: a real Prometheus (Debian's prometheus) loads the
// rendered rules in a short-interval variant (bundle.Config.Shortened) and scrapes the real
// exporter binary, which watches real Celery 5.2.6 workers shaped like the seed's (chat and default
// on the threads pool, background+notifications+dlq on prefork; acks_late and
// reject_on_worker_lost on). Everything is asserted through Prometheus' own APIs: the alerts API
// for the alerts and instant queries for every dashboard panel.
//
// The point the promtool unit tests cannot make: a dead worker's alert must survive the
// exporter's real series lifetime. After SIGKILL the worker goes to celery_worker_up 0, then
// --worker.purge-after later its series disappear from /metrics; CeleryWorkersBelowExpected has to
// be firing across that disappearance, not resolve when the evidence is purged.

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

// Short durations of the variant under test. The ratios matter, not the values:
//   - purge-after is longer than `for`, so the dead worker's alert fires while its series still
//     read 0, and must then keep firing once they are gone;
//   - the windows are longer than the time between producing a condition and checking it.
const (
	alEval          = time.Second      // scrape and rule evaluation interval
	alFor           = 5 * time.Second  // every non-zero `for`
	alWindow        = 30 * time.Second // every rate/increase window
	alStaleAfter    = 30 * time.Second // events.stale_after
	alWorkerTimeout = 2 * time.Second  // --worker.timeout: down 2×2s heartbeat + 2s after the last one
	alPurgeAfter    = 15 * time.Second // --worker.purge-after
	alControlEvery  = 2 * time.Second  // --control.interval
	alOrphanQueue   = "orphan"         // a queue no worker consumes
	alBreakerKey    = ":1:mem:mode:forced:v1"
	alBreakerTTL    = 3 * time.Minute // longer than the test: the test deletes the key itself
	alJob           = "celery"        // the job rules/config.yaml selects
)

// alWorker is one worker of the seed's docker-compose after the fix (target-app.md), by role.
type alWorker struct {
	role        string
	queues      []string
	pool        string
	concurrency int
}

// The seed runs background on prefork with concurrency 4; 2 keeps the shared 2-core machine
// usable, and the pool is what matters (time limits, pool children that can be killed).
var alSeedWorkers = []alWorker{
	{"chat", []string{"chat"}, "threads", 4},
	{"default", []string{"default"}, "threads", 4},
	{"background", []string{"background", "notifications", "dlq"}, "prefork", 2},
}

// The alerts the healthy state must not raise, not even as pending: each of them pending means
// the rule already sees its condition in a system that is fine.
var alHealthyQuiet = []string{
	"CeleryWorkersBelowExpected", "CeleryQueueWithoutConsumers", "CeleryQueueBacklog",
	"ZepMemoryDegraded", "ZepCallErrors",
}

type alertsE2E struct {
	t         *testing.T
	redis     *harness.Redis
	brokerURL string
	cache     *redis.Client // the Django cache's DB, where the breaker lives
	broker    *redis.Client
	logFile   string
	exp       *harness.Exporter
	prom      *harness.Prometheus
	workers   map[string]*harness.Worker // by role
	cfg       *bundle.Config             // the shortened variant Prometheus runs
	// rec records every event published (the wire's truth, independent of the exporter).
	rec *harness.Recorder
	// prefFailures is how many task-failed events of the failing extract_preferences_async
	// went over the wire (the threads pool does not always publish them).
	prefFailures int
}

func TestAlertsEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: real redis-server, Celery workers, the exporter binary and Prometheus")
	}
	besideTheDemo(t)
	harness.Require(t, "prometheus")
	harness.RequirePython(t, "celery")
	start := time.Now()
	s := startAlertsE2E(t)
	t.Logf("set-up done in %v", time.Since(start).Round(time.Millisecond))

	// Steps run in order on one set of processes; a failed step stops the test when the later
	// ones build on what it set up (needed).
	steps := []struct {
		name   string
		run    func(*alertsE2E)
		needed bool
	}{
		{"warm-up and healthy state", (*alertsE2E).healthy, true},
		{"dashboards when healthy, success criteria green", (*alertsE2E).healthyStats, false},
		{"a queue nobody consumes", (*alertsE2E).orphanQueue, true},
		{"conditions fire their alerts", (*alertsE2E).conditions, true},
		{"every dashboard query returns data, success criteria red", (*alertsE2E).dashboards, false},
		{"breaker closed again", (*alertsE2E).breakerClosed, false},
		{"SIGKILLed worker past its purge", (*alertsE2E).deadWorker, true},
		{"last workers gone past their purge", (*alertsE2E).noWorkerLeft, true},
	}
	for _, st := range steps {
		stepStart := time.Now()
		ok := t.Run(st.name, func(t *testing.T) {
			s.t = t
			st.run(s)
		})
		t.Logf("%s: %v (total %v)", st.name, time.Since(stepStart).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		if !ok && st.needed {
			t.FailNow()
		}
	}
}

func startAlertsE2E(t *testing.T) *alertsE2E {
	s := &alertsE2E{t: t, redis: harness.StartRedis(t), workers: map[string]*harness.Worker{}}
	// The seed's example environment: cache on DB 0, broker on DB 1 (so the event channels are
	// /1.celeryev/*, not the default /0.).
	s.brokerURL = s.redis.URL(1)
	s.cache = redis.NewClient(&redis.Options{Addr: s.redis.Addr(), DB: 0})
	s.broker = redis.NewClient(&redis.Options{Addr: s.redis.Addr(), DB: 1})
	t.Cleanup(func() { s.cache.Close(); s.broker.Close() })

	// The exporter's --config.file: the breaker and app value on the cache DB, the app's JSON log.
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	if err := os.Mkdir(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	s.logFile = filepath.Join(logDir, "app.log")
	if err := os.WriteFile(s.logFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tmpl, err := os.ReadFile("testdata/alerts/celery_exporter.yml")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"CACHE_URL": s.redis.URL(0), "LOG_GLOB": filepath.Join(logDir, "*.log")}
	expCfg := filepath.Join(dir, "celery_exporter.yml")
	if err := os.WriteFile(expCfg, []byte(os.Expand(string(tmpl), func(k string) string { return vars[k] })), 0o644); err != nil {
		t.Fatal(err)
	}

	// The rules in their short variant, with the expected worker count of this test.
	cfg, err := bundle.LoadConfig("../../rules/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s.cfg = cfg.Shortened(bundle.Duration(alEval), bundle.Duration(alFor), bundle.Duration(alWindow), bundle.Duration(alStaleAfter))
	s.cfg.Workers.Expected = len(alSeedWorkers)
	if err := s.cfg.Validate(); err != nil {
		t.Fatalf("shortened rules config: %v", err)
	}
	files, err := s.cfg.Files()
	if err != nil {
		t.Fatal(err)
	}
	rulesDir := t.TempDir()
	rulesFile := filepath.Join(rulesDir, "celery.rules.yml")
	if err := os.WriteFile(rulesFile, files[bundle.RulesFile], 0o644); err != nil {
		t.Fatal(err)
	}

	s.rec = harness.RecordRedis(t, s.redis, 1)
	// The exporter first, so it is subscribed before any worker says worker-online.
	s.exp = harness.StartExporter(t,
		"--broker.url="+s.brokerURL,
		"--config.file="+expCfg,
		"--worker.timeout="+alWorkerTimeout.String(),
		"--worker.purge-after="+alPurgeAfter.String(),
		"--control.interval="+alControlEvery.String(),
		"--control.timeout=500ms",
		"--celery.default-queue=default",
		"--celery.queues="+strings.Join(s.cfg.Queues.Expected, ","),
		// Within Prometheus' 1s scrape timeout, so a slow broker read shows as a failed collector,
		// not as a missing scrape.
		"--scrape.timeout=800ms",
		"--log.level=debug")
	s.exp.WaitReady(t, 15*time.Second)

	s.prom = harness.StartPrometheus(t, harness.PrometheusConfig(harness.PromConfig{
		ScrapeInterval: alEval, EvaluationInterval: alEval,
		Jobs: map[string][]string{alJob: {s.exp.Addr}},
	}), rulesFile)

	var opts []harness.WorkerOptions
	for _, w := range alSeedWorkers {
		opts = append(opts, harness.WorkerOptions{
			BrokerURL: s.brokerURL, Queues: w.queues, Pool: w.pool, Concurrency: w.concurrency,
			NodeName: "celery@" + w.role,
			Env: []string{
				"CELERY_DEFAULT_QUEUE=default", "CELERY_ACKS_LATE=1", "CELERY_REJECT_ON_WORKER_LOST=1",
				"CELERYAPP_LOG_FILE=" + s.logFile,
			},
		})
	}
	for i, w := range harness.StartWorkers(t, opts...) {
		s.workers[alSeedWorkers[i].role] = w
	}
	return s
}

// healthy waits until Prometheus sees the three workers and a consumer on every expected queue,
// runs seed-shaped traffic through every queue, and then watches the alerts for longer than
// `for`: none of alHealthyQuiet may appear, in any state.
func (s *alertsE2E) healthy() {
	t := s.t
	expected := strconv.Itoa(len(alSeedWorkers))
	s.waitQuery(90*time.Second, `celery:workers_up:count{job="celery"}`, func(r []harness.QuerySample) bool {
		return len(r) == 1 && r[0].Value == float64(len(alSeedWorkers))
	}, "celery:workers_up:count = "+expected)
	expectedQueues := fmt.Sprintf(`count(celery:queue_consumers:max{job="celery",queue_name=~"%s"} >= 1)`, strings.Join(s.cfg.Queues.Expected, "|"))
	s.waitQuery(30*time.Second, expectedQueues, func(r []harness.QuerySample) bool {
		return len(r) == 1 && r[0].Value == float64(len(s.cfg.Queues.Expected))
	}, "a live consumer on every expected queue")
	// One window of scrape history: the exporter then started more than a window ago, so the
	// conditions below page through the counters themselves, not because the exporter is young.
	s.waitQuery(2*alWindow, fmt.Sprintf(`up{job="celery"} offset %s == 1`, bundle.Duration(alWindow)), func(r []harness.QuerySample) bool {
		return len(r) == 1
	}, "one window of scrape history")

	plan := []harness.Send{
		{Task: "assistant.tasks.process_chat_message", Kwargs: map[string]any{"message": "hi", "seconds": 0.1}},
		{Task: "assistant.tasks.process_chat_message", Kwargs: map[string]any{"message": "again", "seconds": 0.1}},
		{Task: "assistant.tasks.extract_preferences_async", Kwargs: map[string]any{"user_id": 7}},
		{Task: "assistant.tasks.send_whatsapp_message_task"},
		{Task: "assistant.tasks.process_incoming_media_task", Kwargs: map[string]any{"seconds": 0.2}},
		{Task: "assistant.tasks.dead_letter_queue", Kwargs: map[string]any{"original_task": "x", "task_id": "y", "error": "z"}},
		{Task: "add", Args: []any{2, 3}, Queue: "default"},
	}
	harness.Produce(t, s.brokerURL, nil, plan)
	for _, q := range []string{"chat", "default", "background", "notifications", "dlq"} {
		s.exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
			return m.Sum("celery_task_succeeded_total", map[string]string{"queue_name": q}) >= 1
		})
	}

	// Watch for longer than `for`: a condition held since warm-up would have become firing, one
	// that comes and goes shows as pending.
	deadline := time.Now().Add(alFor + 4*time.Second)
	for time.Now().Before(deadline) {
		alerts := s.alerts()
		for _, a := range alerts {
			if slices.Contains(alHealthyQuiet, a.Name()) {
				t.Fatalf("healthy state: %s is %s (%s)\n%s\n%s", a.Name(), a.State, alertString(a), dumpAlerts(alerts),
					s.metricLines("celery_worker_up", "celery_queue_length", "celery_queue_consumers", "celery_breaker_open", "celery_log_events_total"))
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	// Any other alert of the bundle firing here is a false positive too.
	alerts := s.alerts()
	for _, a := range alerts {
		if a.State == "firing" {
			t.Errorf("healthy state: %s firing: %s", a.Name(), alertString(a))
		}
	}
	if t.Failed() {
		t.Logf("alerts:\n%s\n%s", dumpAlerts(alerts), s.metricLines("celery_worker", "celery_task_failed_total"))
	}
}

// healthyStats: in the healthy state the dashboards are empty exactly where alEmptyWhenHealthy
// says, and the success criteria screen is all green and shows numbers.
func (s *alertsE2E) healthyStats() {
	t := s.t
	empty := s.emptyPanels()
	for _, key := range slices.Sorted(maps.Keys(empty)) {
		if _, ok := alEmptyWhenHealthy[key]; !ok {
			t.Errorf("%s: no data in the healthy state\n%s", key, empty[key])
		}
	}
	for _, key := range slices.Sorted(maps.Keys(alEmptyWhenHealthy)) {
		if _, ok := empty[key]; !ok {
			t.Errorf("%s: has data in the healthy state, yet listed in alEmptyWhenHealthy (%s)", key, alEmptyWhenHealthy[key])
		}
	}
	s.checkStats(s.successStats(), map[string]statWant{
		"Workers up": {"green", 3, 3}, "Max queue depth": {"green", 0, 0}, "Queues without consumer": {"green", 0, 0},
	}, true)
}

// orphanQueue sends 6 tasks (backlog_warning is 5) to a queue no worker consumes. The exporter
// finds a queue nobody declared in --celery.queues by scanning the _kombu.binding.* sets, which
// it does every 30s, so this wave goes first and alone.
func (s *alertsE2E) orphanQueue() {
	t := s.t
	var plan []harness.Send
	for i := 0; i < 6; i++ {
		plan = append(plan, harness.Send{Task: "add", Args: []any{i, i}, Queue: alOrphanQueue})
	}
	produced := time.Now()
	harness.Produce(t, s.brokerURL, nil, plan)
	want := []alertWant{
		{name: "CeleryQueueWithoutConsumers", labels: map[string]string{"queue_name": alOrphanQueue}},
		{name: "CeleryQueueBacklog", labels: map[string]string{"queue_name": alOrphanQueue}},
	}
	s.logSeen(want, s.waitAlertsSeen(want, 75*time.Second), produced)
	for _, a := range s.alerts() {
		if (a.Name() == "CeleryQueueWithoutConsumers" || a.Name() == "CeleryQueueBacklog") && a.Labels["queue_name"] == alOrphanQueue {
			if v := alertValue(t, a); v != 6 {
				t.Errorf("%s{queue_name=%q} value %v, want the 6 queued messages", a.Name(), alOrphanQueue, v)
			}
		}
	}
}

// conditions produces, at once, every other condition the alerts and the panels that are empty
// when healthy wait for, then waits until each expected alert has been seen firing.
// Window-based alerts (ZepCallErrors, ...) fire only for one window after their event, so every
// alert is watched from the start instead of one after the other.
func (s *alertsE2E) conditions() {
	t := s.t
	// The Zep breaker trips, as force_write_only("consecutive_failures", ttl) stores it.
	s.setBreaker("consecutive_failures", alBreakerTTL)
	// django-redis stores an int as its digits.
	if err := s.cache.Set(t.Context(), ":1:mem:read:consec_failures", "3", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	// A malformed event on the event channel: celery_exporter_event_errors_total.
	if err := s.broker.Publish(t.Context(), "/1.celeryev/worker.heartbeat", "{not json").Err(); err != nil {
		t.Fatal(err)
	}
	// Failures, a retry, a revocation and the seed's log events (zep_call_error from the chat
	// task, preferences_extract_failed from the link_error task). The long sleep is killed in its
	// pool child.
	plan := []harness.Send{
		{Task: "assistant.tasks.process_chat_message", Kwargs: map[string]any{"message": "zep down", "seconds": 0.1, "zep_error": true}},
		{Task: "assistant.tasks.extract_preferences_async", Kwargs: map[string]any{"user_id": 9, "fail": true},
			LinkError: "assistant.tasks.log_preference_extraction_failure"},
		{Task: "fail", Kwargs: map[string]any{"msg": "e2e"}, Queue: "background"},
		{Task: "retry_once", Queue: "background"},
		// Expired before its ETA: the worker revokes it when the ETA comes (reason "expired").
		{Task: "add", Args: []any{1, 1}, Queue: "background", Countdown: 1, Expires: 0.5},
		// Long enough to be still running once the other background tasks are done.
		{Task: "sleep", Kwargs: map[string]any{"seconds": 20}, Queue: "background"},
	}
	produced := time.Now()
	ids := harness.Produce(t, s.brokerURL, nil, plan)
	prefID := ids[1]

	// A pool child dies under a running task (OOM kill): with acks_late and reject_on_worker_lost
	// the task is rejected and requeued (task-rejected), CeleryWorkerLost's second half.
	// Only the sleep may be in a pool child when they die: the other background tasks must be done
	// (with concurrency 2, a retry_once still running would be rejected too).
	s.exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		return m.Sum("celery_task_started_total", map[string]string{"name": "celeryapp.app.sleep"}) >= 1 &&
			m.Sum("celery_task_succeeded_total", map[string]string{"name": "celeryapp.app.retry_once"}) >= 1 &&
			m.Sum("celery_task_failed_total", map[string]string{"name": "celeryapp.app.fail"}) >= 1
	})
	bg := s.workers["background"]
	children, err := childPIDs(bg.PID())
	if err != nil || len(children) == 0 {
		t.Fatalf("pool children of %s (pid %d): %v %v", bg.NodeName, bg.PID(), children, err)
	}
	for _, pid := range children {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	t.Logf("killed the pool children %v of %s", children, bg.NodeName)

	want := []alertWant{
		{name: "ZepMemoryDegraded", labels: map[string]string{"breaker": "zep"}},
		{name: "ZepCallErrors", labels: map[string]string{"event": "zep_call_error"}},
		{name: "PreferenceExtractionFailing"},
		{name: "CeleryTaskFailureRateHigh", labels: map[string]string{"name": "celeryapp.app.fail", "queue_name": "background"}},
		{name: "CeleryWorkerLost", labels: map[string]string{"name": "celeryapp.app.sleep", "queue_name": "background"}},
	}
	s.logSeen(want, s.waitAlertsSeen(want, 30*time.Second), produced)

	// What the preference stat must count: the log line, plus the task failure if its event was
	// published at all; when it was, the exporter must have counted it.
	s.rec.WaitFor(t, 10*time.Second, "the failing extract_preferences_async finished", func(r *harness.Recorder) bool {
		return slices.ContainsFunc(r.Task(prefID), func(e harness.Event) bool { return e.Type == "task-succeeded" || e.Type == "task-failed" }) ||
			time.Since(produced) > 8*time.Second
	})
	for _, e := range s.rec.Task(prefID) {
		if e.Type == "task-failed" {
			s.prefFailures++
		}
	}
	if s.prefFailures == 0 {
		var types []string
		for _, e := range s.rec.Task(prefID) {
			types = append(types, e.Type+"@"+e.Hostname)
		}
		t.Logf("note: celery@default (threads pool) published no task-failed for %s within 8s; events seen: %v", prefID, types)
	} else {
		name := map[string]string{"name": "assistant.tasks.extract_preferences_async"}
		if _, ok := s.exp.Poll(5*time.Second, func(m harness.Metrics) bool {
			return m.Sum("celery_task_failed_total", name) == float64(s.prefFailures)
		}); !ok {
			t.Errorf("task-failed of %s went over the wire (%d) but celery_task_failed_total%v does not count it:\n%s",
				prefID, s.prefFailures, name, s.metricLines("celery_task_failed_total", "celery_exporter_event_errors_total"))
		}
	}

	// Only the orphan queue lacks a consumer or backs up.
	for _, a := range s.alerts() {
		if (a.Name() == "CeleryQueueWithoutConsumers" || a.Name() == "CeleryQueueBacklog") && a.Labels["queue_name"] != alOrphanQueue {
			t.Errorf("%s for queue %q: %s", a.Name(), a.Labels["queue_name"], alertString(a))
		}
	}
}

func (s *alertsE2E) logSeen(want []alertWant, seen map[string]time.Time, produced time.Time) {
	for _, w := range want {
		s.t.Logf("%s firing %v after its condition was produced", w.name, seen[w.name].Sub(produced).Round(100*time.Millisecond))
	}
}

// dashboards runs every query of the committed dashboards while the conditions above are still
// inside their windows and the breaker is open: each one must return data. Then the success
// criteria screen must show each produced condition red and the rest green.
func (s *alertsE2E) dashboards() {
	t := s.t
	empty := s.emptyPanels()
	for _, key := range slices.Sorted(maps.Keys(empty)) {
		t.Errorf("%s: no data under the conditions\n%s", key, empty[key])
	}

	// The success criteria screen shows each produced condition red, the rest green.
	inf := math.Inf(1)
	s.checkStats(s.successStats(), map[string]statWant{
		"Max queue depth":             {"red", 6, 6}, // the orphan queue
		"Workers up":                  {"green", 3, 3},
		"Queues without consumer":     {"red", 1, 1}, // the orphan queue
		"Unresponsive workers":        {"green", 0, 0},
		"Broker reachable":            {"green", 1, 1},
		"Exporter up":                 {"green", 1, 1},
		"Worst task failure ratio":    {"red", 1, 1}, // celeryapp.app.fail, 1 of 1
		"Worst task p95 runtime":      {"green", 0, 120},
		"Oldest running task":         {"green", 0, 60},
		"Lost or requeued tasks":      {"red", 1, 1}, // the sleep task whose pool child was killed
		"Time limits hit":             {"green", 0, 0},
		"Seconds since last event":    {"green", 0, 10},
		"Workers without task events": {"green", 0, 0},
		// Log event counters start at 0, so this is increase() and its extrapolation: one line.
		"zep_call_error": {"red", 1, 1.5},
		"Breaker zep":    {"red", 1, 1},
		// One log line (a counter that starts at 0: increase(), with its extrapolation) plus the
		// task failures that were published.
		"Preference extraction failures": {"red", 1 + float64(s.prefFailures), 1.5 + float64(s.prefFailures)},
		"Max worker memory":              {"green", 1, 500 << 20},
		"Celery alerts firing":           {"red", 1, inf},
	}, false)
	if t.Failed() {
		t.Logf("alerts:\n%s", dumpAlerts(s.alerts()))
	}
}

// emptyPanels runs every panel query and variable query of the committed dashboards
// (dashboards/*.json, what users load) with the dashboards' default variable values and returns
// the ones without data ("uid / panel title / refId", or "uid / variable name"), each with its
// query and the evidence of why.
func (s *alertsE2E) emptyPanels() map[string]string {
	t := s.t
	t.Helper()
	vals := bundle.DefaultVarValues()
	vals["job"] = alJob
	paths, err := filepath.Glob("../../dashboards/*.json")
	if err != nil || len(paths) != len(bundle.Dashboards()) {
		t.Fatalf("dashboards/*.json: %v %v, want %d files", paths, err, len(bundle.Dashboards()))
	}
	empty := map[string]string{}
	checked := 0
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var dash map[string]any
		if err := json.Unmarshal(b, &dash); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		uid, _ := dash["uid"].(string)
		for name, q := range bundle.VariableQueries(dash) {
			expr, ok := labelValuesQuery(bundle.ExpandVars(q, vals))
			if !ok {
				t.Errorf("%s: variable %s: %q is not label_values(metric, label)", p, name, q)
				continue
			}
			checked++
			if res, err := s.prom.Query(expr); err != nil {
				t.Errorf("%s / variable %s: %s: %v", uid, name, expr, err)
			} else if len(res) == 0 {
				empty[uid+" / variable "+name] = "  " + q + "\n" + s.evidence(expr)
			}
		}
		for _, q := range bundle.PanelQueries(dash) {
			checked++
			key := q.Dashboard + " / " + q.Panel + " / " + q.RefID
			expr := bundle.ExpandVars(q.Expr, vals)
			res, err := s.prom.Query(expr)
			if err != nil {
				t.Errorf("%s: query failed: %v", key, err)
				continue
			}
			if len(res) > 0 {
				continue
			}
			msg := "  " + strings.ReplaceAll(expr, "\n", "\n  ")
			// A filtered query: what it filtered out is the evidence.
			if unfiltered := gtZeroFilter.ReplaceAllString(expr, ""); unfiltered != expr {
				r, err := s.prom.Query(unfiltered)
				msg += fmt.Sprintf("\n  without the filter: %v %v", r, err)
			}
			empty[key] = msg + "\n" + s.evidence(expr)
		}
	}
	t.Logf("%d dashboard queries run, %d without data", checked, len(empty))
	return empty
}

// statResult is one stat panel of the "Celery / Success criteria" dashboard as Grafana would
// show it: the value of its instant query and the colour its mappings or thresholds give.
type statResult struct {
	value float64
	color string
	expr  string
}

// successStats evaluates every stat of the "Celery / Success criteria" dashboard rendered from the
// shortened config: its windows are those of the rules under test, so a stat and its alert agree.
func (s *alertsE2E) successStats() map[string]statResult {
	t := s.t
	t.Helper()
	raw, err := json.Marshal(s.cfg.DashboardJSON()[bundle.DashSuccess])
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Type, Title string
			Targets     []struct{ Expr string }
			FieldConfig struct {
				Defaults struct {
					Thresholds struct {
						Steps []struct {
							Color string
							Value *float64
						}
					}
					Mappings []struct {
						Type    string
						Options map[string]struct{ Color string }
					}
				}
			}
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	vals := bundle.DefaultVarValues()
	vals["job"] = alJob
	out := map[string]statResult{}
	for _, p := range dash.Panels {
		if p.Type != "stat" {
			continue
		}
		if len(p.Targets) != 1 {
			t.Fatalf("stat %q has %d queries, want 1", p.Title, len(p.Targets))
		}
		expr := bundle.ExpandVars(p.Targets[0].Expr, vals)
		res, err := s.prom.Query(expr)
		if err != nil || len(res) != 1 {
			t.Fatalf("stat %q: want one value, got %v (%v)\n  %s", p.Title, res, err, expr)
		}
		r := statResult{value: res[0].Value, expr: expr}
		d := p.FieldConfig.Defaults
		for _, st := range d.Thresholds.Steps {
			if st.Value == nil || r.value >= *st.Value {
				r.color = st.Color
			}
		}
		// A value mapping's colour wins over the thresholds, as in Grafana.
		for _, m := range d.Mappings {
			if o, ok := m.Options[strconv.FormatFloat(r.value, 'f', -1, 64)]; ok && m.Type == "value" && o.Color != "" {
				r.color = o.Color
			}
		}
		out[p.Title] = r
	}
	if len(out) == 0 {
		t.Fatal("the success criteria dashboard has no stat panel")
	}
	return out
}

// statWant is what a success-criteria stat must show; titles are matched by prefix (the window
// is part of some titles).
type statWant struct {
	color    string
	min, max float64 // the value must be in [min, max]
}

// checkStats compares the stats with want; a stat missing from want must be green when
// allGreenElse is set.
func (s *alertsE2E) checkStats(stats map[string]statResult, want map[string]statWant, allGreenElse bool) {
	t := s.t
	t.Helper()
	used := map[string]bool{}
	for _, title := range slices.Sorted(maps.Keys(stats)) {
		r := stats[title]
		var w *statWant
		for prefix, sw := range want {
			if strings.HasPrefix(title, prefix) {
				w, used[prefix] = &sw, true
			}
		}
		t.Logf("stat %q = %v (%s)", title, r.value, r.color)
		switch {
		case math.IsNaN(r.value):
			// Grafana prints "NaN" in the base colour: no criterion can be read from it.
			t.Errorf("stat %q shows NaN\n  %s\n%s", title, strings.ReplaceAll(r.expr, "\n", "\n  "), s.evidence(r.expr))
		case w != nil:
			if r.color != w.color || !(r.value >= w.min && r.value <= w.max) {
				t.Errorf("stat %q = %v (%s), want %s in [%v, %v]\n  %s\n%s", title, r.value, r.color, w.color, w.min, w.max,
					strings.ReplaceAll(r.expr, "\n", "\n  "), s.evidence(r.expr))
			}
		case allGreenElse && r.color != "green":
			t.Errorf("stat %q = %v (%s), want green\n  %s\n%s", title, r.value, r.color, strings.ReplaceAll(r.expr, "\n", "\n  "), s.evidence(r.expr))
		}
	}
	for prefix := range want {
		if !used[prefix] {
			t.Errorf("no stat titled %q... on the success criteria dashboard", prefix)
		}
	}
}

// alEmptyWhenHealthy lists the dashboard queries ("uid / panel title / refId") that are empty in
// the healthy state, each with the condition that fills it and that the conditions step produces.
// The healthy step requires exactly these to be empty (so each reason is checked), the
// conditions step requires every query to return data.
var alEmptyWhenHealthy = map[string]string{
	// Counters whose labels only exist once the event happened (exception, reason, breaker
	// reason): no series at all before it. (Failed and rejected tasks and event errors are not
	// here: their series exist at 0 from the first sight of a task, or from the start.)
	"celery-tasks / Tasks by state / F":                "celery_task_retried_total: retry_once",
	"celery-tasks / Tasks by state / H":                "celery_task_revoked_total: a task that expires before its ETA",
	"celery-tasks / Retried by task and exception / A": "celery_task_retried_total: retry_once",
	"celery-tasks / Rejected and revoked / B":          "celery_task_revoked_total: the expired task",
	"celery-app-signals / Breaker trips / A":           "celery_breaker_trips_total: the zep key set (reason consecutive_failures)",
	// Filtered to the bad case.
	"celery-tasks / Failures in the time range / A":          "`> 0`: the failing tasks",
	"celery-app-signals / Breaker mode and reason / A":       "`celery_breaker_info == 1`: the zep breaker open",
	"celery-app-signals / Time until the breaker closes / A": "`> 0`: the zep breaker open with an `until`",
	// Only known for a waiting message whose task-sent was seen.
	"celery-workers-queues / Oldest message age / A": "the 6 messages waiting in the queue nobody consumes",
}

// breakerClosed deletes the breaker key (its TTL running out, or the app closing it) and
// expects ZepMemoryDegraded to go away.
func (s *alertsE2E) breakerClosed() {
	t := s.t
	if err := s.cache.Del(t.Context(), alBreakerKey).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		alerts := s.alerts()
		if !slices.ContainsFunc(alerts, func(a harness.Alert) bool { return a.Name() == "ZepMemoryDegraded" }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ZepMemoryDegraded still there 10s after the breaker key was deleted\n%s\n%s",
				dumpAlerts(alerts), s.metricLines("celery_breaker"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// deadWorker kills the chat worker with SIGKILL (no worker-offline) and follows its alert
// through the exporter's purge of its series.
func (s *alertsE2E) deadWorker() {
	t := s.t
	chat := s.workers["chat"]
	killed := time.Now()
	chat.Kill()
	// Fires with the worker's series at 0 (purge-after is longer than `for`)...
	a := s.waitAlert(alertWant{name: "CeleryWorkersBelowExpected", labels: map[string]string{"job": alJob}}, 30*time.Second)
	t.Logf("CeleryWorkersBelowExpected firing %v after SIGKILL (value %s)", time.Since(killed).Round(100*time.Millisecond), a.Value)
	if v := alertValue(t, a); v != float64(len(alSeedWorkers)-1) {
		t.Errorf("CeleryWorkersBelowExpected value %v, want %d live workers", v, len(alSeedWorkers)-1)
	}
	if m := s.exp.MustScrape(t); !hasValue(m, "celery_worker_up", map[string]string{"hostname": chat.NodeName}, 0) {
		t.Logf("note: celery_worker_up{hostname=%q} already gone when the alert fired (purge-after %v):\n%s",
			chat.NodeName, alPurgeAfter, s.metricLines("celery_worker_up"))
	}
	// The dead worker's queue lost its only consumer.
	s.waitAlert(alertWant{name: "CeleryQueueWithoutConsumers", labels: map[string]string{"queue_name": "chat"}}, 30*time.Second)

	// ...and keeps firing, with the same activeAt, once the exporter purged them.
	s.waitPurged(chat.NodeName, killed)
	s.expectStillFiring(a, float64(len(alSeedWorkers)-1))
}

// noWorkerLeft kills the other two workers: the count goes to 0, and the alert must go on firing
// after their series are purged too ("also when none are left at all").
func (s *alertsE2E) noWorkerLeft() {
	before := s.waitAlert(alertWant{name: "CeleryWorkersBelowExpected", labels: map[string]string{"job": alJob}}, time.Second)
	killed := time.Now()
	for _, role := range []string{"default", "background"} {
		s.workers[role].Kill()
	}
	s.waitQuery(30*time.Second, `celery:workers_up:count{job="celery"}`, func(r []harness.QuerySample) bool {
		return len(r) == 1 && r[0].Value == 0
	}, "celery:workers_up:count = 0")
	for _, role := range []string{"default", "background"} {
		s.waitPurged(s.workers[role].NodeName, killed)
	}
	s.expectStillFiring(before, 0)
}

// waitPurged waits until no series of the exporter names the worker any more.
func (s *alertsE2E) waitPurged(node string, killed time.Time) {
	t := s.t
	// Down 2×heartbeat interval + --worker.timeout after the last heartbeat, purged purge-after
	// later, at the exporter's next 5s housekeeping tick.
	timeout := 2*2*time.Second + alWorkerTimeout + alPurgeAfter + 15*time.Second
	m, ok := s.exp.Poll(timeout, func(m harness.Metrics) bool { return !strings.Contains(m.Text, `hostname="`+node+`"`) })
	if !ok {
		t.Fatalf("series of %s still in /metrics %v after SIGKILL (purge-after %v):\n%s", node,
			time.Since(killed).Round(time.Second), alPurgeAfter, grepLines(m.Text, `hostname="`+node+`"`))
	}
	t.Logf("series of %s gone from /metrics %v after SIGKILL", node, time.Since(killed).Round(100*time.Millisecond))
	// Prometheus marks them stale at its next scrape, so the alert below cannot be living on a
	// last value kept for the 5m lookback.
	s.waitQuery(5*time.Second, fmt.Sprintf(`celery_worker_up{job="celery",hostname=%q}`, node), func(r []harness.QuerySample) bool {
		return len(r) == 0
	}, "celery_worker_up of "+node+" stale in Prometheus")
}

// expectStillFiring checks for a few evaluations that the alert stays firing as the same alert
// (same activeAt: it did not resolve and start over) with the given value.
func (s *alertsE2E) expectStillFiring(was harness.Alert, value float64) {
	t := s.t
	for i := 0; i < 4; i++ {
		alerts := s.alerts()
		idx := slices.IndexFunc(alerts, func(a harness.Alert) bool { return a.Name() == was.Name() && a.State == "firing" })
		if idx < 0 {
			t.Fatalf("%s not firing after the purge\n%s\n%s", was.Name(), dumpAlerts(alerts), s.metricLines("celery_worker_up"))
		}
		a := alerts[idx]
		if !a.ActiveAt.Equal(was.ActiveAt) {
			t.Errorf("%s activeAt %v, was %v: it resolved and started over", a.Name(), a.ActiveAt, was.ActiveAt)
		}
		if v := alertValue(t, a); v != value {
			t.Errorf("%s value %v, want %v\n%s", a.Name(), v, value, s.metricLines("celery_worker_up"))
		}
		if t.Failed() {
			t.FailNow()
		}
		time.Sleep(alEval + 100*time.Millisecond)
	}
}

// --- helpers -----------------------------------------------------------------------------------

// setBreaker stores what the seed's force_write_only(reason, ttl) stores through django-redis: a
// pickled dict (Python's default protocol), with SET ... PX.
func (s *alertsE2E) setBreaker(reason string, ttl time.Duration) {
	t := s.t
	const script = `import pickle, sys, time
now = time.time()
sys.stdout.buffer.write(pickle.dumps({"mode": "write_only", "reason": sys.argv[1],
    "until": now + float(sys.argv[2]), "forced_at": now}))`
	out, err := exec.Command(harness.Python, "-c", script, reason, strconv.FormatFloat(ttl.Seconds(), 'f', -1, 64)).Output()
	if err != nil {
		t.Fatalf("pickle the breaker state: %v", err)
	}
	if err := s.cache.Set(t.Context(), alBreakerKey, out, ttl).Err(); err != nil {
		t.Fatal(err)
	}
}

func (s *alertsE2E) alerts() []harness.Alert {
	a, err := s.prom.Alerts()
	if err != nil {
		s.t.Fatalf("prometheus alerts: %v", err)
	}
	return a
}

type alertWant struct {
	name   string
	labels map[string]string
}

func (w alertWant) matches(a harness.Alert) bool {
	if a.Name() != w.name || a.State != "firing" {
		return false
	}
	for k, v := range w.labels {
		if a.Labels[k] != v {
			return false
		}
	}
	return true
}

func (s *alertsE2E) waitAlert(w alertWant, timeout time.Duration) harness.Alert {
	s.t.Helper()
	s.waitAlertsSeen([]alertWant{w}, timeout)
	for _, a := range s.alerts() {
		if w.matches(a) {
			return a
		}
	}
	s.t.Fatalf("%s%v resolved right after firing\n%s", w.name, w.labels, dumpAlerts(s.alerts()))
	return harness.Alert{}
}

// waitAlertsSeen polls the alerts until every wanted one has been firing at least once and
// returns when each was first seen.
func (s *alertsE2E) waitAlertsSeen(want []alertWant, timeout time.Duration) map[string]time.Time {
	t := s.t
	t.Helper()
	seen := map[string]time.Time{}
	deadline := time.Now().Add(timeout)
	for {
		alerts := s.alerts()
		missing := []string{}
		for _, w := range want {
			if _, ok := seen[w.name]; ok {
				continue
			}
			if slices.ContainsFunc(alerts, w.matches) {
				seen[w.name] = time.Now()
				continue
			}
			missing = append(missing, fmt.Sprintf("%s%v", w.name, w.labels))
		}
		if len(missing) == 0 {
			return seen
		}
		if time.Now().After(deadline) {
			t.Fatalf("not seen firing within %v: %s\nalerts now:\n%s\nexporter:\n%s", timeout, strings.Join(missing, ", "), dumpAlerts(alerts),
				s.metricLines("celery_worker_up", "celery_queue_length", "celery_queue_consumers", "celery_breaker", "celery_log_events_total{event=\"zep_call_error\"",
					"celery_task_failed_total", "celery_task_rejected_total", "celery_exporter_event_errors_total"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (s *alertsE2E) waitQuery(timeout time.Duration, expr string, cond func([]harness.QuerySample) bool, what string) {
	t := s.t
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		res, err := s.prom.Query(expr)
		if err == nil && cond(res) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %s gave %v (%v) for %v\nalerts:\n%s\nexporter:\n%s", what, expr, res, err, timeout,
				dumpAlerts(s.alerts()), s.metricLines("celery_worker_up", "celery_queue_consumers", "celery_up", "celery_exporter_collector_success"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// metricLines is the exporter's current /metrics, only the sample lines starting with one of the
// prefixes: the evidence next to an alert that did or did not fire.
func (s *alertsE2E) metricLines(prefixes ...string) string {
	m, err := s.exp.Scrape()
	if err != nil {
		return "scrape: " + err.Error()
	}
	var out []string
	for _, l := range strings.Split(m.Text, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, "  "+l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

var (
	metricNameRE = regexp.MustCompile(`\bcelery_[a-z0-9_]+`)
	recordedRE   = regexp.MustCompile(`\bcelery:[a-z0-9_:]+`)
)

// evidence is the exporter's current samples of every exporter metric a query reads (recorded
// series are followed to nothing: their inputs are what the exporter can show).
func (s *alertsE2E) evidence(expr string) string {
	var out []string
	// Recorded series: their current values, and their inputs' samples below.
	records := map[string]string{}
	for _, g := range s.cfg.RuleGroups() {
		for _, r := range g.Rules {
			if r.Record != "" {
				records[r.Record] = r.Expr
			}
		}
	}
	inputs := expr
	for _, rec := range slices.Compact(slices.Sorted(slices.Values(recordedRE.FindAllString(expr, -1)))) {
		res, err := s.prom.Query(rec)
		out = append(out, fmt.Sprintf("  %s now: %v %v", rec, res, err))
		inputs += "\n" + records[rec]
	}
	// A failed scrape one window ago switches the rules' "born inside the window" branch off.
	res, err := s.prom.Query(fmt.Sprintf(`count_over_time(up{job="celery"}[%s]) - sum_over_time(up{job="celery"}[%s])`, 2*alWindow, 2*alWindow))
	out = append(out, fmt.Sprintf("  failed scrapes in the last %v: %v %v", 2*alWindow, res, err))
	names := map[string]bool{}
	for _, n := range metricNameRE.FindAllString(inputs, -1) {
		// A histogram's count tells as much as its buckets, in one line per series.
		if h, ok := strings.CutSuffix(n, "_bucket"); ok {
			n = h + "_count"
		}
		names[n] = true
	}
	var prefixes []string
	for n := range names {
		prefixes = append(prefixes, n+"{", n+" ")
	}
	if len(prefixes) > 0 {
		sort.Strings(prefixes)
		out = append(out, "  exporter now:", s.metricLines(prefixes...))
	}
	return strings.Join(out, "\n")
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, "  "+l)
		}
	}
	return strings.Join(out, "\n")
}

func hasValue(m harness.Metrics, name string, labels map[string]string, want float64) bool {
	v, ok := m.Value(name, labels)
	return ok && v == want
}

func alertString(a harness.Alert) string {
	keys := make([]string, 0, len(a.Labels))
	for k := range a.Labels {
		if k != "alertname" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var ls []string
	for _, k := range keys {
		ls = append(ls, k+"="+strconv.Quote(a.Labels[k]))
	}
	return fmt.Sprintf("%s{%s} %s value=%s activeAt=%s", a.Name(), strings.Join(ls, ","), a.State, a.Value, a.ActiveAt.Format(time.RFC3339Nano))
}

func dumpAlerts(alerts []harness.Alert) string {
	if len(alerts) == 0 {
		return "  (no alerts)"
	}
	lines := make([]string, len(alerts))
	for i, a := range alerts {
		lines[i] = "  " + alertString(a)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func alertValue(t *testing.T, a harness.Alert) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(a.Value, 64)
	if err != nil {
		t.Fatalf("%s: value %q: %v", a.Name(), a.Value, err)
	}
	return v
}

// gtZeroFilter is a trailing "> 0" of a panel query.
var gtZeroFilter = regexp.MustCompile(`\s*>\s*0\s*$`)

var labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`)

// labelValuesQuery turns Grafana's label_values(metric, label) into the PromQL whose result
// carries those label values.
func labelValuesQuery(q string) (string, bool) {
	m := labelValuesRE.FindStringSubmatch(strings.TrimSpace(q))
	if m == nil {
		return "", false
	}
	return "group by (" + m[2] + ") (" + m[1] + ")", true
}

// childPIDs lists the processes whose parent is pid (a prefork worker's pool children).
func childPIDs(pid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil && ppid == pid {
			out = append(out, p)
		}
	}
	return out, nil
}
