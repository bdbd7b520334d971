// Package integration runs the real celery_exporter binary against a real redis-server and real
// Celery 5.2.6 workers (Debian's python3-celery). Expected values come from an independent
// subscriber (harness.Recorder), never from the exporter's own code.
package integration
