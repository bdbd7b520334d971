package harness

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The recorder is the tests' source of truth for what went over the wire. It shares no code with
// the exporter (its own RESP reader, encoding/json, no go-redis), so a decoding bug in the exporter
// cannot hide by being repeated here.

// RecorderOptions say where the events are.
type RecorderOptions struct {
	Addr string // host:port of redis-server
	DB   int
	// GlobalKeyPrefix is kombu's global_keyprefix transport option: prepended to the channel.
	GlobalKeyPrefix string
	// Pattern replaces the default "<prefix>/<db>.celeryev/*" (e.g. "/<db>.celeryev*" to also match
	// fanout_patterns=False).
	Pattern            string
	Username, Password string
}

// Event is one Celery event as published.
type Event struct {
	Channel  string
	Received time.Time      // when the recorder read it
	Fields   map[string]any // the event dict as decoded
	Type     string
	Hostname string  // the sender's node name (gen<pid>@host for task-sent)
	UUID     string  // task events only
	Time     float64 // the sender's timestamp (epoch seconds)
}

// Str returns a string field ("" when missing or not a string).
func (e Event) Str(key string) string {
	s, _ := e.Fields[key].(string)
	return s
}

// Num returns a numeric field.
func (e Event) Num(key string) (float64, bool) {
	f, ok := e.Fields[key].(float64)
	return f, ok
}

// Bool returns a boolean field (false when missing).
func (e Event) Bool(key string) bool {
	b, _ := e.Fields[key].(bool)
	return b
}

// Recorder keeps every event published on the events channels.
type Recorder struct {
	Pattern string

	stop func() // ends the read loop, which then closes done
	done chan struct{}

	mu      sync.Mutex
	events  []Event
	errs    []error // messages that did not decode
	readErr error   // why the read loop ended
}

// RecordRedis starts a recorder on db of a harness redis-server.
func RecordRedis(t testing.TB, r *Redis, db int) *Recorder {
	t.Helper()
	return StartRecorder(t, RecorderOptions{Addr: r.Addr(), DB: db})
}

// StartRecorder connects, PSUBSCRIBEs and returns once Redis confirmed the subscription, so no
// event published after it returns is missed. It disconnects in t.Cleanup.
func StartRecorder(t testing.TB, o RecorderOptions) *Recorder {
	t.Helper()
	rec, err := NewRecorder(o)
	if err != nil {
		t.Fatalf("recorder: %v", err)
	}
	t.Cleanup(rec.Close)
	return rec
}

// NewRecorder is StartRecorder without a testing.TB; call Close.
func NewRecorder(o RecorderOptions) (*Recorder, error) {
	pattern := o.Pattern
	if pattern == "" {
		pattern = fmt.Sprintf("%s/%d.celeryev/*", o.GlobalKeyPrefix, o.DB)
	}
	c, err := net.DialTimeout("tcp", o.Addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", o.Addr, err)
	}
	rd := bufio.NewReaderSize(c, 1<<20)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if o.Password != "" {
		args := []string{"AUTH", o.Password}
		if o.Username != "" {
			args = []string{"AUTH", o.Username, o.Password}
		}
		if err := writeCommand(c, args...); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := readRESP(rd); err != nil {
			c.Close()
			return nil, fmt.Errorf("AUTH: %w", err)
		}
	}
	if err := writeCommand(c, "PSUBSCRIBE", pattern); err != nil {
		c.Close()
		return nil, err
	}
	reply, err := readRESP(rd)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("PSUBSCRIBE %s: %w", pattern, err)
	}
	if a, ok := reply.([]any); !ok || len(a) != 3 || a[0] != "psubscribe" {
		c.Close()
		return nil, fmt.Errorf("PSUBSCRIBE %s: unexpected reply %#v", pattern, reply)
	}
	_ = c.SetDeadline(time.Time{})
	rec := &Recorder{Pattern: pattern, stop: func() { _ = c.Close() }, done: make(chan struct{})}
	go rec.loop(rd)
	return rec, nil
}

// Close disconnects and waits for the reader.
func (r *Recorder) Close() {
	r.stop()
	<-r.done
}

func (r *Recorder) loop(rd *bufio.Reader) {
	defer close(r.done)
	for {
		v, err := readRESP(rd)
		if err != nil {
			r.mu.Lock()
			r.readErr = err
			r.mu.Unlock()
			return
		}
		a, ok := v.([]any)
		if !ok || len(a) != 4 || a[0] != "pmessage" {
			continue // subscription confirmations and the like
		}
		channel, _ := a[2].(string)
		payload, _ := a[3].(string)
		evs, derr := DecodeEventMessage([]byte(payload))
		r.add(channel, evs, derr)
	}
}

