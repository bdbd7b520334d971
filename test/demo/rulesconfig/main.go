package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("rulesconfig", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("base", "rules/config.yaml", "the rules config to start from")
	overrides := fs.String("overrides", "test/demo/rules-overrides.yaml", "values that replace the base's")
	out := fs.String("out", "", "where to write the merged config (required)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *out == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "rulesconfig: usage: rulesconfig [-base F] [-overrides F] -out F")
		return 2
	}
	merged, err := mergeFiles(*base, *overrides)
	if err != nil {
		fmt.Fprintf(stderr, "rulesconfig: %v\n", err)
		return 1
	}
	if err := os.WriteFile(*out, merged, 0o644); err != nil {
		fmt.Fprintf(stderr, "rulesconfig: %v\n", err)
		return 1
	}
	return 0
}

func mergeFiles(basePath, overridesPath string) ([]byte, error) {
	var docs [2]map[string]any
	for i, p := range []string{basePath, overridesPath} {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		if err := yaml.Unmarshal(b, &docs[i]); err != nil {
			return nil, fmt.Errorf("parse %s: %w", p, err)
		}
	}
	if docs[0] == nil {
		return nil, fmt.Errorf("%s: empty config", basePath)
	}
	// A top-level key the base does not have is a typo or a removed field: say so here rather
	// than let the renderer's "unknown field" point at the merged temp file.
	if err := merge(docs[0], docs[1], ""); err != nil {
		return nil, fmt.Errorf("%s: %w", overridesPath, err)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(docs[0]); err != nil {
		return nil, fmt.Errorf("encode merged config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode merged config: %w", err)
	}
	return buf.Bytes(), nil
}

// merge copies over into base: nested maps merge, every other value replaces the base's.
func merge(base, over map[string]any, path string) error {
	for k, v := range over {
		p := k
		if path != "" {
			p = path + "." + k
		}
		bv, ok := base[k]
		if !ok {
			// Top-level fields are fixed; below them maps such as alert_labels take new keys (the
			// renderer validates alert and window names).
			if path == "" {
				return fmt.Errorf("field %s is not in the base config", p)
			}
			base[k] = v
			continue
		}
		bm, bIsMap := bv.(map[string]any)
		om, oIsMap := v.(map[string]any)
		if bIsMap && oIsMap {
			if err := merge(bm, om, p); err != nil {
				return err
			}
			continue
		}
		base[k] = v
	}
	return nil
}
