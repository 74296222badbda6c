#!/usr/bin/env bash
# The action's install step: the pinned native libraries (scripts/setup.sh: libtorch and
# ONNX Runtime from their PyPI wheels, cached), then the two executables (emshap-ci and,
# beside it, the trainer emshap-ci-train), either the release
# asset for EMSHAP_CI_VERSION (a tag; scripts/package.sh makes it, release.yml uploads it),
# verified against its published sha256, or, with EMSHAP_CI_VERSION=source or when the tag has
# no asset, built from this checkout. Writes `bin=PATH` and `env=PATH` (the file that points
# the binary at its native libraries) to $GITHUB_OUTPUT.
#
# Where assets come from: $GITHUB_SERVER_URL/<repo>/releases/download/<tag>/, <repo> being
# the action's own repository (GITHUB_ACTION_REPOSITORY) or EMSHAP_CI_RELEASE_REPO.
set -euo pipefail
root=${ACTION_PATH:-$(cd "$(dirname "$0")/.." && pwd)}
version=${EMSHAP_CI_VERSION:-source}
fail() { echo "::error title=emshap-ci install::$*"; exit 3; }
env_file=$("$root/scripts/setup.sh")
# shellcheck disable=SC1090
source "$env_file"
# A released trainer was linked on another machine: point it at this machine's libtorch.
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
target=x86_64-unknown-linux-gnu
bin=""
if [ "$version" != source ]; then
  case "$version" in
    v[0-9]*) ;;
    *) echo "::error title=emshap-ci install::version must be a release tag like v0.1.0, or 'source' (got '$version')"; exit 2 ;;
  esac
  repo=${EMSHAP_CI_RELEASE_REPO:-${GITHUB_ACTION_REPOSITORY:-}}
  asset="emshap-ci-$version-$target.tar.gz"
  url="${GITHUB_SERVER_URL:-https://github.com}/$repo/releases/download/$version"
  # Downloaded into a folder of its own, and kept (under the verified digest) only once
  # verified: jobs sharing a runner's cache never see each other's half-written files.
  dir=$(mktemp -d "$EMSHAP_CI_CACHE/.release-$version.XXXXXX")
  trap 'rm -rf "$dir"' EXIT
  if [ -n "$repo" ] && curl -fsSL --retry 3 -o "$dir/$asset" "$url/$asset"; then
    curl -fsSL --retry 3 -o "$dir/$asset.sha256" "$url/$asset.sha256" ||
      fail "release $version of $repo has $asset but no $asset.sha256: refusing an unverified binary (re-run the release workflow for $version)"
    # The checksum file names the asset; anything else in it, or a mismatch, stops here.
    (cd "$dir" && sha256sum --check --strict --status "$asset.sha256") ||
      fail "$asset does not match the sha256 published with release $version of $repo: refusing it (re-run the job; if it happens again the release asset is damaged)"
    sum=$(cut -d' ' -f1 "$dir/$asset.sha256")
    keep="$EMSHAP_CI_CACHE/release-$version-${sum:0:16}"
    if [ ! -x "$keep/emshap-ci" ] || [ ! -x "$keep/emshap-ci-train" ]; then
      tar -xzf "$dir/$asset" -C "$dir" emshap-ci emshap-ci-train ||
        fail "$asset of release $version does not hold emshap-ci and emshap-ci-train (re-run the release workflow for $version)"
      rm -f "$dir/$asset"
      # Another job may have kept the same verified files first; either copy will do.
      mv -T "$dir" "$keep" 2>/dev/null || true
    fi
    bin="$keep/emshap-ci"
  else
    echo "::warning title=emshap-ci install::no release asset $asset for $version in '$repo'; building from source"
  fi
fi
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --locked --quiet --workspace)
  bin="${CARGO_TARGET_DIR:-$root/target}/release/emshap-ci"
fi
"$bin" --version >&2 || fail "$bin does not run on this machine (see above)"
"$(dirname "$bin")/emshap-ci-train" --version >&2 ||
  fail "$(dirname "$bin")/emshap-ci-train does not run on this machine (see above)"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  { echo "bin=$bin"; echo "env=$env_file"; } >>"$GITHUB_OUTPUT"
fi
