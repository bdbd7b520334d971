package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/common/model"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"
	"github.com/redis/go-redis/v9"

	"github.com/celery-exporter/celery_exporter/collector"
	amqpbroker "github.com/celery-exporter/celery_exporter/internal/amqp"
	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/internal/kombu"
	"github.com/celery-exporter/celery_exporter/internal/listener"
	"github.com/celery-exporter/celery_exporter/internal/pidbox"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

const name = "celery_exporter"

type flags struct {
	brokerURL       string
	brokerURLSet    bool
	managementURL   string
	legacyBrokerURL string // --broker-url, danihodovic/celery-exporter's name
	// Said once the logger exists: where the broker URL came from when it was an old name.
	brokerURLWarning string
	transportOptions []string
	unackedScanLimit int
	discovery        time.Duration

	telemetryPath string
	logLevel      string
	logFormat     string
	scrapeTimeout time.Duration
	configFile    string

	workerTimeout    time.Duration
	workerPurgeAfter time.Duration
	maxWorkers       int
	runtimeBuckets   string
	queueWaitBuckets string
	maxTracked       int
	maxTrackedBytes  int64
	taskTTL          time.Duration
	sentWait         time.Duration
	maxTaskNames     int
	maxExceptions    int
	initialExc       string
	eventBuffer      int
	maxQueues        int
	eventBufferBytes int

	memoryLimitRatio float64

	defaultQueue    string
	queues          string
	eventExchange   string
	controlExchange string
	enableEvents    bool

	controlInterval time.Duration
	controlTimeout  time.Duration
	controlDeadline time.Duration
	controlDisabled bool
}

