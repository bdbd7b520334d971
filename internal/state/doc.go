// Package state is the model the exporter's sources share: what is known about the workers (their
// liveness from heartbeats), the tasks in flight (the task cache and its sent times), and which
// worker consumes which queue (from remote control), plus the hand-off of the running tasks remote
// control saw.
//
// Data flows one way: the wire packages decode what Redis (or RabbitMQ) says, a source writes it
// into the Model, and the sources read the Model when they are scraped. No source calls another:
// the event source writes workers and tasks, the control source writes queues and running tasks,
// and the broker source only reads. The Model is built once (cmd/celery_exporter) and given to
// every source's constructor, so nothing is wired after the sources start.
//
// Lock discipline: each part (Workers, Tasks, Queues, Active) has its own lock, taken only inside
// its methods and never while another part's lock is held, so no lock order exists to get wrong.
// Methods return copies, never pointers into guarded state; the one exception is the task cache,
// whose Task values belong to the event pipeline's goroutine (see internal/tasks).
package state
