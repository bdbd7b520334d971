package integration

import (
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// noRegistry is the reason an image is not pinned yet: a digest must be read from the registry
// (crane digest IMAGE:TAG), which CI and this repository's machines cannot reach, and an
// invented digest would be worse than a tag.
const noRegistry = "digest to be pinned at release: no registry access in CI"

// unpinnedImages are the image references allowed without a digest, by file and reference, each
// with its reason. Pin one (IMAGE:TAG@sha256:…, the tag kept) and remove its entry: the test
// fails on entries that are no longer needed.
var unpinnedImages = map[string]string{
	"deploy/docker-compose/docker-compose.yml prom/prometheus:v2.53.2":    noRegistry,
	"deploy/docker-compose/docker-compose.yml prom/alertmanager:v0.27.0":  noRegistry,
	"deploy/docker-compose/docker-compose.yml grafana/grafana-oss:10.4.8": noRegistry,
	"deploy/docker-compose/example-app.yml python:3.11-slim":              noRegistry,
	"deploy/docker-compose/example-app.yml redis:7-alpine":                noRegistry,
	// This project's own image has a digest only once a release is pushed.
	"deploy/kubernetes/base/kustomization.yaml ghcr.io/celery-exporter/celery_exporter:0.2.0": "this project's image: set images[].digest when the release is pushed; " + noRegistry,
	"deploy/helm/celery-exporter/values.yaml ghcr.io/celery-exporter/celery_exporter":         "this project's image: set image.digest when the release is pushed; " + noRegistry,
}

var digest = regexp.MustCompile(`@sha256:[0-9a-f]{64}$`)

// TestDeployImagesPinned finds every image the deploy files pull (Dockerfile bases, compose
// services, the kustomize base's images, the chart's values) and requires a digest, or an entry
// of unpinnedImages saying why not. Images built from this repository (compose `build:`) are
// not pulled.
func TestDeployImagesPinned(t *testing.T) {
	root := harness.ModuleRoot(t)
	var refs []string

	for _, m := range regexp.MustCompile(`(?m)^FROM (?:--platform=\S+ )?(\S+)`).FindAllStringSubmatch(string(readFile(t, root, "deploy/Dockerfile")), -1) {
		refs = append(refs, "deploy/Dockerfile "+m[1])
	}
	for _, f := range []string{"deploy/docker-compose/docker-compose.yml", "deploy/docker-compose/example-app.yml"} {
		var doc yaml.Node
		if err := yaml.Unmarshal(readFile(t, root, f), &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, img := range composeImages(&doc) {
			refs = append(refs, f+" "+img)
		}
	}
	var kust struct {
		Images []struct {
			NewName string `yaml:"newName"`
			NewTag  string `yaml:"newTag"`
			Digest  string `yaml:"digest"`
		} `yaml:"images"`
	}
	decodeYAML(t, &kust, root, "deploy/kubernetes/base/kustomization.yaml")
	for _, i := range kust.Images {
		ref := i.NewName + ":" + i.NewTag
		if i.Digest != "" {
			ref += "@" + i.Digest
		}
		refs = append(refs, "deploy/kubernetes/base/kustomization.yaml "+ref)
	}
	var values struct {
		Image struct{ Repository, Tag, Digest string }
	}
	decodeYAML(t, &values, root, chartDir, "values.yaml")
	ref := values.Image.Repository
	if values.Image.Tag != "" {
		ref += ":" + values.Image.Tag
	}
	if values.Image.Digest != "" {
		ref += "@" + values.Image.Digest
	}
	refs = append(refs, chartDir+"/values.yaml "+ref)

	if len(refs) < 8 {
		t.Fatalf("found only %d image references: %v", len(refs), refs)
	}
	sort.Strings(refs)
	for _, r := range refs {
		_, allowed := unpinnedImages[r]
		switch {
		case digest.MatchString(r) && allowed:
			t.Errorf("%s is pinned: remove its unpinnedImages entry", r)
		case !digest.MatchString(r) && !allowed:
			t.Errorf("%s is not pinned by digest (IMAGE:TAG@sha256:…); pin it or say why in unpinnedImages", r)
		}
	}
	for r, why := range unpinnedImages {
		if !slices.Contains(refs, r) {
			t.Errorf("unpinnedImages: %s is no image of the deploy files any more", r)
		}
		if strings.TrimSpace(why) == "" {
			t.Errorf("unpinnedImages: %s without a reason", r)
		}
	}
}

// composeImages lists the images of a compose file's mappings that have no `build:` (anchors
// included once, where they are defined).
func composeImages(n *yaml.Node) []string {
	var out []string
	if n.Kind == yaml.MappingNode {
		var image string
		build := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			switch n.Content[i].Value {
			case "image":
				image = n.Content[i+1].Value
			case "build":
				build = true
			}
		}
		if image != "" && !build {
			out = append(out, image)
		}
	}
	for _, c := range n.Content {
		out = append(out, composeImages(c)...)
	}
	return out
}
