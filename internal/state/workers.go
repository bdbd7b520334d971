package state

import (
	"slices"
	"sync"
	"time"

	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/event"
)

// Workers is what the worker events (heartbeats, online, offline) say about each worker:
// liveness, counts and software. The liveness rule is here, so every source judges it the same.
type Workers struct {
	clk     clock.Clock
	timeout time.Duration

	mu sync.Mutex
	m  map[string]*worker
}

func newWorkers(clk clock.Clock, timeout time.Duration) *Workers {
	return &Workers{clk: clk, timeout: timeout, m: map[string]*worker{}}
}

// Worker is a copy of one worker's state.
type Worker struct {
	Hostname string
	// Up is the liveness rule's verdict at the time of the copy.
	Up       bool
	LastSeen time.Time
	Freq     float64 // heartbeat interval, seconds

	// From heartbeats with counts (HasCounts): the heartbeat the `heartbeat` control command
	// triggers has none.
	HasCounts      bool
	Active         int64
	ProcessedTotal float64 // grows across worker restarts, never resets while the exporter runs
	LoadAvg        [3]float64
	Clashes        float64 // times a process seen before spoke again after another one had

	SWIdent, SWVer, SWSys string
	// EventsEnabled is false when the processed count grows but none of the worker's task events
	// arrive.
	EventsEnabled bool
}

type worker struct {
	lastSeen  time.Time
	freq      float64
	offline   bool
	offlineAt time.Time

	hasCounts      bool
	active         int64
	processed      int64
	processedTotal float64
	loadavg        [3]float64
	swIdent        string
	swVer          string
	swSys          string

	// Task-event detection compares the heartbeat before last with the one before it, so task
	// events batched after a heartbeat still count for the interval they belong to.
	hb            [2]heartbeatMark
	eventsEnabled bool

	// Processes seen under this hostname (two workers sharing a nodename, or one restarted),
	// with each one's last processed count, so their counts never mix; bounded by maxPIDs.
	pids    []pidMark
	clashes float64
}

// pidMark is one process of a hostname.
type pidMark struct {
	pid       int64
	processed int64
	hasCounts bool
}

type heartbeatMark struct {
	at        time.Time
	processed int64
}

// maxPIDs bounds the processes remembered per hostname.
const maxPIDs = 4

// process returns the mark of pid, adding it (most recent last). clash is true when pid is
// known but was not the last to speak: two live processes share the hostname, since a
// restarted worker's old process never comes back.
func (w *worker) process(pid int64) (m *pidMark, clash bool) {
	for i := range w.pids {
		if w.pids[i].pid == pid {
			clash = i != len(w.pids)-1
			mark := w.pids[i]
			w.pids = append(append(w.pids[:i:i], w.pids[i+1:]...), mark)
			return &w.pids[len(w.pids)-1], clash
		}
	}
	if len(w.pids) >= maxPIDs {
		w.pids = append(w.pids[:0:0], w.pids[1:]...)
	}
	w.pids = append(w.pids, pidMark{pid: pid})
	return &w.pids[len(w.pids)-1], false
}

