package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// WorkerOptions describe one `celery worker` of the test app (test/celeryapp).
type WorkerOptions struct {
	BrokerURL string
	// Queues is -Q; empty means the app's default queue ("celery" unless Env sets
	// CELERY_DEFAULT_QUEUE).
	Queues []string
	// Pool is prefork, threads or solo (default prefork).
	Pool        string
	Concurrency int // -c; default 2 (solo ignores it)
	// NodeName is -n, the full node name the events carry as hostname (default
	// "<pool><n>@harness", unique within the test binary).
	NodeName string
	// Events is -E. The app also sets worker_send_task_events, so task events flow either way
	// unless Env has CELERY_TASK_EVENTS=0.
	Events bool
	// HeartbeatInterval is --heartbeat-interval (default Celery's 2s).
	HeartbeatInterval time.Duration
	// TransportOptions become broker_transport_options (CELERY_TRANSPORT_OPTIONS as JSON).
	TransportOptions map[string]any
	// Env are extra KEY=VALUE pairs: CELERY_ACKS_LATE, CELERY_PREFETCH_MULTIPLIER, ...
	Env []string
	// ExtraArgs are appended to the worker's command line.
	ExtraArgs []string
	// Mingle and Gossip are off by default (--without-mingle --without-gossip): they only slow the
	// start down and add remote-control traffic the tests do not ask for.
	Mingle, Gossip bool
	// ReadyTimeout bounds the wait for "<node> ready." (default 60s: the machine is shared).
	ReadyTimeout time.Duration
}

// Worker is a running Celery worker.
type Worker struct {
	NodeName string
	Options  WorkerOptions
	p        *proc
}

var workerSeq atomic.Int64

// StartWorker starts a worker and waits until it logs "<node> ready.". It is killed in t.Cleanup.
func StartWorker(t testing.TB, o WorkerOptions) *Worker {
	t.Helper()
	w := launchWorker(t, o)
	w.waitReady(t)
	return w
}

// StartWorkers starts several workers at once and waits until all are ready: workers boot in
// parallel, which saves seconds per worker on a busy machine.
func StartWorkers(t testing.TB, opts ...WorkerOptions) []*Worker {
	t.Helper()
	ws := make([]*Worker, len(opts))
	for i, o := range opts {
		ws[i] = launchWorker(t, o)
	}
	for _, w := range ws {
		w.waitReady(t)
	}
	return ws
}

