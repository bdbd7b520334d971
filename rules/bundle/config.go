package bundle

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// Config is the one place for selectors and thresholds. Field docs are in rules/config.yaml.
type Config struct {
	// Selector holds label matchers without braces (e.g. `job="celery"`), applied to every raw
	// metric the rules read. Recorded series keep the `job` label, so alerts and dashboards
	// can tell several selected jobs apart.
	Selector string `yaml:"selector"`
	// AggregationLabels are the labels every recording rule and alert keeps apart (tenants):
	// [job] by default; in Kubernetes [namespace, job] keeps two apps with the same job in two
	// namespaces apart ([cluster, namespace, job] across clusters). Must hold job.
	AggregationLabels []string `yaml:"aggregation_labels"`
	// Interval is the evaluation interval of every rule group; empty uses Prometheus' global one.
	Interval Duration `yaml:"interval"`
	// AlertLabels are added to every alert (e.g. team: payments).
	AlertLabels map[string]string `yaml:"alert_labels"`

	URLs struct {
		// Runbooks is the URL of docs/runbooks.md; each alert links to its anchor there.
		Runbooks string `yaml:"runbooks"`
		// Grafana is the base URL of the Grafana that serves the dashboards.
		Grafana string `yaml:"grafana"`
	} `yaml:"urls"`

	Workers struct {
		Expected int `yaml:"expected"`
		// Memory is the memory criterion: which figure CeleryWorkerHighMemory reads, and its limit.
		Memory Memory `yaml:"memory"`
		// CPURatio is the dashboard threshold of a worker's CPU (1 = one core).
		CPURatio float64 `yaml:"cpu_ratio"`
	} `yaml:"workers"`

	Queues struct {
		// Expected queues must always have a consumer, even when empty.
		Expected        []string `yaml:"expected"`
		BacklogWarning  float64  `yaml:"backlog_warning"`
		BacklogCritical float64  `yaml:"backlog_critical"`
		// Ignore lists queues the queue alerts leave out (noisy or someone else's).
		Ignore []string `yaml:"ignore"`
	} `yaml:"queues"`

	Tasks struct {
		FailureRatio         float64  `yaml:"failure_ratio"`
		RuntimeP95Seconds    float64  `yaml:"runtime_p95_seconds"`
		TimeLimitExceptions  []string `yaml:"time_limit_exceptions"`
		WorkerLostExceptions []string `yaml:"worker_lost_exceptions"`
		// StuckSeconds: CeleryTaskStuck fires when a task has been running longer.
		StuckSeconds float64 `yaml:"stuck_seconds"`
		// EventsLostRatio: CeleryTaskEventsLost fires when a larger share of a worker's tasks
		// has no task event; EventsLostMinTasks is the fewest processed tasks judged.
		EventsLostRatio    float64 `yaml:"events_lost_ratio"`
		EventsLostMinTasks float64 `yaml:"events_lost_min_tasks"`
		// Ignore lists tasks (short names; any dotted module prefix matches) the task alerts
		// leave out.
		Ignore []string `yaml:"ignore"`
	} `yaml:"tasks"`

	Events struct {
		StaleAfter Duration `yaml:"stale_after"`
	} `yaml:"events"`

	Logs struct {
		// StallAfter: CeleryLogFilesMissing counts a log source as stopped when its last
		// completed poll is older than this at scrape time (a read hangs). Must exceed the
		// largest poll_interval of the exporter's log sources.
		StallAfter Duration `yaml:"stall_after"`
	} `yaml:"logs"`

	App struct {
		// LogEvents are shown one stat each on the "Celery / App signals" dashboard.
		LogEvents []string `yaml:"log_events"`
	} `yaml:"app"`

	// AppAlerts are the alerts on the application's own signals (breakers, log events, task
	// failures, app values), each of a kind (see AppKinds).
	AppAlerts []AppAlert `yaml:"app_alerts"`

	// Windows are the ranges of the rate/increase based rules, by name (see WindowNames).
	Windows map[string]Duration `yaml:"windows"`
	// For holds each built-in alert's `for`, by alert name; 0 fires on the first evaluation. An
	// app alert's name here overrides the `for` of its entry.
	For map[string]Duration `yaml:"for"`
	// Alerts turns built-in alerts off or changes their severity, by alert name.
	Alerts map[string]AlertOverride `yaml:"alerts"`

	Kubernetes struct {
		Namespace                 string            `yaml:"namespace"`
		PrometheusRuleName        string            `yaml:"prometheusrule_name"`
		PrometheusRuleLabels      map[string]string `yaml:"prometheusrule_labels"`
		DashboardFolder           string            `yaml:"dashboard_folder"`
		DashboardLabel            string            `yaml:"dashboard_label"`
		DashboardLabelValue       string            `yaml:"dashboard_label_value"`
		DashboardFolderAnnotation string            `yaml:"dashboard_folder_annotation"`
	} `yaml:"kubernetes"`
}

