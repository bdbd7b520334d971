package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// TestRabbitMQTLS: amqps:// against the shared server's real TLS listener (a throwaway CA's
// certificate). With the CA and ssl_cert_reqs=required the exporter connects over TLS (the
// server's own list_connections says so), counts the tasks of a worker that is itself on amqps
// (broker_use_ssl, as Celery users configure TLS for py-amqp) exactly as the wire carried them,
// and gets remote-control replies; with another CA it is refused, reads 0 and logs why without
// the password; amqps:// without ssl_cert_reqs connects unverified and says so in a warning.
func TestRabbitMQTLS(t *testing.T) {
	r, vh, url := rabbitVhost(t)
	if r.TLSPort == 0 {
		t.Fatal("the shared rabbitmq-server has no TLS listener")
	}
	// A user of the test's own: its password is distinctive, so a log that leaks it is caught.
	user, password := "tls-"+vh, "tls-pw-Zq81xv"
	r.AddUser(t, vh, user, password)
	other, err := harness.NewTLSFiles(t.TempDir()) // a CA the server's certificate does not chain to
	if err != nil {
		t.Fatal(err)
	}
	required := func(ca string) string {
		return r.TLSURL(user, password, vh, "ssl_ca_certs="+ca+"&ssl_cert_reqs=required")
	}

	rec := harness.RecordAMQP(t, url)
	args := []string{"--celery.queues=celery", "--control.interval=1s", "--worker.timeout=" + workerTimeout.String()}
	verified := harness.StartExporter(t, append(args, "--broker.url="+required(r.TLS.CA))...)
	wrongCA := harness.StartExporter(t, append(args, "--broker.url="+required(other.CA))...)
	unverified := harness.StartExporter(t, append(args, "--broker.url="+r.TLSURL("guest", "guest", vh, ""))...)
	verified.WaitReady(t, 30*time.Second)
	unverified.WaitReady(t, 30*time.Second)

	sslOpts, err := json.Marshal(map[string]string{"ca_certs": r.TLS.CA, "cert_reqs": "required"})
	if err != nil {
		t.Fatal(err)
	}
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: r.TLSURL(user, password, vh, ""), Pool: "solo", NodeName: "solo@tls",
		Events: true, HeartbeatInterval: heartbeat, Env: []string{"CELERY_BROKER_USE_SSL=" + string(sslOpts)}})
	ids := harness.Produce(t, url, nil, []harness.Send{{Task: "add", Args: []any{1, 2}}, {Task: "fail", Args: []any{"tls"}}, {Task: "add", Args: []any{3, 4}}})
	rec.WaitFinished(t, 60*time.Second, ids...)
	rec.WaitQuiet(t, "task-", time.Second, 30*time.Second)

	want := harness.WithZeroSeries(rec.ExpectedTaskCounters("celery"), harness.DefaultInitialExceptions...)
	for name, exp := range map[string]*harness.Exporter{"verified": verified, "unverified": unverified} {
		t.Run(name, func(t *testing.T) {
			agree(t, exp, 15*time.Second, want, taskCounters...)
			m := exp.WaitFor(t, 15*time.Second, func(m harness.Metrics) bool {
				ping, _ := m.Value("celery_worker_ping_ok", map[string]string{"hostname": w.NodeName})
				return ping == 1
			})
			for _, s := range []string{"celery_up", "celery_exporter_subscription_up"} {
				if v, ok := m.Value(s, nil); !ok || v != 1 {
					t.Errorf("%s = %v (present %v), want 1", s, v, ok)
				}
			}
			if v, _ := workerUp(m, w.NodeName); v != 1 {
				t.Errorf("celery_worker_up{hostname=%q} = %v, want 1", w.NodeName, v)
			}
		})
	}
	const warning = "amqps:// without ssl_cert_reqs"
	if !strings.Contains(unverified.Log(), warning) {
		t.Errorf("no warning %q for amqps:// without ssl_cert_reqs:\n%s", warning, harness.Tail(unverified.Log(), 20))
	}
	if strings.Contains(verified.Log(), warning) {
		t.Errorf("warning %q with ssl_cert_reqs=required", warning)
	}

	// The server's own view: every connection of the test's user, the exporters' and the
	// worker's, is TLS.
	var exporterConns int
	for _, row := range r.Table(t, "list_connections", "user", "ssl", "client_properties") {
		f := strings.SplitN(row, "\t", 3)
		if len(f) < 3 || f[0] != user {
			continue
		}
		if f[1] != "true" {
			t.Errorf("a connection of %s is not TLS: %s", user, row)
		}
		if strings.Contains(f[2], "celery_exporter events") {
			exporterConns++
		}
	}
	// The verified exporter's event consumer; the wrong-CA one never got past the handshake.
	if exporterConns != 1 {
		t.Errorf("%d TLS event connections of the exporters as %s, want 1 (the verified exporter's)", exporterConns, user)
	}

	t.Run("wrong CA", func(t *testing.T) {
		m := wrongCA.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
			up, ok := m.Value("celery_up", nil)
			sub, _ := m.Value("celery_exporter_subscription_up", nil)
			return ok && up == 0 && sub == 0
		})
		if m.Sum("celery_task_succeeded_total", nil)+m.Sum("celery_task_failed_total", nil) != 0 {
			t.Errorf("the exporter refused by TLS counted tasks")
		}
		if code, _, err := wrongCA.Get("/-/ready"); err != nil || code == 200 {
			t.Errorf("/-/ready = %d (%v), want not ready: the event stream was never subscribed", code, err)
		}
		log := wrongCA.Log()
		if !strings.Contains(log, "certificate signed by unknown authority") {
			t.Errorf("the TLS refusal is not logged:\n%s", harness.Tail(log, 20))
		}
	})
	for name, exp := range map[string]*harness.Exporter{"verified": verified, "wrong CA": wrongCA, "unverified": unverified} {
		if strings.Contains(exp.Log(), password) {
			t.Errorf("the %s exporter's log holds the password", name)
		}
	}
}

