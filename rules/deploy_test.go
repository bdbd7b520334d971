package rules_test

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
	"github.com/celery-exporter/celery_exporter/test/harness"
)

const alertmanagerFile = "deploy/alertmanager/alertmanager.yml"

func TestAlertmanagerConfigIsValid(t *testing.T) {
	harness.Require(t, "amtool")
	out, err := runTool(t, "amtool", "check-config", alertmanagerFile)
	if err != nil {
		t.Fatalf("amtool check-config: %v\n%s", err, out)
	}
	if !strings.Contains(out, "SUCCESS") || !strings.Contains(out, "2 receivers") {
		t.Errorf("unexpected amtool output:\n%s", out)
	}
}

// TestAlertmanagerRoutesEveryAlert proves with amtool where each alert of the rule file goes:
// critical to the on-call receiver, warning to chat.
func TestAlertmanagerRoutesEveryAlert(t *testing.T) {
	harness.Require(t, "amtool")
	want := map[string]string{"critical": "oncall", "warning": "chat"}
	rf := readRuleFile(t, filepath.Join(root, bundle.RulesFile))
	alerts := alertsByName(rf)
	for _, name := range loadSeedConfig(t).AlertNames() {
		r := alerts[name]
		sev := r.Labels["severity"]
		t.Run(name, func(t *testing.T) {
			out, err := runTool(t, "amtool", "config", "routes", "test", "--config.file="+alertmanagerFile,
				"--verify.receivers="+want[sev], "alertname="+name, "severity="+sev, "job=celery", "queue_name=chat")
			if err != nil {
				t.Errorf("%s (severity %s) does not route to %s: %v\n%s", name, sev, want[sev], err, out)
			}
		})
	}
	// The checks above must be able to fail: a warning never reaches on-call.
	out, err := runTool(t, "amtool", "config", "routes", "test", "--config.file="+alertmanagerFile,
		"--verify.receivers=oncall", "alertname=CeleryQueueBacklog", "severity=warning")
	if err == nil {
		t.Errorf("a warning routed to oncall:\n%s", out)
	}
}

