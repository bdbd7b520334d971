package bench

import (
	"encoding/base64"
	"math/rand/v2"
	"slices"
	"strconv"
)

// Traffic generates the event messages of a Celery deployment as its processes PUBLISH them
// (Celery 5.2.6 on Redis, default transport options, db 0):
//
//   - every task starts with a task-sent from one of 16 producer processes, one event per message
//     on /0.celeryev/task.sent;
//   - a worker buffers its task events (task-received and task-started when it takes a task,
//     task-succeeded or, for 2%, task-failed with a traceback when it finishes) and publishes
//     them as task.multi lists of 1-24 events, mostly 2-4; now and then an empty list;
//   - for a tenth of the tasks the worker's batch wins the race with the producer's task-sent;
//   - every worker sends a worker-heartbeat every 1000 messages of its stream (far more often
//     than the real 2 s, so that path is exercised at every rate).
//
// Tasks run on Workers workers, four at a time each, and have one of Names names on four
// queues. A Traffic is not safe for concurrent use; use one per publisher, each with its own id
// (it goes into task uuids, so they never collide).
type Traffic struct {
	rng      *rand.Rand
	id       uint32
	seq      uint64
	names    []string
	queues   []string
	workers  []*simWorker
	clock    int
	messages int
	nextHB   int
	actions  []action // queued messages, from head on
	head     int
	body     []byte
	raw      bool
}

// Options shape the traffic.
type Options struct {
	Names   int // distinct task names; default 100
	Workers int // default 8
	// Raw makes Next return bare event bodies, as AMQP carries them, not kombu's Redis envelope.
	Raw bool
}

const (
	concurrency = 4   // tasks a worker runs at once
	failEvery   = 50  // one task in failEvery fails
	lateEvery   = 10  // one task in lateEvery has its task-sent after the worker's batch
	emptyEvery  = 200 // one batch in emptyEvery is followed by an empty one
	hbEvery     = 1000
)

type simTask struct {
	uuid  [36]byte
	name  int
	fail  bool
	late  bool
	start float64
}

type simEvent struct {
	typ  byte // 'r'eceived, 's'tarted, 'd'one
	task *simTask
	ts   float64
}

type simWorker struct {
	host      string
	running   []*simTask
	buf       []simEvent
	target    int
	clock     int
	procsDone int
}

type actionKind byte

const (
	actSent actionKind = iota
	actBatch
	actHeartbeat
)

type action struct {
	kind   actionKind
	task   *simTask
	worker *simWorker
	events []simEvent
}

