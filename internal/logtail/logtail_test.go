package logtail

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type recorder struct {
	mu      sync.Mutex
	lines   []string
	skipped map[string]int
	forgot  int
}

func (r *recorder) Line(_ FileID, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, string(data))
}

func (r *recorder) Skipped(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.skipped == nil {
		r.skipped = map[string]int{}
	}
	r.skipped[reason]++
}

func (r *recorder) Forget(FileID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forgot++
}

// take returns the lines received since the last call.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lines
	r.lines = nil
	return l
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lines)
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func expectLines(t *testing.T, r *recorder, want ...string) {
	t.Helper()
	got := r.take()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("lines\n got %q\nwant %q", got, want)
	}
}

func newTailer(t *testing.T, dir string, opts Options) (*Tailer, *recorder) {
	t.Helper()
	if opts.Globs == nil {
		opts.Globs = []string{filepath.Join(dir, "*.log")}
	}
	if opts.MaxLineBytes == 0 {
		opts.MaxLineBytes = 100
	}
	r := &recorder{}
	tl := New(opts, r, nil)
	t.Cleanup(func() { tl.Stop() })
	return tl, r
}

func TestStartAtEndAndNewFiles(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "a.log")
	appendFile(t, old, "history 1\nhistory 2\n")
	tl, r := newTailer(t, dir, Options{})
	tl.Poll()
	expectLines(t, r)
	appendFile(t, old, "live 1\n")
	appendFile(t, filepath.Join(dir, "b.log"), "new file 1\nnew file 2\n")
	appendFile(t, filepath.Join(dir, "b.txt"), "not matched\n")
	tl.Poll()
	expectLines(t, r, "live 1", "new file 1", "new file 2")
	if tl.Watched() != 2 {
		t.Errorf("Watched = %d, want 2", tl.Watched())
	}
}

func TestFromBeginning(t *testing.T) {
	dir := t.TempDir()
	appendFile(t, filepath.Join(dir, "a.log"), "history 1\r\nhistory 2\n")
	tl, r := newTailer(t, dir, Options{FromBeginning: true})
	tl.Poll()
	expectLines(t, r, "history 1", "history 2")
}

func TestPartialLine(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.log")
	appendFile(t, p, "")
	tl, r := newTailer(t, dir, Options{})
	tl.Poll()
	appendFile(t, p, "one\ntw")
	tl.Poll()
	expectLines(t, r, "one")
	appendFile(t, p, "o, still")
	tl.Poll()
	expectLines(t, r)
	appendFile(t, p, " two\n\nthree\n")
	tl.Poll()
	expectLines(t, r, "two, still two", "", "three")
}

func TestLongLines(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.log")
	appendFile(t, p, "")
	tl, r := newTailer(t, dir, Options{MaxLineBytes: 10})
	tl.Poll()
	// At the limit, over it in one read, over it across reads, then normal again.
	appendFile(t, p, "0123456789\n0123456789A\nshort\n01234")
	tl.Poll()
	expectLines(t, r, "0123456789", "short")
	appendFile(t, p, "56789ABCDEF")
	tl.Poll()
	appendFile(t, p, "GHIJ\nafter\n")
	tl.Poll()
	expectLines(t, r, "after")
	if r.skipped[SkipTooLong] != 2 {
		t.Errorf("skipped %v, want 2 too_long", r.skipped)
	}
	// A partial that grows past the limit with its newline in the same read.
	appendFile(t, p, "012345")
	tl.Poll()
	appendFile(t, p, "6789AB\nok\n")
	tl.Poll()
	expectLines(t, r, "ok")
	if r.skipped[SkipTooLong] != 3 {
		t.Errorf("skipped %v, want 3 too_long", r.skipped)
	}
}

func TestRenameRotation(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "app.log")
	appendFile(t, p, "")
	tl, r := newTailer(t, dir, Options{})
	now := time.Unix(1000, 0)
	tl.now = func() time.Time { return now }
	tl.Poll()

	w, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fmt.Fprint(w, "1\n2\n")
	tl.Poll()
	expectLines(t, r, "1", "2")

	// Rotate by rename; the writer has not reopened yet and writes two more lines (the second
	// unterminated) to the old file, then the new file gets its first lines.
	if err := os.Rename(p, p+".1"); err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(w, "3\n4")
	appendFile(t, p, "5\n")
	tl.Poll()
	expectLines(t, r, "3", "5")
	if tl.Watched() != 2 {
		t.Errorf("Watched = %d during the grace period, want 2", tl.Watched())
	}
	fmt.Fprint(w, " end\n")
	tl.Poll()
	expectLines(t, r, "4 end")

	// Once the old file is quiet for the grace period it is closed.
	fmt.Fprint(w, "6 unterminated")
	tl.Poll()
	now = now.Add(tl.grace())
	tl.Poll()
	expectLines(t, r, "6 unterminated")
	if tl.Watched() != 1 {
		t.Errorf("Watched = %d after the grace period, want 1", tl.Watched())
	}

	// A rename to a name the glob still matches is the same file: nothing is read twice.
	appendFile(t, p, "7\n")
	tl.Poll()
	if err := os.Rename(p, filepath.Join(dir, "app-old.log")); err != nil {
		t.Fatal(err)
	}
	appendFile(t, filepath.Join(dir, "app-old.log"), "8\n")
	tl.Poll()
	expectLines(t, r, "7", "8")
}

