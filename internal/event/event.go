package event

import (
	"bytes"
	"errors"
	"math"
	"time"

	"github.com/valyala/fastjson"
)

// Type is an event type.
type Type uint8

// The event types of Celery 5.2-5.6 (celery/events, worker/request.py, worker/heartbeat.py).
const (
	Unknown Type = iota
	TaskSent
	TaskReceived
	TaskStarted
	TaskSucceeded
	TaskFailed
	TaskRetried
	TaskRejected
	TaskRevoked
	TaskCancelled
	WorkerOnline
	WorkerHeartbeat
	WorkerOffline
	WorkerElect
	numTypes
)

var typeNames = [numTypes]string{
	Unknown:         "unknown",
	TaskSent:        "task-sent",
	TaskReceived:    "task-received",
	TaskStarted:     "task-started",
	TaskSucceeded:   "task-succeeded",
	TaskFailed:      "task-failed",
	TaskRetried:     "task-retried",
	TaskRejected:    "task-rejected",
	TaskRevoked:     "task-revoked",
	TaskCancelled:   "task-cancelled",
	WorkerOnline:    "worker-online",
	WorkerHeartbeat: "worker-heartbeat",
	WorkerOffline:   "worker-offline",
	WorkerElect:     "worker-elect",
}

// Types lists every known type, Unknown first.
func Types() []Type {
	out := make([]Type, numTypes)
	for i := range out {
		out[i] = Type(i)
	}
	return out
}

func (t Type) String() string {
	if t < numTypes {
		return typeNames[t]
	}
	return typeNames[Unknown]
}

// IsTask reports whether t is a task event (it carries a task uuid).
func (t Type) IsTask() bool { return t >= TaskSent && t <= TaskCancelled }

// IsWorker reports whether t is a worker event.
func (t Type) IsWorker() bool { return t >= WorkerOnline && t <= WorkerElect }

func parseType(b []byte) Type {
	// A switch on the string conversion compiles to comparisons without allocating.
	switch string(b) {
	case "task-sent":
		return TaskSent
	case "task-received":
		return TaskReceived
	case "task-started":
		return TaskStarted
	case "task-succeeded":
		return TaskSucceeded
	case "task-failed":
		return TaskFailed
	case "task-retried":
		return TaskRetried
	case "task-rejected":
		return TaskRejected
	case "task-revoked":
		return TaskRevoked
	case "task-cancelled":
		return TaskCancelled
	case "worker-online":
		return WorkerOnline
	case "worker-heartbeat":
		return WorkerHeartbeat
	case "worker-offline":
		return WorkerOffline
	case "worker-elect":
		return WorkerElect
	}
	return Unknown
}

// Event is one decoded event: only the fields the exporter uses. Strings are owned by the event
// (interned, so repeated names cost nothing).
type Event struct {
	Type      Type
	Hostname  string  // worker node name (celery@host); gen<pid>@host for task-sent
	Timestamp float64 // sender's epoch seconds (already UTC: utcoffset is not applied)

	// Task events.
	UUID      string
	Name      string  // task-sent, task-received
	Queue     string  // task-sent only
	ETA       float64 // epoch seconds; 0 when none
	Runtime   float64 // task-succeeded
	Exception string  // exception class of task-failed / task-retried
	Requeue   bool    // task-rejected
	// Revocation: Terminated or Expired, else a plain revoke.
	Terminated, Expired bool

	// PID is the sending process's id (every event carries it; 0 when absent).
	PID int64

	// Worker events.
	Freq float64
	// HasCounts is false for the heartbeat the `heartbeat` control command triggers: it has no
	// active, processed or loadavg, and must not zero them.
	HasCounts bool
	Active    int64
	Processed int64
	LoadAvg   [3]float64
	SWIdent   string
	SWVer     string
	SWSys     string
}

// Errors of a single event inside an otherwise good message. The first four skip the event; the
// others refuse or cut one value and keep the event (its counts still matter).
var (
	ErrNotObject = errors.New("event is not a JSON object")
	ErrNoType    = errors.New("event has no type")
	ErrNoUUID    = errors.New("task event has no uuid")
	ErrNoHost    = errors.New("worker event has no hostname")
	ErrUUIDLong  = errors.New("task uuid longer than MaxUUIDBytes")

	ErrWrongType  = errors.New("field of the wrong JSON type, ignored")
	ErrNonFinite  = errors.New("NaN or infinite number, ignored")
	ErrOutOfRange = errors.New("number outside its sane range, ignored or clamped")
	ErrTruncated  = errors.New("label value longer than MaxLabelBytes, cut")
)

// Reason labels of decode failures.
const (
	ReasonInvalidJSON = "invalid_json"
	ReasonNotObject   = "not_an_object"
	ReasonNoType      = "missing_type"
	ReasonNoUUID      = "missing_uuid"
	ReasonNoHost      = "missing_hostname"
	ReasonUUIDLong    = "uuid_too_long"
	ReasonWrongType   = "wrong_type"
	ReasonNonFinite   = "non_finite_number"
	ReasonOutOfRange  = "number_out_of_range"
	ReasonTruncated   = "label_truncated"
)

