#!/usr/bin/env bash
# The action's install step: the pinned native libraries (scripts/setup.sh: libtorch and
# ONNX Runtime from their PyPI wheels, cached), then the emshap-ci binary, either the release
# asset for EMSHAP_CI_VERSION (a tag), verified against its published sha256, or, with
# EMSHAP_CI_VERSION=source or when no asset matches, built from this checkout. Writes
# `bin=PATH` to $GITHUB_OUTPUT.
set -euo pipefail
root=${ACTION_PATH:-$(cd "$(dirname "$0")/.." && pwd)}
version=${EMSHAP_CI_VERSION:-source}
env_file=$("$root/scripts/setup.sh")
# shellcheck disable=SC1090
source "$env_file"
target=x86_64-unknown-linux-gnu
bin=""
if [ "$version" != source ]; then
  case "$version" in
    v[0-9]*) ;;
    *) echo "::error title=emshap-ci::version must be a release tag like v0.1.0, or 'source' (got '$version')"; exit 2 ;;
  esac
  repo=${EMSHAP_CI_RELEASE_REPO:-${GITHUB_ACTION_REPOSITORY:-}}
  asset="emshap-ci-$version-$target.tar.gz"
  url="${GITHUB_SERVER_URL:-https://github.com}/$repo/releases/download/$version"
  dir="$EMSHAP_CI_CACHE/release-$version"
  mkdir -p "$dir"
  if [ -n "$repo" ] && curl -fsSL -o "$dir/$asset" "$url/$asset" && curl -fsSL -o "$dir/$asset.sha256" "$url/$asset.sha256"; then
    # The checksum file names the asset; a mismatch stops here.
    (cd "$dir" && sha256sum --check --strict "$asset.sha256")
    tar -xzf "$dir/$asset" -C "$dir"
    bin="$dir/emshap-ci"
  else
    echo "::warning title=emshap-ci::no release asset $asset for $version in '$repo'; building from source"
  fi
fi
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --locked --quiet --features torch)
  bin="$root/target/release/emshap-ci"
fi
"$bin" --version >&2
if [ -n "${GITHUB_OUTPUT:-}" ]; then echo "bin=$bin" >>"$GITHUB_OUTPUT"; fi
