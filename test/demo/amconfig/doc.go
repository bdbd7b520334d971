// Command amconfig writes the demo's Alertmanager configuration: the shipped
// deploy/alertmanager/alertmanager.yml with its receivers (PagerDuty, Slack) replaced by the demo's
// webhook, and shorter group timers. Routing, grouping and inhibitions are the shipped ones, so the
// demo pages exactly as production would.
//
//	go run ./test/demo/amconfig -in deploy/alertmanager/alertmanager.yml -url http://127.0.0.1:9099/alerts -out .demo/alertmanager.yml
package main
