// Package bundle renders the alerting and recording rules, the Grafana dashboards and their
// Kubernetes wrappers from one configuration of selectors and thresholds (rules/config.yaml).
//
// Everything application-specific (job selector, expected workers and queues, thresholds, the
// app alerts on breakers, log events, tasks and app values) comes from Config; the code knows
// only the kinds of app alerts, never an app's names.
// Render is deterministic: the same Config always gives byte-identical files, so the committed
// files can be checked for staleness (Check) and a test can render a variant (short windows, short
// `for`) into a temporary directory.
package bundle
