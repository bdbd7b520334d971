// Package harness starts the real parts the integration tests run against: redis-server, Celery
// workers, the exporter binary, Prometheus. Everything binds to 127.0.0.1 on free ports and is
// stopped by t.Cleanup.
package harness
