#!/usr/bin/env bash
# Stages the native libraries of the training image (Dockerfile, --target train) into
# OUT_DIR, from the pinned wheels scripts/setup.sh installs (the same ones the release's
# trainer was linked against):
#
#   scripts/image_libs.sh OUT_DIR      e.g. dist/train-lib
#
# libtorch (CPU): libtorch_cpu.so, libc10.so, the thin libtorch.so, their OpenMP, and the two
# CUDA runtime libraries libtorch_cpu.so names (libcudart, libcupti; no GPU is used); ONNX
# Runtime as libonnxruntime.so (emshap-ci looks for ../lib/libonnxruntime.so beside itself).
# Copies, not links: the build context must hold the bytes. Each library's own RUNPATH is
# $ORIGIN or none, so they find each other in one folder.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: scripts/image_libs.sh OUT_DIR" >&2
  exit 2
fi
out=$1
env_file=$("$(dirname "$0")/setup.sh")
# shellcheck disable=SC1090
source "$env_file"
rm -rf "$out"
mkdir -p "$out"
for lib in "$LIBTORCH"/lib/*.so*; do
  cp -L "$lib" "$out/$(basename "$lib")"
done
cp -L "$ORT_DYLIB_PATH" "$out/libonnxruntime.so"
missing=$(cd "$out" && for f in *.so*; do LD_LIBRARY_PATH=. ldd "$f" | grep 'not found' || true; done | sort -u)
if [ -n "$missing" ]; then
  echo "image_libs.sh: libraries the staged ones need but do not find beside them:" >&2
  echo "$missing" >&2
  exit 1
fi
du -sh "$out" >&2
