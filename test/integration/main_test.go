// Package integration runs the real celery_exporter binary against a real redis-server and real
// Celery 5.2.6 workers (Debian's python3-celery). Expected values come from an independent
// subscriber (harness.Recorder), never from the exporter's own code.
//
// Tests run one at a time, except that the demo (TestDemoHeadless, the longest, mostly waiting
// for its alerts) runs beside a lane of tests marked with besideTheDemo, which keeps `make test`
// within CI's time budget. Each of those has its own redis-server, workers and ports; tests on
// the shared rabbitmq-server (one of them restarts it) stay out of the lane.
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
