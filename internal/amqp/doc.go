// Package amqp is the exporter's AMQP 0-9-1 backend (RabbitMQ): Celery's event stream read from a
// queue of our own bound to the event exchange, queue state read without consuming (passive
// declares, or the management API), and remote control over the pidbox exchanges. It knows the
// wire only; what the messages mean is the collector's business, as for Redis.
package amqp
