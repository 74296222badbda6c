#!/usr/bin/env bash
# The action's install step: the two executables (emshap-ci and, beside it, the trainer
# emshap-ci-train) and the pinned native libraries they load (scripts/setup.sh: libtorch and
# ONNX Runtime from their PyPI wheels, cached). Writes `bin=PATH` and `env=PATH` (the file
# that points the binary at its native libraries) to $GITHUB_OUTPUT.
#
# Which executables (EMSHAP_CI_VERSION, the action's `version` input):
#   ""        the action's own release: the tag it is pinned to (uses: OWNER/emshap-ci@v1.2.0),
#             or, pinned by a commit sha (uses: OWNER/emshap-ci@<sha> # v1.2.0) or a moving
#             tag (@v1), the release whose tag points at that commit (the highest vX.Y.Z there;
#             GitHub's tag list). A local action (uses: ./) has no release: it must say
#             `version`.
#   vX.Y.Z    that release's asset (scripts/package.sh makes it, release.yml uploads and
#             attests it). A release without the asset stops the job (exit 3): no silent
#             20-minute source build.
#   source    build this checkout (cargo build --release), only on request.
#
# How a release asset is checked (EMSHAP_CI_VERIFY, the action's `verify` input):
#   attestation (default)  its sha256 against the published .sha256, then its build
#             attestation with `gh attestation verify --signer-workflow
#             OWNER/REPO/.github/workflows/release.yml --source-ref refs/tags/TAG` (gh >= 2.49
#             and the network; GitHub's runners have both). Refused, or not possible (no gh,
#             an older gh): exit 3, nothing installed.
#   sha256    the checksum alone (catches corruption, not a replaced asset); the job summary
#             says so. Never chosen silently.
#
# Where assets come from: $GITHUB_SERVER_URL/<repo>/releases/download/<tag>/, <repo> being
# EMSHAP_CI_RELEASE_REPO or the action's own repository (EMSHAP_CI_ACTION_REPOSITORY, or
# GITHUB_ACTION_REPOSITORY, or the OWNER/REPO in the action's path .../_actions/OWNER/REPO/REF:
# composite actions do not always see github.action_repository / github.action_ref).
set -euo pipefail
root=${ACTION_PATH:-$(cd "$(dirname "$0")/.." && pwd)}
version=${EMSHAP_CI_VERSION:-}
verify=${EMSHAP_CI_VERIFY:-attestation}
cache=${EMSHAP_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emshap-ci}
fail() { echo "::error title=emshap-ci install::$*"; exit 3; }
usage() { echo "::error title=emshap-ci install::$*"; exit 2; }
summary() { if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then echo "$*" >>"$GITHUB_STEP_SUMMARY"; fi; }

# The action's own repository and ref, from the runner or from the path it unpacked us to.
action_repo=${EMSHAP_CI_ACTION_REPOSITORY:-${GITHUB_ACTION_REPOSITORY:-}}
action_ref=${EMSHAP_CI_ACTION_REF:-${GITHUB_ACTION_REF:-}}
case "$root" in
  */_actions/*/*/*)
    rest=${root##*/_actions/}
    IFS=/ read -r path_owner path_name path_ref _ <<<"$rest"
    action_repo=${action_repo:-$path_owner/$path_name}
    action_ref=${action_ref:-$path_ref}
    ;;
esac
repo=${EMSHAP_CI_RELEASE_REPO:-$action_repo}

case "$verify" in
  attestation | sha256) ;;
  *) usage "verify must be 'attestation' or 'sha256' (got '$verify')" ;;
esac

