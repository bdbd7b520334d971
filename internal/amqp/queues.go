package amqp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
)

// QueueState is what the broker says about one queue.
type QueueState struct {
	// Exists is false for a queue the broker does not know (a passive declare's 404): it reads 0.
	Exists bool
	// Ready is the number of messages waiting (a passive declare's message_count, or the
	// management API's messages_ready); priority queues count every priority.
	Ready int64
	// Unacked is known only from the management API (HasUnacked).
	Unacked    int64
	HasUnacked bool
	Consumers  int64
	// HeadTimestamp is the AMQP timestamp of the oldest waiting message, from the management API
	// (head_message_timestamp), when its publisher set one; zero otherwise.
	HeadTimestamp time.Time
}

// Inspector reads queue state without consuming anything and without creating queues: a passive
// queue.declare per queue. A 404 closes the channel, which is reopened for the next queue. Safe
// for concurrent use.
type Inspector struct {
	mu     sync.Mutex
	dialer *Dialer
	conn   *amqp.Connection
	ch     *amqp.Channel
}

// NewInspector returns an inspector that connects on first use.
func NewInspector(endpoints []Endpoint) *Inspector {
	return &Inspector{dialer: &Dialer{Endpoints: endpoints}}
}

// Close closes the inspector's connection.
func (in *Inspector) Close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.conn != nil {
		in.conn.Close()
		in.conn, in.ch = nil, nil
	}
}

func (in *Inspector) channel() (*amqp.Channel, error) {
	if in.conn == nil || in.conn.IsClosed() {
		in.conn, in.ch = nil, nil
		c, err := in.dialer.Dial("queues")
		if err != nil {
			return nil, err
		}
		in.conn = c
	}
	if in.ch == nil || in.ch.IsClosed() {
		ch, err := in.conn.Channel()
		if err != nil {
			in.conn.Close()
			in.conn = nil
			return nil, fmt.Errorf("open channel: %w", err)
		}
		in.ch = ch
	}
	return in.ch, nil
}

// Ping checks that the broker answers: the inspector's connection is up, or can be made.
func (in *Inspector) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	_, err := in.channel()
	return err
}

// Inspect reads every queue's state. An error is about the broker (connection, permissions), not
// about a missing queue.
func (in *Inspector) Inspect(ctx context.Context, names []string) (map[string]QueueState, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if len(names) == 0 {
		// No queue to read, but the broker's state is still the answer (celery_up): without
		// this, a broker whose queues are not known yet would be up while unreachable.
		if _, err := in.channel(); err != nil {
			return nil, err
		}
	}
	out := make(map[string]QueueState, len(names))
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ch, err := in.channel()
		if err != nil {
			return nil, err
		}
		q, err := ch.QueueDeclarePassive(n, false, false, false, false, nil)
		var ae *amqp.Error
		switch {
		case err == nil:
			out[n] = QueueState{Exists: true, Ready: int64(q.Messages), Consumers: int64(q.Consumers)}
		case errors.As(err, &ae) && ae.Code == amqp.NotFound:
			out[n] = QueueState{} // the channel is closed; channel() reopens it
		default:
			in.ch = nil
			return nil, fmt.Errorf("passive declare of queue %q: %w", n, err)
		}
	}
	return out, nil
}

// Management reads queue state from the RabbitMQ management API (GET /api/queues/<vhost>), which
// adds unacked messages and the head message's timestamp to what a passive declare gives, and
// lists the vhost's queues.
type Management struct {
	base     *url.URL
	vhost    string
	user     string
	password string
	client   *http.Client
}

// NewManagement returns a client of the management API at rawURL (http://host:15672). Without
// credentials in rawURL, the broker's are used.
func NewManagement(rawURL string, broker Endpoint, client *http.Client) (*Management, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("--broker.management-url: want http(s)://host:port")
	}
	m := &Management{base: u, vhost: broker.Vhost, user: broker.Username, password: broker.Password, client: client}
	if u.User != nil {
		m.user = u.User.Username()
		m.password, _ = u.User.Password()
		u.User = nil
	}
	if m.client == nil {
		m.client = &http.Client{Timeout: 10 * time.Second}
	}
	return m, nil
}