// AlertOverride changes one built-in alert: Enabled false leaves it out of the render, Severity
// replaces its severity label (the Alertmanager routes on it).
type AlertOverride struct {
	Enabled  *bool  `yaml:"enabled"`
	Severity string `yaml:"severity"`
}

// AlertEnabled says whether the render holds the alert (every alert is, unless turned off).
func (c *Config) AlertEnabled(name string) bool {
	o, ok := c.Alerts[name]
	return !ok || o.Enabled == nil || *o.Enabled
}

// Window names, the keys of Config.Windows.
const (
	WindowTaskFailureRatio = "task_failure_ratio"
	WindowTaskRuntime      = "task_runtime"
	WindowTimeLimit        = "time_limit"
	WindowWorkerLost       = "worker_lost"
	WindowAppEvents        = "app_events"
	WindowTaskEventsLost   = "task_events_lost"
	WindowEventsDropped    = "events_dropped"
	WindowLogReadErrors    = "log_read_errors"
)

// WindowNames lists every window the rules use.
var WindowNames = []string{
	WindowTaskFailureRatio, WindowTaskRuntime, WindowTimeLimit, WindowWorkerLost,
	WindowAppEvents, WindowTaskEventsLost, WindowEventsDropped, WindowLogReadErrors,
}

// Memory sources of the memory criterion (workers.memory.source).
const (
	// MemoryExporter is celery_worker_max_rss_bytes: the worker's main process only, from
	// `inspect stats` (rusage.maxrss); prefork pool children are not included.
	MemoryExporter = "exporter"
	// MemoryCAdvisor is cAdvisor's container_memory_working_set_bytes of the worker's container,
	// which holds the pool children too, joined to the worker by a label taken from its hostname.
	MemoryCAdvisor = "cadvisor"
)

// Memory selects the figure of the memory criterion.
type Memory struct {
	Source string  `yaml:"source"`
	MaxMiB float64 `yaml:"max_mib"`
	// CAdvisor is read with source cadvisor only.
	CAdvisor struct {
		// Selector holds label matchers (no braces) selecting the worker containers' series.
		Selector string `yaml:"selector"`
		// JoinLabel is the label of the cAdvisor series that names the worker (pod); its value
		// is taken from the worker's hostname with HostnameRegex (first capture group).
		JoinLabel     string `yaml:"join_label"`
		HostnameRegex string `yaml:"hostname_regex"`
	} `yaml:"cadvisor"`
}

