package listener

import (
	"context"
	"strings"
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
	sub := New(log.NewNopLogger(), client, []string{"/0.celeryev/*"}, 2, 0)
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
	if got, _ := sub.Pending(); got != 2 {
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

// The hand-off buffer is bounded in bytes as well as in payloads: with room for 1000 payloads
// but 10 KiB, 100 payloads of 1 KiB that nobody reads keep 10 and drop 90 ().
func TestSubscriberBufferBoundedInBytes(t *testing.T) {
	srv := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), Protocol: 2, DisableIdentity: true})
	defer client.Close()
	sub := New(log.NewNopLogger(), client, []string{"/0.celeryev/*"}, 1000, 10<<10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sub.Run(ctx)
	waitFor(t, "the subscription", sub.Up)
	payload := strings.Repeat("x", 1<<10)
	for i := 0; i < 100; i++ {
		srv.Publish("/0.celeryev/task.multi", payload)
	}
	waitFor(t, "100 payloads read", func() bool { return sub.Received() == 100 })
	n, bytes := sub.Pending()
	if n != 10 || bytes != 10<<10 || sub.Dropped() != 90 {
		t.Fatalf("pending %d payloads, %d bytes, dropped %d; want 10, 10240, 90", n, bytes, sub.Dropped())
	}
	for i := 0; i < 10; i++ {
		if p := <-sub.Out(); p != payload {
			t.Fatalf("payload %d: %d bytes", i, len(p))
		}
	}
	if n, bytes := sub.Pending(); n != 0 || bytes != 0 {
		t.Fatalf("after reading all: %d payloads, %d bytes pending", n, bytes)
	}
	srv.Publish("/0.celeryev/task.multi", "again")
	if p := <-sub.Out(); p != "again" {
		t.Fatalf("got %q", p)
	}
}

// A broker back after a long outage is subscribed to again within MaxBackoff (2s by default;
// it grew to 30s before, so 11s of events after the broker's return were lost), and the gap is
// counted.
func TestSubscriberBackoffStaysLow(t *testing.T) {
	srv := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), Protocol: 2, DisableIdentity: true})
	defer client.Close()
	sub := New(log.NewNopLogger(), client, []string{"/0.celeryev/*"}, 10, 0)
	if sub.MaxBackoff > 2*time.Second {
		t.Fatalf("MaxBackoff %v: a broker back after a long outage waits that long", sub.MaxBackoff)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sub.Run(ctx)
	waitFor(t, "the subscription", sub.Up)
	if d := sub.DownSeconds(); d != 0 {
		t.Fatalf("DownSeconds = %v while subscribed", d)
	}
	srv.Close()
	waitFor(t, "the loss to show", func() bool { return !sub.Up() })
	start := time.Now()
	for time.Since(start) < 3*time.Second { // the outage: let the backoff grow to its cap
		time.Sleep(100 * time.Millisecond)
	}
	if d := sub.DownSeconds(); d < 3 {
		t.Errorf("DownSeconds = %v during a 3s outage", d)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the subscription to come back", sub.Up)
	d := sub.DownSeconds()
	time.Sleep(50 * time.Millisecond)
	if sub.DownSeconds() != d {
		t.Error("DownSeconds grows while subscribed")
	}
}
