package kombu

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Broker is a parsed Celery broker URL for the Redis transport.
type Broker struct {
	// Scheme is redis, rediss, redis+socket or sentinel.
	Scheme   string
	Addrs    []string // host:port; several for sentinel
	Socket   string   // unix socket path for redis+socket
	Username string
	Password string
	DB       int
	TLS      *tls.Config
	// InsecureTLSDefault is set when a rediss:// URL named no ssl_cert_reqs: kombu then does not
	// verify the certificate, and so do we, but the user should know.
	InsecureTLSDefault bool
}

// Sentinel reports whether the broker is reached through Redis Sentinel.
func (b *Broker) Sentinel() bool { return b.Scheme == "sentinel" }

// errURL never carries the URL itself: it may hold a password.
func errURL(format string, args ...any) error {
	return fmt.Errorf("broker URL: "+format, args...)
}

// ParseURL parses every Redis form Celery accepts (kombu/utils/url.py, kombu/transport/redis.py):
// redis://[user:pass@]host[:port][/db], rediss:// with ssl_* query options,
// redis+socket:///path?virtual_host=N, sentinel://h1:26379;sentinel://h2:26379/db. Several
// `;`-separated redis:// URLs are failover alternates: the first is used. Errors never contain
// the password.
func ParseURL(raw string) (*Broker, error) {
	raw = strings.TrimSpace(raw)
	parts := strings.Split(raw, ";")
	var first *Broker
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		b, err := parseOne(p)
		if err != nil {
			return nil, fmt.Errorf("part %d: %w", i+1, err)
		}
		if first == nil {
			first = b
			continue
		}
		if first.Sentinel() && b.Sentinel() {
			first.Addrs = append(first.Addrs, b.Addrs...)
			if first.Password == "" {
				first.Password, first.Username = b.Password, b.Username
			}
		}
	}
	if first == nil {
		return nil, errURL("empty")
	}
	return first, nil
}

func parseOne(raw string) (*Broker, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the URL, password included: keep only the reason.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, errURL("%v", err)
	}
	b := &Broker{Scheme: u.Scheme}
	if u.User != nil {
		b.Username = u.User.Username()
		b.Password, _ = u.User.Password()
	}
	q := u.Query()
	switch u.Scheme {
	case "redis", "rediss", "sentinel":
		defPort := "6379"
		if u.Scheme == "sentinel" {
			defPort = "26379"
		}
		host := u.Hostname()
		if host == "" {
			host = "localhost"
		}
		port := u.Port()
		if port == "" {
			port = defPort
		}
		if _, err := strconv.Atoi(port); err != nil {
			return nil, errURL("invalid port %q", port)
		}
		b.Addrs = []string{net.JoinHostPort(host, port)}
		if b.DB, err = parseDB(strings.TrimPrefix(u.Path, "/")); err != nil {
			return nil, err
		}
	case "redis+socket", "socket":
		b.Scheme = "redis+socket"
		b.Socket = u.Path
		if u.Host != "" { // redis+socket://relative/path
			b.Socket = u.Host + u.Path
		}
		if b.Socket == "" {
			return nil, errURL("redis+socket needs a socket path")
		}
		if b.DB, err = parseDB(q.Get("virtual_host")); err != nil {
			return nil, err
		}
		q.Del("virtual_host")
	default:
		return nil, errURL("unsupported scheme %q (want redis, rediss, redis+socket or sentinel)", u.Scheme)
	}
	if err := b.applySSL(q); err != nil {
		return nil, err
	}
	return b, nil
}

func parseDB(s string) (int, error) {
	s = strings.Trim(s, "/")
	if s == "" {
		return 0, nil
	}
	db, err := strconv.Atoi(s)
	if err != nil || db < 0 {
		return 0, errURL("the database must be a number, got %q", s)
	}
	return db, nil
}

// applySSL reads the ssl_* query options kombu collects into Connection.ssl.
func (b *Broker) applySSL(q url.Values) error {
	if b.Scheme != "rediss" {
		if len(q) > 0 {
			if _, err := SSLConfig(q, ""); err != nil {
				return err // an unknown option is named as such
			}
			return errURL("ssl_* options need the rediss:// scheme")
		}
		return nil
	}
	host := ""
	if len(b.Addrs) > 0 {
		host, _, _ = net.SplitHostPort(b.Addrs[0])
	}
	cfg, err := SSLConfig(q, host)
	if err != nil {
		return err
	}
	b.TLS, b.InsecureTLSDefault = cfg.Config, cfg.InsecureDefault
	return nil
}

// TLS is a TLS client configuration read from ssl_* options.
type TLS struct {
	Config *tls.Config
	// InsecureDefault: no ssl_cert_reqs was given, so the certificate is not verified, as in
	// kombu (redis-py and py-amqp both default to CERT_NONE); the user should be told.
	InsecureDefault bool
}