// TestRabbitMQFailover: a `;` list as Celery takes it, the first broker dead, then two real,
// independent nodes. The exporter starts on the first live one (the test's own node B: the
// worker on the shared node A is not seen); when B shuts down, the exporter moves to A by itself:
// up again, one reconnect counted and logged once, A's worker seen and answering remote control,
// and A's own list_queues holding the exporter's event queue.
func TestRabbitMQFailover(t *testing.T) {
	a, vh, urlA := rabbitVhost(t)
	// B boots (5–15 s) while the worker starts on A.
	type launched struct {
		r   *harness.RabbitMQ
		err error
	}
	boot := make(chan launched, 1)
	go func() {
		r, err := harness.LaunchRabbitMQ(harness.RabbitMQOptions{})
		boot <- launched{r, err}
	}()
	w := harness.StartWorker(t, harness.WorkerOptions{BrokerURL: urlA, Pool: "solo", NodeName: "solo@failover",
		Events: true, HeartbeatInterval: heartbeat})
	l := <-boot
	if l.err != nil {
		t.Fatal(l.err)
	}
	b := l.r
	t.Cleanup(b.Shutdown)
	// Node B is the test's own: its default vhost "/" will do (each URL of a list has its own).
	dead := strings.Replace(urlA, fmt.Sprintf(":%d/", a.Port), fmt.Sprintf(":%d/", harness.FreePort(t)), 1)

	exp := harness.StartExporter(t, "--broker.url="+dead+";"+b.URL("")+";"+urlA, "--celery.queues=celery",
		"--control.interval=1s", "--worker.timeout="+workerTimeout.String())
	exp.WaitReady(t, 30*time.Second)
	m := exp.WaitFor(t, 30*time.Second, func(m harness.Metrics) bool {
		up, _ := m.Value("celery_up", nil)
		sub, _ := m.Value("celery_exporter_subscription_up", nil)
		return up == 1 && sub == 1
	})
	if _, ok := workerUp(m, w.NodeName); ok {
		t.Fatalf("the exporter sees %s of node A before the failover: it is not on node B", w.NodeName)
	}
	if n, _ := m.Value("celery_exporter_subscription_reconnects_total", nil); n != 0 {
		t.Errorf("celery_exporter_subscription_reconnects_total = %v before the failover, want 0", n)
	}
	if !hasEventQueue(b.ListQueues(t, "/")) {
		t.Errorf("node B has no celeryev.* queue of the exporter before the failover")
	}

	stopping := time.Now()
	b.Shutdown() // returns once the node is down
	exp.WaitFor(t, 60*time.Second, func(m harness.Metrics) bool {
		up, _ := m.Value("celery_up", nil)
		sub, _ := m.Value("celery_exporter_subscription_up", nil)
		n, _ := m.Value("celery_exporter_subscription_reconnects_total", nil)
		wup, _ := workerUp(m, w.NodeName)
		ping, _ := m.Value("celery_worker_ping_ok", map[string]string{"hostname": w.NodeName})
		return up == 1 && sub == 1 && n == 1 && wup == 1 && ping == 1
	})
	t.Logf("on node A %v after node B was told to shut down", time.Since(stopping).Round(100*time.Millisecond))
	if !hasEventQueue(a.ListQueues(t, vh)) {
		t.Errorf("node A has no celeryev.* queue of the exporter after the failover")
	}
	if n := strings.Count(exp.Log(), "event consumer lost"); n != 1 {
		t.Errorf("the failover was logged %d times, want once:\n%s", n, harness.Tail(exp.Log(), 30))
	}
}

func hasEventQueue(queues map[string]harness.QueueInfo) bool {
	for name := range queues {
		if strings.HasPrefix(name, "celeryev.") {
			return true
		}
	}
	return false
}