// TestAlertmanagerInhibitsBelowOutages posts alerts to a real Alertmanager running the shipped
// config and reads back which ones it suppresses. Each scenario has its own job, so the job
// scoping of the inhibitions is tested along the way:
//   - no exporter of the job up (the job-wide CeleryExporterDown, without instance): every other
//     alert of the bundle is suppressed;
//   - one of two replicas down (CeleryExporterDown of its instance only): nothing is, the other
//     replica still sees everything;
//   - the broker unreachable: everything but CeleryExporterDown is;
//   - a critical backlog: the warning of the same queue is, not the other queue's, not the reverse;
//   - a dead or stuck worker: the queues it left without consumers are, and their backlogs;
//   - a queue without consumers while every worker is up: it pages, its backlogs do not.
func TestAlertmanagerInhibitsBelowOutages(t *testing.T) {
	harness.Require(t, harness.AlertmanagerBinary)
	cfg, err := os.ReadFile(filepath.Join(root, alertmanagerFile))
	if err != nil {
		t.Fatal(err)
	}
	am := harness.StartAlertmanager(t, string(cfg))
	rules := alertsByName(readRuleFile(t, filepath.Join(root, bundle.RulesFile)))

	type posted struct {
		labels     map[string]string
		suppressed bool
	}
	var alerts []posted
	add := func(suppressed bool, name, job string, extra ...string) {
		l := map[string]string{"alertname": name, "job": job, "severity": rules[name].Labels["severity"]}
		for i := 0; i+1 < len(extra); i += 2 {
			l[extra[i]] = extra[i+1]
		}
		alerts = append(alerts, posted{l, suppressed})
	}
	// The alerts of the bundle other than the two outages, labelled as their rules label them
	// (CeleryEventsStale per exporter, queue alerts per queue, the critical backlog on another
	// queue than the warning so it does not silence it).
	others := func(suppressed bool, job, staleInstance string) {
		extra := map[string][]string{
			"CeleryEventsStale":           {"instance", staleInstance},
			"CeleryQueueWithoutConsumers": {"queue_name", "dlq"},
			"CeleryQueueBacklog":          {"queue_name", "chat"},
			"CeleryQueueBacklogCritical":  {"queue_name", "default"},
		}
		for _, name := range loadSeedConfig(t).AlertNames() {
			switch name {
			case "CeleryExporterDown", "CeleryBrokerUnreachable":
			case "CeleryQueueWithoutConsumers":
				// Always held back here: CeleryWorkersBelowExpected is among the others.
				add(true, name, job, extra[name]...)
			default:
				add(suppressed, name, job, extra[name]...)
			}
		}
	}

	add(false, "CeleryExporterDown", "blind")
	add(false, "CeleryExporterDown", "blind", "instance", "a:9808")
	add(true, "CeleryBrokerUnreachable", "blind")
	others(true, "blind", "a:9808")

	add(false, "CeleryExporterDown", "ha", "instance", "a:9808")
	others(false, "ha", "b:9808")
	add(false, "CeleryExporterDown", "ha-broker", "instance", "a:9808")
	add(false, "CeleryBrokerUnreachable", "ha-broker")

	add(false, "CeleryBrokerUnreachable", "broker")
	add(false, "CeleryExporterDown", "broker", "instance", "a:9808")
	others(true, "broker", "a:9808")

	add(false, "CeleryQueueBacklogCritical", "backlog", "queue_name", "chat")
	add(true, "CeleryQueueBacklog", "backlog", "queue_name", "chat")
	add(false, "CeleryQueueBacklog", "backlog", "queue_name", "default")

	// One dead worker (the background one): one page, its queues' alerts held back.
	add(false, "CeleryWorkersBelowExpected", "dead-worker")
	for _, q := range []string{"background", "notifications", "dlq"} {
		add(true, "CeleryQueueWithoutConsumers", "dead-worker", "queue_name", q)
	}
	add(true, "CeleryQueueBacklog", "dead-worker", "queue_name", "background")
	add(true, "CeleryQueueBacklogCritical", "dead-worker", "queue_name", "notifications")
	add(false, "CeleryQueueBacklog", "dead-worker", "queue_name", "chat")

	add(false, "CeleryWorkerUnresponsive", "stuck-worker", "hostname", "celery@chat")
	add(true, "CeleryQueueWithoutConsumers", "stuck-worker", "queue_name", "chat")

	add(false, "CeleryQueueWithoutConsumers", "no-consumer", "queue_name", "reports")
	add(true, "CeleryQueueBacklog", "no-consumer", "queue_name", "reports")
	add(true, "CeleryQueueBacklogCritical", "no-consumer", "queue_name", "reports")
	add(false, "CeleryQueueBacklogCritical", "no-consumer", "queue_name", "default")

	var labels []map[string]string
	for _, a := range alerts {
		labels = append(labels, a.labels)
	}
	if err := am.PostAlerts(labels...); err != nil {
		t.Fatal(err)
	}

	key := func(l map[string]string) string {
		return fmt.Sprintf("%s{job=%q,instance=%q,queue_name=%q}", l["alertname"], l["job"], l["instance"], l["queue_name"])
	}
	want := map[string]string{}
	for _, a := range alerts {
		want[key(a.labels)] = map[bool]string{true: "suppressed", false: "active"}[a.suppressed]
	}
	// The inhibitor learns its sources asynchronously: poll until the states settle.
	var wrong []string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		got, err := am.Alerts()
		if err != nil {
			t.Fatal(err)
		}
		wrong = wrong[:0]
		seen := map[string]bool{}
		for _, a := range got {
			k := key(a.Labels)
			seen[k] = true
			if a.State != want[k] {
				wrong = append(wrong, fmt.Sprintf("%s: %s, want %s", k, a.State, want[k]))
			}
		}
		for k := range want {
			if !seen[k] {
				wrong = append(wrong, k+": not in Alertmanager")
			}
		}
		if len(wrong) == 0 || time.Now().After(deadline) {
			break
		}
	}
	slices.Sort(wrong)
	for _, w := range wrong {
		t.Error(w)
	}
}

func TestAlertmanagerSecretsAndGrouping(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, alertmanagerFile))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, field := range []string{"routing_key_file:", "api_url_file:", "credentials_file:"} {
		if !strings.Contains(text, field) {
			t.Errorf("%s: no %s secret", alertmanagerFile, field)
		}
	}
	inline := regexp.MustCompile(`(?m)^\s*(routing_key|service_key|api_url|credentials|password|bearer_token):`)
	if m := inline.FindString(text); m != "" {
		t.Errorf("%s holds an inline secret: %q", alertmanagerFile, strings.TrimSpace(m))
	}
	var am struct {
		Route struct {
			GroupBy []string `yaml:"group_by"`
		} `yaml:"route"`
	}
	if err := yaml.Unmarshal(b, &am); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(am.Route.GroupBy, []string{"alertname", "job"}) {
		t.Errorf("route groups by %v, want [alertname job]", am.Route.GroupBy)
	}
}

