package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, s := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCgroupMemoryLimit(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  int64
		ok    bool
	}{
		{"container v2", map[string]string{"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "268435456\n"}, 268435456, true},
		{"systemd service v2", map[string]string{"proc/self/cgroup": "0::/system.slice/celery_exporter.service\n",
			"sys/fs/cgroup/system.slice/celery_exporter.service/memory.max": "268435456\n", "sys/fs/cgroup/memory.max": "max\n"}, 268435456, true},
		{"v2 unlimited", map[string]string{"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "max\n"}, 0, false},
		{"v1 nested", map[string]string{"proc/self/cgroup": "4:memory:/pod/abc\n0::/\n",
			"sys/fs/cgroup/memory/pod/abc/memory.limit_in_bytes": "536870912\n"}, 536870912, true},
		{"v1", map[string]string{"sys/fs/cgroup/memory/memory.limit_in_bytes": "536870912\n"}, 536870912, true},
		{"v1 unlimited", map[string]string{"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, 0, false},
		{"nothing", nil, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tt.files)
			got, ok := cgroupMemoryLimit(root)
			if got != tt.want || ok != tt.ok {
				t.Errorf("got %d, %v; want %d, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// Under the shipped 256Mi container limit the Go heap had no soft limit
// and peaked past it; the runtime's limit now follows the container's.
func TestSetMemoryLimitFromCgroup(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	root := t.TempDir()
	writeTree(t, root, map[string]string{"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "268435456\n"})
	limit256Mi, ratio := int64(268435456), 0.9
	setMemoryLimit(root, ratio)
	if got, want := debug.SetMemoryLimit(-1), int64(float64(limit256Mi)*ratio); got != want {
		t.Errorf("memory limit %d, want %d", got, want)
	}
	t.Setenv("GOMEMLIMIT", "100MiB")
	if got := setMemoryLimit(root, 0.9); got != "GOMEMLIMIT=100MiB" {
		t.Errorf("with GOMEMLIMIT set: %q", got)
	}
}
