package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RabbitMQ is a real rabbitmq-server (Debian's package) run as a local process: its own node
// name, ports and data directory, no systemd. Debian's wrappers switch to the rabbitmq user when
// run as root, so the directory is handed to that user.
type RabbitMQ struct {
	Node     string
	Port     int
	MgmtPort int // 0 unless started with the management plugin
	// TLSPort is the amqps:// listener's port, 0 unless started with TLS; TLS are the files of
	// its throwaway CA and server certificate (for 127.0.0.1 and localhost).
	TLSPort int
	TLS     TLSFiles
	Dir     string
	env     []string
	cmd     *exec.Cmd
	done    chan struct{}
}

// RabbitMQOptions configure StartRabbitMQ.
type RabbitMQOptions struct {
	// Management enables the rabbitmq_management plugin (HTTP API on MgmtPort).
	Management bool
	// TLS adds an amqps:// listener (TLSPort) with a server certificate of a fresh throwaway CA
	// (TLS.CA); clients are not asked for a certificate.
	TLS bool
}

var rabbitSeq struct {
	sync.Mutex
	n int
}

// StartRabbitMQ boots a node (5–15 s) and waits until `rabbitmqctl await_startup` succeeds. It
// is shut down in t.Cleanup; tests share one per package through SharedRabbitMQ.
func StartRabbitMQ(t testing.TB, o RabbitMQOptions) *RabbitMQ {
	t.Helper()
	Require(t, "rabbitmq-server", "rabbitmqctl")
	r, err := LaunchRabbitMQ(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Shutdown)
	return r
}

// LaunchRabbitMQ is StartRabbitMQ without a test (TestMain); the caller must call Shutdown.
func LaunchRabbitMQ(o RabbitMQOptions) (*RabbitMQ, error) {
	dir, err := os.MkdirTemp("", "rabbitmq-harness-")
	if err != nil {
		return nil, err
	}
	rabbitSeq.Lock()
	rabbitSeq.n++
	seq := rabbitSeq.n
	rabbitSeq.Unlock()
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	r := &RabbitMQ{Node: fmt.Sprintf("harness%d_%d@localhost", os.Getpid(), seq), Port: ports[0], Dir: dir}
	plugins := "[]."
	conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\n", r.Port)
	if o.Management {
		r.MgmtPort = ports[3]
		plugins = "[rabbitmq_management]."
		conf += fmt.Sprintf("management.tcp.port = %d\nmanagement.tcp.ip = 127.0.0.1\n", r.MgmtPort)
	}
	if o.TLS {
		r.TLSPort = ports[4]
		if r.TLS, err = NewTLSFiles(filepath.Join(dir, "tls")); err != nil {
			return nil, err
		}
		conf += fmt.Sprintf("listeners.ssl.default = 127.0.0.1:%d\n"+
			"ssl_options.cacertfile = %s\nssl_options.certfile = %s\nssl_options.keyfile = %s\n"+
			"ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
			r.TLSPort, r.TLS.CA, r.TLS.Cert, r.TLS.Key)
	}
	for _, d := range []string{"mnesia", "log", "plugins-expand"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte(plugins), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chown", "-R", "rabbitmq:rabbitmq", dir).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("chown %s: %v: %s", dir, err, out)
		}
		_ = os.Chmod(dir, 0o755)
	}
	r.env = envWith(os.Environ(),
		"RABBITMQ_NODENAME="+r.Node,
		"RABBITMQ_NODE_PORT="+strconv.Itoa(r.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(ports[1]),
		"ERL_EPMD_PORT="+strconv.Itoa(ports[2]),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "pid"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq"),
		"RABBITMQ_FEATURE_FLAGS_FILE="+filepath.Join(dir, "feature_flags"),
		"RABBITMQ_PLUGINS_EXPAND_DIR="+filepath.Join(dir, "plugins-expand"),
	)
	if err := r.boot(); err != nil {
		r.Shutdown()
		return nil, err
	}
	return r, nil
}

func freePorts(n int) ([]int, error) {
	var out []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// boot starts the server and waits for await_startup, retried: it fails at once while the node
// is not reachable yet.
func (r *RabbitMQ) boot() error {
	logf, err := os.OpenFile(filepath.Join(r.Dir, "server.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	r.cmd = exec.Command("rabbitmq-server")
	r.cmd.Env = r.env
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = childAttr(syscall.SIGTERM)
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("start rabbitmq-server: %w", err)
	}
	r.done = make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := r.ctl(ctx, "await_startup", "--timeout", "15")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-r.done:
			return fmt.Errorf("rabbitmq-server %s exited at start:\n%s", r.Node, r.Log(40))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rabbitmq-server %s not up within 90s: %v\n%s", r.Node, err, r.Log(40))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Log is the tail of the server's output and its log file.
func (r *RabbitMQ) Log(n int) string {
	out, _ := os.ReadFile(filepath.Join(r.Dir, "server.out"))
	logs, _ := filepath.Glob(filepath.Join(r.Dir, "log", "*.log"))
	var b strings.Builder
	b.WriteString(Tail(string(out), n))
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		fmt.Fprintf(&b, "\n--- %s ---\n%s", filepath.Base(l), Tail(string(data), n))
	}
	return b.String()
}

func (r *RabbitMQ) ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-n", r.Node}, args...)...)
	cmd.Env = r.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Ctl runs rabbitmqctl against the node and returns its output.
func (r *RabbitMQ) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := r.ctl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// CtlErr runs rabbitmqctl and returns its error instead of failing.
func (r *RabbitMQ) CtlErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return r.ctl(ctx, args...)
}

// URL is the broker URL of a vhost as Celery writes it (user guest unless given).
func (r *RabbitMQ) URL(vhost string) string {
	return r.UserURL("guest", "guest", vhost)
}

// UserURL is the broker URL of a vhost for a user.
func (r *RabbitMQ) UserURL(user, password, vhost string) string {
	u := url.URL{Scheme: "amqp", User: url.UserPassword(user, password), Host: fmt.Sprintf("127.0.0.1:%d", r.Port), Path: "/" + vhost}
	// "/" as the vhost is written "//", which url.URL would not escape.
	return strings.Replace(u.String(), "%2F", "/", 1)
}

// TLSURL is the amqps:// broker URL of a vhost for a user on the TLS listener, with the query
// options (ssl_*) given.
func (r *RabbitMQ) TLSURL(user, password, vhost, query string) string {
	u := strings.Replace(r.UserURL(user, password, vhost), "amqp://", "amqps://", 1)
	u = strings.Replace(u, fmt.Sprintf(":%d/", r.Port), fmt.Sprintf(":%d/", r.TLSPort), 1)
	if query != "" {
		u += "?" + query
	}
	return u
}

// MgmtURL is the management API's base URL (no credentials).
func (r *RabbitMQ) MgmtURL() string { return fmt.Sprintf("http://127.0.0.1:%d", r.MgmtPort) }

var vhostSeq struct {
	sync.Mutex
	n int
}

// Vhost creates a fresh vhost for one test, with guest allowed everything in it, and deletes it
// at the end of t: tests that share a server do not see each other's queues. With the management
// plugin it goes through the HTTP API: each rabbitmqctl call starts an Erlang VM, seconds on a
// busy machine.
func (r *RabbitMQ) Vhost(t testing.TB) string {
	t.Helper()
	vhostSeq.Lock()
	vhostSeq.n++
	name := fmt.Sprintf("%s-%d", sanitize(t.Name()), vhostSeq.n)
	vhostSeq.Unlock()
	if r.MgmtPort != 0 {
		r.mustAPI(t, http.MethodPut, "vhosts/"+url.PathEscape(name), nil)
		t.Cleanup(func() { _ = r.api(http.MethodDelete, "vhosts/"+url.PathEscape(name), nil) })
	} else {
		r.Ctl(t, "add_vhost", name)
		t.Cleanup(func() { _, _ = r.CtlErr("delete_vhost", name) })
	}
	r.Permit(t, name, "guest")
	return name
}

// Permit allows user everything in vhost.
func (r *RabbitMQ) Permit(t testing.TB, vhost, user string) {
	t.Helper()
	if r.MgmtPort != 0 {
		r.mustAPI(t, http.MethodPut, "permissions/"+url.PathEscape(vhost)+"/"+url.PathEscape(user),
			map[string]string{"configure": ".*", "write": ".*", "read": ".*"})
		return
	}
	r.Ctl(t, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
}

// AddUser creates a user allowed everything in vhost, deleted at the end of t.
func (r *RabbitMQ) AddUser(t testing.TB, vhost, user, password string) {
	t.Helper()
	if r.MgmtPort != 0 {
		r.mustAPI(t, http.MethodPut, "users/"+url.PathEscape(user), map[string]string{"password": password, "tags": ""})
		t.Cleanup(func() { _ = r.api(http.MethodDelete, "users/"+url.PathEscape(user), nil) })
	} else {
		r.Ctl(t, "add_user", user, password)
		t.Cleanup(func() { _, _ = r.CtlErr("delete_user", user) })
	}
	r.Permit(t, vhost, user)
}

var mgmtClient = &http.Client{Timeout: 30 * time.Second}

// api calls the management HTTP API as guest (the harness' nodes let guest in from anywhere).
func (r *RabbitMQ) api(method, path string, body any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, r.MgmtURL()+"/api/"+path, rd)
	if err != nil {
		return err
	}
	req.SetBasicAuth("guest", "guest")
	req.Header.Set("Content-Type", "application/json")
	resp, err := mgmtClient.Do(req)
	if err != nil {
		return fmt.Errorf("management API %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("management API %s %s: %s: %s", method, path, resp.Status, out)
	}
	return nil
}

func (r *RabbitMQ) mustAPI(t testing.TB, method, path string, body any) {
	t.Helper()
	if err := r.api(method, path, body); err != nil {
		t.Fatal(err)
	}
}

// QueueInfo is one row of `rabbitmqctl list_queues name messages_ready messages_unacknowledged consumers`.
type QueueInfo struct {
	Ready, Unacked, Consumers int
}

// ListQueues is the server's own view of a vhost's queues.
func (r *RabbitMQ) ListQueues(t testing.TB, vhost string) map[string]QueueInfo {
	t.Helper()
	out := map[string]QueueInfo{}
	for _, f := range r.table(t, "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged", "consumers") {
		if len(f) != 4 {
			continue
		}
		var n [3]int
		for i := range n {
			v, err := strconv.Atoi(f[i+1])
			if err != nil {
				t.Fatalf("list_queues: bad row %q", f)
			}
			n[i] = v
		}
		out[f[0]] = QueueInfo{Ready: n[0], Unacked: n[1], Consumers: n[2]}
	}
	return out
}

// Table runs a rabbitmqctl list_* command and returns its rows (tab separated, no headers).
func (r *RabbitMQ) table(t testing.TB, args ...string) [][]string {
	t.Helper()
	out := r.Ctl(t, append(args, "--quiet", "--no-table-headers")...)
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(out, "\r\n"), "\n") { // a row may start with a tab (the default exchange "")
		if line = strings.TrimRight(line, "\r"); line != "" {
			rows = append(rows, strings.Split(line, "\t"))
		}
	}
	return rows
}

// Table returns the rows of a rabbitmqctl list_* command, each row joined by tabs, sorted.
func (r *RabbitMQ) Table(t testing.TB, args ...string) []string {
	t.Helper()
	var out []string
	for _, row := range r.table(t, args...) {
		out = append(out, strings.Join(row, "\t"))
	}
	slices.Sort(out)
	return out
}

// Restart shuts the node down (every connection is closed by the broker, non-durable queues are
// gone) and boots it again on the same ports and data directory.
func (r *RabbitMQ) Restart(t testing.TB) {
	t.Helper()
	r.stop()
	if err := r.boot(); err != nil {
		t.Fatal(err)
	}
}

// stop shuts the node down with rabbitmqctl (signalling our child would only reach the su
// wrapper), then kills the pid file's process as a fallback.
func (r *RabbitMQ) stop() {
	if r.cmd == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	_, _ = r.ctl(ctx, "shutdown")
	cancel()
	if pid, err := os.ReadFile(filepath.Join(r.Dir, "pid")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
			if p, err := os.FindProcess(n); err == nil {
				_ = p.Kill()
			}
		}
	}
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
}

// Shutdown stops the node and removes its directory.
func (r *RabbitMQ) Shutdown() {
	r.stop()
	// The node's own epmd (on its ERL_EPMD_PORT) outlives it: end it too.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "epmd", "-kill")
	cmd.Env = r.env
	_ = cmd.Run()
	_ = os.RemoveAll(r.Dir)
}

var shared struct {
	sync.Mutex
	r   *RabbitMQ
	err error
}

// SharedRabbitMQ is one server per test binary, with the management plugin and a TLS listener,
// booted on first use: RabbitMQ takes 5–15 s to start (more on a loaded machine), so the tests
// share it and isolate themselves with Vhost. TestMain must call ShutdownShared.
func SharedRabbitMQ(t testing.TB) *RabbitMQ {
	t.Helper()
	Require(t, "rabbitmq-server", "rabbitmqctl")
	shared.Lock()
	defer shared.Unlock()
	if shared.r != nil {
		return shared.r
	}
	if shared.err != nil {
		t.Fatal(shared.err) // booting once more would only fail again, slowly
	}
	shared.r, shared.err = LaunchRabbitMQ(RabbitMQOptions{Management: true, TLS: true})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.r
}

// ShutdownShared stops the server SharedRabbitMQ started.
func ShutdownShared() {
	shared.Lock()
	defer shared.Unlock()
	if shared.r != nil {
		shared.r.Shutdown()
		shared.r = nil
	}
}
