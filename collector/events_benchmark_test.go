package collector

import (
	"fmt"
	"strings"
	"testing"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// The state-update benchmarks feed HandlePayload (envelope, decode and apply: everything the
// Run goroutine does per message) with events shaped like Celery 5.2.6's, every field included,
// on a source configured like the binary's defaults and with its series already created.

const (
	benchTasks   = 2048 // distinct task uuids per round
	benchNames   = 100
	benchWorkers = 8
)

func benchSource() *EventSource {
	return NewEventSource(log.NewNopLogger(), nil, DefaultEventOptions(), NewModel(DefaultModelOptions()))
}

func benchTaskUUID(i int) string { return fmt.Sprintf("%08x-f766-4cb7-9385-%012x", i, i*7919) }
func benchName(i int) string     { return fmt.Sprintf("app.tasks.task_%03d", i%benchNames) }
func benchQueue(i int) string {
	return [...]string{"celery", "chat", "background", "priority"}[i%benchNames%4]
}
func benchWorker(i int) string { return fmt.Sprintf("celery@worker-%d", i%benchWorkers) }

// Events as Celery 5.2.6 sends them (the capture's fields), for task i.
func benchSentEv(i int, ts float64) ev {
	return ev{"hostname": fmt.Sprintf("gen%d@web-%d", 13000+i%16, i%4), "utcoffset": 0, "pid": 13000 + i%16,
		"clock": i, "uuid": benchTaskUUID(i), "root_id": benchTaskUUID(i), "parent_id": nil, "name": benchName(i),
		"args": "(2, 3)", "kwargs": "{'channel': 'email'}", "retries": 0, "eta": nil, "expires": nil,
		"queue": benchQueue(i), "exchange": "", "routing_key": benchQueue(i), "timestamp": ts, "type": "task-sent"}
}

func benchWorkerEv(typ string, i int, ts float64, extra ...any) ev {
	e := ev{"hostname": benchWorker(i), "utcoffset": 0, "pid": 13498, "clock": i, "uuid": benchTaskUUID(i),
		"timestamp": ts, "type": typ}
	for k := 0; k+1 < len(extra); k += 2 {
		e[extra[k].(string)] = extra[k+1]
	}
	return e
}

func benchReceivedEv(i int, ts float64) ev {
	return benchWorkerEv("task-received", i, ts, "name", benchName(i), "args", "(2, 3)",
		"kwargs", "{'channel': 'email'}", "root_id", benchTaskUUID(i), "parent_id", nil, "retries", 0, "eta", nil,
		"expires", nil)
}

func benchStartedEv(i int, ts float64) ev { return benchWorkerEv("task-started", i, ts) }

func benchSucceededEv(i int, ts float64) ev {
	return benchWorkerEv("task-succeeded", i, ts, "result", "5", "runtime", 0.20026184900001454)
}

const benchTraceback = "Traceback (most recent call last):\n" +
	"  File \"/usr/lib/python3/dist-packages/celery/app/trace.py\", line 451, in trace_task\n" +
	"    R = retval = fun(*args, **kwargs)\n                 ^^^^^^^^^^^^^^^^^^^^\n" +
	"  File \"/usr/lib/python3/dist-packages/celery/app/trace.py\", line 734, in __protected_call__\n" +
	"    return self.run(*args, **kwargs)\n           ^^^^^^^^^^^^^^^^^^^^^^^^^\n" +
	"  File \"/srv/app/tasks.py\", line 33, in send_notification\n    raise ValueError(\"boom\")\n" +
	"ValueError: boom\n"

func benchFailedEv(i int, ts float64) ev {
	return benchWorkerEv("task-failed", i, ts, "exception", "ValueError('boom')", "traceback", benchTraceback)
}

func benchHeartbeatEv(w, processed int, ts float64) ev {
	return ev{"hostname": benchWorker(w), "utcoffset": 0, "pid": 13498, "clock": processed, "freq": 2.0,
		"active": 3, "processed": processed, "loadavg": []float64{0.89, 0.55, 0.22}, "sw_ident": "py-celery",
		"sw_ver": "5.2.6", "sw_sys": "Linux", "timestamp": ts, "type": "worker-heartbeat"}
}

func benchTS(i int) float64 { return 1795879467.8389633 + float64(i)*0.001 }

// benchRound builds n payloads with build(i) for the tasks of one round.
func benchRound(build func(i int) string) []string {
	out := make([]string, benchTasks)
	for i := range out {
		out[i] = build(i)
	}
	return out
}

// benchLifecycle measures one step of a task's life. Before each round of benchTasks tasks, the
// steps before it are applied untimed (so every task has its name and queue, and no event is
// held), the measured step is timed, and the steps after it finish the tasks untimed, so the task
// cache stays at its steady size and each round starts with new tasks.
// Each measured message holds eventsPer events, typPer of them of type typ.
func benchLifecycle(b *testing.B, typ string, before, measured, after [][]string, eventsPer, typPer int) {
	src := benchSource()
	feed := func(rounds [][]string) {
		for _, r := range rounds {
			for _, p := range r {
				src.HandlePayload(p)
			}
		}
	}
	// One untimed round creates every series.
	feed(before)
	feed(measured)
	feed(after)
	counted := testutil.ToFloat64(src.eventsTotal.WithLabelValues(typ))
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for n < b.N {
		b.StopTimer()
		feed(before)
		b.StartTimer()
		for _, r := range measured {
			for _, p := range r {
				if n == b.N {
					break
				}
				src.HandlePayload(p)
				n++
			}
		}
		b.StopTimer()
		feed(after)
		b.StartTimer()
	}
	b.StopTimer()
	got := testutil.ToFloat64(src.eventsTotal.WithLabelValues(typ)) - counted
	if want := float64(n * typPer); got != want {
		b.Fatalf("%s: counted %v events, want %v", typ, got, want)
	}
	if errs := benchErrors(src); errs != 0 {
		b.Fatalf("%v event errors: the benchmark measured the error path", errs)
	}
	b.ReportMetric(float64(n*eventsPer)/b.Elapsed().Seconds(), "events/s")
}

// benchErrors sums celery_exporter_event_errors_total over reasons.
func benchErrors(src *EventSource) float64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { src.eventErrors.Collect(ch); close(ch) }()
	total := 0.0
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err == nil {
			total += pb.GetCounter().GetValue()
		}
	}
	return total
}

