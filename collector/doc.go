// Package collector turns the sources of a Celery deployment into Prometheus metrics.
//
// Each source lives in its own file and implements Scraper. Sources that are fed in the background
// (the event stream, remote control, log files) keep their state between scrapes and report it on
// Scrape; sources read at scrape time (broker state, breaker flags) talk to Redis inside Scrape.
// Every scrape reports, per source, whether it worked and how long it took, so one broken source is
// visible and never hides the others (the node_exporter / mysqld_exporter pattern).
package collector
