package integration

import (
	"os"
	"sync"
	"testing"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

func TestMain(m *testing.M) {
	code := m.Run()
	harness.CleanupBuilds()
	harness.ShutdownShared()
	os.Exit(code)
}

// lane lets one besideTheDemo test run at a time.
var lane sync.Mutex

// besideTheDemo makes t a parallel test that runs beside the demo, one such test at a time. go
// test's -parallel must exceed the number of these tests (TEST_FLAGS in the Makefile), so that
// the tests waiting for the lane never hold the demo's slot. The lane is released after t's other
// clean-ups, once its processes are gone.
func besideTheDemo(t *testing.T) {
	t.Helper()
	t.Parallel()
	lane.Lock()
	t.Cleanup(lane.Unlock)
}