func parseFlags(args []string) (*flags, *web.FlagConfig, error) {
	f := &flags{}
	ev, ctl, br := collector.DefaultEventOptions(), collector.DefaultControlOptions(), collector.DefaultBrokerOptions()
	mo := collector.DefaultModelOptions()
	app := kingpin.New(name, "Prometheus exporter for Celery on a Redis or RabbitMQ broker.")
	app.DefaultEnvars() // every flag also from CELERY_EXPORTER_<FLAG>
	app.Version(version.Print(name))
	app.HelpFlag.Short('h')

	// No default: an exporter that silently watches localhost is worse than one that does not start.
	app.Flag("broker.url", "Celery broker URL (required): redis://, rediss://, redis+socket://, sentinel://, amqp://, amqps:// (`;`-separated failover list). Falls back to CELERY_BROKER_URL, then to CE_BROKER_URL.").
		IsSetByUser(&f.brokerURLSet).StringVar(&f.brokerURL)
	// danihodovic/celery-exporter's flag, so its command lines keep working. NoEnvar: its derived
	// variable would be CELERY_EXPORTER_BROKER_URL, which belongs to --broker.url.
	app.Flag("broker-url", "Deprecated name of --broker.url.").Hidden().NoEnvar().StringVar(&f.legacyBrokerURL)
	app.Flag("broker.transport-option", "A Celery broker_transport_options entry, KEY=VALUE (repeatable): global_keyprefix, fanout_prefix, fanout_patterns, sep, priority_steps, visibility_timeout, unacked_key, unacked_index_key, master_name, sentinel_kwargs.").
		StringsVar(&f.transportOptions)
	app.Flag("broker.management-url", "AMQP only: the RabbitMQ management API (http://host:15672), for unacked messages, the head message's age and queue discovery; credentials from this URL or the broker URL.").
		StringVar(&f.managementURL)
	app.Flag("broker.unacked-scan-limit", "At most this many unacked entries are read per scrape to attribute them to queues; the total always comes from HLEN.").
		Default(strconv.Itoa(br.UnackedScanLimit)).IntVar(&f.unackedScanLimit)
	app.Flag("broker.discovery-interval", "How often queue names are looked up again in kombu's _kombu.binding.* sets (a SCAN of the DB); depths are read at every scrape.").
		Default(durationFlag(br.DiscoveryInterval)).DurationVar(&f.discovery)

	webConfig := kingpinflag.AddFlags(app, ":9808")
	app.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").StringVar(&f.telemetryPath)
	app.Flag("log.level", "Only log messages with the given severity or above: debug, info, warn, error.").Default("info").EnumVar(&f.logLevel, "debug", "info", "warn", "error")
	app.Flag("log.format", "Output format of log messages: logfmt or json.").Default("logfmt").EnumVar(&f.logFormat, "logfmt", "json")
	app.Flag("scrape.timeout", "Deadline of a scrape: sources read at scrape time that do not answer by then are reported failed. Keep it below Prometheus' scrape_timeout, with a margin.").Default("5s").DurationVar(&f.scrapeTimeout)
	app.Flag("config.file", "YAML file of breakers, app values and log sources (see docs/configuration.md). Reloaded on SIGHUP and POST /-/reload.").
		StringVar(&f.configFile)

	app.Flag("worker.timeout", "Slack after 2×heartbeat interval past a worker's last heartbeat before it counts as down.").Default(durationFlag(mo.WorkerTimeout)).DurationVar(&f.workerTimeout)
	app.Flag("worker.purge-after", "How long a down worker's series stay at celery_worker_up 0 before they are removed.").Default(durationFlag(ev.PurgeAfter)).DurationVar(&f.workerPurgeAfter)
	app.Flag("worker.max-workers", "Cardinality cap on the hostname label; further workers are counted as \"other\".").Default(strconv.Itoa(ev.MaxWorkers)).IntVar(&f.maxWorkers)
	app.Flag("task.runtime-buckets", "Buckets of celery_task_runtime_seconds, comma separated.").Default(joinFloats(ev.RuntimeBuckets)).StringVar(&f.runtimeBuckets)
	app.Flag("task.queue-wait-buckets", "Buckets of celery_task_queue_wait_seconds, comma separated.").Default(joinFloats(ev.QueueWaitBuckets)).StringVar(&f.queueWaitBuckets)
	app.Flag("task.max-tracked", "Cap of the task cache (uuid → name, queue, times); evictions are counted.").Default(strconv.Itoa(mo.MaxTasks)).IntVar(&f.maxTracked)
	app.Flag("task.max-tracked-bytes", "Byte budget of the task cache: uuids, names and the events held until task-sent names the queue, counted as an upper bound of their memory; past it the least recently used tasks are evicted and counted. Part of the memory budget, see docs/operations.md.").
		Default(strconv.FormatInt(mo.MaxTaskBytes, 10)).Int64Var(&f.maxTrackedBytes)
	app.Flag("task.ttl", "A task not heard of for this long leaves the task cache.").Default(durationFlag(mo.TaskTTL)).DurationVar(&f.taskTTL)
	app.Flag("task.sent-wait", "How long a task's events wait for its task-sent (which names the queue) before a fallback queue is used.").Default(durationFlag(ev.SentWait)).DurationVar(&f.sentWait)
	app.Flag("task.max-names", "Cardinality cap on the task name label.").Default(strconv.Itoa(ev.MaxTaskNames)).IntVar(&f.maxTaskNames)
	app.Flag("task.max-exceptions-per-task", "Cardinality cap on the exception label per task name.").Default(strconv.Itoa(ev.MaxExceptionsPerTask)).IntVar(&f.maxExceptions)
	app.Flag("task.initial-exceptions", "Exception classes whose celery_task_failed_total series start at 0 when a task name is first seen on a worker and queue, so the first such failure is an increase; comma separated, empty for none. They count against --task.max-exceptions-per-task.").
		Default(strings.Join(ev.InitialExceptions, ",")).StringVar(&f.initialExc)
	app.Flag("events.buffer-size", "Event messages that may wait between the broker reader (Redis or AMQP) and the decoder; past it they are dropped and counted.").Default("65536").IntVar(&f.eventBuffer)
	app.Flag("events.buffer-bytes", "Bytes of event messages that may wait between the broker reader (Redis or AMQP) and the decoder; past it they are dropped and counted (buffer_full). Part of the memory budget, see docs/operations.md.").Default("33554432").IntVar(&f.eventBufferBytes)
	app.Flag("task.max-queues", "Cardinality cap on the queue_name label of task metrics (from task-sent); further queues are counted as \"other\".").Default(strconv.Itoa(ev.MaxQueues)).IntVar(&f.maxQueues)
	app.Flag("runtime.memory-limit-ratio", "Without GOMEMLIMIT, the Go runtime's soft memory limit is this fraction of the cgroup's memory limit (container or systemd MemoryMax); 0 disables.").
		Default("0.9").Float64Var(&f.memoryLimitRatio)

	app.Flag("celery.default-queue", "Queue label of tasks whose queue is not otherwise known (Celery's task_default_queue).").Default(ev.DefaultQueue).StringVar(&f.defaultQueue)
	app.Flag("celery.queues", "Queues always reported, comma separated (0 when empty or absent).").Default("").StringVar(&f.queues)
	app.Flag("celery.event-exchange", "Celery's event_exchange setting.").Default(br.EventExchange).StringVar(&f.eventExchange)
	app.Flag("celery.control-exchange", "Celery's control_exchange setting.").Default(ctl.ControlExchange).StringVar(&f.controlExchange)
	app.Flag("celery.enable-events", "Broadcast enable_events every control interval, so task events come back after a worker restart.").BoolVar(&f.enableEvents)

	app.Flag("control.interval", "How often to ask workers ping, active_queues and stats.").Default(durationFlag(ctl.Interval)).DurationVar(&f.controlInterval)
	app.Flag("control.timeout", "Idle timeout between remote-control replies.").Default(durationFlag(ctl.Timeout)).DurationVar(&f.controlTimeout)
	app.Flag("control.deadline", "Total deadline of one remote-control round.").Default(durationFlag(ctl.Deadline)).DurationVar(&f.controlDeadline)
	app.Flag("control.disabled", "Read-only mode: no remote control, no write of any kind to Redis.").BoolVar(&f.controlDisabled)

	if _, err := app.Parse(args); err != nil {
		return nil, nil, err
	}
	for _, c := range []struct {
		flag string
		v    int
	}{
		{"worker.max-workers", f.maxWorkers}, {"task.max-tracked", f.maxTracked},
		{"task.max-names", f.maxTaskNames}, {"task.max-queues", f.maxQueues}, {"task.max-exceptions-per-task", f.maxExceptions},
	} {
		if c.v < 1 {
			return nil, nil, fmt.Errorf("--%s must be at least 1: the exporter's memory and series are bounded", c.flag)
		}
	}
	if err := f.resolveBrokerURL(); err != nil {
		return nil, nil, err
	}
	return f, webConfig, nil
}

