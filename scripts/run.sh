#!/usr/bin/env bash
# The main job on the embedded defaults, on a fresh machine: sets up (scripts/setup.sh:
# libtorch and ONNX Runtime from their PyPI wheels, cached), builds the release binary, then
# `emshap-ci run --mode main`: pulls the bundled telemetry, trains both models, evaluates them
# against production in the local store work/store (none on the first run), prints the report
# (also in work/eval/report.md), publishes the version under work/store/versions/ and
# promotes it if the gate passes. No Kafka, S3 or GitHub needed. Run it again to see the new
# candidate (challenger) scored against the one just promoted (champion) on the same rows.
# Extra arguments go to `emshap-ci run` (e.g. --resume, --work DIR, --store s3://...).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
env_file=$(scripts/setup.sh)
# shellcheck disable=SC1090
source "$env_file"
command -v cargo >/dev/null || {
  echo "run.sh: cargo is not installed: install Rust (https://rustup.rs), then run this again" >&2
  exit 2
}
echo "run.sh: building emshap-ci and emshap-ci-train (release; the first build takes several minutes)" >&2
cargo build --release --locked --quiet --workspace
status=0
./target/release/emshap-ci run --mode main "$@" || status=$?
echo "run.sh: $(($(date +%s) - started)) s in all, set-up and build included (exit $status)" >&2
exit $status