// Apply records a worker event received at now. lastTask is when a task event of this worker
// last arrived (zero when never), which decides EventsEnabled.
func (ws *Workers) Apply(ev *event.Event, now, lastTask time.Time) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w := ws.m[ev.Hostname]
	if w == nil {
		w = &worker{freq: 2, eventsEnabled: true}
		ws.m[ev.Hostname] = w
	}
	if ev.Type == event.WorkerOffline {
		w.offline, w.offlineAt = true, now
		return
	}
	w.offline = false
	w.lastSeen = now
	if ev.SWVer != "" {
		w.swIdent, w.swVer, w.swSys = ev.SWIdent, ev.SWVer, ev.SWSys
	}
	// The heartbeat the `heartbeat` control command triggers (every `celery events` or Flower
	// start) carries freq 5 and no counts: it proves life but must not change the rest.
	if !ev.HasCounts {
		return
	}
	if ev.Freq > 0 {
		w.freq = ev.Freq
	}
	// Each process's count is compared with its own last one: two workers sharing a nodename
	// made the counter jump by the difference of their counts at every alternation.
	p, clash := w.process(ev.PID)
	if clash {
		w.clashes++
	}
	switch delta := ev.Processed - p.processed; {
	case !w.hasCounts:
		// First sight: what the worker processed before we ran is not ours to count.
	case !p.hasCounts:
		// A new process under a known hostname (a restart): all it processed happened since.
		w.processedTotal += float64(ev.Processed)
	case delta >= 0:
		w.processedTotal += float64(delta)
	default: // the worker restarted without a new pid (a container's pid 1)
		w.processedTotal += float64(ev.Processed)
	}
	p.processed, p.hasCounts = ev.Processed, true
	w.hasCounts, w.active, w.processed, w.loadavg = true, ev.Active, ev.Processed, ev.LoadAvg
	if ev.Type == event.WorkerHeartbeat {
		older, last := w.hb[0], w.hb[1]
		if !older.at.IsZero() && last.processed > older.processed {
			// Tasks were accepted between those two heartbeats: their task events, if the worker
			// sends any, have had a whole interval to arrive.
			w.eventsEnabled = !lastTask.Before(older.at.Add(-time.Duration(w.freq * float64(time.Second))))
		}
		w.hb[0], w.hb[1] = last, heartbeatMark{at: now, processed: ev.Processed}
	}
}

// alive is the liveness rule: up while now < last heartbeat + 2×freq + timeout, on the
// exporter's own clock (sender clocks and utcoffset play no part); worker-offline ends it at once.
func (ws *Workers) alive(w *worker, now time.Time) bool {
	return !w.offline && now.Before(ws.deadline(w))
}

func (ws *Workers) deadline(w *worker) time.Time {
	return w.lastSeen.Add(time.Duration(2*w.freq*float64(time.Second)) + ws.timeout)
}

// Names lists the workers heartbeating now (alive) and every worker not yet purged (known),
// sorted.
func (ws *Workers) Names() (alive, known []string) {
	now := ws.clk.Now()
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for h, w := range ws.m {
		known = append(known, h)
		if ws.alive(w, now) {
			alive = append(alive, h)
		}
	}
	slices.Sort(alive)
	slices.Sort(known)
	return alive, known
}

// Has tells whether a worker event of hostname was seen (and not purged since).
func (ws *Workers) Has(hostname string) bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	_, ok := ws.m[hostname]
	return ok
}

// System is the sw_sys of a worker's heartbeats ("Linux", "Darwin"), which decides the unit of
// its rusage.maxrss in remote-control stats.
func (ws *Workers) System(hostname string) (string, bool) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if w := ws.m[hostname]; w != nil && w.swSys != "" {
		return w.swSys, true
	}
	return "", false
}

// Snapshot copies every worker's state, judging liveness at now.
func (ws *Workers) Snapshot(now time.Time) []Worker {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	out := make([]Worker, 0, len(ws.m))
	for h, w := range ws.m {
		out = append(out, ws.copyOf(h, w, now))
	}
	return out
}

// Get copies one worker's state, judging liveness at now.
func (ws *Workers) Get(hostname string, now time.Time) (Worker, bool) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w := ws.m[hostname]
	if w == nil {
		return Worker{}, false
	}
	return ws.copyOf(hostname, w, now), true
}

// copyOf is the exported copy of w; the caller holds mu.
func (ws *Workers) copyOf(h string, w *worker, now time.Time) Worker {
	return Worker{
		Hostname: h, Up: ws.alive(w, now), LastSeen: w.lastSeen, Freq: w.freq,
		HasCounts: w.hasCounts, Active: w.active, ProcessedTotal: w.processedTotal, LoadAvg: w.loadavg,
		Clashes: w.clashes, SWIdent: w.swIdent, SWVer: w.swVer, SWSys: w.swSys, EventsEnabled: w.eventsEnabled,
	}
}

// Purge forgets the workers down (past their deadline, or offline) for at least after, and
// returns their hostnames.
func (ws *Workers) Purge(now time.Time, after time.Duration) (gone []string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for h, w := range ws.m {
		if ws.alive(w, now) {
			continue
		}
		down := ws.deadline(w)
		if w.offline {
			down = w.offlineAt
		}
		if now.Sub(down) >= after {
			delete(ws.m, h)
			gone = append(gone, h)
		}
	}
	return gone
}