func launchWorker(t testing.TB, o WorkerOptions) *Worker {
	t.Helper()
	RequirePython(t, "celery")
	if o.BrokerURL == "" {
		t.Fatal("WorkerOptions.BrokerURL is required")
	}
	if o.Pool == "" {
		o.Pool = "prefork"
	}
	if o.Concurrency == 0 {
		o.Concurrency = 2
	}
	if o.NodeName == "" {
		o.NodeName = fmt.Sprintf("%s%d@harness", o.Pool, workerSeq.Add(1))
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	args := []string{"-m", "celery", "-A", "celeryapp.app", "worker",
		"--pool", o.Pool, "--concurrency", strconv.Itoa(o.Concurrency), "--hostname", o.NodeName,
		"--loglevel", "INFO"}
	if len(o.Queues) > 0 {
		args = append(args, "--queues", strings.Join(o.Queues, ","))
	}
	if o.Events {
		args = append(args, "--task-events")
	}
	if o.HeartbeatInterval > 0 {
		args = append(args, "--heartbeat-interval", strconv.FormatFloat(o.HeartbeatInterval.Seconds(), 'f', -1, 64))
	}
	if !o.Mingle {
		args = append(args, "--without-mingle")
	}
	if !o.Gossip {
		args = append(args, "--without-gossip")
	}
	args = append(args, o.ExtraArgs...)
	env, err := celeryEnv(t, o.BrokerURL, o.TransportOptions, o.Env...)
	if err != nil {
		t.Fatal(err)
	}
	w := &Worker{NodeName: o.NodeName, Options: o}
	w.p = startProc(t, "worker "+o.NodeName, t.TempDir(), env, Python, args...)
	return w
}

func (w *Worker) waitReady(t testing.TB) {
	t.Helper()
	if err := w.p.waitLog(w.NodeName+" ready.", w.Options.ReadyTimeout); err != nil {
		t.Fatalf("worker %s: %v\n%s", w.NodeName, err, Tail(w.Log(), 40))
	}
}

// celeryEnv is the environment of every Python process of the test app.
func celeryEnv(t testing.TB, brokerURL string, transportOptions map[string]any, extra ...string) ([]string, error) {
	to := []byte("{}")
	if transportOptions != nil {
		var err error
		if to, err = json.Marshal(transportOptions); err != nil {
			return nil, fmt.Errorf("transport options: %w", err)
		}
	}
	kv := []string{
		"PYTHONPATH=" + filepath.Join(ModuleRoot(t), "test"),
		"PYTHONUNBUFFERED=1",
		"PYTHONDONTWRITEBYTECODE=1",
		"CELERY_BROKER_URL=" + brokerURL,
		"CELERY_TRANSPORT_OPTIONS=" + string(to),
	}
	return envWith(os.Environ(), append(kv, extra...)...), nil
}

// PID is the worker's main process.
func (w *Worker) PID() int { return w.p.pid() }

// Kill sends SIGKILL to the whole process group: no worker-offline is sent, like a crash or an OOM
// kill.
func (w *Worker) Kill() { w.p.kill() }

// Stop is a graceful (warm) shutdown with SIGTERM: the worker finishes its tasks and sends
// worker-offline. It returns once the process has exited.
func (w *Worker) Stop() error { return w.p.stop(syscall.SIGTERM, 30*time.Second) }

// Exited tells whether the worker's main process is gone.
func (w *Worker) Exited() bool { return w.p.exited() }

// Log is the worker's combined stdout and stderr so far.
func (w *Worker) Log() string { return w.p.log() }

// Send is one entry of a producer plan (see test/celeryapp/produce.py).
type Send struct {
	// Task is a task of celeryapp.app by short name ("add") or a full name.
	Task   string         `json:"task,omitempty"`
	Args   []any          `json:"args,omitempty"`
	Kwargs map[string]any `json:"kwargs,omitempty"`
	Queue  string         `json:"queue,omitempty"`
	// Priority is a pointer because 0 (the highest on Redis) is a real value; use Prio(n).
	Priority *int `json:"priority,omitempty"`
	// Countdown sets the ETA, Expires the expiry, both in seconds from sending.
	Countdown float64 `json:"countdown,omitempty"`
	Expires   float64 `json:"expires,omitempty"`
	// RevokeAfter revokes the task that many seconds after the plan started; Terminate also kills
	// it while it runs (prefork): the revoke then waits until a worker lists the task as active.
	RevokeAfter float64 `json:"revoke_after,omitempty"`
	Terminate   bool    `json:"terminate,omitempty"`
	// LinkError is a task sent with this task's id if it fails.
	LinkError string `json:"link_error,omitempty"`
	// Sleep > 0 with no Task pauses the sending.
	Sleep float64 `json:"sleep,omitempty"`
}

// Prio returns a pointer for Send.Priority.
func Prio(n int) *int { return &n }

// Produce sends the plan with the test app's producer (apply_async, task_send_sent_event on) and
// returns the task ids in plan order (pauses have none). It returns after any revokes were sent.
func Produce(t testing.TB, brokerURL string, transportOptions map[string]any, plan []Send) []string {
	t.Helper()
	RequirePython(t, "celery")
	in, err := json.Marshal(plan)
	if err != nil {
		t.Fatalf("produce: plan: %v", err)
	}
	out, errOut, err := runPython(t, 2*time.Minute, brokerURL, transportOptions, in, "-m", "celeryapp.produce")
	if err != nil {
		t.Fatalf("produce: %v\nstderr: %s", err, errOut)
	}
	var ids []string
	if err := json.Unmarshal(bytes.TrimSpace(out), &ids); err != nil {
		t.Fatalf("produce: output %q: %v\nstderr: %s", out, err, errOut)
	}
	return ids
}

// Inspect runs `celery inspect <command> [args] --json` and returns its stdout: the JSON object of
// replies by node name ("null"-ish output when no worker answered, see InspectJSON).
func Inspect(t testing.TB, brokerURL, command string, args ...string) string {
	t.Helper()
	return InspectWith(t, brokerURL, nil, 2*time.Second, command, args...)
}

// InspectWith is Inspect with transport options and celery's idle reply timeout.
func InspectWith(t testing.TB, brokerURL string, transportOptions map[string]any, timeout time.Duration, command string, args ...string) string {
	t.Helper()
	RequirePython(t, "celery")
	argv := append([]string{"-m", "celery", "-A", "celeryapp.app", "inspect", command}, args...)
	argv = append(argv, "--json", "--timeout", strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64))
	out, errOut, err := runPython(t, timeout+time.Minute, brokerURL, transportOptions, nil, argv...)
	// `celery inspect` exits 1 when no node replied, and still prints what it has.
	if err != nil && len(bytes.TrimSpace(out)) == 0 {
		t.Fatalf("celery inspect %s: %v\nstderr: %s", command, err, errOut)
	}
	return string(out)
}

// Control runs `celery control <command> [args]` with Celery's own client (enable_events,
// disable_events, ...) and returns its output; it fails the test when no worker answered.
func Control(t testing.TB, brokerURL, command string, args ...string) string {
	t.Helper()
	RequirePython(t, "celery")
	argv := append([]string{"-m", "celery", "-A", "celeryapp.app", "control", command}, args...)
	argv = append(argv, "--timeout", "2")
	out, errOut, err := runPython(t, time.Minute, brokerURL, nil, nil, argv...)
	if err != nil {
		t.Fatalf("celery control %s: %v\nstdout: %s\nstderr: %s", command, err, out, errOut)
	}
	return string(out)
}

// InspectJSON is Inspect decoded: node name -> reply. No reply at all gives an empty map.
func InspectJSON(t testing.TB, brokerURL, command string, args ...string) map[string]any {
	t.Helper()
	out := strings.TrimSpace(Inspect(t, brokerURL, command, args...))
	res := map[string]any{}
	if out == "" || out == "null" {
		return res
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("celery inspect %s: output is not a JSON object: %v\n%s", command, err, out)
	}
	return res
}

func runPython(t testing.TB, timeout time.Duration, brokerURL string, transportOptions map[string]any, stdin []byte, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	env, err := celeryEnv(t, brokerURL, transportOptions)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, Python, args...)
	cmd.Env = env
	cmd.SysProcAttr = childAttr(syscall.SIGKILL)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s %s: timed out after %v", Python, strings.Join(args, " "), timeout)
	}
	return o.Bytes(), e.Bytes(), err
}
