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
