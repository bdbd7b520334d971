package collector

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Running tasks: a task runs from its task-started until its final event (succeeded, failed,
// revoked, rejected, retried). Both ends travel as events that can be lost, and a task started
// before the exporter has no task-started at all, so the workers' `inspect active` replies (from
// the remote-control rounds) are merged in: they add the tasks the events missed and end the ones
// whose final event was lost. The set is bounded by the task cache's capacity.

type runningTask struct {
	name, queue string // labels
	host        string // the worker's hostname as it sent it (not a label)
	start       float64
	seenAt      time.Time // exporter clock, when the exporter learnt it runs
	confirmedAt time.Time // last time a control reply listed it
	byControl   bool      // known from control replies only: no task-started arrived
}

// runningSet is written by the applying goroutine and read by scrapes.
type runningSet struct {
	mu     sync.Mutex
	m      map[string]*runningTask
	byHost map[string]map[string]struct{} // uuids per worker: a heartbeat touches its own only
}

func newRunningSet() runningSet {
	return runningSet{m: map[string]*runningTask{}, byHost: map[string]map[string]struct{}{}}
}

// put and del keep the index; the caller holds mu.
func (rs *runningSet) put(id string, r *runningTask) {
	rs.del(id)
	rs.m[id] = r
	ids := rs.byHost[r.host]
	if ids == nil {
		ids = map[string]struct{}{}
		rs.byHost[r.host] = ids
	}
	ids[id] = struct{}{}
}

func (rs *runningSet) del(id string) {
	r := rs.m[id]
	if r == nil {
		return
	}
	delete(rs.m, id)
	ids := rs.byHost[r.host]
	delete(ids, id)
	if len(ids) == 0 {
		delete(rs.byHost, r.host)
	}
}

// heartbeatSlack: a task whose task-started arrived this long before a heartbeat that reports no
// active task has certainly ended (it started before the heartbeat was sent).
const heartbeatSlack = time.Second

// defaultActiveTTL is how long a task only remote control knows stays without a reply listing it.
const defaultActiveTTL = 5 * time.Minute

// maxActivePerWorker bounds what one worker's `active` reply adds.
const maxActivePerWorker = 5000

var (
	taskRunningDesc = desc("task_running", "Tasks running now: started (task-started, or listed by inspect active) and not finished. "+
		"Tasks of workers that are down do not count; absent when none runs.", "name", "queue_name")
	taskRunningOldestDesc = desc("task_running_oldest_age_seconds", "Age of the oldest running task, from its start time on the worker's clock; "+
		"present while at least one runs.", "name", "queue_name")
)

// startRunning records a task-started.
func (s *EventSource) startRunning(uuid, name, queue, host string, start float64) {
	if start <= 0 {
		start = float64(s.now.UnixNano()) / 1e9
	}
	r := &runningTask{name: name, queue: queue, host: host, start: start, seenAt: s.now}
	s.run.mu.Lock()
	defer s.run.mu.Unlock()
	if old := s.run.m[uuid]; old != nil {
		r.seenAt, r.confirmedAt = old.seenAt, old.confirmedAt
	}
	s.run.put(uuid, r)
}

// stopRunning forgets a task that ended, or that the task cache dropped.
func (s *EventSource) stopRunning(uuid string) {
	s.run.mu.Lock()
	s.run.del(uuid)
	s.run.mu.Unlock()
}

// workerIdle ends the tasks of a worker whose heartbeat reports no active task.
func (s *EventSource) workerIdle(host string, now time.Time) {
	s.run.mu.Lock()
	defer s.run.mu.Unlock()
	for id := range s.run.byHost[host] {
		if s.run.m[id].seenAt.Before(now.Add(-heartbeatSlack)) {
			s.run.del(id)
		}
	}
}

// forgetWorkerTasks drops every running task of a purged worker.
func (s *EventSource) forgetWorkerTasks(host string) {
	s.run.mu.Lock()
	defer s.run.mu.Unlock()
	for id := range s.run.byHost[host] {
		s.run.del(id)
	}
}

// mergeActive applies the snapshot remote control left in the model, if any. Runs on the applying
// goroutine.
func (s *EventSource) mergeActive(now time.Time) {
	snap := s.model.Active.Take()
	if snap == nil {
		return
	}
	type add struct {
		id string
		r  *runningTask
	}
	var adds []add
	listed := map[string]bool{}
	// Labels first, outside the lock: names and the task cache belong to this goroutine.
	for host, list := range snap.Hosts {
		for i, a := range list {
			if i >= maxActivePerWorker {
				break
			}
			listed[a.ID] = true
			name, queue := a.Name, a.Queue
			if t := s.cache.Get(a.ID, now); t != nil {
				if t.Name != "" {
					name = t.Name
				}
				if t.Queue != "" {
					queue = t.Queue
				}
			}
			if name == "" {
				name = unknownName
			}
			if queue == "" {
				if q, ok := s.nameQueue[name]; ok {
					queue = q
				} else {
					queue = s.opts.DefaultQueue
				}
			}
			adds = append(adds, add{a.ID, &runningTask{host: host, start: a.Started, queue: queue, name: name, seenAt: now, confirmedAt: now, byControl: true}})
		}
	}
	s.run.mu.Lock()
	defer s.run.mu.Unlock()
	for _, a := range adds {
		if r := s.run.m[a.id]; r != nil {
			r.confirmedAt = now
			if r.start <= 0 {
				r.start = a.r.start
			}
			continue
		}
		if len(s.run.m) >= s.cache.Capacity() {
			continue
		}
		a.r.name = s.names.Value(a.r.name)
		if a.r.start <= 0 {
			a.r.start = float64(now.UnixNano()) / 1e9
		}
		s.run.put(a.id, a.r)
	}
	// A task its worker no longer lists ended, if the exporter knew of it before the request went
	// out (the reply was made after): its final event was lost.
	for id, r := range s.run.m {
		if _, answered := snap.Hosts[r.host]; answered && !listed[id] && r.seenAt.Before(snap.Sent) {
			s.run.del(id)
		}
	}
}

// expireActive drops tasks only remote control knew that no reply listed for ActiveTTL.
func (s *EventSource) expireActive(now time.Time) {
	s.run.mu.Lock()
	defer s.run.mu.Unlock()
	for id, r := range s.run.m {
		if r.byControl && now.Sub(r.confirmedAt) > s.opts.ActiveTTL {
			s.run.del(id)
		}
	}
}

// collectRunning sends the running-task gauges; down workers' tasks do not count.
func (s *EventSource) collectRunning(ch chan<- prometheus.Metric, now time.Time, down map[string]bool) {
	type agg struct {
		n      int
		oldest float64
	}
	groups := map[[2]string]*agg{}
	s.run.mu.Lock()
	for _, r := range s.run.m {
		if down[r.host] {
			continue
		}
		k := [2]string{r.name, r.queue}
		g := groups[k]
		if g == nil {
			g = &agg{oldest: r.start}
			groups[k] = g
		}
		g.n++
		g.oldest = min(g.oldest, r.start)
	}
	s.run.mu.Unlock()
	nowSec := float64(now.UnixNano()) / 1e9
	for k, g := range groups {
		ch <- prometheus.MustNewConstMetric(taskRunningDesc, prometheus.GaugeValue, float64(g.n), k[0], k[1])
		ch <- prometheus.MustNewConstMetric(taskRunningOldestDesc, prometheus.GaugeValue, max(nowSec-g.oldest, 0), k[0], k[1])
	}
}
