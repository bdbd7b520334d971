// Package tasks keeps what the exporter must remember about a task between its events: the name
// and queue (only task-sent and task-received carry them), the times that make queue wait and
// runtime, and the events held until the queue is known. The cache is bounded by a capacity, a
// byte budget and a TTL, least recently used first; evictions are counted.
package tasks
