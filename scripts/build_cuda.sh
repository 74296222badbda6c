#!/usr/bin/env bash
# Builds, on a machine without a GPU, a release emshap-ci-train (the trainer; emshap-ci itself
# links no libtorch and needs no CUDA build) that trains on CUDA
# on the GPU machine, and assembles a bundle folder to carry there:
#
#   scripts/build_cuda.sh [BUNDLE_DIR]      (default dist-cuda/, git-ignored)
#
# The GPU machine has PyTorch 2.11.0+cu130 installed (its torch/lib holds libtorch_cuda.so and,
# through that library's own RPATH, the nvidia-* CUDA libraries) and nothing else: no Rust,
# no internet. So the binary is linked against the PyPI torch==2.11.0 wheel (the default
# PyPI build of 2.11.0 is cu130), unpacked here once, and finds the device's copy at run
# time through LD_LIBRARY_PATH, set by the bundle's run.sh. build.rs, when
# EMSHAP_CI_LINK_CUDA=1: keeps libtorch_cuda.so NEEDED (--no-as-needed), leaves the CUDA
# libraries' symbols unchecked (they exist only on the device) and writes no rpath.
# tch 0.26 expects PyTorch 2.13, hence LIBTORCH_BYPASS_VERSION_CHECK, and a header forced
# into its C++ wrapper that stands in for the 2.13-only ops it wraps (below).
#
# The bundle: emshap-ci (no libtorch), emshap-ci-train and cuda_probe (stripped), libonnxruntime.so (from scripts/setup.sh's
# venv), run.sh. On the device:  BUNDLE/run.sh train power --device cuda ...
#                                BUNDLE/run.sh --probe     (CUDA seen, device count, a matmul)
# run.sh's torch lib folder: $EMSHAP_CI_TORCH_LIB, else the device's default below.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
TORCH_LOCAL=cu130            # the wheel's local version (torch/version.py), the device's
DEVICE_TORCH_LIB=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
MAX_GLIBC=2.39               # the device's glibc (Ubuntu 24.04)

bundle=${1:-dist-cuda}
say() { echo "build_cuda: $*" >&2; }

# setup.sh: the toolchain checks, the venv (pip; ONNX Runtime's library) and the cache folder.
env_file=$(scripts/setup.sh)
# shellcheck disable=SC1090
source "$env_file"
cache=$EMSHAP_CI_CACHE
ort_lib=$ORT_DYLIB_PATH

# --- libtorch 2.11.0+cu130: the wheel's headers and libraries -----------------------------
libtorch="$cache/libtorch-$TORCH_VERSION-$TORCH_LOCAL"
if [ ! -f "$libtorch/.complete" ]; then
  say "unpacking torch==$TORCH_VERSION ($TORCH_LOCAL) into $libtorch (downloads ~530 MB once)"
  rm -rf "$libtorch" "$libtorch.tmp"
  mkdir -p "$libtorch.tmp/wheel"
  # Any CPython tag: the libraries used here are the same in every one.
  "$EMSHAP_CI_PYTHON" -m pip download -q --disable-pip-version-check --no-deps \
    --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 \
    -d "$libtorch.tmp/wheel" "torch==$TORCH_VERSION" >&2
  whl=$(ls "$libtorch.tmp"/wheel/torch-"$TORCH_VERSION"-*.whl)
  # Only what the build reads: the headers, the libraries the link names or finds, the version.
  "$EMSHAP_CI_PYTHON" - "$whl" "$libtorch.tmp/unpacked" <<'PY'
import sys, zipfile
libs = {"libtorch.so", "libtorch_cpu.so", "libtorch_cuda.so", "libc10.so", "libc10_cuda.so",
        "libtorch_nvshmem.so", "libgomp.so.1"}
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist()
                               if n.startswith("torch/include/") or n == "torch/version.py"
                               or (n.startswith("torch/lib/") and n[len("torch/lib/"):] in libs)])
