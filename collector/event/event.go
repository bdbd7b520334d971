// Package event decodes Celery's event messages (the payload inside the kombu envelope) into
// typed events. A payload is one event or, for task events batched by the worker ("task.multi"),
// a JSON list of them, possibly empty. It knows nothing of metrics.
package event

import (
	"errors"
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

// Errors of a single event inside an otherwise good message.
var (
	ErrNotObject = errors.New("event is not a JSON object")
	ErrNoType    = errors.New("event has no type")
	ErrNoUUID    = errors.New("task event has no uuid")
	ErrNoHost    = errors.New("worker event has no hostname")
)

// Reason labels of decode failures.
const (
	ReasonInvalidJSON = "invalid_json"
	ReasonNotObject   = "not_an_object"
	ReasonNoType      = "missing_type"
	ReasonNoUUID      = "missing_uuid"
	ReasonNoHost      = "missing_hostname"
)

// ReasonOf maps a Decoder error to its reason label.
func ReasonOf(err error) string {
	switch {
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
	var typ []byte
	var excRepr []byte
	var traceback *fastjson.Value
	o.Visit(func(k []byte, f *fastjson.Value) {
		switch string(k) {
		case "type":
			typ = f.GetStringBytes()
		case "hostname":
			ev.Hostname = d.intern.Bytes(f.GetStringBytes())
		case "timestamp":
			ev.Timestamp = f.GetFloat64()
		case "uuid":
			ev.UUID = string(f.GetStringBytes())
		case "name":
			ev.Name = d.intern.Bytes(f.GetStringBytes())
		case "queue":
			ev.Queue = d.intern.Bytes(f.GetStringBytes())
		case "eta":
			ev.ETA = parseISOTime(f.GetStringBytes())
		case "runtime":
			ev.Runtime = f.GetFloat64()
		case "exception":
			excRepr = f.GetStringBytes()
		case "traceback":
			traceback = f // unescaped only when the repr does not name the class
		case "requeue":
			ev.Requeue = f.GetBool()
		case "terminated":
			ev.Terminated = f.GetBool()
		case "expired":
			ev.Expired = f.GetBool()
		case "freq":
			ev.Freq = f.GetFloat64()
		case "active":
			ev.Active = f.GetInt64()
			ev.HasCounts = true
		case "processed":
			ev.Processed = f.GetInt64()
			ev.HasCounts = true
		case "loadavg":
			for i, l := range f.GetArray() {
				if i < len(ev.LoadAvg) {
					ev.LoadAvg[i] = l.GetFloat64()
				}
			}
		case "sw_ident":
			ev.SWIdent = d.intern.Bytes(f.GetStringBytes())
		case "sw_ver":
			ev.SWVer = d.intern.Bytes(f.GetStringBytes())
		case "sw_sys":
			ev.SWSys = d.intern.Bytes(f.GetStringBytes())
		}
	})
	if typ == nil {
		bad(ErrNoType)
		return
	}
	ev.Type = parseType(typ)
	switch {
	case ev.Type.IsTask() && ev.UUID == "":
		bad(ErrNoUUID)
		return
	case ev.Type.IsWorker() && ev.Hostname == "":
		bad(ErrNoHost)
		return
	}
	if excRepr != nil || traceback != nil {
		var tb []byte
		if traceback != nil && needsTraceback(excRepr) {
			tb = traceback.GetStringBytes()
		}
		ev.Exception = d.intern.Bytes(ExceptionClass(excRepr, tb))
	}
	fn(ev)
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