// Reasons lists every reason label, so counters can start at 0.
func Reasons() []string {
	return []string{ReasonInvalidJSON, ReasonNotObject, ReasonNoType, ReasonNoUUID, ReasonNoHost, ReasonUUIDLong,
		ReasonWrongType, ReasonNonFinite, ReasonOutOfRange, ReasonTruncated}
}

// Bounds of what an event may carry. A label value is copied into every series it labels and
// every cache entry, so its length is bounded as well as the number of values.
const (
	// MaxLabelBytes bounds hostname, name, queue, exception and sw_* values; longer ones are cut.
	MaxLabelBytes = 256
	// MaxUUIDBytes bounds a task id (Celery's are 36 bytes); an event with a longer one is skipped.
	MaxUUIDBytes = 256
	// MaxTimestamp is the latest timestamp or ETA taken (year 5138); later ones are ignored.
	MaxTimestamp = 1e11
	// MaxRuntime is the longest runtime taken (about three years).
	MaxRuntime = 1e8
	// MaxFreq is the longest heartbeat interval taken; longer ones are clamped to it. MinFreq is
	// the shortest: a lower freq is clamped up, so one heartbeat cannot claim life for hours nor
	// expire at once.
	MaxFreq, MinFreq = 3600.0, 0.1
	// MaxCount bounds active and processed (no worker runs 2^53 tasks).
	MaxCount = 1 << 53
	// MaxLoad bounds a load average.
	MaxLoad = 1e6
)

// UnknownException is the exception of a task-failed or task-retried that names none.
const UnknownException = "unknown"

// ReasonOf maps a Decoder error to its reason label.
func ReasonOf(err error) string {
	switch {
	case errors.Is(err, ErrUUIDLong):
		return ReasonUUIDLong
	case errors.Is(err, ErrWrongType):
		return ReasonWrongType
	case errors.Is(err, ErrNonFinite):
		return ReasonNonFinite
	case errors.Is(err, ErrOutOfRange):
		return ReasonOutOfRange
	case errors.Is(err, ErrTruncated):
		return ReasonTruncated
	case errors.Is(err, ErrNotObject):
		return ReasonNotObject
	case errors.Is(err, ErrNoType):
		return ReasonNoType
	case errors.Is(err, ErrNoUUID):
		return ReasonNoUUID
	case errors.Is(err, ErrNoHost):
		return ReasonNoHost
	}
	return ReasonInvalidJSON
}

// Decoder decodes payloads. It reuses its parser and event: not safe for concurrent use.
type Decoder struct {
	p      fastjson.Parser
	ev     Event
	intern *Interner
}

// NewDecoder returns a Decoder that interns strings in in (shared so labels are interned once).
func NewDecoder(in *Interner) *Decoder { return &Decoder{intern: in} }

// Decode calls fn for every event of payload, in order; fn must not keep the *Event. Events that
// cannot be used are reported to bad and skipped: one broken element does not lose the batch.
// The error is for a payload that is not JSON at all.
func (d *Decoder) Decode(payload []byte, fn func(*Event), bad func(error)) error {
	v, err := d.p.ParseBytes(payload)
	if err != nil && bytes.Contains(payload, infinity) {
		// Python's json writes Infinity, which the parser reads only as Inf: without this one such
		// runtime loses a whole task.multi batch. The value itself is refused below.
		v, err = d.p.ParseBytes(pythonInfinity(payload))
	}
	if err != nil {
		return err
	}
	if v.Type() == fastjson.TypeArray {
		arr, _ := v.Array()
		for _, e := range arr {
			d.one(e, fn, bad)
		}
		return nil
	}
	d.one(v, fn, bad)
	return nil
}

