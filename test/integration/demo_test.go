package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
		// A worker killed by the test stays down, and no breaker trip or zep_call_error comes by
		// chance: the test decides which alerts fire.
		"DEMO_HEAL_AFTER=0", "DEMO_ZEP_ERROR_EVERY=0", "DEMO_BREAKER_EVERY=0", "DEMO_SEED=6",
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

// TestDemoHeadless runs `make demo`'s script for a few minutes at most: metrics flow from the
// three seed-shaped workers through the exporter into Prometheus, two fault buttons make their
// alerts fire (and reach Alertmanager), and SIGTERM leaves no process behind.
func TestDemoHeadless(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs the whole demo")
	}
	d := startDemo(t, 4*time.Minute)

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
	// Healthy: none of the alerts the faults will raise, in any state (Prometheus starts after
	// the workers, so it never sees fewer than three). Polled: the state follows the evaluations.
	var bad []string
	for deadline := time.Now().Add(30 * time.Second); ; {
		alerts, err := d.prom.Alerts()
		if err != nil {
			t.Fatal(err)
		}
		bad = bad[:0]
		for _, a := range alerts {
			switch a.Name() {
			case "ZepMemoryDegraded", "CeleryWorkersBelowExpected", "CeleryExporterDown", "CeleryQueueWithoutConsumers":
				bad = append(bad, fmt.Sprintf("%s is %s (%v)", a.Name(), a.State, a.Labels))
			}
		}
		if len(bad) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if len(bad) > 0 {
		t.Errorf("healthy demo: alerts that should be quiet:\n%s", strings.Join(bad, "\n"))
	}

	// Fault buttons.
	t.Log(d.fault(t, "trip-breaker", "300"))
	a := d.prom.WaitForAlert(t, "ZepMemoryDegraded", "firing", 90*time.Second)
	if a.Labels["breaker"] != "zep" || a.Labels["severity"] != "warning" {
		t.Errorf("ZepMemoryDegraded labels = %v, want breaker=zep severity=warning", a.Labels)
	}
	t.Log(d.fault(t, "kill-worker", "background"))
	d.prom.WaitForAlert(t, "CeleryWorkersBelowExpected", "firing", 90*time.Second)
	// Alertmanager got them, and its webhook receiver (the demo's "pager") was called.
	am := &harness.Alertmanager{URL: d.amURL}
	am.WaitForAlert(t, "CeleryWorkersBelowExpected", "active", 30*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(d.dir, "logs", "alerts.jsonl"))
		if bytes.Contains(b, []byte(`"alertname": "ZepMemoryDegraded"`)) && bytes.Contains(b, []byte(`"alertname": "CeleryWorkersBelowExpected"`)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the webhook did not receive both alerts within 30s:\n%s", b)
		}
		time.Sleep(250 * time.Millisecond)
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
