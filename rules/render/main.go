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

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/celery-exporter/celery_exporter/rules/bundle"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "rules/config.yaml", "rules config (selectors and thresholds)")
	out := fs.String("out", ".", "output root: files go to <out>/rules, <out>/dashboards and <out>/deploy/kubernetes/base")
	check := fs.Bool("check", false, "write nothing; exit 1 listing the files under -out that differ from a fresh render")
	helmValues := fs.String("helm-values", "", "also write the rendered rules and dashboards as a values file of deploy/helm/celery-exporter to this path")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "render: unexpected arguments %q\n", fs.Args())
		return 2
	}
	cfg, err := bundle.LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "render: %v\n", err)
		return 1
	}
	files, err := cfg.Files()
	if err != nil {
		fmt.Fprintf(stderr, "render: %v\n", err)
		return 1
	}
	if *check {
		stale, err := bundle.Check(*out, files)
		if err != nil {
			fmt.Fprintf(stderr, "render: %v\n", err)
			return 1
		}
		if len(stale) > 0 {
			fmt.Fprintf(stderr, "render: rendered files are stale; run `make rules` and commit them:\n")
			for _, s := range stale {
				fmt.Fprintf(stderr, "  %s\n", filepath.FromSlash(s))
			}
			return 1
		}
		fmt.Fprintf(stdout, "render: %d rendered files are up to date\n", len(files))
		return 0
	}
	if err := bundle.Write(*out, files); err != nil {
		fmt.Fprintf(stderr, "render: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "render: wrote %d files under %s\n", len(files), *out)
	if *helmValues != "" {
		values, err := bundle.HelmValues(*configPath, files)
		if err == nil {
			err = os.WriteFile(*helmValues, values, 0o644)
		}
		if err != nil {
			fmt.Fprintf(stderr, "render: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "render: wrote Helm values %s\n", *helmValues)
	}
	return 0
}
