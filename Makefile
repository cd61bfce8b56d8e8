# rudder-courier: `make run` starts the local stack, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
PROFILE ?= release
IMAGE ?= rudder-courier:dev

.PHONY: help deps build run test lint fmt bench clean image deploy-check

help:
	@echo "make run    - real nats-server + redis-server under .data/, every service, a dev workspace"
	@echo "make test   - all tests (starts its own nats-server and redis-server on free ports)"
	@echo "make lint   - cargo fmt --check and clippy -D warnings"
	@echo "make bench  - load benchmarks; figures go to BENCHMARKS.md"
	@echo "make deps   - install nats-server (>= 2.10) and redis-server if missing"
	@echo "make image  - container image with every service binary (IMAGE=$(IMAGE); needs a Docker engine)"
	@echo "make deploy-check - render deploy/ overlays, validate against Kubernetes schemas, lint the Dockerfile"

deps:
	@scripts/deps.sh

build:
	$(CARGO) build --profile $(PROFILE) --bins

run: deps
	@PROFILE=$(PROFILE) scripts/run-local.sh

# The service binaries first: crash and drain tests run them as real processes
# (`cargo test` builds other packages' binaries only in their unit-test form).
# `--all-targets` here gives the binaries the same feature set as the tests, so
# `cargo test` reuses every artifact instead of compiling the workspace twice
# (a second copy of target/ once filled CI's disk).
test: deps
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --all-targets
	# The end-to-end suite again, on a 3-node JetStream cluster and a Redis Cluster.
	RC_TEST_CLUSTER=1 $(CARGO) test -p rc-tests --test e2e

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: deps
	@scripts/bench.sh

image:
	@command -v docker >/dev/null 2>&1 || { echo "make image: docker is not installed; build where a Docker engine runs: docker build -t $(IMAGE) ." >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker engine is reachable (docker info failed); build where one runs: docker build -t $(IMAGE) ." >&2; exit 1; }
	docker build -t $(IMAGE) .

deploy-check:
	@scripts/check-deploy.sh

clean:
	$(CARGO) clean
	rm -rf .data
