# celery_exporter — see README.md. `make test` and `make demo` do their own set-up on a fresh machine.
GO        ?= go
BIN       ?= celery_exporter
VERSION   ?= $(shell cat VERSION 2>/dev/null || echo 0.0.0)
REVISION  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
BRANCH    ?= $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
PKG_VER   := github.com/prometheus/common/version
LDFLAGS   := -s -w -X $(PKG_VER).Version=$(VERSION) -X $(PKG_VER).Revision=$(REVISION) \
             -X $(PKG_VER).Branch=$(BRANCH) -X $(PKG_VER).BuildUser=make \
             -X $(PKG_VER).BuildDate=$(shell date -u +%Y%m%d-%H:%M:%S)
# golangci-lint (config: .golangci.yml), pinned; `make lint` builds it from the Go module proxy
# into a cache outside the repository the first time (a few minutes), then reuses it.
GOLANGCI_LINT_VERSION ?= v2.15.0
TOOLS_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/celery_exporter/tools
GOLANGCI_LINT ?= $(TOOLS_DIR)/golangci-lint-$(GOLANGCI_LINT_VERSION)
# Integration tests start real redis-server, Celery workers and Prometheus; they share CPU, so run
# packages one at a time. Within test/integration the demo runs beside one other test at a time
# (see its main_test.go); -parallel 8 lets every parallel test wait for its lane, not a slot.
TEST_FLAGS ?= -count=1 -p 1 -parallel 8 -timeout 30m
# helm, kustomize and jsonnet, built into TOOLS_DIR by test/gotools.sh when missing.
export CELERY_EXPORTER_TOOLS := $(TOOLS_DIR)
export PATH := $(PATH):$(TOOLS_DIR)

.PHONY: all build test unit lint deps bench rules rules-check demo demo-kill-worker demo-trip-breaker demo-flood demo-log-error clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/celery_exporter

deps:
	@./test/deps.sh
	@./test/gotools.sh

lint: $(GOLANGCI_LINT)
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GOLANGCI_LINT) run ./...

$(GOLANGCI_LINT):
	@mkdir -p $(TOOLS_DIR)
	@tmp=$$(mktemp -d $(TOOLS_DIR)/install.XXXXXX) && \
	  echo "installing golangci-lint $(GOLANGCI_LINT_VERSION) into $(TOOLS_DIR)" && \
	  GOBIN=$$tmp $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) && \
	  mv $$tmp/golangci-lint $@ && rmdir $$tmp

unit:
	$(GO) test -count=1 -short ./...

# The exporter's own packages run once, under the race detector; the rest (rules, dashboards,
# harness, integration) once without it.
RACE_PKGS := ./collector/... ./internal/... ./cmd/...
test: deps lint rules-check build
	$(GO) test -race -count=1 $(RACE_PKGS)
	CELERY_EXPORTER_BIN=$(CURDIR)/$(BIN) $(GO) test $(TEST_FLAGS) \
	  $$($(GO) list ./... | grep -v -e '/collector' -e '/internal/' -e '/cmd/')

bench: deps build
	CELERY_EXPORTER_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 20m ./...

rules:
	$(GO) run ./rules/render

rules-check:
	$(GO) run ./rules/render -check

# BROKER=rabbitmq runs the same stack on a local rabbitmq-server.
BROKER ?= redis
demo: deps build
	DEMO_BROKER=$(BROKER) ./test/demo/run.sh

# Fault buttons for a running `make demo`, each making its alert fire.
demo-kill-worker:
	./test/demo/fault.sh kill-worker $(WORKER)

demo-trip-breaker:
	./test/demo/fault.sh trip-breaker

demo-flood:
	./test/demo/fault.sh flood $(QUEUE)

demo-log-error:
	./test/demo/fault.sh log-error

clean:
	rm -f $(BIN)