// TestAlertmanagerOneDeadWorkerPagesOnce runs the shipped routing, grouping and inhibitions (the
// receivers swapped for a webhook) against the alerts one killed prefork worker raises in
// Prometheus, in the order they fire: the worker count, then its three queues without consumers,
// then their backlogs. On-call gets one notification, of CeleryWorkersBelowExpected; chat gets
// the backlog of a queue that still has its consumer and nothing else. The old config sent four pages.
func TestAlertmanagerOneDeadWorkerPagesOnce(t *testing.T) {
	harness.Require(t, harness.AlertmanagerBinary)
	shipped, err := os.ReadFile(filepath.Join(root, alertmanagerFile))
	if err != nil {
		t.Fatal(err)
	}
	hook := harness.StartWebhook(t)
	cfg, err := harness.WebhookAlertmanagerConfig(shipped, hook.URL, harness.AlertmanagerTimers{GroupWait: "1s", GroupInterval: "2s"})
	if err != nil {
		t.Fatal(err)
	}
	am := harness.StartAlertmanager(t, string(cfg))
	rules := alertsByName(readRuleFile(t, filepath.Join(root, bundle.RulesFile)))
	post := func(alerts ...[]string) {
		t.Helper()
		var labels []map[string]string
		for _, a := range alerts {
			l := map[string]string{"alertname": a[0], "job": "celery", "severity": rules[a[0]].Labels["severity"]}
			if len(a) > 1 {
				l["queue_name"] = a[1]
			}
			labels = append(labels, l)
		}
		if err := am.PostAlerts(labels...); err != nil {
			t.Fatal(err)
		}
	}
	post([]string{"CeleryWorkersBelowExpected"})
	am.WaitForAlert(t, "CeleryWorkersBelowExpected", "active", 15*time.Second)
	post([]string{"CeleryQueueWithoutConsumers", "background"}, []string{"CeleryQueueWithoutConsumers", "notifications"},
		[]string{"CeleryQueueWithoutConsumers", "dlq"})
	post([]string{"CeleryQueueBacklog", "background"}, []string{"CeleryQueueBacklogCritical", "notifications"},
		[]string{"CeleryQueueBacklog", "chat"})

	// Every group is flushed group_wait (1s) after its first alert and then every 2s: once the
	// chat notification is in and Alertmanager holds all of them suppressed or active, three more
	// group intervals pass so that any notification that should not exist would have been sent.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var chat bool
		for _, n := range hook.Notifications() {
			chat = chat || n.Receiver == "chat"
		}
		if chat {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no chat notification within 30s: %+v", hook.Notifications())
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(6 * time.Second) // a quiet period: what must not arrive cannot be polled for

	var oncall, chat [][]string
	for _, n := range hook.Notifications() {
		switch n.Receiver {
		case "oncall":
			oncall = append(oncall, n.Firing())
		case "chat":
			chat = append(chat, n.Firing())
		default:
			t.Errorf("notification to receiver %q", n.Receiver)
		}
	}
	if want := [][]string{{"CeleryWorkersBelowExpected"}}; !reflect.DeepEqual(oncall, want) {
		t.Errorf("on-call got %v, want one page: %v", oncall, want)
	}
	if want := [][]string{{"CeleryQueueBacklog/chat"}}; !reflect.DeepEqual(chat, want) {
		t.Errorf("chat got %v, want %v", chat, want)
	}
}

func TestPrometheusConfig(t *testing.T) {
	const file = "deploy/prometheus/prometheus.yml"
	b, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		t.Fatal(err)
	}
	var pc struct {
		RuleFiles []string `yaml:"rule_files"`
		Alerting  struct {
			Alertmanagers []struct {
				StaticConfigs []struct {
					Targets []string `yaml:"targets"`
				} `yaml:"static_configs"`
			} `yaml:"alertmanagers"`
		} `yaml:"alerting"`
		Scrape []struct {
			Job           string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &pc); err != nil {
		t.Fatal(err)
	}
	if len(pc.Scrape) != 1 || pc.Scrape[0].Job != "celery" || !strings.HasSuffix(pc.Scrape[0].StaticConfigs[0].Targets[0], ":9808") {
		t.Errorf("scrape configs = %+v, want job celery on :9808", pc.Scrape)
	}
	if cfg := loadSeedConfig(t); cfg.Selector != `job="celery"` {
		t.Errorf("rules select %s but Prometheus scrapes job celery", cfg.Selector)
	}
	if !slices.Contains(pc.RuleFiles, "../../rules/celery.rules.yml") {
		t.Errorf("rule_files = %v, want the rendered rules", pc.RuleFiles)
	}
	if len(pc.Alerting.Alertmanagers) != 1 || pc.Alerting.Alertmanagers[0].StaticConfigs[0].Targets[0] != "localhost:9093" {
		t.Errorf("alertmanagers = %+v", pc.Alerting.Alertmanagers)
	}
	harness.Require(t, "promtool")
	out, err := runTool(t, "promtool", "check", "config", file)
	if err != nil || !strings.Contains(out, "SUCCESS: 1 rule files found") {
		t.Errorf("promtool check config: %v\n%s", err, out)
	}
}

func TestGrafanaProvisioning(t *testing.T) {
	var ds struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name, UID, Type, URL string
			IsDefault            bool `yaml:"isDefault"`
		} `yaml:"datasources"`
	}
	readYAML(t, "deploy/grafana/provisioning/datasources/prometheus.yaml", &ds)
	if ds.APIVersion != 1 || len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || !ds.Datasources[0].IsDefault {
		t.Errorf("datasources = %+v, want one default prometheus", ds)
	}
	var dp struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name, Folder, Type string
			Options            struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, "deploy/grafana/provisioning/dashboards/celery.yaml", &dp)
	if dp.APIVersion != 1 || len(dp.Providers) != 1 || dp.Providers[0].Type != "file" ||
		dp.Providers[0].Folder != "Celery" || !filepath.IsAbs(dp.Providers[0].Options.Path) {
		t.Errorf("dashboard providers = %+v", dp)
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
}

