package collector

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"

	"github.com/celery-exporter/celery_exporter/internal/amqp"
	"github.com/celery-exporter/celery_exporter/internal/clock"
	"github.com/celery-exporter/celery_exporter/internal/state"
)

type fakeQueueReader struct {
	states map[string]amqp.QueueState
	err    error
	asked  []string
}

func (f *fakeQueueReader) Read(_ context.Context, names []string) (map[string]amqp.QueueState, error) {
	f.asked = names
	if f.err != nil {
		return nil, f.err
	}
	out := map[string]amqp.QueueState{}
	for _, n := range names {
		out[n] = f.states[n]
	}
	maps.Copy(out, f.states)
	return out, nil
}

// modelWithQueues is a model in which remote control found a worker consuming queues.
func modelWithQueues(queues ...string) *state.Model {
	m, clk := newTestModel(state.Options{})
	m.Queues.Record(state.QueueRound{At: clk.Now(), StaleAfter: time.Minute, Queues: map[string][]string{"celery@w": queues}})
	return m
}

func TestQueueStateScraper(t *testing.T) {
	now := time.Unix(1700000100, 0)
	for _, tt := range []struct {
		name   string
		reader *fakeQueueReader
		want   string
		err    bool
	}{
		{
			name: "passive declares",
			reader: &fakeQueueReader{states: map[string]amqp.QueueState{
				"celery": {Exists: true, Ready: 3, Consumers: 2},
			}},
			want: `
celery_queue_consumers{queue_name="celery"} 2
celery_queue_consumers{queue_name="dyn"} 0
celery_queue_consumers{queue_name="missing"} 0
celery_queue_length{queue_name="celery"} 3
celery_queue_length{queue_name="dyn"} 0
celery_queue_length{queue_name="missing"} 0
celery_up{} 1
`,
		},
		{
			name: "management API",
			reader: &fakeQueueReader{states: map[string]amqp.QueueState{
				"celery":     {Exists: true, Ready: 3, Unacked: 4, HasUnacked: true, Consumers: 1, HeadTimestamp: time.Unix(1700000000, 0)},
				"discovered": {Exists: true, HasUnacked: true, HeadTimestamp: time.Unix(1700000000, 0)},
			}},
			want: `
celery_queue_oldest_message_age_seconds{queue_name="celery"} 100
celery_queue_unacked{queue_name="celery"} 4
celery_queue_unacked{queue_name="discovered"} 0
`,
		},
		{
			name:   "broker down",
			reader: &fakeQueueReader{err: errors.New("connection refused")},
			want: `
celery_up{} 0
`,
			err: true,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := NewQueueStateScraper(log.NewNopLogger(), tt.reader, []string{"missing", ""}, modelWithQueues("dyn"))
			s.clock = clock.NewFake(now)
			names := []string{"celery_up", "celery_queue_length", "celery_queue_consumers"}
			if strings.Contains(tt.want, "unacked") {
				names = []string{"celery_queue_unacked", "celery_queue_oldest_message_age_seconds"}
			}
			got, err := collectText(t, s, names...)
			if (err != nil) != tt.err {
				t.Errorf("err = %v, want error %v", err, tt.err)
			}
			if strings.TrimSpace(got) != strings.TrimSpace(tt.want) {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
			if want := []string{"dyn", "missing"}; strings.Join(tt.reader.asked, ",") != strings.Join(want, ",") {
				t.Errorf("asked for %v, want %v (static and dynamic, no empty name)", tt.reader.asked, want)
			}
		})
	}
}
