package amqp

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestParseURL(t *testing.T) {
	for _, tt := range []struct {
		url  string
		want []Endpoint
	}{
		{"amqp://", []Endpoint{{Scheme: "amqp", Host: "localhost:5672", Username: "guest", Password: "guest", Vhost: "/"}}},
		{"amqp://u:p@h:5673//", []Endpoint{{Scheme: "amqp", Host: "h:5673", Username: "u", Password: "p", Vhost: "/"}}},
		{"pyamqp://u:p@h/prod", []Endpoint{{Scheme: "amqp", Host: "h:5672", Username: "u", Password: "p", Vhost: "prod"}}},
		{"amqp://u@h/", []Endpoint{{Scheme: "amqp", Host: "h:5672", Username: "u", Password: "guest", Vhost: "/"}}},
		{"amqp://a:1@h1//;amqp://b:2@h2:5679/v", []Endpoint{
			{Scheme: "amqp", Host: "h1:5672", Username: "a", Password: "1", Vhost: "/"},
			{Scheme: "amqp", Host: "h2:5679", Username: "b", Password: "2", Vhost: "v"}}},
	} {
		got, err := ParseURL(tt.url)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tt.url, err)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tt.url, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("ParseURL(%q)[%d] = %+v, want %+v", tt.url, i, got[i], tt.want[i])
			}
		}
	}
}

func TestParseURLTLS(t *testing.T) {
	es, err := ParseURL("amqps://u:p@rabbit/v")
	if err != nil {
		t.Fatal(err)
	}
	if e := es[0]; e.Host != "rabbit:5671" || e.TLS == nil || !e.InsecureTLSDefault || e.TLS.ServerName != "rabbit" {
		t.Errorf("amqps without options = %+v: want port 5671 and an unverified TLS default, flagged", e)
	}
	es, err = ParseURL("amqps://u:p@rabbit/v?ssl_cert_reqs=required&ssl_check_hostname=true")
	if err != nil {
		t.Fatal(err)
	}
	if e := es[0]; e.InsecureTLSDefault || e.TLS.InsecureSkipVerify {
		t.Errorf("ssl_cert_reqs=required: %+v, want full verification", e)
	}
}

func TestParseURLErrorsNeverLeakPassword(t *testing.T) {
	for _, u := range []string{
		"redis://u:s3cret@h/0", "amqp://u:s3cret@h:port/", "amqp://u:s3cret@h/?ssl_cert_reqs=required",
		"amqps://u:s3cret@h/?bogus=1", "amqp://u:s3cret@h/;foo://x", ";",
	} {
		_, err := ParseURL(u)
		if err == nil {
			t.Errorf("ParseURL(%q): no error", u)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ParseURL(%q) error leaks the password: %v", u, err)
		}
	}
}

func TestIsURLAndRedacted(t *testing.T) {
	for u, want := range map[string]bool{
		"amqp://h//": true, "AMQPS://h": true, "pyamqp://h": true, "amqp://a;amqp://b": true,
		"redis://h/0": false, "sentinel://h;sentinel://i": false, "": false, "amqp": false,
	} {
		if got := IsURL(u); got != want {
			t.Errorf("IsURL(%q) = %v, want %v", u, got, want)
		}
	}
	es, _ := ParseURL("amqp://u:s3cret@h1//;amqp://v:x@h2/prod")
	if got, want := Redacted(es), "amqp://u@h1:5672//;amqp://v@h2:5672/prod"; got != want {
		t.Errorf("Redacted = %q, want %q", got, want)
	}
}

func TestTaskQueue(t *testing.T) {
	r := &QueueReader{}
	for q, want := range map[string]bool{
		"celery": true, "default": true, "celeryev.1b2c": false, "w1@h.celery.pidbox": false,
		"1b2c.reply.celery.pidbox": false, "amq.gen-xyz": false, "celeryevents": true,
	} {
		if got := r.TaskQueue(q); got != want {
			t.Errorf("TaskQueue(%q) = %v, want %v", q, got, want)
		}
	}
}

func TestManagementQueues(t *testing.T) {
	var gotPath, gotQuery, gotUser, gotPass string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath, gotQuery = r.URL.EscapedPath(), r.URL.RawQuery
		gotUser, gotPass, _ = r.BasicAuth()
		_, _ = w.Write([]byte(`[
			{"name":"celery","messages":5,"messages_ready":3,"messages_unacknowledged":2,"consumers":1,"head_message_timestamp":1700000000},
			{"name":"idle","messages":0,"consumers":0},
			{"name":"celeryev.abc","messages_ready":0,"consumers":1}]`))
	}))
	defer srv.Close()
	m, err := NewManagement(strings.Replace(srv.URL, "http://", "http://mon:pw@", 1), Endpoint{Vhost: "/", Username: "u", Password: "p"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &QueueReader{Management: m}
	got, err := r.Read(context.Background(), []string{"missing"})
	if err != nil {
		t.Fatal(err)
	}
	if gotPath != "/api/queues/%2F" || !strings.HasPrefix(gotQuery, "columns=") || gotUser != "mon" || gotPass != "pw" {
		t.Errorf("request %s?%s as %s:%s", gotPath, gotQuery, gotUser, gotPass)
	}
	want := map[string]QueueState{
		"celery":  {Exists: true, Ready: 3, Unacked: 2, HasUnacked: true, Consumers: 1, HeadTimestamp: time.Unix(1700000000, 0)},
		"idle":    {Exists: true},
		"missing": {},
	}
	if len(got) != len(want) {
		t.Errorf("Read = %+v, want %+v", got, want)
	}
	for k, w := range want {
		if g := got[k]; g != w {
			t.Errorf("Read[%q] = %+v, want %+v", k, g, w)
		}
	}
	if m.Redacted() != srv.URL {
		t.Errorf("Redacted = %q, want %q", m.Redacted(), srv.URL)
	}
}

func TestManagementErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "nope", http.StatusUnauthorized)
	}))
	defer srv.Close()
	m, err := NewManagement(srv.URL, Endpoint{Vhost: "v"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Queues(context.Background()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("Queues on 401 = %v, want an error naming the status", err)
	}
	if _, err := NewManagement("ftp://x", Endpoint{}, nil); err == nil {
		t.Error("NewManagement(ftp://x): no error")
	}
}
