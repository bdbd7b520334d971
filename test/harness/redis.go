package harness

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Require fails the test under CI=true when a tool is missing (CI must have everything; make test
// installs it) and skips it loudly elsewhere.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err == nil {
			continue
		}
		msg := fmt.Sprintf("%s is not installed: run `make deps` (or test/deps.sh) to install it", tool)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED, NOT TESTED: " + msg)
	}
}

// RequirePython is Require for a module of Debian's /usr/bin/python3.
func RequirePython(t testing.TB, modules ...string) {
	t.Helper()
	for _, m := range modules {
		if err := exec.Command(Python, "-c", "import "+m).Run(); err == nil {
			continue
		}
		msg := fmt.Sprintf("python module %s is missing for %s: run `make deps` (or test/deps.sh)", m, Python)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED, NOT TESTED: " + msg)
	}
}

// Python is Debian's interpreter, the one python3-celery is installed for (a pyenv python3 earlier
// on PATH would not have it).
const Python = "/usr/bin/python3"

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Redis is a redis-server run for one test.
type Redis struct {
	Port     int
	Dir      string
	p        *proc
	args     []string
	password string
}

// Addr is host:port.
func (r *Redis) Addr() string { return fmt.Sprintf("127.0.0.1:%d", r.Port) }

// URL is the broker URL for db.
func (r *Redis) URL(db int) string { return fmt.Sprintf("redis://127.0.0.1:%d/%d", r.Port, db) }

// StartRedis starts a redis-server without persistence. extra are more `--name value` arguments.
func StartRedis(t testing.TB, extra ...string) *Redis {
	t.Helper()
	return StartRedisOnPort(t, FreePort(t), extra...)
}

// StartRedisOnPort is StartRedis on a chosen port: a broker that comes up after its clients.
func StartRedisOnPort(t testing.TB, port int, extra ...string) *Redis {
	t.Helper()
	Require(t, "redis-server")
	r := &Redis{Port: port, Dir: t.TempDir()}
	for i := 0; i+1 < len(extra); i++ {
		if extra[i] == "--requirepass" {
			r.password = extra[i+1]
		}
	}
	r.args = append([]string{
		"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", r.Dir,
	}, extra...)
	r.start(t)
	return r
}

// start runs the server as a harness proc: its log (stdout) is shown when the test fails, and it
// dies with the test binary even when a timeout panic skips the cleanups.
func (r *Redis) start(t testing.TB) {
	t.Helper()
	r.p = startProc(t, fmt.Sprintf("redis-server %d", r.Port), r.Dir, os.Environ(), "redis-server", r.args...)
	deadline := time.Now().Add(10 * time.Second)
	for r.Ping() != nil {
		if r.p.exited() {
			t.Fatalf("redis-server on %d exited at start (%v):\n%s", r.Port, r.p.waitErr, Tail(r.Log(), 20))
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %d did not answer PING within 10s:\n%s", r.Port, Tail(r.Log(), 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (a broker outage, as far as clients can tell) and waits until it is gone.
func (r *Redis) Stop() { r.p.kill() }

// Restart starts the server again on the same port, with an empty dataset; the new server is
// stopped at the end of t.
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	r.Stop()
	r.start(t)
}

// Log returns the output of the server now running.
func (r *Redis) Log() string { return r.p.log() }

// Ping sends a raw PING, without a client library, so the harness does not depend on the code
// under test.
func (r *Redis) Ping() error {
	_, err := r.Do("PING")
	return err
}

// Do sends one command over a fresh connection and returns the first line of the reply (enough for
// status and integer replies).
func (r *Redis) Do(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", r.Addr(), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if r.password != "" {
		if err := writeCommand(c, "AUTH", r.password); err != nil {
			return "", err
		}
	}
	if err := writeCommand(c, args...); err != nil {
		return "", err
	}
	rd := bufio.NewReader(c)
	if r.password != "" {
		if _, err := rd.ReadString('\n'); err != nil {
			return "", err
		}
	}
	line, err := rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "-") {
		return "", fmt.Errorf("redis: %s", line[1:])
	}
	return line, nil
}

// GoTool returns the path of a tool test/gotools.sh installs (helm, kustomize, jsonnet): from
// PATH, else from its cache directory. Missing, it fails under CI=true and skips loudly elsewhere.
func GoTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	dir := os.Getenv("CELERY_EXPORTER_TOOLS")
	if dir == "" {
		if cache, err := os.UserCacheDir(); err == nil {
			dir = filepath.Join(cache, "celery_exporter", "tools")
		}
	}
	if p := filepath.Join(dir, name); dir != "" {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	msg := fmt.Sprintf("%s is not installed: run `make deps` (or test/gotools.sh) to build it from the Go module proxy", name)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED, NOT TESTED: " + msg)
	return ""
}
