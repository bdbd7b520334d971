//go:build unix

package logtail

import (
	"os"
	"syscall"
)

func fileID(path string, fi os.FileInfo) FileID {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return FileID{Dev: uint64(st.Dev), Ino: uint64(st.Ino)} //nolint:unconvert // widths differ by platform
	}
	return FileID{Path: path}
}

// openNonBlocking opens path for reading without waiting: a FIFO without a writer would block
// open(2) for ever. Reads of a regular file are not affected by O_NONBLOCK.
func openNonBlocking(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
}