// add keeps the events of one message (channel: the Redis channel or the AMQP routing key).
func (r *Recorder) add(channel string, evs []Event, derr error) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if derr != nil {
		r.errs = append(r.errs, fmt.Errorf("channel %s: %w", channel, derr))
	}
	for _, e := range evs {
		e.Channel = channel
		e.Received = now
		r.events = append(r.events, e)
	}
}

// DecodeEventMessage decodes a kombu envelope as Celery publishes it on the events exchange: a JSON
// object whose body is base64 (properties.body_encoding) or plain, holding one event dict or a list
// of them (task.multi), possibly empty.
func DecodeEventMessage(payload []byte) ([]Event, error) {
	var env struct {
		Body            json.RawMessage `json:"body"`
		ContentType     string          `json:"content-type"`
		ContentEncoding string          `json:"content-encoding"`
		Properties      struct {
			BodyEncoding string `json:"body_encoding"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(payload, &env); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	if env.ContentType != "" && env.ContentType != "application/json" {
		return nil, fmt.Errorf("content-type %q is not JSON", env.ContentType)
	}
	var body []byte
	var s string
	if err := json.Unmarshal(env.Body, &s); err == nil {
		body = []byte(s)
		if env.Properties.BodyEncoding == "base64" {
			if body, err = base64.StdEncoding.DecodeString(s); err != nil {
				return nil, fmt.Errorf("base64 body: %w", err)
			}
		}
	} else {
		body = env.Body // an already-structured body
	}
	return DecodeEventBody(body)
}

// DecodeEventBody decodes an event message's body: one event dict or a list of them (task.multi),
// possibly empty. On AMQP the message body is this JSON itself.
func DecodeEventBody(body []byte) ([]Event, error) {
	var raw any
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	var dicts []map[string]any
	switch b := raw.(type) {
	case map[string]any:
		dicts = []map[string]any{b}
	case []any:
		for i, x := range b {
			d, ok := x.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("body list element %d is %T, not an event", i, x)
			}
			dicts = append(dicts, d)
		}
	default:
		return nil, fmt.Errorf("body is %T, not an event or a list of events", raw)
	}
	evs := make([]Event, 0, len(dicts))
	for _, d := range dicts {
		e := Event{Fields: d}
		e.Type = e.Str("type")
		e.Hostname = e.Str("hostname")
		e.UUID = e.Str("uuid")
		e.Time, _ = e.Num("timestamp")
		if e.Type == "" {
			return evs, errors.New("event without a type")
		}
		evs = append(evs, e)
	}
	return evs, nil
}

// Events returns a copy of every event so far, in arrival order.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// Errors are the messages that did not decode (none is expected from real Celery).
func (r *Recorder) Errors() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs...)
}

// Err is why the subscription ended (nil while it is up).
func (r *Recorder) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.readErr
}

// Find returns the events for which keep is true.
func (r *Recorder) Find(keep func(Event) bool) []Event {
	var out []Event
	for _, e := range r.Events() {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// Task returns the events of one task uuid, in arrival order.
func (r *Recorder) Task(uuid string) []Event {
	return r.Find(func(e Event) bool { return e.UUID == uuid })
}

// CountByType counts the events by their type field: what celery_exporter_events_total{type}
// should say once the traffic is quiet.
func (r *Recorder) CountByType() map[string]int {
	out := map[string]int{}
	for _, e := range r.Events() {
		out[e.Type]++
	}
	return out
}

// LastHeartbeat is the last worker-heartbeat or worker-online of hostname (ok false when none).
func (r *Recorder) LastHeartbeat(hostname string) (Event, bool) {
	evs := r.Events()
	for i := len(evs) - 1; i >= 0; i-- {
		e := evs[i]
		if e.Hostname == hostname && (e.Type == "worker-heartbeat" || e.Type == "worker-online") {
			return e, true
		}
	}
	return Event{}, false
}

// Finished says whether a task has a final event (succeeded, failed, revoked or rejected).
func (r *Recorder) Finished(uuid string) bool {
	for _, e := range r.Task(uuid) {
		switch e.Type {
		case "task-succeeded", "task-failed", "task-revoked", "task-rejected":
			return true
		}
	}
	return false
}

// WaitFinished waits until every listed task has a final event. Only use it for tasks whose
// events are reliable (prefork, solo): the threads pool sometimes drops its own.
func (r *Recorder) WaitFinished(t testing.TB, timeout time.Duration, uuids ...string) {
	t.Helper()
	r.WaitFor(t, timeout, "tasks to finish", func(r *Recorder) bool {
		for _, id := range uuids {
			if !r.Finished(id) {
				return false
			}
		}
		return true
	})
}

// WaitFor polls cond until it holds or fails the test after timeout.
func (r *Recorder) WaitFor(t testing.TB, timeout time.Duration, what string, cond func(*Recorder) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond(r) {
		if time.Now().After(deadline) {
			t.Fatalf("recorder: timed out after %v waiting for %s; by type: %v", timeout, what, r.CountByType())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitQuiet waits until no event whose type starts with prefix ("task-" for task traffic, "" for
// any) has arrived for the quiet period.
func (r *Recorder) WaitQuiet(t testing.TB, prefix string, quiet, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		last := time.Time{}
		for _, e := range r.Events() {
			if strings.HasPrefix(e.Type, prefix) && e.Received.After(last) {
				last = e.Received
			}
		}
		if time.Since(last) >= quiet {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("recorder: %q events still flowing after %v", prefix, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Sample is one expected series: metric name, exact label set, value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

func (s Sample) String() string {
	keys := make([]string, 0, len(s.Labels))
	for k := range s.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, s.Labels[k])
	}
	return fmt.Sprintf("%s{%s} %s", s.Name, strings.Join(parts, ","), strconv.FormatFloat(s.Value, 'g', -1, 64))
}

// TaskInfo is what the wire says about one task uuid.
type TaskInfo struct {
	Name  string // from task-sent or task-received
	Queue string // from task-sent ("" when none was seen)
}

// Tasks joins task-sent and task-received by uuid: the name and queue every later event of a task
// implicitly carries.
func (r *Recorder) Tasks() map[string]TaskInfo {
	out := map[string]TaskInfo{}
	for _, e := range r.Events() {
		if e.UUID == "" {
			continue
		}
		ti := out[e.UUID]
		switch e.Type {
		case "task-sent":
			if ti.Queue == "" {
				ti.Queue = e.Str("queue")
			}
			if ti.Name == "" {
				ti.Name = e.Str("name")
			}
		case "task-received":
			if ti.Name == "" {
				ti.Name = e.Str("name")
			}
		}
		out[e.UUID] = ti
	}
	return out
}

// ExpectedTaskCounters computes the exporter's task counters from the recorded events, with the
// contract's labels:
//
//	celery_task_sent_total{name,queue_name}
//	celery_task_{received,started,succeeded,rejected}_total{name,hostname,queue_name}
//	celery_task_{failed,retried}_total{name,hostname,queue_name,exception}
//	celery_task_revoked_total{name,hostname,queue_name,reason}
//
// queue_name is the task-sent queue of the uuid; else the queue task-sent showed for the same task
// name; else defaultQueue. hostname is the event's (the worker's full node name).
func (r *Recorder) ExpectedTaskCounters(defaultQueue string) []Sample {
	tasks := r.Tasks()
	queueByName := map[string]string{}
	for _, e := range r.Events() {
		if e.Type == "task-sent" && e.Str("queue") != "" {
			if _, ok := queueByName[e.Str("name")]; !ok {
				queueByName[e.Str("name")] = e.Str("queue")
			}
		}
	}
	counts := map[string]*Sample{}
	add := func(name string, labels map[string]string) {
		s := Sample{Name: name, Labels: labels}
		k := s.String()
		if c, ok := counts[k]; ok {
			c.Value++
			return
		}
		s.Value = 1
		counts[k] = &s
	}
	for _, e := range r.Events() {
		if !strings.HasPrefix(e.Type, "task-") || e.UUID == "" {
			continue
		}
		ti := tasks[e.UUID]
		queue := ti.Queue
		if queue == "" {
			queue = queueByName[ti.Name]
		}
		if queue == "" {
			queue = defaultQueue
		}
		base := func(extra ...string) map[string]string {
			l := map[string]string{"name": ti.Name, "hostname": e.Hostname, "queue_name": queue}
			for i := 0; i+1 < len(extra); i += 2 {
				l[extra[i]] = extra[i+1]
			}
			return l
		}
		switch e.Type {
		case "task-sent":
			q := e.Str("queue")
			if q == "" {
				q = queue
			}
			add("celery_task_sent_total", map[string]string{"name": e.Str("name"), "queue_name": q})
		case "task-received", "task-started", "task-succeeded", "task-rejected":
			add("celery_task_"+strings.TrimPrefix(e.Type, "task-")+"_total", base())
		case "task-failed", "task-retried":
			add("celery_task_"+strings.TrimPrefix(e.Type, "task-")+"_total",
				base("exception", ExceptionClass(e.Str("exception"), e.Str("traceback"))))
		case "task-revoked":
			add("celery_task_revoked_total", base("reason", RevokeReason(e)))
		}
	}
	out := make([]Sample, 0, len(counts))
	for _, s := range counts {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// DefaultInitialExceptions is the exporter's --task.initial-exceptions default.
var DefaultInitialExceptions = []string{"SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLostError"}

// WithZeroSeries adds to expected task counters the series the exporter creates at 0 when a
// (name, hostname, queue_name) first shows in a task event: succeeded, rejected, and failed for
// each initial exception class.
func WithZeroSeries(want []Sample, initialExceptions ...string) []Sample {
	have := map[string]bool{}
	type combo struct{ name, host, queue string }
	var combos []combo
	seen := map[combo]bool{}
	for _, s := range want {
		have[Sample{Name: s.Name, Labels: s.Labels}.String()] = true // the series, whatever its value
		if s.Name == "celery_task_sent_total" {
			continue
		}
		c := combo{s.Labels["name"], s.Labels["hostname"], s.Labels["queue_name"]}
		if !seen[c] {
			seen[c] = true
			combos = append(combos, c)
		}
	}
	out := append([]Sample(nil), want...)
	add := func(name string, labels map[string]string) {
		z := Sample{Name: name, Labels: labels}
		if k := z.String(); !have[k] {
			have[k] = true
			out = append(out, z)
		}
	}
	for _, c := range combos {
		base := func(extra ...string) map[string]string {
			l := map[string]string{"name": c.name, "hostname": c.host, "queue_name": c.queue}
			for i := 0; i+1 < len(extra); i += 2 {
				l[extra[i]] = extra[i+1]
			}
			return l
		}
		add("celery_task_succeeded_total", base())
		add("celery_task_rejected_total", base())
		for _, e := range initialExceptions {
			add("celery_task_failed_total", base("exception", e))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// RevokeReason is the contract's reason label of a task-revoked event.
func RevokeReason(e Event) string {
	switch {
	case e.Bool("terminated"):
		return "terminated"
	case e.Bool("expired"):
		return "expired"
	default:
		return "revoked"
	}
}

var (
	reprClass = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.]*)\(`)
	anyCall   = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_.]*)\(`)
	tbClass   = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.]*)(:|$)`)
)

