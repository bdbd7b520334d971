// Package clock lets liveness, purge and expiry be tested by moving time instead of sleeping
// (statsd_exporter's pkg/clock).
package clock