// BenchmarkHandlePayload measures HandlePayload per event type, one message at a time.
func BenchmarkHandlePayload(b *testing.B) {
	sent := benchRound(func(i int) string { return payload(benchSentEv(i, benchTS(i))) })
	received := benchRound(func(i int) string { return payload(benchReceivedEv(i, benchTS(i)+0.001)) })
	started := benchRound(func(i int) string { return payload(benchStartedEv(i, benchTS(i)+0.002)) })
	succeeded := benchRound(func(i int) string { return payload(benchSucceededEv(i, benchTS(i)+0.2)) })
	failed := benchRound(func(i int) string { return payload(benchFailedEv(i, benchTS(i)+0.2)) })
	// Two tasks per batch: received+started of one, received+started of the next half of the round.
	multi := benchRound(func(i int) string {
		j := (i + benchTasks/2) % benchTasks
		return payload(benchReceivedEv(i, benchTS(i)+0.001), benchStartedEv(i, benchTS(i)+0.002),
			benchReceivedEv(j, benchTS(j)+0.001), benchStartedEv(j, benchTS(j)+0.002))
	})[:benchTasks/2]
	finish := benchRound(func(i int) string {
		return payload(benchStartedEv(i, benchTS(i)+0.002), benchSucceededEv(i, benchTS(i)+0.2))
	})
	receivedAll := benchRound(func(i int) string {
		return payload(benchReceivedEv(i, benchTS(i)+0.001), benchStartedEv(i, benchTS(i)+0.002),
			benchSucceededEv(i, benchTS(i)+0.2))
	})
	none := [][]string{}
	b.Run("task-sent", func(b *testing.B) {
		benchLifecycle(b, "task-sent", none, [][]string{sent}, [][]string{receivedAll}, 1, 1)
	})
	b.Run("task-received", func(b *testing.B) {
		benchLifecycle(b, "task-received", [][]string{sent}, [][]string{received}, [][]string{finish}, 1, 1)
	})
	b.Run("task-started", func(b *testing.B) {
		benchLifecycle(b, "task-started", [][]string{sent, received}, [][]string{started}, [][]string{succeeded}, 1, 1)
	})
	b.Run("task-succeeded", func(b *testing.B) {
		benchLifecycle(b, "task-succeeded", [][]string{sent, received, started}, [][]string{succeeded}, none, 1, 1)
	})
	b.Run("task-failed", func(b *testing.B) {
		benchLifecycle(b, "task-failed", [][]string{sent, received, started}, [][]string{failed}, none, 1, 1)
	})
	b.Run("task.multi-4", func(b *testing.B) {
		// Counted by its task-received events: two per batch.
		benchLifecycle(b, "task-received", [][]string{sent}, [][]string{multi}, [][]string{succeeded}, 4, 2)
	})
	b.Run("worker-heartbeat", func(b *testing.B) {
		hb := make([]string, benchWorkers*64)
		for i := range hb {
			hb[i] = payload(benchHeartbeatEv(i%benchWorkers, 1000+i, benchTS(i)))
		}
		benchLifecycle(b, "worker-heartbeat", none, [][]string{hb}, none, 1, 1)
	})
}

