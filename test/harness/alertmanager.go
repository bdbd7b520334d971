package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// AlertmanagerTimers are the grouping timers of an Alertmanager route ("" keeps the config's).
type AlertmanagerTimers struct {
	GroupWait, GroupInterval string
}

// WebhookAlertmanagerConfig turns a shipped Alertmanager configuration into one that can run on
// this machine: every receiver keeps its name but notifies url by webhook instead of PagerDuty,
// Slack or anything needing secrets; routing, grouping and inhibitions are kept as they are, so a
// test (or the demo) exercises exactly the shipped ones. Non-empty timers replace the top
// route's group_wait and group_interval, for tests that cannot wait production timers.
func WebhookAlertmanagerConfig(shipped []byte, url string, timers AlertmanagerTimers) ([]byte, error) {
	var cfg map[string]any
	if err := yaml.Unmarshal(shipped, &cfg); err != nil {
		return nil, fmt.Errorf("decode alertmanager config: %w", err)
	}
	receivers, ok := cfg["receivers"].([]any)
	if !ok || len(receivers) == 0 {
		return nil, fmt.Errorf("alertmanager config has no receivers")
	}
	out := make([]any, 0, len(receivers))
	for _, r := range receivers {
		m, ok := r.(map[string]any)
		if !ok || m["name"] == nil {
			return nil, fmt.Errorf("alertmanager receiver without a name: %v", r)
		}
		out = append(out, map[string]any{
			"name":            m["name"],
			"webhook_configs": []any{map[string]any{"url": url, "send_resolved": true}},
		})
	}
	cfg["receivers"] = out
	route, ok := cfg["route"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("alertmanager config has no route")
	}
	if timers.GroupWait != "" {
		route["group_wait"] = timers.GroupWait
	}
	if timers.GroupInterval != "" {
		route["group_interval"] = timers.GroupInterval
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode alertmanager config: %w", err)
	}
	return b, nil
}

// Notification is one webhook call of Alertmanager: one notification of one alert group.
type Notification struct {
	Receiver string `json:"receiver"`
	Status   string `json:"status"`
	Alerts   []struct {
		Status string            `json:"status"`
		Labels map[string]string `json:"labels"`
	} `json:"alerts"`
}

// Firing lists the alert names of the notification's firing alerts, sorted, each with its
// queue_name when it has one ("CeleryQueueBacklog/chat").
func (n Notification) Firing() []string {
	var out []string
	for _, a := range n.Alerts {
		if a.Status != "firing" {
			continue
		}
		s := a.Labels["alertname"]
		if q := a.Labels["queue_name"]; q != "" {
			s += "/" + q
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Webhook records Alertmanager's webhook notifications.
type Webhook struct {
	URL string
	mu  sync.Mutex
	got []Notification
}

// StartWebhook serves a webhook receiver until the test ends.
func StartWebhook(t testing.TB) *Webhook {
	t.Helper()
	w := &Webhook{}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 10<<20))
		var n Notification
		if err == nil {
			err = json.Unmarshal(body, &n)
		}
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		w.mu.Lock()
		w.got = append(w.got, n)
		w.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	w.URL = srv.URL + "/alerts"
	return w
}

// Notifications returns what was received so far, in order.
func (w *Webhook) Notifications() []Notification {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Notification(nil), w.got...)
}

// PostAlerts sends alerts with these label sets to Alertmanager's API, firing for an hour.
func (am *Alertmanager) PostAlerts(labels ...map[string]string) error {
	now := time.Now().UTC()
	body := make([]map[string]any, 0, len(labels))
	for _, l := range labels {
		body = append(body, map[string]any{"labels": l, "startsAt": now, "endsAt": now.Add(time.Hour)})
	}
	js, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode alerts: %w", err)
	}
	resp, err := http.Post(am.URL+"/api/v2/alerts", "application/json", bytes.NewReader(js))
	if err != nil {
		return fmt.Errorf("post alerts: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("post alerts: %s", resp.Status)
	}
	return nil
}
