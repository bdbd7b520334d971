package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
)

// Breaker formats.
const (
	// FormatDjangoPickle is django-redis's encoding: an int as ASCII digits, anything else pickled.
	FormatDjangoPickle = "django-pickle"
	// FormatPickle is a bare pickle.
	FormatPickle = "pickle"
	// FormatJSON is a JSON document.
	FormatJSON = "json"
	// FormatString is a plain string value.
	FormatString = "string"
	// FormatExists means the key's existence alone is the flag.
	FormatExists = "exists"
)

// Log formats.
const (
	LogFormatJSON       = "json"
	LogFormatDockerJSON = "docker-json"
	LogFormatLogfmt     = "logfmt"
	LogFormatText       = "text"
)

// Defaults.
const (
	DefaultEventField   = "message"
	DefaultLevelField   = "level"
	DefaultMaxLineBytes = 256 << 10
	DefaultPollInterval = time.Second
	// maxNameLen bounds names that become label values.
	maxNameLen = 128
)

// Config is the whole file. The zero value (no file) configures nothing.
type Config struct {
	Breakers  []Breaker   `yaml:"breakers"`
	AppValues []AppValue  `yaml:"app_values"`
	Logs      []LogSource `yaml:"logs"`
}

// Breaker is one circuit-breaker flag stored in Redis.
type Breaker struct {
	// Name is the value of the breaker label.
	Name string `yaml:"name"`
	// RedisURL is where the key lives; empty means the broker's connection.
	RedisURL string `yaml:"redis_url"`
	// Key is the full Redis key (with Django's KEY_PREFIX:VERSION: prefix, e.g. ":1:mem:mode:forced:v1").
	Key string `yaml:"key"`
	// Format is how the value is encoded; default django-pickle.
	Format string `yaml:"format"`
	// Fields name the dict/object fields (django-pickle, pickle and json formats).
	Fields BreakerFields `yaml:"fields"`
	// OpenValues, for the string format: the values that mean open. Empty means any value does.
	OpenValues []string `yaml:"open_values"`
}

// BreakerFields name where a structured value keeps each part of the flag. The defaults are
// mode, reason, until and forced_at (a Django-cache "forced mode" dict). Set a field to "" to say the
// value has no such field.
type BreakerFields struct {
	Mode     *string `yaml:"mode"`
	Reason   *string `yaml:"reason"`
	Until    *string `yaml:"until"`
	OpenedAt *string `yaml:"opened_at"`
}

// AppValue is a Redis key holding a number the application keeps (e.g. a failure counter).
type AppValue struct {
	Name     string `yaml:"name"`
	RedisURL string `yaml:"redis_url"`
	Key      string `yaml:"key"`
	// Default is reported while the key does not exist (e.g. 0 for a counter that expires back
	// to nothing); without it an absent key reports no sample.
	Default *float64 `yaml:"default"`
}

// LogSource is a set of log files read the same way.
type LogSource struct {
	// Paths are glob patterns (filepath.Match syntax); new files that match are picked up.
	Paths []string `yaml:"paths"`
	// Format is json (default), docker-json, logfmt or text.
	Format string `yaml:"format"`
	// EventField is the field holding the event name (json, docker-json, logfmt).
	EventField string `yaml:"event_field"`
	// LevelField is the field holding the level (json, docker-json, logfmt).
	LevelField string `yaml:"level_field"`
	// Events are the event names that become values of the event label; others are counted by
	// level only.
	Events []string `yaml:"events"`
	// FromBeginning reads files that exist at start from their first byte instead of their end.
	FromBeginning bool `yaml:"from_beginning"`
	// MaxLineBytes: longer lines are skipped and counted.
	MaxLineBytes int `yaml:"max_line_bytes"`
	// PollInterval is how often files are checked for growth, rotation and new matches.
	PollInterval time.Duration `yaml:"poll_interval"`
}

// fieldOr returns the configured field name, or def when the field was not set at all.
func fieldOr(p *string, def string) string {
	if p == nil {
		return def
	}
	return *p
}

// ModeField, ReasonField, UntilField and OpenedAtField return the effective field names.
func (f BreakerFields) ModeField() string     { return fieldOr(f.Mode, "mode") }
func (f BreakerFields) ReasonField() string   { return fieldOr(f.Reason, "reason") }
func (f BreakerFields) UntilField() string    { return fieldOr(f.Until, "until") }
func (f BreakerFields) OpenedAtField() string { return fieldOr(f.OpenedAt, "forced_at") }

