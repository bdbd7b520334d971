package integration

import (
	"testing"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// brokerCase is one broker the Celery integration tests run on: start gives a fresh, isolated
// broker URL and an independent recorder of the event stream on the wire.
type brokerCase struct {
	name  string
	start func(t *testing.T) (url string, rec *harness.Recorder)
}

// brokers is the table of brokers: a redis-server of the test's own, and a vhost of its own on a
// rabbitmq-server shared by the test binary (it takes 5–15 s to boot).
var brokers = []brokerCase{
	{"redis", func(t *testing.T) (string, *harness.Recorder) {
		r := harness.StartRedis(t)
		return r.URL(0), harness.RecordRedis(t, r, 0)
	}},
	{"rabbitmq", func(t *testing.T) (string, *harness.Recorder) {
		r := harness.SharedRabbitMQ(t)
		url := r.URL(r.Vhost(t))
		return url, harness.RecordAMQP(t, url)
	}},
}
