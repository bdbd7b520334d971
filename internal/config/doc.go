// Package config reads the exporter's YAML file for application signals: circuit-breaker flags and
// plain values in Redis, and named events in log files.
//
// Every error names the file, the line and the field, because the file is edited by hand during an
// incident, and unknown fields are errors so that a misspelt option is never silently ignored.
package config
