// Package integration runs the real celery_exporter binary against a real redis-server and real
// Celery 5.2.6 workers (Debian's python3-celery). Expected values come from an independent
// subscriber (harness.Recorder), never from the exporter's own code.
//
// Tests run one at a time, except that the demo (TestDemoHeadless, the longest, mostly waiting
// for its alerts) runs beside a lane of tests marked with besideTheDemo, which keeps `make test`
// within CI's time budget. Each of those has its own redis-server, workers and ports; tests on
// the shared rabbitmq-server (one of them restarts it) stay out of the lane.
package integration