// TestWebhookAlertmanagerConfigKeepsRouting: the configuration the demo and the paging tests run
// (harness.WebhookAlertmanagerConfig of the shipped file) differs from the shipped one only in its
// receivers' integrations and the top route's group timers; amtool accepts it.
func TestWebhookAlertmanagerConfigKeepsRouting(t *testing.T) {
	shipped, err := os.ReadFile(filepath.Join(root, alertmanagerFile))
	if err != nil {
		t.Fatal(err)
	}
	out, err := harness.WebhookAlertmanagerConfig(shipped, "http://127.0.0.1:9099/alerts", harness.AlertmanagerTimers{GroupWait: "5s", GroupInterval: "10s"})
	if err != nil {
		t.Fatal(err)
	}
	var a, b map[string]any
	if err := yaml.Unmarshal(shipped, &a); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(out, &b); err != nil {
		t.Fatal(err)
	}
	ra, rb := a["route"].(map[string]any), b["route"].(map[string]any)
	if rb["group_wait"] != "5s" || rb["group_interval"] != "10s" {
		t.Errorf("timers = %v %v, want 5s 10s", rb["group_wait"], rb["group_interval"])
	}
	for _, k := range []string{"group_wait", "group_interval"} {
		delete(ra, k)
		delete(rb, k)
	}
	if !reflect.DeepEqual(ra, rb) || !reflect.DeepEqual(a["inhibit_rules"], b["inhibit_rules"]) || !reflect.DeepEqual(a["global"], b["global"]) {
		t.Errorf("routing or inhibitions differ from %s:\n%s", alertmanagerFile, out)
	}
	var names []string
	for _, r := range b["receivers"].([]any) {
		m := r.(map[string]any)
		names = append(names, m["name"].(string))
		if len(m) != 2 || m["webhook_configs"] == nil {
			t.Errorf("receiver %v keeps more than its name and the webhook", m)
		}
	}
	if !slices.Equal(names, []string{"oncall", "chat"}) {
		t.Errorf("receivers %v, want oncall and chat", names)
	}
	harness.Require(t, "amtool")
	f := filepath.Join(t.TempDir(), "alertmanager.yml")
	if err := os.WriteFile(f, out, 0o644); err != nil {
		t.Fatal(err)
	}
	if res, err := runTool(t, "amtool", "check-config", f); err != nil {
		t.Errorf("amtool check-config: %v\n%s", err, res)
	}
}
