package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// cgroupMemoryLimit returns the memory limit of the cgroup this process runs in (cgroup v2, then
// v1), read under root ("/" in production; a test directory in tests). ok is false when there is
// none (no cgroup, "max", or the v1 "unlimited" value).
func cgroupMemoryLimit(root string) (limit int64, ok bool) {
	read := func(p string) (int64, bool) {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			return 0, false
		}
		s := string(bytes.TrimSpace(b))
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 || n >= 1<<60 { // "max", or v1's page-rounded MaxInt64
			return 0, false
		}
		return n, true
	}
	// The process's own group, from /proc/self/cgroup: systemd puts a service in
	// system.slice/<unit>; in a container with its own cgroup namespace it is "/".
	if f, err := os.Open(filepath.Join(root, "proc/self/cgroup")); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			if path, found := strings.CutPrefix(line, "0::"); found { // v2
				if n, ok := read(filepath.Join("sys/fs/cgroup", path, "memory.max")); ok {
					return n, true
				}
			}
			if _, rest, found := strings.Cut(line, ":memory:"); found { // v1
				if n, ok := read(filepath.Join("sys/fs/cgroup/memory", rest, "memory.limit_in_bytes")); ok {
					return n, true
				}
			}
		}
	}
	if n, ok := read("sys/fs/cgroup/memory.max"); ok {
		return n, true
	}
	return read("sys/fs/cgroup/memory/memory.limit_in_bytes")
}

// setMemoryLimit sets the Go runtime's soft memory limit to ratio × the cgroup's limit, as
// automemlimit does, unless GOMEMLIMIT is set (the runtime already applied it) or ratio is 0.
// The garbage collector then works harder near the limit instead of the kernel killing the
// process. It returns what it did, for the start-up log.
func setMemoryLimit(root string, ratio float64) string {
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		return "GOMEMLIMIT=" + v
	}
	if ratio <= 0 {
		return "none (--runtime.memory-limit-ratio=0)"
	}
	limit, ok := cgroupMemoryLimit(root)
	if !ok {
		return "none (no cgroup memory limit)"
	}
	soft := int64(float64(limit) * ratio)
	debug.SetMemoryLimit(soft)
	return fmt.Sprintf("%d bytes (%.0f%% of the cgroup limit %d)", soft, ratio*100, limit)
}
