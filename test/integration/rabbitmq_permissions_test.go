package integration

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// permissionLines reads the `rabbitmqctl set_permissions -p / USER 'CONF' 'WRITE' 'READ'` lines of
// docs/rabbitmq-permissions.md, by user.
func permissionLines(t *testing.T) map[string][3]string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(harness.ModuleRoot(t), "docs", "rabbitmq-permissions.md"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^rabbitmqctl set_permissions -p / (\S+) '([^']*)' '([^']*)' '([^']*)'$`)
	out := map[string][3]string{}
	for _, m := range re.FindAllStringSubmatch(string(doc), -1) {
		out[m[1]] = [3]string{m[2], m[3], m[4]}
	}
	return out
}

// accessRefused tells whether err is the broker's ACCESS_REFUSED (403).
func accessRefused(err error) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Code == amqp.AccessRefused
}

// TestRabbitMQPermissions creates the users of docs/rabbitmq-permissions.md on a real server and
// runs the exporter and a Celery worker with them: every source works in its mode, and the broker
// refuses more (another queue, a task queue's messages, remote control for the read-only user).
func TestRabbitMQPermissions(t *testing.T) {
	r, vh, url := rabbitVhost(t)
	perms := permissionLines(t)
	if len(perms) != 2 {
		t.Fatalf("docs/rabbitmq-permissions.md: want set_permissions lines for 2 users, found %v", perms)
	}
	for user, p := range perms {
		r.Ctl(t, "add_user", user, "secret")
		t.Cleanup(func() { _, _ = r.CtlErr("delete_user", user) })
		r.Ctl(t, "set_permissions", "-p", vh, user, p[0], p[1], p[2])
	}
	harness.StartWorker(t, harness.WorkerOptions{BrokerURL: url, Pool: "solo", NodeName: "solo@perms", Events: true, HeartbeatInterval: heartbeat})
	harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{1, 1}, Queue: "waiting"}})

	works := func(t *testing.T, exp *harness.Exporter, control bool) {
		exp.WaitReady(t, 30*time.Second)
		m, ok := exp.Poll(30*time.Second, func(m harness.Metrics) bool {
			up, _ := workerUp(m, "solo@perms")
			depth, _ := m.Value("celery_queue_length", map[string]string{"queue_name": "waiting"})
			brokerUp, _ := m.Value("celery_up", nil)
			ping, _ := m.Value("celery_worker_ping_ok", map[string]string{"hostname": "solo@perms"})
			return up == 1 && depth == 1 && brokerUp == 1 && (!control || ping == 1)
		})
		if !ok {
			t.Errorf("the exporter does not work with these permissions: %v %v %v\n%s", m.Samples("celery_worker_up"),
				m.Samples("celery_queue_length"), m.Samples("celery_worker_ping_ok"), harness.Tail(exp.Log(), 20))
		}
		if strings.Contains(strings.ToLower(exp.Log()), "access_refused") {
			t.Errorf("the broker refused something:\n%s", harness.Tail(exp.Log(), 20))
		}
	}
	common := []string{"--celery.queues=waiting", "--control.interval=1s"}
	t.Run("normal", func(t *testing.T) {
		exp := harness.StartExporter(t, append(common, "--broker.url="+r.UserURL("celery_exporter", "secret", vh))...)
		works(t, exp, true)
	})
	t.Run("read-only", func(t *testing.T) {
		exp := harness.StartExporter(t, append(common, "--control.disabled", "--broker.url="+r.UserURL("celery_exporter_ro", "secret", vh))...)
		works(t, exp, false)
	})
	// Without --control.disabled the exporter declares the event exchange and the pidbox
	// exchanges: the read-only user may not.
	t.Run("read-only user refused normal mode", func(t *testing.T) {
		exp := harness.StartExporter(t, append(common, "--broker.url="+r.UserURL("celery_exporter_ro", "secret", vh))...)
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(strings.ToLower(exp.Log()), "access_refused") {
			if time.Now().After(deadline) {
				t.Fatalf("normal mode with the read-only user was not refused:\n%s", harness.Tail(exp.Log(), 20))
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	for user := range perms {
		t.Run(user+" refused more", func(t *testing.T) {
			for _, tt := range []struct {
				what string
				do   func(ch *amqp.Channel) error
			}{
				{"declare another queue", func(ch *amqp.Channel) error {
					_, err := ch.QueueDeclare("other", false, true, false, false, nil)
					return err
				}},
				{"consume a task queue", func(ch *amqp.Channel) error {
					_, err := ch.Consume("waiting", "", false, false, false, false, nil)
					return err
				}},
				{"delete a task queue", func(ch *amqp.Channel) error {
					_, err := ch.QueueDelete("waiting", false, false, false)
					return err
				}},
				{"declare another exchange", func(ch *amqp.Channel) error {
					return ch.ExchangeDeclare("other", "direct", false, true, false, false, nil)
				}},
			} {
				ch := amqpChannel(t, r.UserURL(user, "secret", vh))
				if err := tt.do(ch); !accessRefused(err) {
					t.Errorf("%s: %v, want ACCESS_REFUSED", tt.what, err)
				}
			}
		})
	}
}