# The repository's tags, one "NAME SHA" line each (GitHub's tag list, paged), into `tags`.
# Not run in a subshell: its `fail` exits.
list_tags() {
  local page body lines
  local api=${GITHUB_API_URL:-https://api.github.com}
  local auth=()
  if [ -n "${GH_TOKEN:-}" ]; then auth=(-H "Authorization: Bearer $GH_TOKEN"); fi
  tags=""
  for page in 1 2 3 4 5 6 7 8 9 10; do
    body=$(curl -fsSL --retry 3 "${auth[@]}" -H "Accept: application/vnd.github+json" \
      "$api/repos/$repo/tags?per_page=100&page=$page") ||
      fail "cannot list the tags of $repo at $api to find the release the action is pinned to ($action_ref) (set the action's version input to its tag, e.g. version: v1.2.0)"
    # "NAME SHA" per tag, then END when this page was the last.
    lines=$(python3 -c '
import json, sys
tags = json.loads(sys.stdin.read())
for t in tags:
    print(t["name"], t["commit"]["sha"])
if len(tags) < 100:
    print("END")
' <<<"$body") || fail "the tag list of $repo at $api is not the JSON GitHub sends (set the action's version input to its tag)"
    tags+="$lines"$'\n'
    if grep -qx END <<<"$lines"; then break; fi
  done
}

# The highest release tag (vX.Y.Z...) at commit $1, from `tags`; empty when none.
release_at() {
  awk -v sha="$1" '$2 == sha && $1 ~ /^v[0-9]+\.[0-9]+\.[0-9]+/ { print $1 }' <<<"$tags" | sort -V | tail -n 1
}

if [ -z "$version" ]; then
  if [ -z "$action_ref" ] || [ -z "$action_repo" ]; then
    usage "this action is not used from a release (uses: ./ or a local path): set its version input to a release tag (version: v1.2.0), or to 'source' to build this checkout"
  fi
  if [[ "$action_ref" =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]]; then
    version=$action_ref
  elif [[ "$action_ref" =~ ^[0-9a-f]{40}$ ]]; then
    list_tags
    version=$(release_at "$action_ref")
    [ -n "$version" ] ||
      fail "no release tag of $repo points at commit $action_ref, the sha this action is pinned to: pin the sha of a release (uses: $action_repo@<sha> # vX.Y.Z), or set version: source"
    echo "emshap-ci: the action is pinned to $action_ref, release $version" >&2
  elif [[ "$action_ref" =~ ^v[0-9]+(\.[0-9]+)?$ ]]; then
    # A moving major (or minor) tag: the release at the commit it points at now.
    list_tags
    at=$(awk -v name="$action_ref" '$1 == name { print $2 }' <<<"$tags")
    version=$(release_at "$at")
    [ -n "$version" ] ||
      fail "tag $action_ref of $repo points at no release (commit ${at:-unknown}): pin the sha of a release (uses: $action_repo@<sha> # vX.Y.Z), or set version"
    echo "emshap-ci: the action is used at $action_ref ($at), release $version" >&2
  else
    usage "this action is pinned to '$action_ref', neither a release tag nor a commit sha: pin it by the sha of a release (uses: $action_repo@<sha> # vX.Y.Z), or set its version input"
  fi
fi

target=x86_64-unknown-linux-gnu
bin=""
if [ "$version" != source ]; then
  case "$version" in
    v[0-9]*) ;;
    *) usage "version must be a release tag like v0.1.0, 'source', or empty for the action's own release (got '$version')" ;;
  esac
  [ -n "$repo" ] || usage "no repository to take release $version from (set EMSHAP_CI_RELEASE_REPO=OWNER/REPO)"
  asset="emshap-ci-$version-$target.tar.gz"
  url="${GITHUB_SERVER_URL:-https://github.com}/$repo/releases/download/$version"
  mkdir -p "$cache"
  # Downloaded into a folder of its own, and kept (under the verified digest) only once
  # verified: jobs sharing a runner's cache never see each other's half-written files.
  dir=$(mktemp -d "$cache/.release-$version.XXXXXX")
  trap 'rm -rf "$dir"' EXIT
  curl -fsSL --retry 3 -o "$dir/$asset" "$url/$asset" ||
    fail "release $version of $repo has no asset $asset at $url (re-run the release workflow for $version, or set version: source to build from source)"
  curl -fsSL --retry 3 -o "$dir/$asset.sha256" "$url/$asset.sha256" ||
    fail "release $version of $repo has $asset but no $asset.sha256: refusing an unverified binary (re-run the release workflow for $version)"
  # The checksum file names the asset; anything else in it, or a mismatch, stops here.
  (cd "$dir" && sha256sum --check --strict --status "$asset.sha256") ||
    fail "$asset does not match the sha256 published with release $version of $repo: refusing it (re-run the job; if it happens again the release asset is damaged)"
  sum=$(cut -d' ' -f1 "$dir/$asset.sha256")
  if [ "$verify" = attestation ]; then
    # The checksum came from the same release as the asset: it proves no corruption, not
    # who built it. The attestation proves release.yml of $repo built it from tag $version.
    what="cannot verify the build attestation of $asset (release $version of $repo)"
    command -v gh >/dev/null 2>&1 ||
      fail "$what: gh (the GitHub CLI, >= 2.49) is not on the PATH; install it, or set verify: sha256 to accept the checksum alone"
    gh_version=$(gh --version 2>/dev/null | sed -n '1s/^gh version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
    major=${gh_version%%.*} minor=${gh_version#*.}
    if [ -z "$gh_version" ] || [ "$major" -lt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -lt 49 ]; }; then
      fail "$what: gh ${gh_version:-of unknown version} has no 'gh attestation' (needs >= 2.49); update it, or set verify: sha256 to accept the checksum alone"
    fi
    if ! out=$(gh attestation verify "$dir/$asset" --repo "$repo" \
      --signer-workflow "$repo/.github/workflows/release.yml" \
      --source-ref "refs/tags/$version" 2>&1); then
      echo "::group::gh attestation verify (refused)"; echo "$out"; echo "::endgroup::"
      reason=$(grep -v '^[[:space:]]*$' <<<"$out" | tail -n 1)
      fail "$asset of release $version of $repo failed its build attestation check (${reason:-gh attestation verify failed}): refusing it (re-run the job if GitHub was unreachable; otherwise the asset was not built by $repo's release workflow for $version; set verify: sha256 only if you accept the checksum alone)"
    fi
    echo "emshap-ci: $asset verified: sha256, and attested by $repo/.github/workflows/release.yml at refs/tags/$version" >&2
  else
    echo "::warning title=emshap-ci install::$asset was checked against its sha256 only (verify: sha256), not its build attestation"
    summary "> [!WARNING]"
    summary "> emshap-ci $version: \`$asset\` was verified only by its sha256 (\`verify: sha256\`), not by its build attestation."
  fi
  keep="$cache/release-$version-${sum:0:16}"
  if [ ! -x "$keep/emshap-ci" ] || [ ! -x "$keep/emshap-ci-train" ]; then
    tar -xzf "$dir/$asset" -C "$dir" emshap-ci emshap-ci-train ||
      fail "$asset of release $version does not hold emshap-ci and emshap-ci-train (re-run the release workflow for $version)"
    rm -f "$dir/$asset"
    # Another job may have kept the same verified files first; either copy will do.
    mv -T "$dir" "$keep" 2>/dev/null || true
  fi
  bin="$keep/emshap-ci"
fi

env_file=$("$root/scripts/setup.sh")
# shellcheck disable=SC1090
source "$env_file"
# A released trainer was linked on another machine: point it at this machine's libtorch.
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
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
