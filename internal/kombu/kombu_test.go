package kombu

import (
	"bufio"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fastjson"
)

const fixtures = "../../test/fixtures/celery-wire-samples.jsonl"

type sample struct {
	Label       string   `json:"label"`
	Command     string   `json:"command"`
	Args        []string `json:"args"`
	DecodedBody any      `json:"decoded_body"`
}

func loadSamples(t *testing.T) []sample {
	t.Helper()
	f, err := os.Open(fixtures)
	if err != nil {
		t.Fatalf("fixtures: %v", err)
	}
	defer f.Close()
	var out []sample
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var s sample
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Fatalf("fixture line: %v", err)
		}
		if s.Label != "_meta" {
			out = append(out, s)
		}
	}
	return out
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		url      string
		scheme   string
		addrs    []string
		socket   string
		user     string
		password string
		db       int
		tls      bool
		redacted string
	}{
		{url: "redis://", scheme: "redis", addrs: []string{"localhost:6379"}, redacted: "redis://localhost:6379/0"},
		{url: "redis://localhost:6379/0", scheme: "redis", addrs: []string{"localhost:6379"}, redacted: "redis://localhost:6379/0"},
		{url: "redis://:s3cret@cache:6380/3", scheme: "redis", addrs: []string{"cache:6380"}, password: "s3cret", db: 3,
			redacted: "redis://:xxxxx@cache:6380/3"},
		{url: "redis://app:s3cret@10.0.0.1/1", scheme: "redis", addrs: []string{"10.0.0.1:6379"}, user: "app", password: "s3cret", db: 1,
			redacted: "redis://app:xxxxx@10.0.0.1:6379/1"},
		{url: "redis://h1:6379/1;redis://h2:6379/1", scheme: "redis", addrs: []string{"h1:6379"}, db: 1, redacted: "redis://h1:6379/1"},
		{url: "rediss://:pw@secure:6380/2?ssl_cert_reqs=none", scheme: "rediss", addrs: []string{"secure:6380"}, password: "pw", db: 2, tls: true,
			redacted: "rediss://:xxxxx@secure:6380/2"},
		{url: "rediss://secure:6380/0?ssl_cert_reqs=CERT_REQUIRED&ssl_check_hostname=true", scheme: "rediss", addrs: []string{"secure:6380"}, tls: true,
			redacted: "rediss://secure:6380/0"},
		{url: "redis+socket:///var/run/redis.sock?virtual_host=5", scheme: "redis+socket", socket: "/var/run/redis.sock", db: 5,
			redacted: "redis+socket:///var/run/redis.sock?virtual_host=5"},
		{url: "redis+socket:///tmp/r.sock", scheme: "redis+socket", socket: "/tmp/r.sock", redacted: "redis+socket:///tmp/r.sock?virtual_host=0"},
		{url: "sentinel://:pw@s1:26379/2;sentinel://s2;sentinel://s3:26380/2", scheme: "sentinel",
			addrs: []string{"s1:26379", "s2:26379", "s3:26380"}, password: "pw", db: 2,
			redacted: "sentinel://:xxxxx@s1:26379/2;sentinel://:xxxxx@s2:26379/2;sentinel://:xxxxx@s3:26380/2"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			b, err := ParseURL(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			if b.Scheme != tt.scheme || !reflect.DeepEqual(b.Addrs, tt.addrs) && tt.addrs != nil || b.Socket != tt.socket ||
				b.Username != tt.user || b.Password != tt.password || b.DB != tt.db || (b.TLS != nil) != tt.tls {
				t.Errorf("got %+v", b)
			}
			if got := b.Redacted(); got != tt.redacted {
				t.Errorf("Redacted() = %q, want %q", got, tt.redacted)
			}
			if strings.Contains(b.Redacted(), "s3cret") || (tt.password != "" && strings.Contains(b.Redacted(), tt.password)) {
				t.Errorf("password leaked: %s", b.Redacted())
			}
		})
	}
}

func TestParseURLTLSDefaultIsInsecureLikeKombu(t *testing.T) {
	b, err := ParseURL("rediss://host:6380/0")
	if err != nil {
		t.Fatal(err)
	}
	if !b.InsecureTLSDefault || !b.TLS.InsecureSkipVerify {
		t.Fatalf("rediss without ssl_cert_reqs must not verify (kombu's CERT_NONE default) and say so: %+v", b)
	}
	b, _ = ParseURL("rediss://host:6380/0?ssl_cert_reqs=required")
	if b.InsecureTLSDefault || b.TLS.VerifyPeerCertificate == nil {
		t.Fatalf("required without check_hostname verifies the chain only: %+v", b.TLS)
	}
	b, _ = ParseURL("rediss://host:6380/0?ssl_cert_reqs=required&ssl_check_hostname=true")
	if b.TLS.InsecureSkipVerify || b.TLS.ServerName != "host" {
		t.Fatalf("check_hostname=true verifies fully: %+v", b.TLS)
	}
}

