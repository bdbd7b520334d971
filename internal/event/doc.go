// Package event decodes Celery's event messages (the payload inside the kombu envelope) into
// typed events. A payload is one event or, for task events batched by the worker ("task.multi"),
// a JSON list of them, possibly empty. It knows nothing of metrics.
package event
