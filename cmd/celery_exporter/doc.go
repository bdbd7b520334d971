// Command celery_exporter exports the state of a Celery deployment on a Redis or RabbitMQ broker to
// Prometheus: the event stream, the broker's queues, remote control replies and app signals.
package main
