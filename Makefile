# rudder-courier: `make run` starts the local stack, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
PROFILE ?= release

.PHONY: help deps build run test lint fmt bench clean

help:
	@echo "make run    - real nats-server + redis-server under .data/, every service, a dev workspace"
	@echo "make test   - all tests (starts its own nats-server and redis-server on free ports)"
	@echo "make lint   - cargo fmt --check and clippy -D warnings"
	@echo "make bench  - load benchmarks; figures go to BENCHMARKS.md"
	@echo "make deps   - install nats-server (>= 2.10) and redis-server if missing"

deps:
	@scripts/deps.sh

build:
	$(CARGO) build --profile $(PROFILE) --bins

run: deps
	@PROFILE=$(PROFILE) scripts/run-local.sh

test: deps
	$(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: deps
	@scripts/bench.sh

clean:
	$(CARGO) clean
	rm -rf .data