func (d *Decoder) one(v *fastjson.Value, fn func(*Event), bad func(error)) {
	o, err := v.Object()
	if err != nil {
		bad(ErrNotObject)
		return
	}
	ev := &d.ev
	*ev = Event{}
	var typ, uuid []byte
	var excRepr []byte
	var traceback *fastjson.Value
	var hasFreq bool
	o.Visit(func(k []byte, f *fastjson.Value) {
		switch string(k) {
		case "type":
			typ = d.str(f, bad)
		case "hostname":
			ev.Hostname = d.label(f, bad)
		case "timestamp":
			ev.Timestamp = d.num(f, 0, MaxTimestamp, bad)
		case "uuid":
			uuid = d.str(f, bad)
		case "name":
			ev.Name = d.label(f, bad)
		case "queue":
			ev.Queue = d.label(f, bad)
		case "eta":
			if t := parseISOTime(d.str(f, bad)); t <= MaxTimestamp {
				ev.ETA = t
			} else {
				bad(ErrOutOfRange)
			}
		case "runtime":
			ev.Runtime = d.num(f, -MaxRuntime, MaxRuntime, bad)
		case "exception":
			excRepr = d.str(f, bad)
		case "traceback":
			traceback = f // unescaped only when the repr does not name the class
		case "requeue":
			ev.Requeue = d.boolean(f, bad)
		case "terminated":
			ev.Terminated = d.boolean(f, bad)
		case "expired":
			ev.Expired = d.boolean(f, bad)
		case "freq":
			ev.Freq = d.num(f, 0, math.MaxFloat64, bad)
			hasFreq = ev.Freq > 0
		case "pid":
			ev.PID = d.count(f, bad)
		case "active":
			ev.Active = d.count(f, bad)
			ev.HasCounts = true
		case "processed":
			ev.Processed = d.count(f, bad)
			ev.HasCounts = true
		case "loadavg":
			if f.Type() != fastjson.TypeArray {
				bad(ErrWrongType)
				return
			}
			for i, l := range f.GetArray() {
				if i < len(ev.LoadAvg) {
					ev.LoadAvg[i] = d.num(l, 0, MaxLoad, bad)
				}
			}
		case "sw_ident":
			ev.SWIdent = d.label(f, bad)
		case "sw_ver":
			ev.SWVer = d.label(f, bad)
		case "sw_sys":
			ev.SWSys = d.label(f, bad)
		}
	})
	if typ == nil {
		bad(ErrNoType)
		return
	}
	ev.Type = parseType(typ)
	if len(uuid) > MaxUUIDBytes {
		bad(ErrUUIDLong)
		return
	}
	ev.UUID = string(uuid)
	switch {
	case ev.Type.IsTask() && ev.UUID == "":
		bad(ErrNoUUID)
		return
	case ev.Type.IsWorker() && ev.Hostname == "":
		bad(ErrNoHost)
		return
	}
	if hasFreq && (ev.Freq > MaxFreq || ev.Freq < MinFreq) {
		ev.Freq = min(max(ev.Freq, MinFreq), MaxFreq)
		bad(ErrOutOfRange)
	}
	if excRepr != nil || traceback != nil {
		var tb []byte
		if traceback != nil && needsTraceback(excRepr) {
			tb = d.str(traceback, bad)
		}
		ev.Exception = d.intern.Bytes(cut(ExceptionClass(excRepr, tb), bad))
	}
	if ev.Exception == "" && (ev.Type == TaskFailed || ev.Type == TaskRetried) {
		ev.Exception = UnknownException
	}
	fn(ev)
}

// str is f's string value; null counts as absent, any other type is refused.
func (d *Decoder) str(f *fastjson.Value, bad func(error)) []byte {
	switch f.Type() {
	case fastjson.TypeString:
		return f.GetStringBytes()
	case fastjson.TypeNull:
	default:
		bad(ErrWrongType)
	}
	return nil
}

// label is f's string, interned and at most MaxLabelBytes long.
func (d *Decoder) label(f *fastjson.Value, bad func(error)) string {
	return d.intern.Bytes(cut(d.str(f, bad), bad))
}

// cut shortens b to MaxLabelBytes, not splitting a UTF-8 sequence.
func cut(b []byte, bad func(error)) []byte {
	if len(b) <= MaxLabelBytes {
		return b
	}
	bad(ErrTruncated)
	n := MaxLabelBytes
	for n > 0 && b[n]&0xC0 == 0x80 { // b[n] continues a sequence: back to its start
		n--
	}
	return b[:n]
}

// num is f's number when it is finite and within [lo, hi]; else 0, reported to bad.
func (d *Decoder) num(f *fastjson.Value, lo, hi float64, bad func(error)) float64 {
	switch f.Type() {
	case fastjson.TypeNumber:
	case fastjson.TypeNull:
		return 0
	default:
		bad(ErrWrongType)
		return 0
	}
	v := f.GetFloat64()
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		bad(ErrNonFinite)
		return 0
	case v < lo || v > hi:
		bad(ErrOutOfRange)
		return 0
	}
	return v
}

// count is f's non-negative integer, at most MaxCount; else 0, reported to bad.
func (d *Decoder) count(f *fastjson.Value, bad func(error)) int64 {
	return int64(d.num(f, 0, MaxCount, bad))
}

func (d *Decoder) boolean(f *fastjson.Value, bad func(error)) bool {
	switch f.Type() {
	case fastjson.TypeTrue:
		return true
	case fastjson.TypeFalse, fastjson.TypeNull:
	default:
		bad(ErrWrongType)
	}
	return false
}

var infinity = []byte("Infinity")

// pythonInfinity returns a copy of payload with each Infinity outside a string replaced by Inf
// and five spaces (the same length).
func pythonInfinity(payload []byte) []byte {
	out := bytes.Clone(payload)
	inString := false
	for i := 0; i < len(out); i++ {
		switch c := out[i]; {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case !inString && bytes.HasPrefix(out[i:], infinity):
			copy(out[i+3:i+8], "     ")
			i += 7
		}
	}
	return out
}

// ISO 8601 forms Celery writes for eta (datetime.isoformat(), with or without offset).
var isoLayouts = []string{
	"2006-01-02T15:04:05.999999999Z07:00",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999Z07:00",
}

func parseISOTime(b []byte) float64 {
	if len(b) == 0 {
		return 0
	}
	s := string(b)
	for _, l := range isoLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return float64(t.UnixNano()) / 1e9
		}
	}
	return 0
}
