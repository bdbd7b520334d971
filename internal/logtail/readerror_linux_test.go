//go:build linux

package logtail

import (
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
)

// A followed file whose reads fail is counted at every poll, and once it reads again nothing is
// lost, read twice or taken for a truncation. The failure is real: the file's descriptor is
// swapped (dup3) for a write-only descriptor of the same file, so fstat(2) still works and
// pread(2) fails with EBADF, as it would with EIO on a failing disk.
func TestReadErrorCounted(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "app.log")
	appendFile(t, p, "first\n")
	var errs, truncs atomic.Int64
	tl, r := newTailer(t, dir, Options{
		FromBeginning: true,
		OnReadError:   func() { errs.Add(1) },
		OnTruncate:    func() { truncs.Add(1) },
	})
	tl.Poll()
	expectLines(t, r, "first")
	if len(tl.files) != 1 {
		t.Fatalf("following %d files, want 1", len(tl.files))
	}
	var fd int
	for _, f := range tl.files {
		fd = int(f.f.Fd())
	}
	saved, err := syscall.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(saved)
	wo, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer wo.Close()
	if err := syscall.Dup3(int(wo.Fd()), fd, 0); err != nil {
		t.Fatal(err)
	}

	appendFile(t, p, "second\n")
	tl.Poll()
	tl.Poll()
	expectLines(t, r)
	if got := errs.Load(); got != 2 {
		t.Errorf("read errors = %d after two failing polls, want 2", got)
	}

	if err := syscall.Dup3(saved, fd, 0); err != nil {
		t.Fatal(err)
	}
	tl.Poll()
	expectLines(t, r, "second")
	if got := errs.Load(); got != 2 {
		t.Errorf("read errors = %d after a good poll, want still 2", got)
	}
	if got := truncs.Load(); got != 0 {
		t.Errorf("truncations = %d, want 0 (a failed read is no truncation)", got)
	}
	if tl.Watched() != 1 {
		t.Errorf("Watched = %d, want 1", tl.Watched())
	}
}

// A matching path that exists but cannot be opened is a read error too (open(2) of a Unix socket
// fails with ENXIO), while a path that vanished since the glob is not.
func TestOpenErrorCounted(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "sock.log")
	gone := filepath.Join(dir, "gone.log")
	appendFile(t, sock, "")
	appendFile(t, gone, "")
	var errs atomic.Int64
	tl, _ := newTailer(t, dir, Options{OnReadError: func() { errs.Add(1) }})
	var l net.Listener
	testHookBeforeOpen = func(path string) {
		switch path {
		case sock:
			if err := os.Remove(sock); err != nil {
				t.Error(err)
			}
			var err error
			if l, err = net.Listen("unix", sock); err != nil {
				t.Error(err)
			}
		case gone:
			if err := os.Remove(gone); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(func() { testHookBeforeOpen = func(string) {} })
	tl.Poll()
	testHookBeforeOpen = func(string) {}
	if l != nil {
		defer l.Close()
	}
	if got := errs.Load(); got != 1 {
		t.Errorf("read errors = %d, want 1 (the socket; the vanished file is no error)", got)
	}
	if tl.Watched() != 0 {
		t.Errorf("Watched = %d, want 0", tl.Watched())
	}
}
