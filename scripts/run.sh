#!/usr/bin/env bash
# The main job on the embedded defaults: sets up (scripts/setup.sh), builds the release
# binary with libtorch, pulls the bundled telemetry fixture into a snapshot under work/,
# and trains both models into work/models (ONNX files proven against libtorch). No Kafka,
# S3 or GitHub needed. Extra arguments go to `emshap-ci pull`, e.g. --source file:PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
env_file=$(scripts/setup.sh)
# shellcheck disable=SC1090
source "$env_file"
started=$(date +%s)
cargo build --release --locked --quiet --features torch
bin=./target/release/emshap-ci
$bin pull --out work/data "$@"
$bin train power --data work/data --out work/models
$bin train emshap --data work/data --out work/models
echo "done in $(($(date +%s) - started)) s: snapshot in work/data (lineage: work/data/dataset.json), models in work/models"
