#!/usr/bin/env bash
# Packages a built emshap-ci binary as the release asset that scripts/install.sh downloads
# and verifies:
#
#   scripts/package.sh BINARY OUT_DIR VERSION
#
# writes OUT_DIR/emshap-ci-VERSION-x86_64-unknown-linux-gnu.tar.gz (the binary, stripped of
# debug information, as `emshap-ci`) and OUT_DIR/<that>.sha256 in `sha256sum` format, and
# prints the asset's path. The binary needs the pinned libtorch and ONNX Runtime at run time;
# install.sh gets them with scripts/setup.sh from the same tag.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: scripts/package.sh BINARY OUT_DIR VERSION" >&2
  exit 2
fi
bin=$1 out=$2 version=$3
case "$version" in
  v[0-9]*) ;;
  *) echo "package.sh: VERSION must be a tag like v0.1.0 (got '$version')" >&2; exit 2 ;;
esac
[ -x "$bin" ] || { echo "package.sh: $bin is not an executable (build it first)" >&2; exit 2; }
asset="emshap-ci-$version-x86_64-unknown-linux-gnu.tar.gz"
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$bin" "$stage/emshap-ci"
if command -v strip >/dev/null; then strip --strip-debug "$stage/emshap-ci"; fi
# Written beside, then renamed: an interrupted run leaves no half asset under the final name.
tar -czf "$out/$asset.tmp" -C "$stage" emshap-ci
mv "$out/$asset.tmp" "$out/$asset"
(cd "$out" && sha256sum "$asset" >"$asset.sha256.tmp" && mv "$asset.sha256.tmp" "$asset.sha256")
echo "$out/$asset"
