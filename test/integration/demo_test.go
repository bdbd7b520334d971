package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// demo is a `make demo` (test/demo/run.sh) running headless on free ports in a temp dir.
type demo struct {
	root, dir string
	env       []string
	cmd       *exec.Cmd
	out       string // run.sh's output file
	done      chan error
	exporter  *harness.Exporter
	prom      *harness.Prometheus
	amURL     string
}

func startDemo(t *testing.T, duration time.Duration) *demo {
	t.Helper()
	harness.Require(t, "redis-server", "redis-cli", "prometheus", harness.AlertmanagerBinary, "promtool", "amtool", "setsid", "go")
	harness.RequirePython(t, "celery", "django_redis")
	d := &demo{root: harness.ModuleRoot(t), dir: t.TempDir(), done: make(chan error, 1)}
	ports := map[string]int{}
	for _, k := range []string{"REDIS", "EXPORTER", "PROMETHEUS", "ALERTMANAGER", "WEBHOOK"} {
		ports[k] = harness.FreePort(t)
	}
	d.env = []string{
		"DEMO_DIR=" + d.dir,
		"HEADLESS=1",
		"DEMO_DURATION=" + strconv.Itoa(int(duration.Seconds())),
		"CELERY_EXPORTER_BIN=" + harness.ExporterBinary(t),
		// A worker killed by the test stays down. The load is the default one: at rest no alert
		// may fire, so no breaker trip or zep_call_error comes by chance.
		"DEMO_HEAL_AFTER=0", "DEMO_SEED=6",
	}
	for k, p := range ports {
		d.env = append(d.env, fmt.Sprintf("DEMO_%s_PORT=%d", k, p))
	}
	d.out = filepath.Join(d.dir, "run.out")
	f, err := os.Create(d.out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d.cmd = exec.Command(filepath.Join(d.root, "test/demo/run.sh"))
	d.cmd.Dir = d.root
	d.cmd.Env = append(os.Environ(), d.env...)
	d.cmd.Stdout, d.cmd.Stderr = f, f
	// SIGTERM, not SIGKILL, if the test binary dies first (a timeout panic skips t.Cleanup): run.sh
	// then stops everything it started, as on Ctrl-C.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start run.sh: %v", err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() { d.forceStop(t) })

	d.exporter = &harness.Exporter{Addr: fmt.Sprintf("127.0.0.1:%d", ports["EXPORTER"])}
	d.exporter.URL = "http://" + d.exporter.Addr
	d.prom = &harness.Prometheus{URL: fmt.Sprintf("http://127.0.0.1:%d", ports["PROMETHEUS"])}
	d.amURL = fmt.Sprintf("http://127.0.0.1:%d", ports["ALERTMANAGER"])
	// The banner is printed once every process is up (run.sh waits for each).
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(d.output(), "The Celery demo is running") {
		select {
		case err := <-d.done:
			d.done <- err
			t.Fatalf("run.sh exited (%v) before the demo was up:\n%s", err, d.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the demo was not up within 3m:\n%s", d.output())
		}
		time.Sleep(250 * time.Millisecond)
	}
	return d
}

func (d *demo) output() string {
	b, _ := os.ReadFile(d.out)
	return string(b)
}

// fault presses a fault button (test/demo/fault.sh).
func (d *demo) fault(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(d.root, "test/demo/fault.sh"), args...)
	cmd.Dir = d.root
	cmd.Env = append(os.Environ(), d.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fault.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// stop sends SIGTERM, as Ctrl-C's sibling, and returns run.sh's exit error.
func (d *demo) stop(t *testing.T, timeout time.Duration) error {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
		return err
	case <-time.After(timeout):
		t.Errorf("run.sh did not exit within %v of SIGTERM", timeout)
		return nil
	}
}

// forceStop is the cleanup: whatever a failed test left, every process group run.sh recorded is
// killed.
func (d *demo) forceStop(t *testing.T) {
	select {
	case err := <-d.done:
		d.done <- err
	default:
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case err := <-d.done:
			d.done <- err
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		}
	}
	pids, _ := filepath.Glob(filepath.Join(d.dir, "run", "*.pid"))
	for _, p := range pids {
		b, _ := os.ReadFile(p)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	for _, pid := range demoProcesses(d.dir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if t.Failed() {
		t.Logf("--- run.sh output ---\n%s", d.output())
		for _, name := range []string{"exporter", "prometheus", "loadgen", "worker-background"} {
			b, _ := os.ReadFile(filepath.Join(d.dir, "logs", name+".log"))
			t.Logf("--- last lines of %s.log ---\n%s", name, harness.Tail(string(b), 15))
		}
	}
}

// demoProcesses lists the processes whose environment carries this demo's DEMO_DIR: run.sh
// exports it to everything it starts, so any of them left behind is found.
func demoProcesses(dir string) []int {
	needle := []byte("DEMO_DIR=" + dir + "\x00")
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		if bytes.Contains(env, needle) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestDemoHeadless runs `make demo`'s script headless: metrics flow from the three seed-shaped
// workers through the exporter into Prometheus; at rest no alert fires; four fault buttons page
// exactly the alerts their banner names, through the shipped Alertmanager configuration (one
// dead worker: one page); and SIGTERM leaves no process behind.
func TestDemoHeadless(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs the whole demo")
	}
	t.Parallel() // beside the other tests (see main_test.go)
	d := startDemo(t, 15*time.Minute)

	// Three workers up, under their seed node names, and every queue of the mix counted.
	queues := []string{"chat", "default", "background", "notifications", "dlq"}
	// Poll, not WaitFor/MustScrape: this Exporter was not started by the harness, so it has no log.
	m, ok := d.exporter.Poll(90*time.Second, func(m harness.Metrics) bool {
		up := 0
		for _, s := range m.Samples("celery_worker_up") {
			if s.Value == 1 {
				up++
			}
		}
		if up != 3 {
			return false
		}
		for _, q := range queues {
			if m.Sum("celery_task_succeeded_total", map[string]string{"queue_name": q}) == 0 {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("within 90s, the exporter did not show 3 workers up and successes on every queue:\n%s", m.Text)
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	// Celery's %h is the full host name.
	for _, w := range []string{"chat", "default", "background"} {
		if v, ok := m.Value("celery_worker_up", map[string]string{"hostname": w + "@" + host}); !ok || v != 1 {
			t.Errorf("celery_worker_up{hostname=%q} = %v (present %v), want 1\n%s", w+"@"+host, v, ok, m.Text)
		}
	}
	// The seed's routes: every task lands on its queue, with its worker.
	routes := map[string][2]string{
		"assistant.tasks.process_chat_message":        {"chat", "chat"},
		"assistant.tasks.extract_preferences_async":   {"default", "default"},
		"assistant.tasks.process_incoming_media_task": {"background", "background"},
		"assistant.tasks.send_whatsapp_message_task":  {"notifications", "background"},
		"assistant.tasks.dead_letter_queue":           {"dlq", "background"},
	}
	for name, qw := range routes {
		got := m.Sum("celery_task_succeeded_total", map[string]string{"name": name, "queue_name": qw[0], "hostname": qw[1] + "@" + host})
		all := m.Sum("celery_task_succeeded_total", map[string]string{"name": name})
		if got == 0 || got != all {
			t.Errorf("%s: %v of %v successes on queue %s by %s@%s, want all of them (and some)", name, got, all, qw[0], qw[1], host)
		}
	}

	// Prometheus scrapes the exporter and evaluates the rendered rules.
	d.prom.WaitForQuery(t, `celery:workers_up:count{job="celery"}`, time.Minute, func(r []harness.QuerySample) bool {
		return len(r) == 1 && r[0].Value == 3
	})
	// At rest no alert fires, in any state, for two minutes of evaluations: earlier rules had
	// PreferenceExtractionFailing fire and CeleryTaskFailureRateHigh flap with no button pressed.
	d.prom.WaitForQuery(t, `up{job="celery"} offset 2m`, 4*time.Minute, func(r []harness.QuerySample) bool {
		return len(r) == 1
	})
	if got, err := d.prom.Query(`count by (alertname, alertstate) (count_over_time(ALERTS[2m]))`); err != nil {
		t.Fatal(err)
	} else if len(got) > 0 {
		var names []string
		for _, s := range got {
			names = append(names, fmt.Sprintf("%s (%s)", s.Labels["alertname"], s.Labels["alertstate"]))
		}
		t.Errorf("the demo at rest raised alerts within 2m: %s", strings.Join(names, ", "))
	}

	// Fault buttons: each pages exactly the alerts its banner line names after "->"; those in
	// brackets may fire in Prometheus but Alertmanager must hold them back.
	banner := demoBanner(t, d.output())
	var pages, held []string
	for _, b := range []string{"demo-trip-breaker", "demo-log-error", "demo-kill-worker", "demo-flood"} {
		if _, ok := banner[b]; !ok {
			t.Fatalf("the banner names no alerts for %s:\n%s", b, d.output())
		}
		pages = append(pages, banner[b][0]...)
		held = append(held, banner[b][1]...)
	}
	// log-error before flood: its chat message must not wait behind the flood.
	t.Log(d.fault(t, "trip-breaker", "600"))
	t.Log(d.fault(t, "log-error"))
	t.Log(d.fault(t, "kill-worker", "background"))
	t.Log(d.fault(t, "flood", "chat"))
	slices.Sort(pages)
	pages = slices.Compact(pages)
	var notified []string
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(time.Second) {
		notified = d.notifiedFiring(t)
		if slices.Equal(notified, pages) || time.Now().After(deadline) {
			break
		}
		// A page that is not in the banner fails at once.
		if extra := subtract(notified, pages); len(extra) > 0 {
			break
		}
	}
	if !slices.Equal(notified, pages) {
		t.Errorf("Alertmanager paged %v, the banner names %v", notified, pages)
	}
	// The dead worker's queues have no consumer: that alert fires in Prometheus and is held back.
	a := d.prom.WaitForAlert(t, "CeleryQueueWithoutConsumers", "firing", 2*time.Minute)
	am := &harness.Alertmanager{URL: d.amURL}
	am.WaitForAlert(t, "CeleryQueueWithoutConsumers", "suppressed", 30*time.Second)
	if q := a.Labels["queue_name"]; q != "background" && q != "notifications" && q != "dlq" {
		t.Errorf("CeleryQueueWithoutConsumers for queue %q, which the background worker does not serve", q)
	}
	if a, err := d.prom.Alerts(); err != nil {
		t.Fatal(err)
	} else {
		for _, x := range a {
			if !slices.Contains(pages, x.Name()) && !slices.Contains(held, x.Name()) {
				t.Errorf("%s is %s in Prometheus (%v), but no banner names it", x.Name(), x.State, x.Labels)
			}
		}
	}
	if got := d.notifiedFiring(t); !slices.Equal(got, pages) {
		t.Errorf("after the held-back alerts fired, Alertmanager paged %v, want %v", got, pages)
	}

	// SIGTERM (what Ctrl-C also does) stops everything: exit 143, no process left, no pid file.
	start := time.Now()
	err = d.stop(t, 40*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 143 {
		t.Errorf("run.sh after SIGTERM: %v, want exit status 143", err)
	}
	t.Logf("stopped in %v", time.Since(start).Round(100*time.Millisecond))
	if left := demoProcesses(d.dir); len(left) > 0 {
		var desc []string
		for _, pid := range left {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			desc = append(desc, fmt.Sprintf("%d %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		}
		t.Errorf("processes left behind after run.sh exited:\n%s", strings.Join(desc, "\n"))
	}
	if pids, _ := filepath.Glob(filepath.Join(d.dir, "run", "*.pid")); len(pids) > 0 {
		t.Errorf("pid files left: %v", pids)
	}
}

// demoBanner parses run.sh's list of fault buttons: for "make demo-x ... -> A B [C D]", the
// alerts it pages (A, B) and those it raises that Alertmanager holds back (C, D).
func demoBanner(t *testing.T, out string) map[string][2][]string {
	t.Helper()
	line := regexp.MustCompile(`(?m)^\s+make (demo-[a-z-]+)\b.*->\s*([A-Za-z ]+?)\s*(?:\[([A-Za-z ]+)\])?\s*$`)
	got := map[string][2][]string{}
	for _, m := range line.FindAllStringSubmatch(out, -1) {
		got[m[1]] = [2][]string{strings.Fields(m[2]), strings.Fields(m[3])}
	}
	return got
}

// notifiedFiring is the sorted set of alert names Alertmanager sent to the demo's webhook as
// firing (logs/alerts.jsonl, one notification per line).
func (d *demo) notifiedFiring(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dir, "logs", "alerts.jsonl"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var n harness.Notification
		if err := json.Unmarshal([]byte(l), &n); err != nil {
			t.Fatalf("alerts.jsonl: %v: %s", err, l)
		}
		for _, a := range n.Alerts {
			if a.Status == "firing" {
				names = append(names, a.Labels["alertname"])
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// subtract lists the elements of a not in b.
func subtract(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
