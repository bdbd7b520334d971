package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is a child process in its own process group (so a prefork worker's pool children die with
// it), with its stdout and stderr in one log file. A file rather than a pipe: exec.Cmd.Wait would
// otherwise block on grandchildren that still hold the pipe open.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

func startProc(t testing.TB, name, dir string, env []string, bin string, args ...string) *proc {
	t.Helper()
	logDir := t.TempDir()
	p := &proc{name: name, logPath: filepath.Join(logDir, sanitize(name)+".log"), done: make(chan struct{})}
	f, err := os.Create(p.logPath)
	if err != nil {
		t.Fatalf("%s: create log: %v", name, err)
	}
	defer f.Close()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Env = env
	p.cmd.Stdout = f
	p.cmd.Stderr = f
	p.cmd.SysProcAttr = childAttr(syscall.SIGKILL)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: start %s: %v", name, bin, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- log of %s (%s), last 60 lines ---\n%s", name, strings.Join(append([]string{bin}, args...), " "), Tail(p.log(), 60))
		}
	})
	return p
}

// childAttr puts a child in a process group of its own, so that signalling the group reaches its
// own children (a prefork worker's pool), and sends it deathSig if the test binary dies first: a
// timeout panic or a SIGKILL skips every t.Cleanup.
func childAttr(deathSig syscall.Signal) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if runtime.GOOS == "linux" {
		a.Pdeathsig = deathSig
	}
	return a
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '@' || r == ' ' || r == ':' {
			return '_'
		}
		return r
	}, s)
}

// Tail is the last n lines of s, for failure messages.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL to the whole process group and waits for the leader. Safe to call twice.
func (p *proc) kill() {
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// stop sends sig to the group leader only (Celery's main process shuts its pool down itself), waits
// up to timeout, then kills whatever is left of the group.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	if p.exited() {
		p.kill()
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: signal %v: %w", p.name, sig, err)
	}
	select {
	case <-p.done:
		p.kill() // stray pool children, if any
		return nil
	case <-time.After(timeout):
		p.kill()
		return fmt.Errorf("%s did not exit within %v of %v; killed", p.name, timeout, sig)
	}
}

func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// waitLog polls the log until it contains s, the process exits, or the timeout passes.
func (p *proc) waitLog(s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if strings.Contains(p.log(), s) {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited (%v) before logging %q", p.name, p.waitErr, s)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not log %q within %v", p.name, s, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// ModuleRoot is the directory holding go.mod, found upwards from the test's working directory.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootErr = err
			return
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				rootDir = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				rootErr = errors.New("no go.mod above the working directory")
				return
			}
			dir = parent
		}
	})
	if rootErr != nil {
		t.Fatalf("module root: %v", rootErr)
	}
	return rootDir
}

// envWith returns the environment with the given KEY=VALUE pairs replacing any earlier ones.
func envWith(base []string, kv ...string) []string {
	keys := map[string]bool{}
	for _, e := range kv {
		if k, _, ok := strings.Cut(e, "="); ok {
			keys[k] = true
		}
	}
	out := make([]string, 0, len(base)+len(kv))
	for _, e := range base {
		if k, _, ok := strings.Cut(e, "="); ok && keys[k] {
			continue
		}
		out = append(out, e)
	}
	return append(out, kv...)
}
