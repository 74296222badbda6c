#!/usr/bin/env bash
# Packages the two built executables as the release asset that scripts/install.sh downloads
# and verifies:
#
#   scripts/package.sh BIN_DIR OUT_DIR VERSION
#
# BIN_DIR holds `emshap-ci` and `emshap-ci-train` (e.g. target/release). Writes
# OUT_DIR/emshap-ci-VERSION-x86_64-unknown-linux-gnu.tar.gz (both, stripped of debug
# information, side by side: `emshap-ci train` starts the trainer found beside it) and
# OUT_DIR/<that>.sha256 in `sha256sum` format (one digest for the tarball), and prints the
# asset's path. `emshap-ci` needs ONNX Runtime only for evaluate and explain; the trainer
# needs the pinned libtorch too; install.sh gets both with scripts/setup.sh from the same tag.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: scripts/package.sh BIN_DIR OUT_DIR VERSION" >&2
  exit 2
fi
bins=$1 out=$2 version=$3
case "$version" in
  v[0-9]*) ;;
  *) echo "package.sh: VERSION must be a tag like v0.1.0 (got '$version')" >&2; exit 2 ;;
esac
for exe in emshap-ci emshap-ci-train; do
  [ -x "$bins/$exe" ] || { echo "package.sh: $bins/$exe is not an executable (build both first: cargo build --release --workspace)" >&2; exit 2; }
done
asset="emshap-ci-$version-x86_64-unknown-linux-gnu.tar.gz"
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for exe in emshap-ci emshap-ci-train; do
  cp "$bins/$exe" "$stage/$exe"
  if command -v strip >/dev/null; then strip --strip-debug "$stage/$exe"; fi
done
# Written beside, then renamed: an interrupted run leaves no half asset under the final name.
tar -czf "$out/$asset.tmp" -C "$stage" emshap-ci emshap-ci-train
mv "$out/$asset.tmp" "$out/$asset"
(cd "$out" && sha256sum "$asset" >"$asset.sha256.tmp" && mv "$asset.sha256.tmp" "$asset.sha256")
echo "$out/$asset"
