package logtail

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
)

// SkipTooLong is the Skipped reason for a line over MaxLineBytes.
const SkipTooLong = "too_long"

// fingerprintBytes is how much of a file's start is remembered to notice it was rewritten in
// place (truncated, then written past our offset between two polls).
const fingerprintBytes = 64

// readChunk is the read buffer size.
const readChunk = 64 << 10

// FileID identifies a file independently of its name.
type FileID struct {
	Dev, Ino uint64
	// Path is used instead where the platform has no inode numbers.
	Path string
}

// Position is where reading of a file stopped, to resume there after a reload.
type Position struct {
	Offset   int64
	Skipping bool // inside an over-long line: discard up to the next newline
}

// Sink receives what the tailer reads. Its methods are called from one goroutine at a time.
type Sink interface {
	// Line is one complete line without its newline (and without a trailing \r). data is only
	// valid during the call.
	Line(id FileID, data []byte)
	// Skipped counts a line that was not handed on.
	Skipped(reason string)
	// Forget says the file is no longer read (or restarts at 0): drop state kept for it.
	Forget(id FileID)
}

// Options configure a Tailer.
type Options struct {
	Globs         []string
	FromBeginning bool // read files that exist at the first scan from 0, not from their end
	MaxLineBytes  int
	PollInterval  time.Duration
	// MaxFiles bounds how many files are open at once; default 1024.
	MaxFiles int
	// Resume gives start offsets for files known from a previous Tailer (a reload); it applies to
	// the files of the first scan.
	Resume map[FileID]Position
	// OnTruncate is called when a file is found truncated in place (copytruncate): lines written
	// between the last read and the truncation are lost.
	OnTruncate func()
	// OnReadError is called for every failed attempt to open, stat or read a matching file (a
	// permission denied, an I/O error of a failing disk or a stale network mount). Each poll
	// tries again, so a file that stays unreadable is counted once per poll.
	OnReadError func()
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Tailer follows the files matching Options.Globs.
type Tailer struct {
	opts   Options
	sink   Sink
	logger log.Logger
	now    func() time.Time

	mu       sync.Mutex // guards files between Poll and Stop
	files    map[FileID]*file
	watched  atomic.Int64 // len(files), readable while a long Poll holds mu
	initial  bool
	warnedAt int          // file count at which "too many files" was last logged
	over     atomic.Int64 // files matching at the last scan but not followed (MaxFiles)
	overNow  int
	buf      []byte
	// cannotOpen holds the paths whose open failed at the last scan: a lasting failure is logged
	// once, not at every poll.
	cannotOpen map[string]bool
	// lastPoll is when the last poll completed (Unix nanoseconds), readable while a hung Poll
	// holds mu: a read blocked on a dead network mount shows as a poll time that stops advancing.
	lastPoll atomic.Int64

	stop chan struct{}
	done chan struct{}
}

type file struct {
	id         FileID
	path       string
	f          *os.File
	offset     int64
	partial    []byte
	skipping   bool
	fp         []byte
	matched    bool
	lastChange time.Time
	failing    bool // the last read failed: logged once until it succeeds again
}

// New returns a Tailer; nothing is read before Start or Poll.
func New(opts Options, sink Sink, logger log.Logger) *Tailer {
	if logger == nil {
		logger = log.NewNopLogger()
	}
	if opts.MaxFiles <= 0 {
		opts.MaxFiles = 1024
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = time.Second
	}
	if opts.MaxLineBytes <= 0 {
		opts.MaxLineBytes = 256 << 10
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &Tailer{
		opts: opts, sink: sink, logger: logger, now: now,
		files: map[FileID]*file{}, initial: true, buf: make([]byte, readChunk),
		cannotOpen: map[string]bool{},
	}
}

// Start finds the files that exist now (so that what is created after Start returns is read from
// its first byte), then polls in the background until Stop.
func (t *Tailer) Start() {
	t.mu.Lock()
	now := t.now()
	t.scan(now)
	t.mu.Unlock()
	// Until the first poll completes, its start counts: a first poll that hangs shows as stale.
	t.lastPoll.Store(now.UnixNano())
	t.stop = make(chan struct{})
	t.done = make(chan struct{})
	go func() {
		defer close(t.done)
		tick := time.NewTicker(t.opts.PollInterval)
		defer tick.Stop()
		for {
			t.Poll()
			select {
			case <-t.stop:
				return
			case <-tick.C:
			}
		}
	}()
}

// Stop ends the background polling, closes every file and returns where each was left, for
// Options.Resume of the next Tailer. Files created since the last poll are included (at offset
// 0), so a reload loses none.
func (t *Tailer) Stop() map[FileID]Position {
	if t.stop != nil {
		close(t.stop)
		<-t.done
		t.stop = nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.scan(t.now())
	pos := make(map[FileID]Position, len(t.files))
	for id, f := range t.files {
		// An incomplete last line is read again by the next Tailer.
		pos[id] = Position{Offset: f.offset - int64(len(f.partial)), Skipping: f.skipping}
		f.f.Close()
		delete(t.files, id)
	}
	t.watched.Store(0)
	return pos
}

// Watched is the number of files open.
func (t *Tailer) Watched() int { return int(t.watched.Load()) }

// LastPoll is when the last poll completed (or Start was called, before the first completes);
// the zero time if neither happened.
func (t *Tailer) LastPoll() time.Time {
	n := t.lastPoll.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Unfollowed is the number of regular files that matched at the last scan but were not followed
// because MaxFiles were open.
func (t *Tailer) Unfollowed() int { return int(t.over.Load()) }

// testHookBeforeOpen lets a test change the path between Stat and open.
var testHookBeforeOpen = func(string) {}

// grace is how long a file that no longer matches the globs (rotated away, deleted) is kept
// open after it last grew: the writer may not have reopened its log yet.
func (t *Tailer) grace() time.Duration {
	return max(5*t.opts.PollInterval, time.Second)
}

// Poll does one pass: find files, read what is new, drop what is gone. Start calls it on every
// tick; tests call it directly.
func (t *Tailer) Poll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.scan(now)

	ids := make([]FileID, 0, len(t.files))
	for id := range t.files {
		ids = append(ids, id)
	}
	// Deterministic order: rotated files (unmatched) first, so an old file's tail is read
	// before the new file's head.
	sort.Slice(ids, func(i, j int) bool {
		a, b := t.files[ids[i]], t.files[ids[j]]
		if a.matched != b.matched {
			return !a.matched
		}
		return a.path < b.path
	})
	for _, id := range ids {
		f := t.files[id]
		t.read(f, now)
		if !f.matched && now.Sub(f.lastChange) >= t.grace() {
			t.close(f)
		}
	}
	t.watched.Store(int64(len(t.files)))
	t.lastPoll.Store(t.now().UnixNano())
}

// scan matches the globs: new files are opened, known ones marked as still matched.
func (t *Tailer) scan(now time.Time) {
	for _, f := range t.files {
		f.matched = false
	}
	t.overNow = 0
	failed := map[string]bool{}
	for _, path := range t.glob() {
		if !t.track(path, now) {
			failed[path] = true
		}
	}
	t.cannotOpen = failed
	t.over.Store(int64(t.overNow))
	// Resume describes the files of the first scan only: a file found later with a resumed
	// (device, inode) is a new file that reuses a deleted one's inode, read from its start.
	t.initial, t.opts.Resume = false, nil
	t.watched.Store(int64(len(t.files)))
}

func (t *Tailer) glob() []string {
	seen := map[string]bool{}
	var paths []string
	for _, g := range t.opts.Globs {
		m, err := filepath.Glob(g)
		if err != nil {
			continue // validated by the config package; a bad pattern matches nothing
		}
		for _, p := range m {
			if !seen[p] {
				seen[p] = true
				paths = append(paths, p)
			}
		}
	}
	sort.Strings(paths)
	return paths
}

// track opens a newly matched file, or marks a known one as still matched (maybe under a new
// name). It returns false when the file exists but could not be opened.
func (t *Tailer) track(path string, now time.Time) bool {
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return true // gone since the glob, or not a file: nothing to read
	}
	if f := t.files[fileID(path, fi)]; f != nil {
		f.matched, f.path = true, path
		return true
	}
	if len(t.files) >= t.opts.MaxFiles {
		t.overNow++
		if t.warnedAt != len(t.files) {
			t.warnedAt = len(t.files)
			level.Warn(t.logger).Log("msg", "too many log files, not following more", "max", t.opts.MaxFiles, "path", path)
		}
		return true
	}
	testHookBeforeOpen(path)
	// Non-blocking: the path may have become a FIFO since Stat, whose open would wait for a
	// writer for ever and stop every file of the source.
	fh, err := openNonBlocking(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true // rotated away since the Stat
	}
	if err != nil {
		t.readError()
		if !t.cannotOpen[path] {
			level.Warn(t.logger).Log("msg", "cannot open log file", "path", path, "err", err)
		}
		return false
	}
	// The path may have been replaced between Stat and Open: identify what was opened.
	fi, err = fh.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		fh.Close()
		return true
	}
	id := fileID(path, fi)
	if f := t.files[id]; f != nil {
		fh.Close()
		f.matched, f.path = true, path
		return true
	}
	f := &file{id: id, path: path, f: fh, matched: true, lastChange: now}
	switch pos, ok := t.opts.Resume[id]; {
	case ok && pos.Offset <= fi.Size():
		f.offset, f.skipping = pos.Offset, pos.Skipping
	case ok:
		// Truncated (copytruncate) during the reload: all it holds was written since.
	case t.initial && !t.opts.FromBeginning:
		// Existing history is not replayed: its events happened before we were watching.
		f.offset = fi.Size()
	}
	f.fp = t.fingerprint(f, fi.Size())
	t.files[id] = f
	level.Debug(t.logger).Log("msg", "following log file", "path", path, "offset", f.offset)
	return true
}

// fingerprint reads the first bytes of the file, up to what has been read (or exists).
func (t *Tailer) fingerprint(f *file, upTo int64) []byte {
	n := min(int64(fingerprintBytes), upTo)
	if n <= 0 {
		return nil
	}
	b := make([]byte, n)
	m, _ := f.f.ReadAt(b, 0)
	return b[:m]
}

// rewritten reports whether the file was truncated in place, even if it has since grown past
// our offset. A failed read of its first bytes is an error, not a rewrite: taking it for one would
// read the whole file again once the disk answers.
func (t *Tailer) rewritten(f *file, size int64) (bool, error) {
	if size < f.offset {
		return true, nil
	}
	if len(f.fp) == 0 {
		return false, nil
	}
	// Called before read fills t.buf: borrow it rather than allocate on every poll of every file.
	b := t.buf[:len(f.fp)]
	m, err := f.f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	return !bytes.Equal(b[:m], f.fp), nil
}

// readError counts one failed open, stat or read.
func (t *Tailer) readError() {
	if t.opts.OnReadError != nil {
		t.opts.OnReadError()
	}
}

// readFailed counts a failed stat or read of a followed file and logs it when it starts failing.
func (t *Tailer) readFailed(f *file, err error) {
	t.readError()
	if !f.failing {
		f.failing = true
		level.Warn(t.logger).Log("msg", "cannot read log file", "path", f.path, "err", err)
	}
}

func (t *Tailer) read(f *file, now time.Time) {
	fi, err := f.f.Stat()
	if err != nil {
		t.readFailed(f, err)
		return
	}
	size := fi.Size()
	rewritten, err := t.rewritten(f, size)
	if err != nil {
		t.readFailed(f, err)
		return
	}
	if rewritten {
		level.Info(t.logger).Log("msg", "log file truncated, reading it from the start", "path", f.path)
		if t.opts.OnTruncate != nil {
			t.opts.OnTruncate()
		}
		f.offset, f.partial, f.skipping, f.fp = 0, nil, false, nil
		t.sink.Forget(f.id)
		f.lastChange = now
	}
	for f.offset < size {
		want := min(int64(len(t.buf)), size-f.offset)
		n, err := f.f.ReadAt(t.buf[:want], f.offset)
		if n > 0 {
			f.offset += int64(n)
			f.lastChange = now
			t.consume(f, t.buf[:n])
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.readFailed(f, err)
				return
			}
			break
		}
	}
	if f.failing {
		f.failing = false
		level.Info(t.logger).Log("msg", "reading log file again", "path", f.path)
	}
	if len(f.fp) < fingerprintBytes && f.offset > int64(len(f.fp)) {
		f.fp = t.fingerprint(f, f.offset)
	}
}

