#!/usr/bin/env bash
# Builds the training image (Dockerfile, --target train) with buildah from a release asset and
# the staged native libraries (scripts/image_libs.sh), its two bases replaced by ones
# assembled here from this machine's glibc and libstdc++ (what distroless cc and
# debian:bookworm-slim carry; no registry is reachable), then, as uid 65532 on a read-only
# root with only /work and /tmp writable, runs the chain that needs both native libraries: pull the
# embedded telemetry, train both models (emshap-ci-train, libtorch through its RUNPATH
# $ORIGIN/../lib), evaluate (ONNX Runtime from ../lib beside emshap-ci). By hand:
#
#   tests/image/train.sh TARBALL VERSION OUT_DIR
#
# A tarball whose trainer still has an absolute RUNPATH (a build without
# EMSHAP_CI_TRAIN_RPATH, as this machine's target/release) gets $ORIGIN/../lib set with
# patchelf first, as release.yml's link would have set it; train.sh says so. Writes to OUT_DIR:
# size.txt, runpath.txt, chain.log, readonly-tmp.txt (the same run with /tmp read-only: exit
# 3) (and the image's storage, removed at the end unless
# EMSHAP_RT_KEEP=1). Needs root, buildah and patchelf.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: tests/image/train.sh TARBALL VERSION OUT_DIR" >&2
  exit 2
fi
tarball=$1 version=$2 out=$3
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "train.sh: needs root (buildah storage and mount namespaces)" >&2; exit 2; }
for tool in buildah patchelf; do
  command -v "$tool" >/dev/null || { echo "train.sh: $tool is not installed (apt-get install $tool)" >&2; exit 2; }
done
mkdir -p "$out"
storage="$out/storage"
b=(buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs)
containers=()
cleanup() {
  for c in "${containers[@]}"; do "${b[@]}" umount "$c" >/dev/null 2>&1 || true; "${b[@]}" rm "$c" >/dev/null 2>&1 || true; done
  "${b[@]}" rmi -a -f >/dev/null 2>&1 || true
  rm -rf "$storage" "$out/context"
}
[ -n "${EMSHAP_RT_KEEP:-}" ] || trap cleanup EXIT

# --- The build context: the asset (trainer's RUNPATH relative) and the libraries ----------
ctx="$out/context"
mkdir -p "$ctx/dist/unpacked"
tar -xzf "$tarball" -C "$ctx/dist/unpacked"
runpath=$(readelf -d "$ctx/dist/unpacked/emshap-ci-train" | sed -n 's/.*Library runpath: \[\(.*\)\]/\1/p')
if [ "$runpath" != '$ORIGIN/../lib' ]; then
  echo "train.sh: the trainer's RUNPATH is '$runpath', not \$ORIGIN/../lib: setting it with patchelf, as release.yml's EMSHAP_CI_TRAIN_RPATH links it" >&2
  patchelf --set-rpath '$ORIGIN/../lib' "$ctx/dist/unpacked/emshap-ci-train"
fi
asset="emshap-ci-$version-x86_64-unknown-linux-gnu.tar.gz"
tar -czf "$ctx/dist/$asset" -C "$ctx/dist/unpacked" emshap-ci emshap-ci-train
"$repo/scripts/image_libs.sh" "$ctx/dist/train-lib" 2>/dev/null
cp "$repo/Dockerfile" "$repo/.dockerignore" "$ctx/"