func TestParseURLErrorsNeverLeakPassword(t *testing.T) {
	for _, u := range []string{
		"redis://:hunter2@host:notaport/0",
		"redis://:hunter2@host:6379/notadb",
		"redis://:hunter2@host:6379/0?bogus=1",
		"redis://:hunter2@host:6379/0?ssl_cert_reqs=none",
		"amqp://:hunter2@host//",
		"rediss://:hunter2@host/0?ssl_ca_certs=/nonexistent",
		"redis://:hunter2@[::1/0",
		"",
	} {
		_, err := ParseURL(u)
		if err == nil {
			t.Errorf("%s: want an error", u)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error leaks the password: %v", err)
		}
	}
}

func TestParseTransportOptions(t *testing.T) {
	o, err := ParseTransportOptions([]string{
		"global_keyprefix=pfx:", "fanout_prefix=False", "fanout_patterns=false", `sep=':'`,
		"priority_steps=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", "visibility_timeout=43200", "unacked_key=my_unacked",
		"master_name=mymaster", "sentinel_kwargs={'password': 'sntl'}", "socket_timeout=5",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Options{GlobalKeyPrefix: "pfx:", FanoutPrefix: "", FanoutPatterns: false, Sep: ":",
		PrioritySteps: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, VisibilityTimeout: 12 * time.Hour,
		UnackedKey: "my_unacked", UnackedIndexKey: "unacked_index", MasterName: "mymaster", SentinelPassword: "sntl"}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("got  %+v\nwant %+v", o, want)
	}
	o, err = ParseTransportOptions([]string{`sep='\x06\x16'`, "fanout_prefix=/custom{db}."})
	if err != nil || o.Sep != "\x06\x16" || o.FanoutPrefix != "/custom{db}." {
		t.Fatalf("got %+v, %v", o, err)
	}
	for _, bad := range [][]string{{"novalue"}, {"fanout_patterns=maybe"}, {"priority_steps=[a]"}, {"visibility_timeout=-1"}} {
		if _, err := ParseTransportOptions(bad); err == nil {
			t.Errorf("%v: want an error", bad)
		}
	}
	_, err = ParseTransportOptions([]string{"sentinel_kwargs=not a dict: hunter2"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("sentinel_kwargs error must not echo the value: %v", err)
	}
}

func keyspace(t *testing.T, url string, opts ...string) Keyspace {
	t.Helper()
	b, err := ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	o, err := ParseTransportOptions(opts)
	if err != nil {
		t.Fatal(err)
	}
	return NewKeyspace(b, o)
}

// The PSUBSCRIBE patterns and PUBLISH channels must be exactly those of the captured traffic, for
// every option combination the capture covers.
func TestKeyspaceMatchesCapture(t *testing.T) {
	samples := map[string]sample{}
	for _, s := range loadSamples(t) {
		samples[s.Label] = s
	}
	arg := func(label string, i int) string {
		s, ok := samples[label]
		if !ok {
			t.Fatalf("no fixture %q", label)
		}
		return s.Args[i]
	}
	tests := []struct {
		name      string
		ks        Keyspace
		patterns  []string
		pidbox    []string
		pidboxSub string
		queueArgs []string // BRPOP keys of queue "celery" (minus the timeout)
	}{
		{name: "default", ks: keyspace(t, "redis://h/3"), patterns: []string{"/3.celeryev/*"},
			pidbox: []string{"/3.celery.pidbox"}, pidboxSub: arg("PSUBSCRIBE /3.celery.pidbox", 0),
			queueArgs: samples["BRPOP celery"].Args},
		{name: "global_keyprefix", ks: keyspace(t, "redis://h/3", "global_keyprefix=pfx:"),
			patterns: []string{arg("PSUBSCRIBE pfx:/3.celeryev/*", 0)}, pidbox: []string{"pfx:/3.celery.pidbox"},
			pidboxSub: arg("PSUBSCRIBE pfx:/3.celery.pidbox", 0), queueArgs: samples["BRPOP pfx:celery"].Args},
		{name: "fanout_patterns=False", ks: keyspace(t, "redis://h/3", "fanout_patterns=False"),
			patterns: []string{arg("PSUBSCRIBE /3.celeryev", 0)}, pidbox: []string{"/3.celery.pidbox"}},
		{name: "fanout_prefix=False", ks: keyspace(t, "redis://h/3", "fanout_prefix=False"),
			patterns: []string{arg("PSUBSCRIBE celeryev/*", 0)}, pidbox: []string{arg("PSUBSCRIBE celery.pidbox", 0)}},
		{name: "sentinel before kombu 5.4", ks: keyspace(t, "sentinel://s1:26379/3", "master_name=m"),
			patterns: []string{"/3.celeryev/*", "/{db}.celeryev/*"},
			pidbox:   []string{"/3.celery.pidbox", arg("PSUBSCRIBE /{db}.celery.pidbox", 0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.ks.EventPatterns(DefaultEventExchange); !reflect.DeepEqual(got, tt.patterns) {
				t.Errorf("EventPatterns = %q, want %q", got, tt.patterns)
			}
			got := tt.ks.FanoutChannels(PidboxExchange(DefaultControlExchange))
			if !reflect.DeepEqual(got, tt.pidbox) {
				t.Errorf("FanoutChannels = %q, want %q", got, tt.pidbox)
			}
			if tt.pidboxSub != "" && got[0] != tt.pidboxSub {
				t.Errorf("pidbox channel %q, workers subscribe to %q", got[0], tt.pidboxSub)
			}
			if tt.queueArgs != nil {
				var keys []string
				for _, k := range tt.ks.QueueKeys("celery") {
					keys = append(keys, k.Key)
				}
				if want := tt.queueArgs[:len(tt.queueArgs)-1]; !reflect.DeepEqual(keys, want) {
					t.Errorf("QueueKeys = %q, want BRPOP's %q", keys, want)
				}
			}
		})
	}
}

func TestKeyspaceNames(t *testing.T) {
	ks := keyspace(t, "redis://h/0", "global_keyprefix=pfx:", "sep=:", "priority_steps=[0,5]")
	if got := ks.QueueKeys("chat"); !reflect.DeepEqual(got, []PriorityKey{{0, "pfx:chat"}, {5, "pfx:chat:5"}}) {
		t.Errorf("QueueKeys = %v", got)
	}
	if got := (Keyspace{Prefix: "p:"}).QueueKeys("q"); !reflect.DeepEqual(got, []PriorityKey{{0, "p:q"}}) {
		t.Errorf("no steps still has the plain key: %v", got)
	}
	if got := ks.BindingScanPattern(); got != "pfx:_kombu.binding.*" {
		t.Errorf("BindingScanPattern = %q", got)
	}
	if ex, ok := ks.ExchangeOfBindingKey("pfx:_kombu.binding.reply.celery.pidbox"); !ok || ex != "reply.celery.pidbox" {
		t.Errorf("ExchangeOfBindingKey = %q %v", ex, ok)
	}
	if got := ks.UnackedKey(); got != "pfx:unacked" {
		t.Errorf("UnackedKey = %q", got)
	}
	if got := keyspace(t, "redis://h/0", "global_keyprefix=a*b").EventPatterns("celeryev"); got[0] != `a\*b/0.celeryev/*` {
		t.Errorf("glob characters in the prefix must be escaped: %q", got)
	}
	if got := ReplyQueue("oid", "celery"); got != "oid.reply.celery.pidbox" {
		t.Errorf("ReplyQueue = %q", got)
	}
}

func TestBindingMembersMatchCapture(t *testing.T) {
	for _, s := range loadSamples(t) {
		if s.Command != "SADD" {
			continue
		}
		ks := keyspace(t, "redis://h/3")
		if strings.HasPrefix(s.Args[0], "pfx:") {
			ks = keyspace(t, "redis://h/3", "global_keyprefix=pfx:")
		}
		ex, ok := ks.ExchangeOfBindingKey(s.Args[0])
		if !ok {
			t.Errorf("%s: key %q not recognised", s.Label, s.Args[0])
			continue
		}
		rk, pat, q, ok := ks.ParseBindingMember(s.Args[1])
		if !ok {
			t.Errorf("%s: member %q not parsed", s.Label, s.Args[1])
			continue
		}
		if back := ks.BindingMember(rk, pat, q); back != s.Args[1] || ks.BindingKey(ex) != s.Args[0] {
			t.Errorf("%s: round trip %q %q", s.Label, back, ks.BindingKey(ex))
		}
		switch ex {
		case "celery":
			if q != "celery" || rk != "celery" {
				t.Errorf("%s: queue %q rk %q", s.Label, q, rk)
			}
		case ReplyExchange("celery"):
			if q != ReplyQueue(rk, "celery") {
				t.Errorf("%s: reply queue %q for oid %q", s.Label, q, rk)
			}
		}
	}
}

// Every PUBLISHed and LPUSHed envelope of the capture decodes to exactly the body the capture
// decoded independently.
func TestEnvelopeDecodeMatchesCapture(t *testing.T) {
	var d EnvelopeDecoder
	n := 0
	for _, s := range loadSamples(t) {
		var payload string
		switch s.Command {
		case "PUBLISH", "LPUSH":
			payload = s.Args[1]
		case "HSET":
			continue
		default:
			continue
		}
		body, err := d.Decode([]byte(payload))
		if err != nil {
			t.Errorf("%s: %v", s.Label, err)
			continue
		}
		var got any
		if err := json.Unmarshal(body, &got); err != nil {
			t.Errorf("%s: body is not JSON: %v", s.Label, err)
			continue
		}
		if s.DecodedBody != nil && !reflect.DeepEqual(got, s.DecodedBody) {
			t.Errorf("%s: decoded %v\nwant %v", s.Label, got, s.DecodedBody)
		}
		m, err := ParseMessage([]byte(payload))
		if err != nil || string(m.Body) != string(body) {
			t.Errorf("%s: ParseMessage disagrees: %v", s.Label, err)
		}
		n++
	}
	if n < 60 {
		t.Fatalf("only %d envelopes decoded; the capture has more", n)
	}
}

func TestEnvelopeDecodeRejects(t *testing.T) {
	tests := []struct {
		name, msg, reason string
	}{
		{"not json", `{"body": `, ReasonInvalidEnvelope},
		{"array", `[1,2]`, ReasonInvalidEnvelope},
		{"no body", `{"properties": {}}`, ReasonInvalidEnvelope},
		{"numeric body", `{"body": 5}`, ReasonInvalidEnvelope},
		{"bad base64", `{"body": "!!!", "properties": {"body_encoding": "base64"}}`, ReasonInvalidBase64},
		{"pickle", `{"body": "gAR9", "content-type": "application/x-python-serialize", "properties": {"body_encoding": "base64"}}`, ReasonContentType},
		{"compressed", `{"body": "eJw=", "content-type": "application/json", "headers": {"compression": "application/x-gzip"}, "properties": {"body_encoding": "base64"}}`, ReasonCompressed},
	}
	var d EnvelopeDecoder
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.Decode([]byte(tt.msg))
			if got := ReasonOf(err, "none"); got != tt.reason {
				t.Fatalf("reason %q (%v), want %q", got, err, tt.reason)
			}
		})
	}
	body, err := d.Decode([]byte(`{"body": "[{\"type\": \"task-started\"}]", "properties": {"body_encoding": "utf-8"}}`))
	if err != nil || string(body) != `[{"type": "task-started"}]` {
		t.Fatalf("plain body: %q %v", body, err)
	}
}

