package amqp

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/celery-exporter/celery_exporter/internal/kombu"
)

// Endpoint is one broker of a (failover) URL list.
type Endpoint struct {
	Scheme   string // amqp or amqps
	Host     string // host:port
	Username string
	Password string
	Vhost    string
	TLS      *tls.Config
	// InsecureTLSDefault: amqps:// without ssl_cert_reqs, so the certificate is not verified (as
	// py-amqp does with ssl=True and no options).
	InsecureTLSDefault bool
}

// schemes are the AMQP transports kombu maps to RabbitMQ (kombu/transport/__init__.py).
var schemes = map[string]string{"amqp": "amqp", "pyamqp": "amqp", "librabbitmq": "amqp", "amqps": "amqps"}

// IsURL reports whether a broker URL (or the first of a `;` list) selects the AMQP transport.
func IsURL(raw string) bool {
	first, _, _ := strings.Cut(strings.TrimSpace(raw), ";")
	scheme, _, ok := strings.Cut(strings.TrimSpace(first), "://")
	_, known := schemes[strings.ToLower(scheme)]
	return ok && known
}

func errURL(format string, args ...any) error {
	return fmt.Errorf("broker URL: "+format, args...)
}

// ParseURL parses an AMQP broker URL as kombu does (kombu/utils/url.py): amqp://user:pass@host:port/vhost,
// with the virtual host "/" when the path is empty or "//", and amqps:// taking kombu's ssl_* URL
// options (ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_check_hostname), as for
// rediss://. A worker's broker_use_ssl names them as py-amqp does (cert_reqs, ca_certs, ...): Celery
// 5.2's py-amqp refuses ssl_* keys in an amqps:// URL, so workers cannot share the exporter's URL. Several `;`-separated URLs are failover alternates, tried in turn as
// kombu's round-robin failover strategy does. Errors never contain the password.
func ParseURL(raw string) ([]Endpoint, error) {
	var out []Endpoint
	for i, p := range strings.Split(strings.TrimSpace(raw), ";") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		e, err := parseOne(p)
		if err != nil {
			return nil, fmt.Errorf("part %d: %w", i+1, err)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errURL("empty")
	}
	return out, nil
}

func parseOne(raw string) (Endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL, password included
		}
		return Endpoint{}, errURL("%v", err)
	}
	scheme, ok := schemes[strings.ToLower(u.Scheme)]
	if !ok {
		return Endpoint{}, errURL("unsupported scheme %q (want amqp, amqps or pyamqp)", u.Scheme)
	}
	e := Endpoint{Scheme: scheme, Username: "guest", Password: "guest"} // kombu's defaults
	if u.User != nil {
		e.Username = u.User.Username()
		if p, ok := u.User.Password(); ok {
			e.Password = p
		}
	}
	host := u.Hostname()
	if host == "" {
		host = "localhost"
	}
	port := u.Port()
	if port == "" {
		port = "5672"
		if scheme == "amqps" {
			port = "5671"
		}
	}
	if _, err := strconv.Atoi(port); err != nil {
		return Endpoint{}, errURL("invalid port %q", port)
	}
	e.Host = net.JoinHostPort(host, port)
	// kombu: the path without its first "/" is the virtual host, "/" when empty.
	e.Vhost = strings.TrimPrefix(u.Path, "/")
	if e.Vhost == "" {
		e.Vhost = "/"
	}
	q := u.Query()
	if scheme != "amqps" {
		if len(q) > 0 {
			return Endpoint{}, errURL("query options (ssl_*) need the amqps:// scheme")
		}
		return e, nil
	}
	cfg, err := kombu.SSLConfig(q, host)
	if err != nil {
		return Endpoint{}, err
	}
	e.TLS, e.InsecureTLSDefault = cfg.Config, cfg.InsecureDefault
	return e, nil
}

// Redacted is the endpoint for logs and metrics, without the password.
func (e Endpoint) Redacted() string {
	u := url.URL{Scheme: e.Scheme, Host: e.Host, User: url.User(e.Username), Path: "/" + e.Vhost}
	return u.String()
}

// Redacted joins the endpoints' redacted forms as the URL list was given.
func Redacted(es []Endpoint) string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Redacted()
	}
	return strings.Join(parts, ";")
}

// ConnectionName is the connection_name client property the exporter's connections carry, so
// `rabbitmqctl list_connections client_properties` and the management UI show whose they are.
const ConnectionName = "celery_exporter"

// dial opens a connection to one endpoint.
func (e Endpoint) dial(purpose string, timeout time.Duration) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(ConnectionName + " " + purpose)
	cfg := amqp.Config{
		SASL:            []amqp.Authentication{&amqp.PlainAuth{Username: e.Username, Password: e.Password}},
		Vhost:           e.Vhost,
		Heartbeat:       10 * time.Second,
		TLSClientConfig: e.TLS,
		Properties:      props,
		Dial:            amqp.DefaultDial(timeout),
	}
	u := url.URL{Scheme: e.Scheme, Host: e.Host, Path: "/"}
	c, err := amqp.DialConfig(u.String(), cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", e.Redacted(), err)
	}
	return c, nil
}

// Dialer connects to the first endpoint that answers, starting with the one that answered last.
type Dialer struct {
	Endpoints []Endpoint
	Timeout   time.Duration
	next      int
}

// Dial opens a connection; purpose names it for the broker's view (events, queues, control).
// Not safe for concurrent use: each user has its own Dialer.
func (d *Dialer) Dial(purpose string) (*amqp.Connection, error) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	var errs []error
	for i := range d.Endpoints {
		k := (d.next + i) % len(d.Endpoints)
		c, err := d.Endpoints[k].dial(purpose, timeout)
		if err == nil {
			d.next = k
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}
