// Package rules holds the Celery alert bundle: config.yaml (selectors and thresholds), the
// rendered celery.rules.yml, its promtool unit tests under tests/, and the Go tests that check the
// rendered rules, dashboards and deploy files together. The renderer is rules/render; the
// library behind it is rules/bundle.
package rules