PY
  got=$(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$libtorch.tmp/unpacked/torch/version.py")
  if [ "$got" != "$TORCH_VERSION+$TORCH_LOCAL" ]; then
    say "PyPI's torch==$TORCH_VERSION is $got, not +$TORCH_LOCAL (the device's build)"; exit 1
  fi
  mkdir -p "$libtorch"
  mv "$libtorch.tmp/unpacked/torch/include" "$libtorch.tmp/unpacked/torch/lib" "$libtorch/"
  echo "$got" >"$libtorch/build-version"
  rm -rf "$libtorch.tmp"
  touch "$libtorch/.complete"
fi

# --- tch 0.26's C++ wrapper against PyTorch 2.11's headers ---------------------------------
# Without this, torch_api_generated.cpp fails on 15 wrappers: 14 ops PyTorch 2.11 lacks
# (_philox_*, _upsample_lanczos2d_aa*, _flash_attention_forward_no_dropout_inplace) and
# _scaled_dot_product_attention_math_for_mps, which 2.13 gives one more argument (enable_gqa).
shim="$libtorch/tch-0.26-on-torch-$TORCH_VERSION.h"
cat >"$shim.new" <<'EOF'
// Forced into torch-sys's C++ wrapper (CXXFLAGS=-include) by scripts/build_cuda.sh.
// tch 0.26's wrapper is generated for PyTorch 2.13; PyTorch 2.11 lacks these ops, or (the
// MPS-only SDPA) takes one argument fewer. Stand-ins that raise (tch returns the error), so
// the wrapper compiles; emshap-ci calls none of them.
#pragma once
#if defined(__cplusplus) && __has_include(<torch/torch.h>)
#include <stdexcept>
#include <tuple>
#include <torch/torch.h>
#define EMSHAP_CI_MISSING_OP(ret, name)                                                  \
  template <typename... A> ret name(A&&...) {                                            \
    throw std::runtime_error(#name ": not in the libtorch this binary was built against"); \
  }
namespace torch {
using emshap_ci_tensor_pair = ::std::tuple<at::Tensor, at::Tensor>;
EMSHAP_CI_MISSING_OP(at::Tensor, _flash_attention_forward_no_dropout_inplace)
EMSHAP_CI_MISSING_OP(at::Tensor, _philox_key_fold_in)
EMSHAP_CI_MISSING_OP(at::Tensor, _philox_key_split)
EMSHAP_CI_MISSING_OP(at::Tensor, _philox_normal)
EMSHAP_CI_MISSING_OP(at::Tensor, _philox_normal_)
EMSHAP_CI_MISSING_OP(at::Tensor, _philox_normal_out)
EMSHAP_CI_MISSING_OP(at::Tensor, _philox_uniform)
EMSHAP_CI_MISSING_OP(at::Tensor, _philox_uniform_)
EMSHAP_CI_MISSING_OP(at::Tensor, _philox_uniform_out)
EMSHAP_CI_MISSING_OP(emshap_ci_tensor_pair, _scaled_dot_product_attention_math_for_mps)
EMSHAP_CI_MISSING_OP(at::Tensor, _upsample_lanczos2d_aa)
EMSHAP_CI_MISSING_OP(at::Tensor, _upsample_lanczos2d_aa_out)
EMSHAP_CI_MISSING_OP(at::Tensor, _upsample_lanczos2d_aa_backward)
EMSHAP_CI_MISSING_OP(at::Tensor, _upsample_lanczos2d_aa_backward_out)
}  // namespace torch
#undef EMSHAP_CI_MISSING_OP
#endif
EOF
if cmp -s "$shim.new" "$shim"; then rm "$shim.new"; else mv "$shim.new" "$shim"; fi

# --- build ---------------------------------------------------------------------------------
target="$cache/cargo-target-cuda"
examples=()
[ -f crates/emshap-train/examples/cuda_probe.rs ] && examples=(--example cuda_probe)
say "building (target dir $target)"
started=$(date +%s)
# No ORT_DYLIB_PATH: no path of this machine compiled in; run.sh sets it on the device.
env -u ORT_DYLIB_PATH \
  LIBTORCH="$libtorch" LIBTORCH_CXX11_ABI=1 LIBTORCH_BYPASS_VERSION_CHECK=1 \
  EMSHAP_CI_LINK_CUDA=1 CARGO_TARGET_DIR="$target" CXXFLAGS="${CXXFLAGS:-} -include $shim" \
  CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --release --locked -p emshap-train --bin emshap-ci-train "${examples[@]}" >&2
# emshap-ci itself: no libtorch, so no CUDA build; the same target folder, no ORT path.
env -u ORT_DYLIB_PATH CARGO_TARGET_DIR="$target" CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked -p emshap-ci --bin emshap-ci >&2
if readelf -d "$target/release/emshap-ci" | grep -q 'NEEDED.*\[lib\(torch\|c10\)'; then
  say "$target/release/emshap-ci links libtorch: it must not (DESIGN §1)"; exit 1
fi
say "built in $(($(date +%s) - started)) s"

# --- checks --------------------------------------------------------------------------------
programs=("$target/release/emshap-ci-train")
[ ${#examples[@]} -gt 0 ] && programs+=("$target/release/examples/cuda_probe")
for p in "${programs[@]}"; do
  dyn=$(readelf -d "$p")
  grep -q 'NEEDED.*\[libtorch_cuda\.so\]' <<<"$dyn" ||
    { say "$p does not need libtorch_cuda.so: it would run on the CPU only"; exit 1; }
  if grep -E 'R(UN)?PATH' <<<"$dyn"; then
    say "$p has an rpath (above); it must have none"; exit 1
  fi
  glibc=$(objdump -T "$p" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  if [ "$(printf '%s\n%s\n' "$glibc" "$MAX_GLIBC" | sort -V | tail -1)" != "$MAX_GLIBC" ]; then
    say "$p needs glibc $glibc, the device has $MAX_GLIBC"; exit 1
  fi
done

# --- bundle --------------------------------------------------------------------------------
rm -rf "$bundle"
mkdir -p "$bundle"
cp "${programs[@]}" "$target/release/emshap-ci" "$bundle/"
cp "$ort_lib" "$bundle/"
cat >"$bundle/run.sh" <<EOF
#!/bin/sh
# Runs this bundle's emshap-ci (which starts emshap-ci-train beside it; or, with --probe
# first, cuda_probe) against the device's
# PyTorch $TORCH_VERSION+$TORCH_LOCAL libraries and the bundled ONNX Runtime.
here=\$(cd "\$(dirname "\$0")" && pwd)
torch_lib=\${EMSHAP_CI_TORCH_LIB:-$DEVICE_TORCH_LIB}
[ -e "\$torch_lib/libtorch_cuda.so" ] ||
  { echo "run.sh: no libtorch_cuda.so in \$torch_lib (set EMSHAP_CI_TORCH_LIB)" >&2; exit 1; }
export LD_LIBRARY_PATH="\$torch_lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export ORT_DYLIB_PATH="\$here/$(basename "$ort_lib")"
prog=emshap-ci
if [ "\${1:-}" = --probe ]; then prog=cuda_probe; shift; fi
exec "\$here/\$prog" "\$@"
EOF
chmod +x "$bundle/run.sh"
say "bundle $bundle: $(du -sh "$bundle" | cut -f1) (glibc needed: $glibc)"
ls -l "$bundle" >&2