// consume splits data into lines, joining with the partial line kept from earlier reads.
func (t *Tailer) consume(f *file, data []byte) {
	limit := t.opts.MaxLineBytes
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if f.skipping {
				return
			}
			if len(f.partial)+len(data) > limit {
				t.skip(f)
				return
			}
			f.partial = append(f.partial, data...)
			return
		}
		seg := data[:i]
		data = data[i+1:]
		if f.skipping {
			f.skipping = false
			continue
		}
		line := seg
		if len(f.partial) > 0 {
			if len(f.partial)+len(seg) > limit {
				t.skip(f)
				f.skipping = false
				continue
			}
			f.partial = append(f.partial, seg...)
			line = f.partial
		} else if len(seg) > limit {
			t.sink.Skipped(SkipTooLong)
			continue
		}
		t.emit(f, line)
		f.partial = f.partial[:0]
		if cap(f.partial) > readChunk {
			f.partial = nil // do not keep a long line's buffer for every file
		}
	}
}

// skip drops the line being assembled and discards the rest of it.
func (t *Tailer) skip(f *file) {
	t.sink.Skipped(SkipTooLong)
	f.partial, f.skipping = nil, true
}

func (t *Tailer) emit(f *file, line []byte) {
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	t.sink.Line(f.id, line)
}

// close stops following a file that is gone; its unterminated last line will never be completed
// and is handed on as it is.
func (t *Tailer) close(f *file) {
	if len(f.partial) > 0 && !f.skipping {
		t.emit(f, f.partial)
	}
	f.f.Close()
	delete(t.files, f.id)
	t.sink.Forget(f.id)
	level.Debug(t.logger).Log("msg", "stopped following log file", "path", f.path)
}
