package amqp

import (
	"context"
	"net"
	"testing"
)

// An unreachable broker is an error even when no queue is known yet (celery_up 0), as on Redis.
func TestInspectUnreachableBrokerWithoutQueues(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	endpoints, err := ParseURL("amqp://guest:guest@" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	in := NewInspector(endpoints)
	defer in.Close()
	for _, names := range [][]string{nil, {"celery"}} {
		if _, err := in.Inspect(context.Background(), names); err == nil {
			t.Errorf("Inspect(%q) of an unreachable broker: no error", names)
		}
	}
}
