package kombu

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Options are the transport options of Celery's `broker_transport_options` that change what the
// exporter reads or writes. Names and defaults are kombu's (kombu/transport/redis.py).
type Options struct {
	GlobalKeyPrefix string
	// FanoutPrefix is kombu's `fanout_prefix`: "" when disabled, else a template where "{db}" is
	// the DB number (the default "/{db}.").
	FanoutPrefix      string
	FanoutPatterns    bool
	Sep               string
	PrioritySteps     []int
	VisibilityTimeout time.Duration
	UnackedKey        string
	UnackedIndexKey   string
	MasterName        string
	// SentinelPassword comes from `sentinel_kwargs`, the password of the sentinels themselves.
	SentinelPassword string
	SentinelUsername string
}

// DefaultOptions are kombu's defaults.
func DefaultOptions() Options {
	return Options{
		FanoutPrefix:      "/{db}.",
		FanoutPatterns:    true,
		Sep:               "\x06\x16",
		PrioritySteps:     []int{0, 3, 6, 9},
		VisibilityTimeout: time.Hour,
		UnackedKey:        "unacked",
		UnackedIndexKey:   "unacked_index",
	}
}

// ParseTransportOptions applies KEY=VALUE pairs, as a user copies them from Celery's settings, onto
// the defaults. Values are plain strings, Python literals (True, [0, 3, 6, 9], {'password': 'x'})
// or JSON.
func ParseTransportOptions(pairs []string) (Options, error) {
	o := DefaultOptions()
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return o, fmt.Errorf("transport option %q: want KEY=VALUE", redactOption(p))
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if err := o.set(k, v); err != nil {
			return o, fmt.Errorf("transport option %s: %w", k, err)
		}
	}
	return o, nil
}

func redactOption(p string) string {
	if strings.HasPrefix(p, "sentinel_kwargs") {
		return "sentinel_kwargs=<redacted>"
	}
	return p
}

func (o *Options) set(k, v string) error {
	switch k {
	case "global_keyprefix":
		o.GlobalKeyPrefix = unquote(v)
	case "fanout_prefix":
		switch b, err := parseBool(v); {
		case err == nil && b:
			o.FanoutPrefix = "/{db}."
		case err == nil:
			o.FanoutPrefix = ""
		default:
			o.FanoutPrefix = unquote(v)
		}
	case "fanout_patterns":
		b, err := parseBool(v)
		if err != nil {
			return err
		}
		o.FanoutPatterns = b
	case "sep":
		o.Sep = unquote(v)
		if o.Sep == "" {
			return fmt.Errorf("must not be empty")
		}
	case "priority_steps":
		steps, err := parseIntList(v)
		if err != nil {
			return err
		}
		o.PrioritySteps = steps
	case "visibility_timeout":
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 {
			return fmt.Errorf("want seconds > 0, got %q", v)
		}
		o.VisibilityTimeout = time.Duration(f * float64(time.Second))
	case "unacked_key":
		o.UnackedKey = unquote(v)
	case "unacked_index_key":
		o.UnackedIndexKey = unquote(v)
	case "master_name":
		o.MasterName = unquote(v)
	case "sentinel_kwargs":
		kw, err := parseDict(v)
		if err != nil {
			return fmt.Errorf("want a dict such as {\"password\": \"...\"}")
		}
		o.SentinelPassword = kw["password"]
		o.SentinelUsername = kw["username"]
	default:
		// Celery has many more options (socket_timeout, retry_on_timeout, ...); none of them change
		// what the exporter reads, so they are accepted to let users paste their settings.
	}
	return nil
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '\'' || v[0] == '"') && v[len(v)-1] == v[0] {
		return decodePyEscapes(v[1 : len(v)-1])
	}
	return v
}

// decodePyEscapes understands the escapes a user writes for kombu's separator ('\x06\x16').
func decodePyEscapes(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	if u, err := strconv.Unquote(`"` + strings.ReplaceAll(s, `"`, `\"`) + `"`); err == nil {
		return u
	}
	return s
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(unquote(v)) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off", "none":
		return false, nil
	}
	return false, fmt.Errorf("want a boolean, got %q", v)
}

func parseIntList(v string) ([]int, error) {
	v = strings.Trim(strings.TrimSpace(v), "[]()")
	var out []int
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 || n > 255 {
			return nil, fmt.Errorf("want a list of integers, got %q", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty list")
	}
	sort.Ints(out)
	return out, nil
}

// parseDict reads a JSON object or a Python dict literal of strings.
func parseDict(v string) (map[string]string, error) {
	s := strings.TrimSpace(v)
	var raw map[string]any
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		// Python literal: single quotes, True/False/None.
		py := strings.NewReplacer("'", `"`, "True", "true", "False", "false", "None", "null").Replace(s)
		if err := json.Unmarshal([]byte(py), &raw); err != nil {
			return nil, err
		}
	}
	out := make(map[string]string, len(raw))
	for k, val := range raw {
		if val != nil {
			out[k] = fmt.Sprint(val)
		}
	}
	return out, nil
}