// MaxFileBytes bounds the configuration file: a real one is a few KB, and YAML decoding takes
// several times the file's size (a 100 MB file took 664 MiB to reload).
const MaxFileBytes = 1 << 20

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if len(b) > MaxFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes: not read", path, MaxFileBytes)
	}
	return Parse(b, path)
}

// Parse decodes and validates a config; name is used in error messages.
func Parse(data []byte, name string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cfg := &Config{}
	if len(bytes.TrimSpace(data)) == 0 || len(root.Content) == 0 {
		return cfg, nil
	}
	// A second pass with a strict decoder: yaml.Node.Decode cannot refuse unknown fields, and the
	// decoder's messages already carry the line ("line 7: field kye not found in type ...").
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var errs []error
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		// Type errors leave the rest decoded: validate it too, so one pass shows every error.
		for _, e := range te.Errors {
			errs = append(errs, fmt.Errorf("%s", friendlyYAMLError(name, e)))
		}
	}
	v := &validator{name: name, root: root.Content[0]}
	cfg.validate(v)
	if errs = append(errs, v.errs...); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	cfg.setDefaults()
	return cfg, nil
}

var yamlTypeNames = strings.NewReplacer(
	"type config.Config", "the top level (breakers, app_values, logs)",
	"type config.BreakerFields", "a breaker's fields (mode, reason, until, opened_at)",
	"type config.Breaker", "a breaker",
	"type config.AppValue", "an app value",
	"type config.LogSource", "a log source",
)

// friendlyYAMLError turns yaml.v3's "line 4: field kye not found in type config.Breaker" into
// "file:4: field kye not found in a breaker", the form every other error here has.
func friendlyYAMLError(name, e string) string {
	e = yamlTypeNames.Replace(e)
	var line int
	if n, _ := fmt.Sscanf(e, "line %d:", &line); n == 1 {
		if _, rest, ok := strings.Cut(e, ": "); ok {
			return fmt.Sprintf("%s:%d: %s", name, line, rest)
		}
	}
	return name + ": " + e
}

func (c *Config) setDefaults() {
	for i := range c.Breakers {
		if c.Breakers[i].Format == "" {
			c.Breakers[i].Format = FormatDjangoPickle
		}
	}
	for i := range c.Logs {
		l := &c.Logs[i]
		if l.Format == "" {
			l.Format = LogFormatJSON
		}
		if l.EventField == "" {
			l.EventField = DefaultEventField
		}
		if l.LevelField == "" {
			l.LevelField = DefaultLevelField
		}
		if l.MaxLineBytes == 0 {
			l.MaxLineBytes = DefaultMaxLineBytes
		}
		if l.PollInterval == 0 {
			l.PollInterval = DefaultPollInterval
		}
	}
}

// validator collects every error, each with the line of the offending node.
type validator struct {
	name string
	root *yaml.Node
	errs []error
}

// errorf reports an error at path, e.g. ("breakers", 1, "format").
func (v *validator) errorf(path []any, format string, args ...any) {
	line := lineOf(v.root, path)
	var field strings.Builder
	for _, p := range path {
		switch p := p.(type) {
		case int:
			fmt.Fprintf(&field, "[%d]", p)
		case string:
			if field.Len() > 0 {
				field.WriteByte('.')
			}
			field.WriteString(p)
		}
	}
	v.errs = append(v.errs, fmt.Errorf("%s:%d: %s: %s", v.name, line, field.String(), fmt.Sprintf(format, args...)))
}

// lineOf finds the line of the deepest node of path that exists (the item itself when a field
// is missing).
func lineOf(n *yaml.Node, path []any) int {
	line := n.Line
	for _, p := range path {
		if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
			n = n.Content[0]
		}
		var next *yaml.Node
		switch p := p.(type) {
		case int:
			if n.Kind == yaml.SequenceNode && p < len(n.Content) {
				next = n.Content[p]
			}
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == p {
						next = n.Content[i+1]
						break
					}
				}
			}
		}
		if next == nil {
			return line
		}
		n = next
		line = n.Line
	}
	return line
}

