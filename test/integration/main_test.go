package integration

import (
	"os"
	"testing"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

func TestMain(m *testing.M) {
	code := m.Run()
	harness.CleanupBuilds()
	harness.ShutdownShared()
	os.Exit(code)
}
