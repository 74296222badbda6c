#!/usr/bin/env bash
# The test command: sets up everything (scripts/setup.sh --test), then format check,
# clippy with warnings as errors, and every test, including those against a real Kafka
# broker (Tansu, started and stopped by the tests on 127.0.0.1).
#
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --fast     skip the tests against servers (Kafka broker, S3 server)
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
# CI builds in a fresh clone: keep its target folder in the cache so a warm run is quick.
if [ "${CI:-}" = true ] && [ -z "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="${EMSHAP_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emshap-ci}/cargo-target"
fi
[ "${1:-}" = "--fast" ] && fast=1
env_file=$(scripts/setup.sh --test)
# shellcheck disable=SC1090
source "$env_file"
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
cargo fmt --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# Licences we name, crates.io only (deny.toml); the advisory database would need the network.
"$EMSHAP_CI_CARGO_DENY" check licenses bans sources
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --locked --quiet
filter=()
[ "$fast" = 1 ] && filter=(-E 'not test(/kafka|s3_/)')
cargo nextest run --workspace --all-features --locked --no-fail-fast "${filter[@]}"