// resolveBrokerURL picks the broker URL from, in order: --broker.url or CELERY_EXPORTER_BROKER_URL,
// --broker-url, CELERY_BROKER_URL (the app's own), CE_BROKER_URL (danihodovic/celery-exporter's).
func (f *flags) resolveBrokerURL() error {
	// IsSetByUser does not see values from the flag's own variable.
	if f.brokerURLSet || os.Getenv("CELERY_EXPORTER_BROKER_URL") != "" {
		return nil
	}
	if f.legacyBrokerURL != "" {
		f.brokerURL = f.legacyBrokerURL
		f.brokerURLWarning = "--broker-url is deprecated, use --broker.url"
		return nil
	}
	if u := os.Getenv("CELERY_BROKER_URL"); u != "" {
		f.brokerURL = u
		return nil
	}
	if u := os.Getenv("CE_BROKER_URL"); u != "" {
		f.brokerURL = u
		f.brokerURLWarning = "broker URL taken from CE_BROKER_URL (danihodovic/celery-exporter's variable); use CELERY_EXPORTER_BROKER_URL or --broker.url"
		return nil
	}
	return errors.New("no broker URL: set --broker.url (or CELERY_EXPORTER_BROKER_URL, or the app's CELERY_BROKER_URL), e.g. --broker.url=redis://redis:6379/0")
}

// durationFlag formats a default as a user writes it: 1h, not 1h0m0s.
func durationFlag(d time.Duration) string { return model.Duration(d).String() }

func joinFloats(fs []float64) string {
	parts := make([]string, len(fs))
	for i, v := range fs {
		parts[i] = strconv.FormatFloat(v, 'g', -1, 64)
	}
	return strings.Join(parts, ",")
}