// benchMixStream is realistic traffic as a ring of messages: per task, its task-sent from a
// producer, then a task.multi of received+started and one of succeeded (2% fail with a
// traceback) from its worker, interleaved with the tasks around it; for a tenth of the tasks the
// worker's batch comes ahead of the task-sent (the producer's race); a heartbeat every 16 tasks.
// The ring is circular, so replaying it is a steady state: every task finishes. prefix is what
// came before the ring's first turn (the last two tasks' task-sent and first batch).
func benchMixStream() (prefix, msgs []string, events int) {
	ring := func(i int) int { return (i + benchTasks) % benchTasks }
	late := func(t int) bool { return t%10 == 0 } // its task-sent comes after its first batch
	for k := 0; k < benchTasks; k++ {
		if !late(k) {
			msgs = append(msgs, payload(benchSentEv(k, benchTS(k))))
		}
		b := ring(k - 1)
		msgs = append(msgs, payload(benchReceivedEv(b, benchTS(b)+0.001), benchStartedEv(b, benchTS(b)+0.002)))
		if late(b) {
			msgs = append(msgs, payload(benchSentEv(b, benchTS(b))))
		}
		d := ring(k - 2)
		if d%50 == 0 {
			msgs = append(msgs, payload(benchFailedEv(d, benchTS(d)+0.2)))
		} else {
			msgs = append(msgs, payload(benchSucceededEv(d, benchTS(d)+0.2)))
		}
		events += 4
		if k%16 == 0 {
			msgs = append(msgs, payload(benchHeartbeatEv(k/16, 1000+k, benchTS(k))))
			events++
		}
	}
	a, z := benchTasks-2, benchTasks-1
	prefix = []string{payload(benchSentEv(a, benchTS(a))),
		payload(benchReceivedEv(a, benchTS(a)+0.001), benchStartedEv(a, benchTS(a)+0.002)),
		payload(benchSentEv(z, benchTS(z)))}
	return prefix, msgs, events
}

// BenchmarkHandlePayloadMix measures HandlePayload on the realistic mix; ns/op is per message.
func BenchmarkHandlePayloadMix(b *testing.B) {
	prefix, msgs, events := benchMixStream()
	src := benchSource()
	// Warm-up: every series exists, the ring is in its steady state.
	for _, p := range append(prefix, msgs...) {
		src.HandlePayload(p)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		src.HandlePayload(msgs[i%len(msgs)])
		if i%65536 == 0 {
			src.Tick() // as Run does every 250 ms
		}
	}
	b.StopTimer()
	if errs := benchErrors(src); errs != 0 {
		b.Fatalf("%v event errors: the mix has bad events", errs)
	}
	// Only the tasks in flight where the ring stopped remain: sent, started, about to finish.
	if tracked := src.cache.Len(); tracked > 3 {
		b.Fatalf("%d tasks tracked: the mix leaks tasks", tracked)
	}
	perMsg := float64(events) / float64(len(msgs))
	b.ReportMetric(perMsg, "events/msg")
	b.ReportMetric(float64(b.N)*perMsg/b.Elapsed().Seconds(), "events/s")
}

// The mix measures what it claims: one pass over it counts every task once, with the queue of its
// task-sent even when the worker's batch came first, and nothing is held or lost.
func TestBenchMixStream(t *testing.T) {
	prefix, msgs, events := benchMixStream()
	src := benchSource()
	for _, p := range append(prefix, msgs...) {
		src.HandlePayload(p)
	}
	got := samples(t, AsCollector(src))
	sum := func(metric string) float64 {
		total := 0.0
		for _, v := range only(got, metric) {
			total += v
		}
		return total
	}
	failed := float64((benchTasks-1)/50 + 1) // tasks 0, 50, …
	for _, c := range []struct {
		metric string
		want   float64
	}{
		{"celery_task_sent_total", benchTasks + 2}, // the prefix's two
		{"celery_task_received_total", benchTasks + 1},
		{"celery_task_started_total", benchTasks + 1},
		{"celery_task_succeeded_total", benchTasks - failed},
		{"celery_task_failed_total", failed},
		{"celery_exporter_events_total", float64(events + 4)},
		{"celery_exporter_event_errors_total", 0},
		{"celery_exporter_tracked_tasks", 2}, // the last two tasks of the ring, in flight
	} {
		if v := sum(c.metric); v != c.want {
			t.Errorf("%s = %v, want %v", c.metric, v, c.want)
		}
	}
	// Task i runs on worker i%8 and is named i%100: 200 (name, worker) pairs, each with its
	// succeeded series; those of the names 0 and 50, whose tasks all fail, stay at 0.
	if n := len(only(got, "celery_task_succeeded_total")); n != 200 {
		t.Errorf("%d succeeded series, want 200", n)
	}
	// The failures of names 0 and 50 (4 series), plus the series of the default initial
	// exceptions created at 0 for each of the 200 pairs.
	if n, want := len(only(got, "celery_task_failed_total")), 4+200*len(DefaultEventOptions().InitialExceptions); n != want {
		t.Errorf("%d failed series, want %d", n, want)
	}
	for k := range got {
		if !strings.HasPrefix(k, "celery_task_") {
			continue
		}
		var name int
		if i := strings.Index(k, `name="app.tasks.task_`); i < 0 {
			t.Errorf("no task name: %s", k)
		} else if _, err := fmt.Sscanf(k[i+len(`name="app.tasks.task_`):], "%03d", &name); err != nil {
			t.Errorf("%s: %v", k, err)
		} else if want := `queue_name="` + benchQueue(name) + `"`; !strings.Contains(k, want) {
			t.Errorf("%s: want %s", k, want)
		}
	}
}