// ExceptionClass is the class name of a task-failed/task-retried exception: the name before "(" in
// its repr, without the module; "ExceptionWithTraceback()" (hard time limit and lost worker under
// billiard >= 4.0.1) is resolved from the traceback's last line, e.g.
// "billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)"; a Retry wrapping its cause
// ("Retry(Retry(...), KeyError('again'), 0)", task-retried on the solo and threads pools) gives
// the cause. "" when nothing tells.
func ExceptionClass(exception, traceback string) string {
	cls := ""
	if m := reprClass.FindStringSubmatch(strings.TrimSpace(exception)); m != nil {
		cls = m[1]
	}
	if cls == "" || cls == "ExceptionWithTraceback" || strings.HasSuffix(cls, ".ExceptionWithTraceback") {
		lines := strings.Split(strings.TrimRight(traceback, "\n\" \t"), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			l := strings.TrimSpace(lines[i])
			if l == "" || l == `"""` {
				continue
			}
			if m := tbClass.FindStringSubmatch(l); m != nil {
				cls = m[1]
			}
			break
		}
	}
	cls = lastDotted(cls)
	if cls == "Retry" {
		for _, m := range anyCall.FindAllStringSubmatch(exception, -1) {
			if c := lastDotted(m[1]); c != "Retry" {
				return c
			}
		}
	}
	return cls
}

func lastDotted(s string) string {
	if i := strings.LastIndex(s, "."); i >= 0 {
		return s[i+1:]
	}
	return s
}

// --- a minimal RESP2 client ------------------------------------------------------------------------

func writeCommand(w io.Writer, args ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// readRESP reads one RESP2 value: string (simple or bulk), int64, nil, []any, or an error for "-".
func readRESP(rd *bufio.Reader) (any, error) {
	line, err := rd.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("resp: empty line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("redis: %s", line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, fmt.Errorf("resp: bulk length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, fmt.Errorf("resp: array length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		a := make([]any, n)
		for i := range a {
			if a[i], err = readRESP(rd); err != nil {
				return nil, err
			}
		}
		return a, nil
	}
	return nil, fmt.Errorf("resp: unexpected %q", line)
}