func parseBuckets(flag, s string) ([]float64, error) {
	var out []float64
	for _, p := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return nil, fmt.Errorf("--%s: %q is not a number", flag, p)
		}
		if len(out) > 0 && v <= out[len(out)-1] {
			return nil, fmt.Errorf("--%s: buckets must increase", flag)
		}
		out = append(out, v)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	f, webConfig, err := parseFlags(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	base, err := newLogger(os.Stderr, f.logLevel, f.logFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	logger := withCaller(base)
	if f.brokerURLWarning != "" {
		level.Warn(logger).Log("msg", f.brokerURLWarning)
	}
	if err := serve(logger, slogLogger(base), f, webConfig); err != nil {
		level.Error(logger).Log("msg", "exiting", "err", err)
		return 1
	}
	return 0
}

func serve(logger log.Logger, webLogger *slog.Logger, f *flags, webConfig *web.FlagConfig) error {
	startTime := time.Now() // before any source counts anything
	runtimeBuckets, err := parseBuckets("task.runtime-buckets", f.runtimeBuckets)
	if err != nil {
		return err
	}
	waitBuckets, err := parseBuckets("task.queue-wait-buckets", f.queueWaitBuckets)
	if err != nil {
		return err
	}
	evOpts := collector.EventOptions{
		PurgeAfter: f.workerPurgeAfter, RuntimeBuckets: runtimeBuckets, QueueWaitBuckets: waitBuckets,
		SentWait: f.sentWait, DefaultQueue: f.defaultQueue, MaxTaskNames: f.maxTaskNames, MaxQueues: f.maxQueues,
		MaxExceptionsPerTask: f.maxExceptions, MaxWorkers: f.maxWorkers, InitialExceptions: splitList(f.initialExc),
	}
	// The one model every source writes into and reads from (internal/state).
	model := collector.NewModel(state.Options{WorkerTimeout: f.workerTimeout, MaxTasks: f.maxTracked,
		MaxTaskBytes: f.maxTrackedBytes, TaskTTL: f.taskTTL})

	// Before any source starts, so the limit is in force from the first allocation of size.
	level.Info(logger).Log("msg", "memory limit", "memory_limit", setMemoryLimit("/", f.memoryLimitRatio))

	ctx, stop := context.WithCancel(context.Background())
	defer stop()

	start := startRedis
	if amqpbroker.IsURL(f.brokerURL) {
		start = startAMQP
	}
	src, err := start(ctx, logger, f, evOpts, model)
	if err != nil {
		return err
	}
	defer src.close()
	events, scrapers, client := src.events, src.scrapers, src.redis

	reg := prometheus.NewRegistry()
	var reloader *config.Reloader
	if f.configFile != "" {
		breakers := collector.NewBreakerScraper(log.With(logger, "source", "breakers"), kombu.Dial, client)
		defer breakers.Close()
		logs := collector.NewLogScraper(log.With(logger, "source", "logs"))
		defer logs.Close()
		reloader = config.NewReloader(f.configFile, logger, breakers.ApplyConfig, logs.ApplyConfig)
		if err := reloader.Reload(); err != nil {
			// Each error is logged above, one line each; no running configuration to keep.
			return fmt.Errorf("--config.file %s not loaded; nothing started", f.configFile)
		}
		reg.MustRegister(reloader)
		scrapers = append(scrapers, breakers, logs)
	}

	reg.MustRegister(
		collector.NewExporter(logger, f.scrapeTimeout, scrapers...),
		versioncollector.NewCollector(name), // celery_exporter_build_info
		collector.NewStartTime(startTime),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	reg.MustRegister(src.collectors...)

	ready := func(ctx context.Context) error {
		if !events.Up() {
			return errors.New("the event subscription is down")
		}
		if err := src.ping(ctx); err != nil {
			return fmt.Errorf("the broker does not answer: %w", err)
		}
		return nil
	}
	mux, err := routes(logger, f.telemetryPath, reg, ready, reloader)
	if err != nil {
		return err
	}

	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: writeTimeout(f.scrapeTimeout)}
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
		for s := range sigs {
			if s == syscall.SIGHUP {
				if reloader != nil {
					_ = reloader.Reload() // logged and reported by the reloader
				}
				continue
			}
			level.Info(logger).Log("msg", "shutting down", "signal", s)
			stop()
			shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = server.Shutdown(shutdown) // in-flight scrapes finish; serve's deferred closes run
			cancel()
			return
		}
	}()

	if err := web.ListenAndServe(server, webConfig, webLogger); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// readyTimeout bounds the broker check of /-/ready (probes time out after 1 s by default, and
// then count a failure anyway).
const readyTimeout = 3 * time.Second

// routes serves the metrics, the health and reload endpoints and the landing page. ready says
// why the exporter cannot serve true numbers, or nil.
func routes(logger log.Logger, telemetryPath string, reg *prometheus.Registry, ready func(context.Context) error, reloader *config.Reloader) (*http.ServeMux, error) {
	mux := http.NewServeMux()
	mux.Handle(telemetryPath, metricsHandler(logger, &sharedGatherer{g: reg}, maxScrapesInFlight))
	healthy := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "Healthy") }
	mux.HandleFunc("/-/healthy", healthy)
	// danihodovic/celery-exporter's probe path (its Helm chart probes it), so our image works there.
	mux.HandleFunc("/health", healthy)
	// Ready means the numbers are true: subscribed to the events now (not once) and the broker
	// answers a PING now.
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := ready(ctx); err != nil {
			http.Error(w, "Not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "Ready")
	})
	mux.HandleFunc("/-/reload", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost && r.Method != http.MethodPut {
			http.Error(w, "POST or PUT only", http.StatusMethodNotAllowed)
			return
		}
		if reloader == nil {
			http.Error(w, "no --config.file to reload", http.StatusBadRequest)
			return
		}
		if err := reloader.Reload(); err != nil {
			http.Error(w, "reload failed, the running config is kept: "+err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "Reloaded")
	})
	if telemetryPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "Celery Exporter",
			Description: "Prometheus exporter for Celery on a Redis or RabbitMQ broker",
			Version:     version.Info(),
			Links: []web.LandingLinks{
				{Address: telemetryPath, Text: "Metrics"},
				{Address: "/-/healthy", Text: "Health"},
				{Address: "/-/ready", Text: "Readiness"},
			},
			// No /debug/pprof is served: its links would be dead.
			Profiling: "false",
		})
		if err != nil {
			return nil, err
		}
		mux.Handle("/", landing)
	}
	return mux, nil
}

