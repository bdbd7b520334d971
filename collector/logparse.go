// Log line parsers: json, docker-json (with Docker's split records joined), logfmt and text lines
// turned into an event name and a normalized level for the LogScraper's counters.

package collector

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/go-logfmt/logfmt"
	"github.com/valyala/fastjson"

	"github.com/celery-exporter/celery_exporter/internal/config"
	"github.com/celery-exporter/celery_exporter/internal/logtail"
)

// Normalized levels: every line is counted under one of these.
var logLevels = []string{"debug", "info", "warning", "error", "critical", "unknown"}

// Reasons for celery_log_lines_skipped_total.
const (
	skipTooLong   = logtail.SkipTooLong // a line (or a joined Docker message) over max_line_bytes
	skipMalformed = "malformed"         // a docker-json line that is not Docker's JSON wrapper
)

// logParser turns lines into counts for one source. The tailer calls it from one goroutine.
type logParser struct {
	cfg     config.LogSource
	events  map[string]bool
	scraper *LogScraper

	// Docker's json-file driver splits messages over 16 KiB into several records; the parts are
	// joined per file until the one ending in a newline.
	partial  map[logtail.FileID][]byte
	skipping map[logtail.FileID]bool

	wrapper, inner fastjson.Parser
}

func newLogParser(cfg config.LogSource, s *LogScraper) *logParser {
	p := &logParser{
		cfg: cfg, scraper: s, events: map[string]bool{},
		partial: map[logtail.FileID][]byte{}, skipping: map[logtail.FileID]bool{},
	}
	for _, e := range cfg.Events {
		p.events[e] = true
	}
	return p
}

// Skipped implements logtail.Sink.
func (p *logParser) Skipped(reason string) { p.scraper.skipped.WithLabelValues(reason).Inc() }

// Forget implements logtail.Sink.
func (p *logParser) Forget(id logtail.FileID) {
	delete(p.partial, id)
	delete(p.skipping, id)
}

// Line implements logtail.Sink.
func (p *logParser) Line(id logtail.FileID, data []byte) {
	switch p.cfg.Format {
	case config.LogFormatDockerJSON:
		p.docker(id, data)
	case config.LogFormatLogfmt:
		p.logfmtLine(data)
	case config.LogFormatText:
		p.textLine(data)
	default:
		p.jsonLine(data)
	}
}

func (p *logParser) count(event, level string) {
	p.scraper.lines.WithLabelValues(level).Inc()
	if event != "" {
		p.scraper.events.WithLabelValues(event, level).Inc()
	}
}

func (p *logParser) docker(id logtail.FileID, data []byte) {
	v, err := p.wrapper.ParseBytes(data)
	if err != nil || v.Type() != fastjson.TypeObject {
		p.Skipped(skipMalformed)
		return
	}
	lv := v.Get("log")
	if lv == nil || lv.Type() != fastjson.TypeString {
		p.Skipped(skipMalformed)
		return
	}
	msg, _ := lv.StringBytes()
	complete := bytes.HasSuffix(msg, []byte("\n"))
	msg = bytes.TrimSuffix(msg, []byte("\n"))
	if p.skipping[id] {
		if complete {
			delete(p.skipping, id)
		}
		return
	}
	buf, joining := p.partial[id]
	if len(buf)+len(msg) > p.cfg.MaxLineBytes {
		p.Skipped(skipTooLong)
		delete(p.partial, id)
		if !complete {
			p.skipping[id] = true
		}
		return
	}
	if !complete {
		p.partial[id] = append(buf, msg...)
		return
	}
	if joining {
		msg = append(buf, msg...)
		delete(p.partial, id)
	}
	p.jsonLine(bytes.TrimSuffix(msg, []byte("\r")))
}