func TestNewMessageIsWhatWorkersAccept(t *testing.T) {
	raw, err := NewMessage([]byte(`{"method": "ping"}`), "celery.pidbox", "", map[string]any{"clock": 1})
	if err != nil {
		t.Fatal(err)
	}
	var env map[string]any
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	props := env["properties"].(map[string]any)
	if tag, _ := props["delivery_tag"].(string); len(tag) != 36 {
		t.Fatalf("delivery_tag missing: a worker crashes without it: %s", raw)
	}
	if props["body_encoding"] != "base64" || env["content-type"] != "application/json" {
		t.Fatalf("envelope %s", raw)
	}
	m, err := ParseMessage(raw)
	if err != nil || string(m.Body) != `{"method": "ping"}` || m.Properties.DeliveryInfo.Exchange != "celery.pidbox" {
		t.Fatalf("round trip: %+v %v", m, err)
	}
}

func TestTaskIDAndUnacked(t *testing.T) {
	var p fastjson.Parser
	for _, s := range loadSamples(t) {
		switch s.Label {
		case "task message LPUSH plain", "task message LPUSH priority-subqueue":
			m, err := ParseMessage([]byte(s.Args[1]))
			if err != nil {
				t.Fatal(err)
			}
			if id := m.TaskID(); len(id) != 36 || id != m.Properties.CorrelationID {
				t.Errorf("%s: TaskID %q, correlation_id %q", s.Label, id, m.Properties.CorrelationID)
			}
		case "unacked HSET":
			e, err := ParseUnacked(&p, []byte(s.Args[2]))
			if err != nil || e.RoutingKey != "celery" {
				t.Errorf("unacked entry: %+v %v", e, err)
			}
		}
	}
	if _, err := ParseUnacked(&p, []byte(`{"x":1}`)); err == nil {
		t.Error("an object is not an unacked entry")
	}
}