// SSLConfig reads the ssl_* options (ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile,
// ssl_check_hostname) as kombu and Celery's broker_use_ssl take them. Unknown keys are errors.
func SSLConfig(q url.Values, serverName string) (TLS, error) {
	var (
		reqs, ca, cert, key, check string
		out                        TLS
	)
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "ssl_cert_reqs":
			reqs = v
		case "ssl_ca_certs":
			ca = v
		case "ssl_certfile":
			cert = v
		case "ssl_keyfile":
			key = v
		case "ssl_check_hostname":
			check = v
		default:
			// kombu raises TypeError on unknown query keys; a silent ignore would hide a typo.
			return out, errURL("unknown query option %q", k)
		}
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	verify := true
	switch strings.ToLower(strings.TrimPrefix(strings.ToLower(reqs), "cert_")) {
	case "":
		verify = false
		out.InsecureDefault = true
	case "required", "optional":
	case "none":
		verify = false
	default:
		return out, errURL("ssl_cert_reqs must be required, optional or none, got %q", reqs)
	}
	checkHost := false // redis-py's default for ssl_check_hostname
	if check != "" {
		v, err := parseBool(check)
		if err != nil {
			return out, errURL("ssl_check_hostname: %v", err)
		}
		checkHost = v
	}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return out, errURL("ssl_ca_certs: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return out, errURL("ssl_ca_certs: no certificate found in %s", ca)
		}
		cfg.RootCAs = pool
	}
	if cert != "" || key != "" {
		if key == "" {
			key = cert // Python's ssl accepts the key inside the certificate file
		}
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return out, errURL("ssl_certfile/ssl_keyfile: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	switch {
	case !verify:
		cfg.InsecureSkipVerify = true
	case !checkHost:
		// Verify the chain but not the name, as Python does with check_hostname=False.
		cfg.InsecureSkipVerify = true
		roots := cfg.RootCAs
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyChain(raw, roots)
		}
	}
	out.Config = cfg
	return out, nil
}

func verifyChain(raw [][]byte, roots *x509.CertPool) error {
	if len(raw) == 0 {
		return errors.New("tls: no certificate from server")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
	return err
}

// Redacted is the URL for logs and metrics: the password is replaced.
func (b *Broker) Redacted() string {
	user := ""
	if b.Username != "" || b.Password != "" {
		user = b.Username
		if b.Password != "" {
			user += ":xxxxx"
		}
		user += "@"
	}
	switch b.Scheme {
	case "redis+socket":
		return fmt.Sprintf("redis+socket://%s%s?virtual_host=%d", user, b.Socket, b.DB)
	case "sentinel":
		parts := make([]string, len(b.Addrs))
		for i, a := range b.Addrs {
			parts[i] = fmt.Sprintf("sentinel://%s%s/%d", user, a, b.DB)
		}
		return strings.Join(parts, ";")
	}
	return fmt.Sprintf("%s://%s%s/%d", b.Scheme, user, b.Addrs[0], b.DB)
}

// NewClient returns a go-redis client for the broker. Connections are made lazily. RESP2 and no
// CLIENT SETINFO keep the commands a connection sends to AUTH, SELECT and what the exporter asks,
// so the documented minimal ACL is complete. ContextTimeoutEnabled lets a scrape's deadline reach
// the socket: without it go-redis waits its own ReadTimeout (3 s) per command whatever the
// context says, and --scrape.timeout below that was not honoured.
func (b *Broker) NewClient(o Options) (redis.UniversalClient, error) {
	switch b.Scheme {
	case "sentinel":
		if o.MasterName == "" {
			return nil, errors.New("a sentinel:// broker needs the transport option master_name")
		}
		return redis.NewFailoverClient(&redis.FailoverOptions{
			Protocol:              2,
			DisableIdentity:       true,
			ContextTimeoutEnabled: true,
			MasterName:            o.MasterName,
			SentinelAddrs:         b.Addrs,
			SentinelUsername:      o.SentinelUsername,
			SentinelPassword:      o.SentinelPassword,
			Username:              b.Username,
			Password:              b.Password,
			DB:                    b.DB,
			TLSConfig:             b.TLS,
		}), nil
	case "redis+socket":
		return redis.NewClient(&redis.Options{Protocol: 2, DisableIdentity: true, ContextTimeoutEnabled: true, Network: "unix", Addr: b.Socket,
			Username: b.Username, Password: b.Password, DB: b.DB}), nil
	default:
		return redis.NewClient(&redis.Options{Protocol: 2, DisableIdentity: true, ContextTimeoutEnabled: true, Addr: b.Addrs[0], Username: b.Username,
			Password: b.Password, DB: b.DB, TLSConfig: b.TLS}), nil
	}
}

// Dial parses a URL in any form ParseURL takes and returns a client with kombu's default options:
// for Redis connections other than the broker's (a Django cache named in the config file).
func Dial(raw string) (redis.UniversalClient, error) {
	b, err := ParseURL(raw)
	if err != nil {
		return nil, err
	}
	return b.NewClient(DefaultOptions())
}