// NewTraffic returns a generator; seed makes it reproducible.
func NewTraffic(id uint32, seed uint64, o Options) *Traffic {
	if o.Names <= 0 {
		o.Names = 100
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	g := &Traffic{rng: rand.New(rand.NewPCG(seed, uint64(id))), id: id, nextHB: hbEvery, raw: o.Raw}
	for i := range o.Names {
		g.names = append(g.names, "app.tasks.task_"+strconv.Itoa(i))
	}
	g.queues = []string{"celery", "chat", "background", "priority"}
	for i := range o.Workers {
		w := &simWorker{host: "celery@bench-" + strconv.Itoa(int(id)) + "-worker-" + strconv.Itoa(i)}
		w.target = g.batchSize()
		g.workers = append(g.workers, w)
	}
	return g
}

// QueueOf is the queue of task name i: what task-sent reports.
func (g *Traffic) QueueOf(name string) string {
	for i, n := range g.names {
		if n == name {
			return g.queues[i%len(g.queues)]
		}
	}
	return ""
}

// batchSize draws how many events a worker's next flush holds: mostly 2-4, up to the 24 of
// Celery's buffer_limit.
func (g *Traffic) batchSize() int {
	switch p := g.rng.IntN(100); {
	case p < 10:
		return 1
	case p < 75:
		return 2 + g.rng.IntN(3)
	case p < 95:
		return 5 + g.rng.IntN(8)
	default:
		return 13 + g.rng.IntN(12)
	}
}

// Message is one PUBLISH.
type Message struct {
	Channel string
	Events  int
}

// Next appends the payload of the next message to dst; now is the event timestamp (epoch seconds).
func (g *Traffic) Next(now float64, dst []byte) ([]byte, Message) {
	if g.head == len(g.actions) {
		clear(g.actions)
		g.actions, g.head = g.actions[:0], 0
		for len(g.actions) == 0 {
			g.step(now)
		}
	}
	a := g.actions[g.head]
	g.head++
	g.messages++
	switch a.kind {
	case actSent:
		return g.sentMessage(a.task, now, dst), Message{Channel: "/0.celeryev/task.sent", Events: 1}
	case actHeartbeat:
		return g.heartbeatMessage(a.worker, now, dst), Message{Channel: "/0.celeryev/worker.heartbeat", Events: 1}
	default:
		return g.batchMessage(a.worker, a.events, dst), Message{Channel: "/0.celeryev/task.multi", Events: len(a.events)}
	}
}

// step starts one task and queues the messages that follow from it.
func (g *Traffic) step(now float64) {
	if g.messages >= g.nextHB {
		g.nextHB += hbEvery
		for _, w := range g.workers {
			g.actions = append(g.actions, action{kind: actHeartbeat, worker: w})
		}
	}
	g.seq++
	t := &simTask{name: g.rng.IntN(len(g.names)), fail: g.seq%failEvery == 0, late: g.seq%lateEvery == 3, start: now}
	g.uuid(t.uuid[:], g.seq)
	if !t.late {
		g.actions = append(g.actions, action{kind: actSent, task: t})
	}
	w := g.workers[g.rng.IntN(len(g.workers))]
	w.buf = append(w.buf, simEvent{'r', t, now + 0.0005}, simEvent{'s', t, now + 0.001})
	w.running = append(w.running, t)
	if len(w.running) > concurrency {
		done := w.running[0]
		w.running = w.running[1:]
		w.buf = append(w.buf, simEvent{'d', done, now})
		w.procsDone++
	}
	for len(w.buf) >= w.target {
		batch := make([]simEvent, w.target)
		copy(batch, w.buf)
		w.buf = append(w.buf[:0], w.buf[w.target:]...)
		w.target = g.batchSize()
		g.actions = append(g.actions, action{kind: actBatch, worker: w, events: batch})
		for _, e := range batch {
			if e.typ == 'r' && e.task.late {
				g.actions = append(g.actions, action{kind: actSent, task: e.task})
			}
		}
		if g.rng.IntN(emptyEvery) == 0 {
			g.actions = append(g.actions, action{kind: actBatch, worker: w})
		}
	}
}

// uuid writes a version-4-shaped uuid unique to this generator and seq.
func (g *Traffic) uuid(dst []byte, seq uint64) {
	const hex = "0123456789abcdef"
	var raw [16]byte
	for i := range 4 {
		raw[i] = byte(g.id >> (24 - 8*i))
	}
	for i := range 8 {
		raw[8+i] = byte(seq >> (56 - 8*i))
	}
	raw[4], raw[5] = 0xf7, 0x66
	raw[6], raw[7] = 0x4c, 0xb7
	j := 0
	for i, c := range raw {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst[j] = '-'
			j++
		}
		dst[j], dst[j+1] = hex[c>>4], hex[c&0x0f]
		j += 2
	}
}

func appendTS(b []byte, ts float64) []byte { return strconv.AppendFloat(b, ts, 'f', 7, 64) }

func (g *Traffic) sentMessage(t *simTask, now float64, dst []byte) []byte {
	g.clock++
	pid := 13000 + int(t.uuid[35])%16
	host := "gen" + strconv.Itoa(pid) + "@web-" + strconv.Itoa(pid%4)
	name := g.names[t.name]
	queue := g.queues[t.name%len(g.queues)]
	b := append(g.body[:0], `{"hostname": "`...)
	b = append(b, host...)
	b = append(b, `", "utcoffset": 0, "pid": `...)
	b = strconv.AppendInt(b, int64(pid), 10)
	b = append(b, `, "clock": `...)
	b = strconv.AppendInt(b, int64(g.clock), 10)
	b = append(b, `, "uuid": "`...)
	b = append(b, t.uuid[:]...)
	b = append(b, `", "root_id": "`...)
	b = append(b, t.uuid[:]...)
	b = append(b, `", "parent_id": null, "name": "`...)
	b = append(b, name...)
	b = append(b, `", "args": "(2, 3)", "kwargs": "{'channel': 'email'}", "retries": 0, "eta": null, "expires": null, "queue": "`...)
	b = append(b, queue...)
	b = append(b, `", "exchange": "", "routing_key": "`...)
	b = append(b, queue...)
	b = append(b, `", "timestamp": `...)
	b = appendTS(b, now)
	b = append(b, `, "type": "task-sent"}`...)
	g.body = b
	return g.envelope(dst, host, "task.sent")
}