// sources are what a broker backend runs: the event source, the scrapers, and the Redis client
// that config-file breakers default to (nil on AMQP).
type sources struct {
	events   *collector.EventSource
	scrapers []collector.Scraper
	// collectors are the backend's own metrics beside the scrapers (the Redis subscriber's).
	collectors []prometheus.Collector
	redis      redis.UniversalClient
	// ping checks that the broker answers now (/-/ready).
	ping  func(context.Context) error
	close func()
}

// startRedis starts the sources of a Redis broker.
func startRedis(ctx context.Context, logger log.Logger, f *flags, evOpts collector.EventOptions, model *state.Model) (*sources, error) {
	redis.SetLogger(redisLogger{logger})
	broker, err := kombu.ParseURL(f.brokerURL)
	if err != nil {
		return nil, err // never holds the password (kombu.ParseURL)
	}
	opts, err := kombu.ParseTransportOptions(f.transportOptions)
	if err != nil {
		return nil, err
	}
	if broker.InsecureTLSDefault {
		level.Warn(logger).Log("msg", "rediss:// without ssl_cert_reqs: the broker's certificate is not verified (as in kombu); add ssl_cert_reqs=required")
	}
	client, err := broker.NewClient(opts)
	if err != nil {
		return nil, err
	}
	ks := kombu.NewKeyspace(broker, opts)
	level.Info(logger).Log("msg", "starting "+name, "version", version.Info(), "broker", broker.Redacted(),
		"read_only", f.controlDisabled)

	sub := listener.New(log.With(logger, "source", "events"), client, ks.EventPatterns(f.eventExchange), f.eventBuffer, f.eventBufferBytes)
	events := collector.NewEventSource(log.With(logger, "source", "events"), sub, evOpts, model)
	go events.Run(ctx)

	scrapers := startControl(ctx, logger, f, func() collector.ControlClient {
		return pidbox.New(client, ks, f.controlExchange)
	}, events, model)
	scrapers = append(scrapers, collector.NewBrokerScraper(log.With(logger, "source", "broker"), client, ks, collector.BrokerOptions{
		StaticQueues: splitList(f.queues), UnackedScanLimit: f.unackedScanLimit, DiscoveryInterval: f.discovery,
		EventExchange: f.eventExchange, ControlExchange: f.controlExchange,
	}, model))
	return &sources{events: events, scrapers: scrapers, redis: client,
		collectors: []prometheus.Collector{collector.NewSubscriptionCollector(sub)},
		ping:       func(ctx context.Context) error { return client.Ping(ctx).Err() }, close: func() { client.Close() }}, nil
}

// startControl starts the remote-control source on the broker's control client, unless in
// read-only mode; it returns the scrapers so far. Without it the model's queues stay empty.
func startControl(ctx context.Context, logger log.Logger, f *flags, client func() collector.ControlClient, events *collector.EventSource, model *state.Model) []collector.Scraper {
	scrapers := []collector.Scraper{events}
	if f.controlDisabled {
		if f.enableEvents {
			level.Warn(logger).Log("msg", "--celery.enable-events needs remote control; ignored in read-only mode (--control.disabled)")
		}
		return scrapers
	}
	control := collector.NewControlSourceWith(log.With(logger, "source", "control"), client(), collector.ControlOptions{
		Interval: f.controlInterval, Timeout: f.controlTimeout, Deadline: f.controlDeadline,
		EnableEvents: f.enableEvents, ControlExchange: f.controlExchange,
	}, model)
	go control.Run(ctx)
	return append(scrapers, control)
}
