#!/usr/bin/env bash
# Installs the Go-built tools the tests need (helm, kustomize, jsonnet) when they are missing,
# with `go install` from the Go module proxy into a cache directory; the Makefile puts that
# directory on PATH. Versions are pinned: the newest kustomize needs a newer Go than go.mod's.
set -euo pipefail

bin="${CELERY_EXPORTER_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/celery_exporter/tools}"
mkdir -p "$bin"
tools=(
  "helm helm.sh/helm/v3/cmd/helm@v3.22.0"
  "kustomize sigs.k8s.io/kustomize/kustomize/v5@v5.7.1"
  "jsonnet github.com/google/go-jsonnet/cmd/jsonnet@v0.22.0"
)
for t in "${tools[@]}"; do
  name=${t%% *}
  mod=${t#* }
  if command -v "$name" >/dev/null 2>&1 || [ -x "$bin/$name" ]; then
    continue
  fi
  echo "test/gotools.sh: go install $mod into $bin"
  # Outside the module, so go.mod's requirements play no part.
  (cd / && GOBIN="$bin" GOFLAGS=-mod=mod go install "$mod")
done
