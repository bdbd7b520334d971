package main

import (
	"context"
	"errors"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/version"

	"github.com/celery-exporter/celery_exporter/collector"
	amqpbroker "github.com/celery-exporter/celery_exporter/internal/amqp"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

// startAMQP starts the sources of an AMQP (RabbitMQ) broker. What it declares on the broker:
// its own event queue (always), the event exchange (not in read-only mode, where it is only
// checked), and per remote-control round the pidbox exchanges and a reply queue (not in read-only
// mode). Queue depths come from passive declares, or the management API.
func startAMQP(ctx context.Context, logger log.Logger, f *flags, evOpts collector.EventOptions, model *state.Model) (*sources, error) {
	if len(f.transportOptions) > 0 {
		return nil, errors.New("--broker.transport-option applies to Redis brokers only")
	}
	endpoints, err := amqpbroker.ParseURL(f.brokerURL)
	if err != nil {
		return nil, err // never holds the password
	}
	for _, e := range endpoints {
		if e.InsecureTLSDefault {
			level.Warn(logger).Log("msg", "amqps:// without ssl_cert_reqs: the broker's certificate is not verified (as in py-amqp); add ssl_cert_reqs=required", "broker", e.Redacted())
		}
	}
	reader := &amqpbroker.QueueReader{Inspector: amqpbroker.NewInspector(endpoints), ControlExchange: f.controlExchange}
	if f.managementURL != "" {
		if reader.Management, err = amqpbroker.NewManagement(f.managementURL, endpoints[0], nil); err != nil {
			return nil, err
		}
	}
	level.Info(logger).Log("msg", "starting "+name, "version", version.Info(), "broker", amqpbroker.Redacted(endpoints),
		"read_only", f.controlDisabled)

	evLogger := log.With(logger, "source", "events")
	consumer := amqpbroker.NewConsumer(evLogger, endpoints, f.eventExchange, f.controlDisabled, f.eventBuffer)
	consumer.SetBufferBytes(f.eventBufferBytes)
	events := collector.NewEventSource(evLogger, consumer, evOpts, model)
	consumer.OnReject = events.CountEventError
	go events.Run(ctx)

	closers := []func(){reader.Inspector.Close}
	scrapers := startControl(ctx, logger, f, func() collector.ControlClient {
		client := amqpbroker.NewControlClient(endpoints, f.controlExchange)
		closers = append(closers, client.Close)
		return client
	}, events, model)
	scrapers = append(scrapers, collector.NewQueueStateScraper(log.With(logger, "source", "broker"), reader, splitList(f.queues), model))
	return &sources{events: events, scrapers: scrapers, ping: reader.Inspector.Ping,
		collectors: []prometheus.Collector{collector.NewSubscriptionCollector(consumer)}, close: func() {
			for _, c := range closers {
				c()
			}
		}}, nil
}
