#!/usr/bin/env bash
# `make bench`: release build, then the load benchmarks (rc-bench starts its own nats-server
# and redis-server). Extra arguments go to rc-bench, e.g. BENCH_ARGS="--seconds 20".
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(nats-server --version), $(redis-server --version | cut -d' ' -f3)"
"$TARGET_DIR/release/rc-bench" ${BENCH_ARGS:-}
