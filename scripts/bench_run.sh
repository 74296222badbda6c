#!/usr/bin/env bash
# `run --mode pr` wall time stage by stage, and the peak RSS, on generated telemetry:
#
#   scripts/bench_run.sh ROWS [ROWS...]        e.g. scripts/bench_run.sh 100000 1000000
#
# For each ROWS: `generate --rows ROWS` into a file (not timed), then `run --mode pr` on it in
# a fresh work folder (no store: a bootstrap evaluation, as a repository's first PR), timed
# with GNU time for the peak resident set. Prints one markdown table row per stage from
# run.json. Uses the release binary under $CARGO_TARGET_DIR (default ./target; cargo build
# --release --workspace first: emshap-ci and emshap-ci-train).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1090
source "$(scripts/setup.sh)"
bin=${CARGO_TARGET_DIR:-./target}/release/emshap-ci
[ -x "$bin" ] || { echo "bench_run.sh: build first: cargo build --release --workspace" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench_run.sh: needs GNU time (apt-get install time)" >&2; exit 2; }
out=${BENCH_DIR:-$(mktemp -d)}
for rows in "$@"; do
  dir="$out/pr-$rows"
  rm -rf "$dir" && mkdir -p "$dir"
  "$bin" -q generate --rows "$rows" --out "$dir/telemetry.pb" >/dev/null
  EMSHAP_CI_SOURCE="file:$dir/telemetry.pb" /usr/bin/time -v -o "$dir/time.txt" \
    "$bin" -q run --mode pr --work "$dir/work" \
    >"$dir/stdout.txt" 2>"$dir/stderr.txt" || true
  rss_kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$dir/time.txt")
  wall=$(awk '/Elapsed \(wall clock\)/ {print $NF}' "$dir/time.txt")
  echo "### run --mode pr, $rows generated rows: wall $wall, peak RSS $((rss_kb / 1024)) MiB"
  python3 - "$dir/work/run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("| stage | status | seconds |")
print("|---|---|---:|")
for s in r["stages"]:
    print(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} |")
print(f"| **total** | | **{r['seconds']:.1f}** |")
PY
done
