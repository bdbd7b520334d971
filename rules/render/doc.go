// Command render writes the Prometheus rules, the PrometheusRule, the Grafana dashboards and
// their ConfigMaps from rules/config.yaml (see package bundle).
//
//	go run ./rules/render                      # rewrite the committed files (make rules)
//	go run ./rules/render -check               # exit 1 listing stale files (make rules-check)
//	go run ./rules/render -config c.yaml -out /tmp/x   # render a variant elsewhere
//	go run ./rules/render -config c.yaml -out /tmp/x -helm-values /tmp/x/values.yaml
//	                                            # and its rules and dashboards as Helm chart values
//
// Without a checkout: go run github.com/celery-exporter/celery_exporter/rules/render@latest -config c.yaml -out dir
package main
