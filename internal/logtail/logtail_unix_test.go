//go:build unix

package logtail

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A glob entry that turns into a FIFO between the scan's stat and the open must not block the tailer: before, open(2) waited for a writer for ever and the source
// stopped counting while its scrape still succeeded.
func TestFIFOFlipDoesNotBlock(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "flip.log")
	other := filepath.Join(dir, "other.log")
	appendFile(t, p, "")
	appendFile(t, other, "")
	tl, r := newTailer(t, dir, Options{FromBeginning: true})
	testHookBeforeOpen = func(path string) {
		if path == p {
			if err := os.Remove(p); err != nil {
				t.Error(err)
			}
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(func() { testHookBeforeOpen = func(string) {} })
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		tl.Poll()
	}()
	select {
	case <-polled:
	case <-time.After(30 * time.Second):
		t.Fatal("Poll blocked on a FIFO")
	}
	testHookBeforeOpen = func(string) {}
	appendFile(t, other, "still counted\n")
	tl.Poll()
	expectLines(t, r, "still counted")
	if tl.Watched() != 1 {
		t.Errorf("Watched = %d, want 1 (the FIFO is not followed)", tl.Watched())
	}
}