func TestCopyTruncate(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "app.log")
	appendFile(t, p, "")
	truncations := 0
	tl, r := newTailer(t, dir, Options{OnTruncate: func() { truncations++ }})
	tl.Poll()
	appendFile(t, p, "line one\nline two\nline three\n")
	tl.Poll()
	expectLines(t, r, "line one", "line two", "line three")

	// Truncated, then a little written: the file shrank.
	if err := os.Truncate(p, 0); err != nil {
		t.Fatal(err)
	}
	appendFile(t, p, "after 1\n")
	tl.Poll()
	expectLines(t, r, "after 1")

	// Truncated, then written past our offset before the next poll: the first bytes changed.
	if err := os.Truncate(p, 0); err != nil {
		t.Fatal(err)
	}
	appendFile(t, p, "BFTER 2 a much longer line than before\nafter 3\n")
	tl.Poll()
	expectLines(t, r, "BFTER 2 a much longer line than before", "after 3")
	if r.forgot != 2 || truncations != 2 {
		t.Errorf("Forget called %d times, OnTruncate %d times, want 2 and 2", r.forgot, truncations)
	}
}

func TestStopResume(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.log")
	appendFile(t, p, "")
	tl, r := newTailer(t, dir, Options{})
	tl.Poll()
	appendFile(t, p, "one\npart")
	tl.Poll()
	expectLines(t, r, "one")
	pos := tl.Stop()

	appendFile(t, p, "ial\ntwo\n")
	tl2, r2 := newTailer(t, dir, Options{Resume: pos})
	tl2.Poll()
	expectLines(t, r2, "partial", "two")
}

// TestResumeTruncatedDuringReload: a file shorter than its resumed offset was truncated in
// between: what it holds now is new and read from the start.
func TestResumeTruncatedDuringReload(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.log")
	appendFile(t, p, "")
	tl, r := newTailer(t, dir, Options{})
	tl.Poll()
	appendFile(t, p, "one before the reload\n")
	tl.Poll()
	expectLines(t, r, "one before the reload")
	pos := tl.Stop()

	if err := os.Truncate(p, 0); err != nil {
		t.Fatal(err)
	}
	appendFile(t, p, "two\n")
	tl2, r2 := newTailer(t, dir, Options{Resume: pos})
	tl2.Poll()
	expectLines(t, r2, "two")
}

// TestResumeOnlyFirstScan: a file that starts matching later is new even if its device and
// inode are in Resume (a deleted file's inode reused).
func TestResumeOnlyFirstScan(t *testing.T) {
	dir := t.TempDir()
	hidden := filepath.Join(dir, "b.txt")
	appendFile(t, hidden, "first\nsecond\n")
	fi, err := os.Stat(hidden)
	if err != nil {
		t.Fatal(err)
	}
	tl, r := newTailer(t, dir, Options{Resume: map[FileID]Position{fileID(hidden, fi): {Offset: 6}}})
	tl.Poll()
	expectLines(t, r)
	if err := os.Rename(hidden, filepath.Join(dir, "b.log")); err != nil {
		t.Fatal(err)
	}
	tl.Poll()
	expectLines(t, r, "first", "second")
}

func TestMaxFiles(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 3; i++ {
		appendFile(t, filepath.Join(dir, fmt.Sprintf("%d.log", i)), "")
	}
	tl, _ := newTailer(t, dir, Options{MaxFiles: 2})
	tl.Poll()
	if tl.Watched() != 2 || tl.Unfollowed() != 1 {
		t.Errorf("Watched = %d, Unfollowed = %d, want 2 and 1", tl.Watched(), tl.Unfollowed())
	}
	tl.Poll() // a gauge: the same file is not counted twice
	if tl.Unfollowed() != 1 {
		t.Errorf("second poll: Unfollowed = %d, want 1", tl.Unfollowed())
	}
}