# --- The bases: exactly the system libraries the binaries and libtorch ask for ------------
# BASE (runtime, whose CA certificates the train stage copies) and TRAIN_BASE.
base_from() { # NAME FILE...: a scratch image with the system libraries FILEs need
  local name=$1 ctr root lib
  shift
  ctr=$("${b[@]}" from scratch)
  containers+=("$ctr")
  root=$("${b[@]}" mount "$ctr")
  for lib in $(for f in "$@"; do LD_LIBRARY_PATH="$ctx/dist/train-lib" ldd "$f"; done | grep -o '/[^ ]*' | grep -v "^$ctx" | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  mkdir -p "$root/etc/ssl/certs" "$root/tmp"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  "${b[@]}" umount "$ctr" >/dev/null
  "${b[@]}" commit --quiet "$ctr" "$name" >/dev/null
}
base_from localhost/emshap-ci-base-test "$ctx/dist/unpacked/emshap-ci"
base_from localhost/emshap-ci-train-base-test "$ctx/dist/unpacked/emshap-ci" \
  "$ctx/dist/unpacked/emshap-ci-train" "$ctx"/dist/train-lib/*.so*
rm -rf "$ctx/dist/unpacked"

image=localhost/emshap-ci-train:$version
"${b[@]}" bud --quiet --isolation chroot --pull=never --layers=false \
  --build-arg BASE=localhost/emshap-ci-base-test \
  --build-arg TRAIN_BASE=localhost/emshap-ci-train-base-test \
  --build-arg "VERSION=$version" --target train -t "$image" -f "$ctx/Dockerfile" "$ctx" >/dev/null
rm -rf "$ctx"
size() {
  "${b[@]}" inspect --type image "$1" |
    python3 -c 'import json,sys; m=json.loads(json.load(sys.stdin)["Manifest"]); print(sum(l["size"] for l in m["layers"]))'
}
echo "image $(size "$image") base $(size localhost/emshap-ci-train-base-test) buildah-images $("${b[@]}" images --format '{{.Size}}' "$image" | tr -d ' ')" >"$out/size.txt"

# --- Run the chain in it ------------------------------------------------------------------
run=$("${b[@]}" from --pull-never "$image")
containers+=("$run")
rootfs=$("${b[@]}" mount "$run")
readelf -d "$rootfs/opt/emshap-ci/bin/emshap-ci-train" | grep -i runpath >"$out/runpath.txt"
user=$("${b[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
mapfile -t image_env < <("${b[@]}" inspect --type image --format '{{range .OCIv1.Config.Env}}{{.}}{{"\n"}}{{end}}' "$image" | grep -v '^$')
printf '%s\n' "${image_env[@]}" >"$out/image.env"
mkdir -p "$rootfs/work" "$rootfs/proc" "$rootfs/dev"
export EMSHAP_RT_ROOT=$rootfs EMSHAP_RT_USER=$user EMSHAP_RT_OUT=$out
# /proc and /dev as a container runtime mounts them (a pid namespace of its own).
unshare --mount --pid --propagation private --fork -- bash -euo pipefail -c '
  r=$EMSHAP_RT_ROOT
  mount --bind "$r" "$r"
  mount -o remount,bind,ro "$r"
  mount -t proc proc "$r/proc"
  # /dev as a container runtime provides it: a tmpfs with the host'"'"'s character devices.
  mount -t tmpfs -o mode=0755,size=64k tmpfs "$r/dev"
  for d in null zero full random urandom; do touch "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
  mount -t tmpfs -o size=512m,mode=1777 tmpfs "$r/work"
  mapfile -t e <"$EMSHAP_RT_OUT/image.env"
  e+=(HOME=/work NO_COLOR=1 EMSHAP_CI_EPOCHS=2 EMSHAP_CI_MAX_ROWS=2000 EMSHAP_CI_THREADS=2)
  inside() { env -i "${e[@]}" chroot --userspec="$EMSHAP_RT_USER" "$r" "$@"; }
  # With $TMPDIR (/tmp) on the read-only root, training cannot start: exit 3, saying why.
  inside /opt/emshap-ci/bin/emshap-ci run --mode main --work /work/ro >"$EMSHAP_RT_OUT/readonly-tmp.txt" 2>&1 &&
    echo "exit 0" >>"$EMSHAP_RT_OUT/readonly-tmp.txt" || echo "exit $?" >>"$EMSHAP_RT_OUT/readonly-tmp.txt"
  # Then as a pod with readOnlyRootFilesystem runs it: emptyDirs on /work and /tmp.
  mount -t tmpfs -o size=512m,mode=1777 tmpfs "$r/tmp"
  {
    inside /opt/emshap-ci/bin/emshap-ci --version
    inside /opt/emshap-ci/bin/emshap-ci-train --version
    inside /opt/emshap-ci/bin/emshap-ci run --mode main --work /work/run
  } >"$EMSHAP_RT_OUT/chain.log" 2>&1 && echo "exit 0" >>"$EMSHAP_RT_OUT/chain.log" ||
    echo "exit $?" >>"$EMSHAP_RT_OUT/chain.log"
'