func (g *Traffic) heartbeatMessage(w *simWorker, now float64, dst []byte) []byte {
	w.clock++
	b := append(g.body[:0], `{"hostname": "`...)
	b = append(b, w.host...)
	b = append(b, `", "utcoffset": 0, "pid": 13498, "clock": `...)
	b = strconv.AppendInt(b, int64(w.clock), 10)
	b = append(b, `, "freq": 2.0, "active": `...)
	b = strconv.AppendInt(b, int64(len(w.running)), 10)
	b = append(b, `, "processed": `...)
	b = strconv.AppendInt(b, int64(w.procsDone), 10)
	b = append(b, `, "loadavg": [0.89, 0.55, 0.22], "sw_ident": "py-celery", "sw_ver": "5.2.6", "sw_sys": "Linux", "timestamp": `...)
	b = appendTS(b, now)
	b = append(b, `, "type": "worker-heartbeat"}`...)
	g.body = b
	return g.envelope(dst, w.host, "worker.heartbeat")
}

const traceback = `Traceback (most recent call last):\n  File \"/usr/lib/python3/dist-packages/celery/app/trace.py\", line 451, in trace_task\n    R = retval = fun(*args, **kwargs)\n                 ^^^^^^^^^^^^^^^^^^^^\n  File \"/usr/lib/python3/dist-packages/celery/app/trace.py\", line 734, in __protected_call__\n    return self.run(*args, **kwargs)\n           ^^^^^^^^^^^^^^^^^^^^^^^^^\n  File \"/srv/app/tasks.py\", line 33, in send_notification\n    raise ValueError(\"boom\")\nValueError: boom\n`

func (g *Traffic) batchMessage(w *simWorker, events []simEvent, dst []byte) []byte {
	b := append(g.body[:0], '[')
	for i, e := range events {
		if i > 0 {
			b = append(b, ", "...)
		}
		w.clock++
		b = append(b, `{"hostname": "`...)
		b = append(b, w.host...)
		b = append(b, `", "utcoffset": 0, "pid": 13498, "clock": `...)
		b = strconv.AppendInt(b, int64(w.clock), 10)
		b = append(b, `, "uuid": "`...)
		b = append(b, e.task.uuid[:]...)
		b = append(b, '"')
		switch {
		case e.typ == 'r':
			b = append(b, `, "name": "`...)
			b = append(b, g.names[e.task.name]...)
			b = append(b, `", "args": "(2, 3)", "kwargs": "{'channel': 'email'}", "root_id": "`...)
			b = append(b, e.task.uuid[:]...)
			b = append(b, `", "parent_id": null, "retries": 0, "eta": null, "expires": null, "timestamp": `...)
			b = appendTS(b, e.ts)
			b = append(b, `, "type": "task-received"}`...)
		case e.typ == 's':
			b = append(b, `, "timestamp": `...)
			b = appendTS(b, e.ts)
			b = append(b, `, "type": "task-started"}`...)
		case e.task.fail:
			b = append(b, `, "exception": "ValueError('boom')", "traceback": "`...)
			b = append(b, traceback...)
			b = append(b, `", "timestamp": `...)
			b = appendTS(b, e.ts)
			b = append(b, `, "type": "task-failed"}`...)
		default:
			b = append(b, `, "result": "5", "runtime": `...)
			b = strconv.AppendFloat(b, e.ts-e.task.start, 'f', -1, 64)
			b = append(b, `, "timestamp": `...)
			b = appendTS(b, e.ts)
			b = append(b, `, "type": "task-succeeded"}`...)
		}
	}
	b = append(b, ']')
	g.body = b
	return g.envelope(dst, w.host, "task.multi")
}

// envelope wraps g.body as kombu's Redis transport publishes it: base64 body, utf-8 JSON.
func (g *Traffic) envelope(dst []byte, host, routingKey string) []byte {
	if g.raw {
		return append(dst, g.body...)
	}
	dst = append(dst, `{"body": "`...)
	n := base64.StdEncoding.EncodedLen(len(g.body))
	dst = slices.Grow(dst, n)[:len(dst)+n]
	base64.StdEncoding.Encode(dst[len(dst)-n:], g.body)
	dst = append(dst, `", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"hostname": "`...)
	dst = append(dst, host...)
	dst = append(dst, `"}, "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": "`...)
	dst = append(dst, routingKey...)
	dst = append(dst, `"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "`...)
	var tag [36]byte
	g.uuid(tag[:], uint64(g.messages)|1<<63)
	dst = append(dst, tag[:]...)
	return append(dst, `"}}`...)
}
