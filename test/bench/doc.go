// Package bench measures the exporter's event path end to end: a publisher replays realistic
// Celery event traffic into a real redis-server, and the ingest benchmark finds the highest rate
// the exporter's subscriber and event source keep up with, next to a bare subscriber's. See
// docs/performance.md.
package bench