// burst writes n numbered lines to path, reopening the file whenever rotate asks (as a logging
// handler watching its file would), and calls between(i) before line i.
func burst(t *testing.T, path string, n int, between func(i int, w **os.File)) {
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Error(err)
		return
	}
	defer func() { w.Close() }()
	for i := 0; i < n; i++ {
		between(i, &w)
		if _, err := fmt.Fprintf(w, "line %06d\n", i); err != nil {
			t.Error(err)
			return
		}
		if i%50 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

// checkExactlyOnce waits for n lines and checks each numbered line came once.
func checkExactlyOnce(t *testing.T, r *recorder, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for r.count() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // anything extra would show up by now
	lines := r.take()
	seen := make(map[string]int, n)
	for _, l := range lines {
		seen[l]++
	}
	for i := 0; i < n; i++ {
		l := fmt.Sprintf("line %06d", i)
		if seen[l] != 1 {
			t.Errorf("%q seen %d times", l, seen[l])
		}
	}
	if len(lines) != n {
		t.Errorf("got %d lines, want %d", len(lines), n)
	}
}

func TestBurstRenameRotation(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "app.log")
	appendFile(t, p, "")
	tl, r := newTailer(t, dir, Options{PollInterval: 5 * time.Millisecond})
	tl.Start()
	time.Sleep(20 * time.Millisecond)
	const n = 5000
	burst(t, p, n, func(i int, w **os.File) {
		// Rotate: rename at 500, keep writing ten lines to the old descriptor (the handler has
		// not noticed yet), then reopen the path at 510.
		switch i % 1000 {
		case 500:
			if err := os.Rename(p, fmt.Sprintf("%s.%d", p, i)); err != nil {
				t.Error(err)
			}
			return
		case 510:
		default:
			return
		}
		(*w).Close()
		nw, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Error(err)
			return
		}
		*w = nw
	})
	checkExactlyOnce(t, r, n)
}

func TestBurstCopyTruncate(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "app.log")
	appendFile(t, p, "")
	tl, r := newTailer(t, dir, Options{PollInterval: 5 * time.Millisecond})
	tl.Start()
	time.Sleep(20 * time.Millisecond)
	const n = 5000
	burst(t, p, n, func(i int, w **os.File) {
		if i%1000 != 500 {
			return
		}
		// logrotate's copytruncate: copy the file away (under a name the glob does not match),
		// then truncate it in place while the writer keeps its descriptor. Lines written between
		// the tailer's last read and the truncation cannot be seen by any reader, so, like a
		// careful copytruncate, wait until the tailer has caught up before truncating.
		for deadline := time.Now().Add(10 * time.Second); r.count() < i; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("the tailer read %d of %d lines in 10s", r.count(), i)
				break
			}
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Error(err)
		}
		if err := os.WriteFile(fmt.Sprintf("%s.%d.bak", p, i), data, 0o644); err != nil {
			t.Error(err)
		}
		if err := os.Truncate(p, 0); err != nil {
			t.Error(err)
		}
	})
	checkExactlyOnce(t, r, n)
}

func TestNothingMatches(t *testing.T) {
	tl, r := newTailer(t, t.TempDir(), Options{Globs: []string{"/nonexistent/dir/*.log", "["}})
	tl.Poll()
	expectLines(t, r)
	if tl.Watched() != 0 {
		t.Errorf("Watched = %d", tl.Watched())
	}
}

// LastPoll advances with every completed poll and stands still while a poll hangs (here in the
// hook before an open; in production a read blocked on a dead network mount), so a stalled
// source is visible from its scrape.
func TestLastPollStandsStillWhilePollHangs(t *testing.T) {
	dir := t.TempDir()
	var clock atomic.Int64
	clock.Store(1000)
	tl, _ := newTailer(t, dir, Options{Now: func() time.Time { return time.Unix(clock.Load(), 0) }})
	if !tl.LastPoll().IsZero() {
		t.Errorf("LastPoll = %v before any poll, want zero", tl.LastPoll())
	}
	tl.Poll()
	if got := tl.LastPoll().Unix(); got != 1000 {
		t.Errorf("LastPoll = %d, want 1000", got)
	}
	clock.Store(1010)
	tl.Poll()
	if got := tl.LastPoll().Unix(); got != 1010 {
		t.Errorf("LastPoll = %d, want 1010", got)
	}

	entered, release := make(chan struct{}), make(chan struct{})
	testHookBeforeOpen = func(string) {
		close(entered)
		<-release
	}
	t.Cleanup(func() { testHookBeforeOpen = func(string) {} })
	appendFile(t, filepath.Join(dir, "new.log"), "x\n")
	done := make(chan struct{})
	go func() {
		defer close(done)
		tl.Poll()
	}()
	<-entered
	clock.Store(1100)
	if got := tl.LastPoll().Unix(); got != 1010 {
		t.Errorf("LastPoll = %d while a poll hangs, want 1010", got)
	}
	testHookBeforeOpen = func(string) {}
	close(release)
	<-done
	if got := tl.LastPoll().Unix(); got != 1100 {
		t.Errorf("LastPoll = %d after the poll completed, want 1100", got)
	}
}

// Start counts as a poll until the first completes: a first poll that hangs shows as stale too.
// Here the first poll hangs in its first reading of the clock, which answers only for Start.
func TestLastPollSetByStart(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int64
	tl, _ := newTailer(t, t.TempDir(), Options{
		PollInterval: time.Hour,
		Now: func() time.Time {
			if calls.Add(1) == 1 {
				return time.Unix(2000, 0)
			}
			<-release
			return time.Unix(3000, 0)
		},
	})
	tl.Start()
	for calls.Load() < 2 { // the first poll has started and hangs
		time.Sleep(time.Millisecond)
	}
	if got := tl.LastPoll().Unix(); got != 2000 {
		t.Errorf("LastPoll = %d while the first poll hangs, want 2000 (Start)", got)
	}
	close(release)
}
