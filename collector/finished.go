package collector

import "time"

// finishedTTL is how long a finished task's labels are remembered.
const finishedTTL = time.Minute

// finishedCap bounds the finished tasks remembered.
const finishedCap = 4096

// finishedTasks remembers the name and queue of tasks that just finished, so an event that
// arrives after the final one keeps its labels: the threads pool can publish a first attempt's
// task-retried after the retry's task-succeeded, which without this counted as name "unknown"
// on the default queue. A ring of fixed size: bounded whatever the task rate.
type finishedTasks struct {
	ring [finishedCap]finishedTask
	next int
	idx  map[string]int // uuid → ring position
}

type finishedTask struct {
	uuid, name, queue string
	at                time.Time
}

func (f *finishedTasks) add(uuid, name, queue string, now time.Time) {
	if f.idx == nil {
		f.idx = make(map[string]int, finishedCap)
	}
	if old := f.ring[f.next].uuid; old != "" && f.idx[old] == f.next {
		delete(f.idx, old)
	}
	f.ring[f.next] = finishedTask{uuid: uuid, name: name, queue: queue, at: now}
	f.idx[uuid] = f.next
	f.next = (f.next + 1) % finishedCap
}

// get returns the labels of a task that finished less than finishedTTL ago.
func (f *finishedTasks) get(uuid string, now time.Time) (finishedTask, bool) {
	i, ok := f.idx[uuid]
	if !ok || now.Sub(f.ring[i].at) > finishedTTL {
		return finishedTask{}, false
	}
	return f.ring[i], true
}