// Redacted is the API's URL without credentials.
func (m *Management) Redacted() string { return m.base.String() }

type mgmtQueue struct {
	Name                   string `json:"name"`
	Messages               *int64 `json:"messages"`
	MessagesReady          *int64 `json:"messages_ready"`
	MessagesUnacknowledged *int64 `json:"messages_unacknowledged"`
	Consumers              *int64 `json:"consumers"`
	HeadMessageTimestamp   *int64 `json:"head_message_timestamp"`
}

// maxManagementBody bounds the queue listing read (a vhost of many thousand queues).
const maxManagementBody = 64 << 20

// Queues lists every queue of the vhost with its state.
func (m *Management) Queues(ctx context.Context) (map[string]QueueState, error) {
	// The vhost is one path segment: "/" is sent as %2F.
	target := strings.TrimSuffix(m.base.String(), "/") + "/api/queues/" + url.PathEscape(m.vhost) +
		"?columns=name,messages,messages_ready,messages_unacknowledged,consumers,head_message_timestamp"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(m.user, m.password)
	resp, err := m.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("management API: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("management API: GET /api/queues: %s", resp.Status)
	}
	var qs []mgmtQueue
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxManagementBody)).Decode(&qs); err != nil {
		return nil, fmt.Errorf("management API: decode queues: %w", err)
	}
	out := make(map[string]QueueState, len(qs))
	for _, q := range qs {
		st := QueueState{Exists: true}
		switch {
		case q.MessagesReady != nil:
			st.Ready = *q.MessagesReady
		case q.Messages != nil:
			st.Ready = *q.Messages
		}
		if q.MessagesUnacknowledged != nil {
			st.Unacked, st.HasUnacked = *q.MessagesUnacknowledged, true
		}
		if q.Consumers != nil {
			st.Consumers = *q.Consumers
		}
		if q.HeadMessageTimestamp != nil && *q.HeadMessageTimestamp > 0 {
			st.HeadTimestamp = time.Unix(*q.HeadMessageTimestamp, 0)
		}
		out[q.Name] = st
	}
	return out, nil
}

// QueueReader reads the state of the queues the exporter reports: with the management API every
// task queue of the vhost plus the named ones, else the named ones by passive declare.
type QueueReader struct {
	Inspector  *Inspector
	Management *Management // nil: passive declares only
	// EventQueuePrefix and ControlExchange name the queues that are not task queues: event
	// receivers ("celeryev.*"), worker mailboxes ("*.celery.pidbox") and reply queues.
	EventQueuePrefix, ControlExchange string
}

// Read returns the state of every named queue (Exists false for a missing one) and, from the
// management API, of every other task queue of the vhost.
func (r *QueueReader) Read(ctx context.Context, names []string) (map[string]QueueState, error) {
	if r.Management == nil {
		return r.Inspector.Inspect(ctx, names)
	}
	all, err := r.Management.Queues(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]QueueState, len(names))
	for n, st := range all {
		if r.TaskQueue(n) {
			out[n] = st
		}
	}
	for _, n := range names {
		out[n] = all[n] // the zero state, Exists false, when absent
	}
	return out, nil
}

// TaskQueue reports whether a queue of the broker may hold tasks: not an event receiver's queue,
// a worker's mailbox or a remote-control reply queue, nor a server-named one.
func (r *QueueReader) TaskQueue(name string) bool {
	prefix, control := r.EventQueuePrefix, r.ControlExchange
	if prefix == "" {
		prefix = EventQueuePrefix
	}
	if control == "" {
		control = kombu.DefaultControlExchange
	}
	return !strings.HasPrefix(name, prefix+".") && !strings.HasSuffix(name, "."+kombu.PidboxExchange(control)) &&
		!strings.HasPrefix(name, "amq.")
}
