#!/usr/bin/env bash
# `make bench`: release build, then rc-bench (it starts its own nats-server and redis-server,
# the release service binaries and a fake data plane): raw limits, then the end-to-end scenarios.
# The Markdown it prints replaces the section between the bench markers in BENCHMARKS.md, with
# the command, the date and the machine; earlier sections below the markers stay.
#
#   make bench                                   # defaults: 2,000 events/s, 10,000 per phase
#   BENCH_ARGS="--rate 5000 --count 20000" make bench
#   BENCH_ARGS="--scenario identify,track --skip-raw" make bench
#   BENCH_NO_WRITE=1 make bench                  # print only, leave BENCHMARKS.md alone
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
machine="$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(nats-server --version), redis-server $(redis-server --version | cut -d' ' -f3 | cut -d= -f2)"
echo "machine: $machine"
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
"$TARGET_DIR/release/rc-bench" --out "$OUT" ${BENCH_ARGS:-}
[ -n "${BENCH_NO_WRITE:-}" ] && exit 0

python3 - "$OUT" "make bench${BENCH_ARGS:+ BENCH_ARGS=\"$BENCH_ARGS\"}" "$machine" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- services proto || echo ' + local changes')" <<'PY'
import sys, datetime, pathlib
out, command, machine, rev = sys.argv[1:5]
start, end = "<!-- bench:start -->", "<!-- bench:end -->"
path = pathlib.Path("BENCHMARKS.md")
text = path.read_text()
when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
section = (f"{start}\n## Latest `make bench`\n\nCommand: `{command}` at {rev}, {when}. Machine: {machine}; "
           "servers, services and load generator share it.\n\n" + pathlib.Path(out).read_text().strip() + f"\n{end}")
if start in text and end in text:
    before, rest = text.split(start, 1)
    text = before + section + rest.split(end, 1)[1]
else:
    # First run: after the introduction (before the first "## " heading).
    i = text.find("\n## ")
    i = len(text) if i < 0 else i + 1
    text = text[:i] + section + "\n\n" + text[i:]
path.write_text(text)
print(f"BENCHMARKS.md: section between the bench markers replaced ({when})")
PY
