package harness

import (
	"testing"
)

// TestRabbitMQBootsAndLists checks the harness itself: a node boots as a local process, a vhost
// is created, and list_queues answers for it.
func TestRabbitMQBootsAndLists(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a rabbitmq-server")
	}
	r := StartRabbitMQ(t, RabbitMQOptions{})
	vh := r.Vhost(t)
	if got := r.ListQueues(t, vh); len(got) != 0 {
		t.Fatalf("fresh vhost has queues: %v", got)
	}
	r.Ctl(t, "eval", `rabbit_amqqueue:declare(rabbit_misc:r(<<"`+vh+`">>, queue, <<"q1">>), true, false, [], none, <<"test">>).`)
	if got := r.ListQueues(t, vh); got["q1"] != (QueueInfo{}) || len(got) != 1 {
		t.Fatalf("list_queues = %v, want q1 empty", got)
	}
}
