package listener

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/go-kit/log"
	"github.com/redis/go-redis/v9"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The reader hands payloads on without waiting: past the buffer it drops and counts, and it
// reconnects by itself after the server goes away.
func TestSubscriberDropsInsteadOfBlockingAndReconnects(t *testing.T) {
	srv := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), Protocol: 2, DisableIdentity: true})
	defer client.Close()
	sub := New(log.NewNopLogger(), client, []string{"/0.celeryev/*"}, 2)
	sub.MinBackoff = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sub.Run(ctx); close(done) }()

	waitFor(t, "the subscription", sub.Up)
	if !sub.Ready() {
		t.Fatal("ready once subscribed")
	}
	for i := 0; i < 5; i++ {
		srv.Publish("/0.celeryev/task.multi", "payload")
	}
	srv.Publish("/0.other/x", "not ours")
	waitFor(t, "5 payloads read", func() bool { return sub.Received() == 5 })
	if got := sub.Dropped(); got != 3 {
		t.Fatalf("dropped %d of 5 with a buffer of 2, want 3", got)
	}
	if got := len(sub.Out()); got != 2 {
		t.Fatalf("%d payloads waiting, want 2", got)
	}

	srv.Close()
	waitFor(t, "the loss to show", func() bool { return !sub.Up() })
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the subscription to come back", sub.Up)
	if got := sub.Reconnects(); got != 1 {
		t.Fatalf("reconnects = %d, want 1", got)
	}
	<-sub.Out()
	<-sub.Out()
	srv.Publish("/0.celeryev/worker.heartbeat", "after")
	select {
	case p := <-sub.Out():
		if p != "after" {
			t.Fatalf("got %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no payload after the reconnect")
	}

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return on cancel")
	}
	if _, open := <-sub.Out(); open {
		t.Fatal("Out must be closed when Run returns")
	}
}