// jsonLine counts a JSON object line by its event and level fields; anything else is read as text
// (a worker's stdout mixes the app's JSON logs with Celery's own text lines and stray prints).
func (p *logParser) jsonLine(line []byte) {
	trimmed := bytes.TrimSpace(line)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		p.textLine(line)
		return
	}
	v, err := p.inner.ParseBytes(trimmed)
	if err != nil || v.Type() != fastjson.TypeObject {
		p.textLine(line)
		return
	}
	event := ""
	if ev := v.Get(p.cfg.EventField); ev != nil && ev.Type() == fastjson.TypeString {
		b, _ := ev.StringBytes()
		if p.events[string(b)] {
			event = string(b)
		}
	}
	level := "unknown"
	if lv := v.Get(p.cfg.LevelField); lv != nil {
		switch lv.Type() {
		case fastjson.TypeString:
			b, _ := lv.StringBytes()
			level = normalizeLevel(string(b))
		case fastjson.TypeNumber:
			f, _ := lv.Float64()
			level = normalizeLevel(strconv.FormatFloat(f, 'f', -1, 64))
		}
	}
	p.count(event, level)
}

func (p *logParser) logfmtLine(line []byte) {
	dec := logfmt.NewDecoder(bytes.NewReader(line))
	event, level := "", ""
	found := false
	for dec.ScanRecord() {
		for dec.ScanKeyval() {
			switch string(dec.Key()) {
			case p.cfg.EventField:
				found = true
				if v := string(dec.Value()); p.events[v] {
					event = v
				}
			case p.cfg.LevelField:
				found = true
				level = normalizeLevel(string(dec.Value()))
			}
		}
	}
	if dec.Err() != nil || !found {
		p.textLine(line)
		return
	}
	if level == "" {
		level = "unknown"
	}
	p.count(event, level)
}

// textLine matches the configured event names as substrings (the first listed that occurs wins)
// and takes the level from the first upper-case level word (ERROR, WARNING...).
func (p *logParser) textLine(line []byte) {
	event := ""
	for _, e := range p.cfg.Events {
		if bytes.Contains(line, []byte(e)) {
			event = e
			break
		}
	}
	p.count(event, textLevel(line))
}

var textLevelWords = map[string]string{
	"DEBUG": "debug", "TRACE": "debug",
	"INFO": "info", "NOTICE": "info",
	"WARNING": "warning", "WARN": "warning",
	"ERROR": "error", "ERR": "error",
	"CRITICAL": "critical", "FATAL": "critical", "PANIC": "critical", "EMERGENCY": "critical", "ALERT": "critical",
}

// textLevel finds the first word made only of upper-case letters that names a level, e.g. in
// Celery's "[2025-01-01 10:00:00,000: ERROR/ForkPoolWorker-1] ..." or Python's "ERROR:app:...".
func textLevel(line []byte) string {
	for i := 0; i < len(line); {
		if line[i] < 'A' || line[i] > 'Z' {
			i++
			continue
		}
		j := i
		for j < len(line) && line[j] >= 'A' && line[j] <= 'Z' {
			j++
		}
		// A word, not the capitals at the start of "Errors" or inside "xERRORx".
		letterBefore := i > 0 && isLetter(line[i-1])
		letterAfter := j < len(line) && isLetter(line[j])
		if !letterBefore && !letterAfter && j-i <= len("EMERGENCY") {
			if l, ok := textLevelWords[string(line[i:j])]; ok {
				return l
			}
		}
		i = j
	}
	return "unknown"
}

func isLetter(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }

// normalizeLevel maps the level spellings of common loggers (Python logging and its numbers,
// structlog, zap, logrus, go-kit, syslog) to the six label values.
func normalizeLevel(s string) string {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug", "trace", "dbug", "10", "5":
		return "debug"
	case "info", "information", "informational", "notice", "20":
		return "info"
	case "warning", "warn", "30":
		return "warning"
	case "error", "err", "eror", "40", "exception":
		return "error"
	case "critical", "crit", "fatal", "panic", "dpanic", "emerg", "emergency", "alert", "50":
		return "critical"
	default:
		return "unknown"
	}
}