func path(parts ...any) []any { return parts }

func (c *Config) validate(v *validator) {
	names := map[string]int{}
	for i, b := range c.Breakers {
		p := func(f string) []any { return path("breakers", i, f) }
		checkName(v, p("name"), b.Name)
		if j, dup := names[b.Name]; dup && b.Name != "" {
			v.errorf(p("name"), "breaker %q is already defined by breakers[%d]", b.Name, j)
		}
		names[b.Name] = i
		if b.Key == "" {
			v.errorf(p("key"), "required")
		}
		checkRedisURL(v, p("redis_url"), b.RedisURL)
		switch b.Format {
		case "", FormatDjangoPickle, FormatPickle, FormatJSON, FormatString, FormatExists:
		default:
			v.errorf(p("format"), "%q is not one of %s, %s, %s, %s, %s", b.Format,
				FormatDjangoPickle, FormatPickle, FormatJSON, FormatString, FormatExists)
		}
		if len(b.OpenValues) > 0 && b.Format != FormatString {
			v.errorf(p("open_values"), "only applies to format %q", FormatString)
		}
		for j, ov := range b.OpenValues {
			if len(ov) > maxNameLen {
				v.errorf(path("breakers", i, "open_values", j), "longer than %d bytes", maxNameLen)
			}
		}
	}
	names = map[string]int{}
	for i, a := range c.AppValues {
		p := func(f string) []any { return path("app_values", i, f) }
		checkName(v, p("name"), a.Name)
		if j, dup := names[a.Name]; dup && a.Name != "" {
			v.errorf(p("name"), "app value %q is already defined by app_values[%d]", a.Name, j)
		}
		names[a.Name] = i
		if a.Key == "" {
			v.errorf(p("key"), "required")
		}
		checkRedisURL(v, p("redis_url"), a.RedisURL)
	}
	for i, l := range c.Logs {
		p := func(f string) []any { return path("logs", i, f) }
		if len(l.Paths) == 0 {
			v.errorf(p("paths"), "at least one glob is required")
		}
		for j, g := range l.Paths {
			if g == "" {
				v.errorf(path("logs", i, "paths", j), "empty glob")
			} else if _, err := filepath.Match(g, ""); err != nil {
				v.errorf(path("logs", i, "paths", j), "bad glob %q: %v", g, err)
			}
		}
		switch l.Format {
		case "", LogFormatJSON, LogFormatDockerJSON, LogFormatLogfmt, LogFormatText:
		default:
			v.errorf(p("format"), "%q is not one of %s, %s, %s, %s", l.Format,
				LogFormatJSON, LogFormatDockerJSON, LogFormatLogfmt, LogFormatText)
		}
		seen := map[string]bool{}
		for j, e := range l.Events {
			ep := path("logs", i, "events", j)
			switch {
			case e == "":
				v.errorf(ep, "empty event name")
			case len(e) > maxNameLen:
				v.errorf(ep, "longer than %d bytes", maxNameLen)
			case seen[e]:
				v.errorf(ep, "event %q listed twice", e)
			}
			seen[e] = true
		}
		if l.MaxLineBytes < 0 {
			v.errorf(p("max_line_bytes"), "must be positive")
		} else if l.MaxLineBytes > 0 && l.MaxLineBytes < 64 {
			v.errorf(p("max_line_bytes"), "%d is too small (at least 64)", l.MaxLineBytes)
		} else if l.MaxLineBytes > 64<<20 {
			v.errorf(p("max_line_bytes"), "%d is over the 64 MiB limit", l.MaxLineBytes)
		}
		if l.PollInterval < 0 || (l.PollInterval > 0 && l.PollInterval < 10*time.Millisecond) {
			v.errorf(p("poll_interval"), "%s is too short (at least 10ms)", l.PollInterval)
		}
	}
}

func checkName(v *validator, p []any, name string) {
	switch {
	case name == "":
		v.errorf(p, "required")
	case len(name) > maxNameLen:
		v.errorf(p, "longer than %d bytes", maxNameLen)
	}
}

func checkRedisURL(v *validator, p []any, raw string) {
	if raw == "" {
		return
	}
	// kombu's errors never repeat the URL, which may hold a password.
	if _, err := kombu.ParseURL(raw); err != nil {
		v.errorf(p, "%v", err)
	}
}
