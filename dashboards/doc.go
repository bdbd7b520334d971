// Package dashboards holds the Grafana dashboards rendered from rules/config.yaml by
// `make rules` (see rules/bundle), and the tests that check them. Do not edit the JSON by hand.
package dashboards