// LoadConfig reads and validates a config file. Unknown fields are errors, so a typo in a
// threshold name cannot silently keep the default.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read rules config: %w", err)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes and validates config YAML.
func ParseConfig(b []byte) (*Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("decode rules config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// labelValue is a severity an Alertmanager route can match without quoting trouble.
var labelValue = regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`)

// Validate reports every invalid field at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("field %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if strings.TrimSpace(c.Selector) == "" {
		bad("selector", "must hold at least one label matcher, e.g. job=\"celery\"")
	} else if strings.ContainsAny(c.Selector, "{}") {
		bad("selector", "label matchers without braces, got %q", c.Selector)
	}
	for name, o := range c.Alerts {
		switch {
		case !slices.Contains(alertOrder, name):
			bad("alerts."+name, "not an alert of the bundle (%s)", strings.Join(alertOrder, ", "))
		case o.Enabled == nil && o.Severity == "":
			bad("alerts."+name, "set enabled or severity")
		case o.Severity != "" && !labelValue.MatchString(o.Severity):
			bad("alerts."+name+".severity", "must be a plain label value, got %q", o.Severity)
		}
	}
	if len(c.AggregationLabels) > 0 && !slices.Contains(c.AggregationLabels, "job") {
		bad("aggregation_labels", "must hold job, got %v", c.AggregationLabels)
	}
	for i, l := range c.AggregationLabels {
		if !labelName.MatchString(l) || slices.Contains(c.AggregationLabels[:i], l) {
			bad("aggregation_labels", "%q is not a label name or is listed twice", l)
		}
		if l == "instance" || l == "hostname" || l == "queue_name" || l == "name" {
			bad("aggregation_labels", "%q is a label the rules aggregate by themselves", l)
		}
	}
	for k := range c.AlertLabels {
		if !labelName.MatchString(k) {
			bad("alert_labels", "%q is not a label name", k)
		}
		// job and instance come from the series: the inhibitions and dashboard links match on them.
		if k == "severity" || k == "alertname" || k == "job" || k == "instance" || slices.Contains(c.AggregationLabels, k) {
			bad("alert_labels", "%q is set by the rules", k)
		}
	}
	if !strings.HasPrefix(c.URLs.Runbooks, "http") {
		bad("urls.runbooks", "must be an http(s) URL, got %q", c.URLs.Runbooks)
	}
	if !strings.HasPrefix(c.URLs.Grafana, "http") {
		bad("urls.grafana", "must be an http(s) URL, got %q", c.URLs.Grafana)
	}
	if c.Workers.Expected < 1 {
		bad("workers.expected", "must be at least 1, got %d", c.Workers.Expected)
	}
	if c.Workers.Memory.MaxMiB <= 0 {
		bad("workers.memory.max_mib", "must be positive, got %v", c.Workers.Memory.MaxMiB)
	}
	switch m := c.Workers.Memory; m.Source {
	case MemoryExporter:
	case MemoryCAdvisor:
		if strings.TrimSpace(m.CAdvisor.Selector) == "" || strings.ContainsAny(m.CAdvisor.Selector, "{}") {
			bad("workers.memory.cadvisor.selector", "label matchers without braces, e.g. container!=\"\", got %q", m.CAdvisor.Selector)
		}
		if !labelName.MatchString(m.CAdvisor.JoinLabel) || m.CAdvisor.JoinLabel == "job" || m.CAdvisor.JoinLabel == "hostname" {
			bad("workers.memory.cadvisor.join_label", "must be a label name other than job and hostname, got %q", m.CAdvisor.JoinLabel)
		}
		if re, err := regexp.Compile(m.CAdvisor.HostnameRegex); err != nil || re.NumSubexp() < 1 {
			bad("workers.memory.cadvisor.hostname_regex", "must be a regular expression with a capture group, got %q", m.CAdvisor.HostnameRegex)
		}
	default:
		bad("workers.memory.source", "must be %s or %s, got %q", MemoryExporter, MemoryCAdvisor, m.Source)
	}
	if c.Workers.CPURatio <= 0 {
		bad("workers.cpu_ratio", "must be positive, got %v", c.Workers.CPURatio)
	}
	for _, q := range c.Queues.Expected {
		if q == "" {
			bad("queues.expected", "empty queue name")
		}
	}
	for _, q := range c.Queues.Ignore {
		if q == "" {
			bad("queues.ignore", "empty queue name")
		} else if slices.Contains(c.Queues.Expected, q) {
			bad("queues.ignore", "%q is also expected: an expected queue cannot be ignored", q)
		}
	}
	for _, n := range c.Tasks.Ignore {
		if n == "" {
			bad("tasks.ignore", "empty task name")
		}
	}
	if c.Queues.BacklogWarning <= 0 || c.Queues.BacklogCritical < c.Queues.BacklogWarning {
		bad("queues", "need 0 < backlog_warning <= backlog_critical, got %v and %v",
			c.Queues.BacklogWarning, c.Queues.BacklogCritical)
	}
	if c.Tasks.FailureRatio <= 0 || c.Tasks.FailureRatio >= 1 {
		bad("tasks.failure_ratio", "must be in (0, 1), got %v", c.Tasks.FailureRatio)
	}
	if c.Tasks.RuntimeP95Seconds <= 0 {
		bad("tasks.runtime_p95_seconds", "must be positive, got %v", c.Tasks.RuntimeP95Seconds)
	}
	if len(c.Tasks.TimeLimitExceptions) == 0 {
		bad("tasks.time_limit_exceptions", "must list at least one exception class")
	}
	if len(c.Tasks.WorkerLostExceptions) == 0 {
		bad("tasks.worker_lost_exceptions", "must list at least one exception class")
	}
	if c.Tasks.StuckSeconds <= 0 {
		bad("tasks.stuck_seconds", "must be positive, got %v", c.Tasks.StuckSeconds)
	}
	if c.Tasks.EventsLostRatio <= 0 || c.Tasks.EventsLostRatio >= 1 {
		bad("tasks.events_lost_ratio", "must be in (0, 1), got %v", c.Tasks.EventsLostRatio)
	}
	if c.Tasks.EventsLostMinTasks < 1 {
		bad("tasks.events_lost_min_tasks", "must be at least 1, got %v", c.Tasks.EventsLostMinTasks)
	}
	if c.Events.StaleAfter <= 0 {
		bad("events.stale_after", "must be a positive duration")
	}
	if c.Logs.StallAfter <= 0 {
		bad("logs.stall_after", "must be a positive duration")
	}
	c.validateAppAlerts(bad)
	for _, w := range WindowNames {
		if c.Windows[w] <= 0 {
			bad("windows."+w, "must be a positive duration")
		}
	}
	for w := range c.Windows {
		if !slices.Contains(WindowNames, w) {
			bad("windows."+w, "unknown window; known: %s", strings.Join(WindowNames, ", "))
		}
	}
	names := AlertNames()
	for _, a := range names {
		if _, ok := c.For[a]; !ok {
			bad("for."+a, "missing (use 0s to fire on the first evaluation)")
		}
	}
	for _, a := range c.AppAlerts {
		names = append(names, a.Alert)
	}
	for a, d := range c.For {
		if !slices.Contains(names, a) {
			bad("for."+a, "unknown alert; known: %s", strings.Join(names, ", "))
		} else if d < 0 {
			bad("for."+a, "must not be negative")
		}
	}
	if c.Kubernetes.PrometheusRuleName == "" {
		bad("kubernetes.prometheusrule_name", "must not be empty")
	}
	if c.Kubernetes.DashboardLabel == "" || c.Kubernetes.DashboardLabelValue == "" {
		bad("kubernetes.dashboard_label", "label and value must not be empty")
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errors.Join(errs...)
}

// Duration is a Prometheus duration ("90s", "1h30m", "2d") that renders back the way Prometheus
// prints it (model.Duration), so rendered files stay stable. Unlike model.Duration, an empty string
// is zero: `interval: ""` means "Prometheus' global evaluation interval".
type Duration time.Duration

// ParseDuration parses a Prometheus duration; "", "0" and "0s" are zero.
func ParseDuration(s string) (Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := model.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("not a Prometheus duration: %q (e.g. 30s, 5m, 1h30m): %w", s, err)
	}
	return Duration(d), nil
}

// String renders the duration as Prometheus does ("1h30m", "0s").
func (d Duration) String() string { return model.Duration(d).String() }

// Seconds is the duration in seconds, for thresholds compared with timestamps.
func (d Duration) Seconds() float64 { return time.Duration(d).Seconds() }

// UnmarshalYAML accepts a duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: duration: %w", n.Line, err)
	}
	v, err := ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = v
	return nil
}

// MarshalYAML writes the duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// Shortened returns a copy for end-to-end tests that cannot wait production durations: rule
// groups evaluated every interval, every non-zero `for` set to forDur (app alerts' too), every
// window set to window (app alerts' too) and events.stale_after to staleAfter. Selectors and thresholds are kept.
func (c *Config) Shortened(interval, forDur, window, staleAfter Duration) *Config {
	s := *c
	s.Interval = interval
	s.For = make(map[string]Duration, len(c.For))
	for a, d := range c.For {
		if d > 0 {
			d = forDur
		}
		s.For[a] = d
	}
	s.Windows = make(map[string]Duration, len(c.Windows))
	for w := range c.Windows {
		s.Windows[w] = window
	}
	s.Events.StaleAfter = staleAfter
	s.AppAlerts = slices.Clone(c.AppAlerts)
	for i, a := range s.AppAlerts {
		if a.For > 0 {
			s.AppAlerts[i].For = forDur
		}
		if a.Window > 0 {
			s.AppAlerts[i].Window = window
		}
	}
	return &s
}
