#!/usr/bin/env bash
# Builds the runtime image from the repository's Dockerfile with buildah (no Docker engine),
# its base replaced by one assembled here (no registry is reachable from the tests), and runs
# `emshap-ci fetch` in it as the image's user (uid 65532) on a read-only root file system,
# with only /models writable (a tmpfs, as the Deployment's emptyDir), against an S3 server on
# 127.0.0.1. Run by tests/all/image.rs; by hand:
#
#   tests/image/runtime.sh TARBALL VERSION OUT_DIR STORE_URI SHA
#
# TARBALL is a release asset (scripts/package.sh), AWS_* in the environment point at the
# store. Writes to OUT_DIR: config.json (the image's User, Entrypoint, Env), size.txt (bytes
# of the image and of the base), fetched.txt (sha256sum of what fetch placed), readonly.txt
# (what a fetch onto the read-only root said), owners.txt, rootfs.txt, native.txt and
# fetch.log. Needs root (buildah's storage,
# mount namespaces); uses its own storage under OUT_DIR/storage and removes it
# (EMSHAP_RT_KEEP=1 keeps it, to look at with buildah --root OUT_DIR/storage/root).
set -euo pipefail
if [ $# -ne 5 ]; then
  echo "usage: tests/image/runtime.sh TARBALL VERSION OUT_DIR STORE_URI SHA" >&2
  exit 2
fi
tarball=$1 version=$2 out=$3 store=$4 sha=$5
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "runtime.sh: needs root (buildah storage and mount namespaces)" >&2; exit 2; }
command -v buildah >/dev/null || { echo "runtime.sh: buildah is not installed (scripts/setup.sh --test installs it)" >&2; exit 2; }
mkdir -p "$out"
storage="$out/storage"
# vfs: no overlay or fuse needed; chroot isolation: no user namespaces needed.
b=(buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs)
base=localhost/emshap-ci-base-test
image=localhost/emshap-ci:$version
containers=()
cleanup() {
  for c in "${containers[@]}"; do "${b[@]}" umount "$c" >/dev/null 2>&1 || true; "${b[@]}" rm "$c" >/dev/null 2>&1 || true; done
  "${b[@]}" rmi -a -f >/dev/null 2>&1 || true
  rm -rf "$storage"
}
[ -n "${EMSHAP_RT_KEEP:-}" ] || trap cleanup EXIT

# --- The base: what distroless cc-debian12 holds that emshap-ci needs ----------------------
# glibc, libm and libgcc_s (exactly what the binary's loader asks for), CA certificates, a
# passwd and group with nonroot = 65532, /tmp and nonroot's home.
ctr=$("${b[@]}" from scratch)
containers+=("$ctr")
root=$("${b[@]}" mount "$ctr")
stage=$(mktemp -d)
tar -xzf "$tarball" -C "$stage" emshap-ci
for lib in $(ldd "$stage/emshap-ci" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
rm -rf "$stage"
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
"${b[@]}" umount "$ctr" >/dev/null
"${b[@]}" commit --quiet "$ctr" "$base" >/dev/null

# --- The image, from the repository's Dockerfile and .dockerignore, only BASE replaced -----
ctx="$out/context"
mkdir -p "$ctx/dist"
cp "$repo/Dockerfile" "$repo/.dockerignore" "$ctx/"
cp "$tarball" "$ctx/dist/"
"${b[@]}" bud --quiet --isolation chroot --pull=never --layers=false \
  --build-arg "BASE=$base" --build-arg "VERSION=$version" \
  --target runtime -t "$image" -f "$ctx/Dockerfile" "$ctx" >/dev/null
rm -rf "$ctx"
# The image's configuration, as a registry would serve it (buildah 1.28's templates have no
# json function: the whole document, cut down with Python).
"${b[@]}" inspect --type image "$image" | python3 -c '
import json, sys
d = json.load(sys.stdin)
c = d["OCIv1"]["config"]
print(json.dumps({"User": c.get("User"), "Entrypoint": c.get("Entrypoint"), "Env": c.get("Env"),
                  "Cmd": c.get("Cmd"), "WorkingDir": c.get("WorkingDir"),
                  "Labels": c.get("Labels")}))' >"$out/config.json"
# Bytes: the sum of the image's (uncompressed) layers, from its manifest.
size() {
  "${b[@]}" inspect --type image "$1" |
    python3 -c 'import json,sys; m=json.loads(json.load(sys.stdin)["Manifest"]); print(sum(l["size"] for l in m["layers"]))'
}
echo "image $(size "$image") base $(size "$base") buildah-images $("${b[@]}" images --format '{{.Size}}' "$image" | tr -d ' ')" >"$out/size.txt"

# --- Run it: the image's user and entrypoint, root read-only, /models a tmpfs --------------
run=$("${b[@]}" from --pull-never "$image")
containers+=("$run")
rootfs=$("${b[@]}" mount "$run")
user=$("${b[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
entry=$("${b[@]}" inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$image")
mapfile -t image_env < <("${b[@]}" inspect --type image --format '{{range .OCIv1.Config.Env}}{{.}}{{"\n"}}{{end}}' "$image" | grep -v '^$')
# The mount point of the volume (the kubelet makes it; the image does not ship it).
mkdir -p "$rootfs/models" "$rootfs/proc" "$rootfs/dev"
# Inside a private mount namespace: the image's root bound read-only onto itself, a tmpfs
# on /models, then chroot as the image's user with only the image's and the store's env.
export EMSHAP_RT_ROOT=$rootfs EMSHAP_RT_USER=$user EMSHAP_RT_ENTRY=$entry EMSHAP_RT_OUT=$out
export EMSHAP_RT_STORE=$store EMSHAP_RT_SHA=$sha
# The image's own environment (no secrets: those stay in this process's environment).
printf '%s\n' "${image_env[@]}" >"$out/image.env"
: "${AWS_ENDPOINT_URL:?}" "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"
# /proc and /dev as a container runtime mounts them (a pid namespace of its own).
unshare --mount --pid --propagation private --fork -- bash -euo pipefail -c '
  r=$EMSHAP_RT_ROOT
  mount --bind "$r" "$r"
  mount -o remount,bind,ro "$r"
  mount -t proc proc "$r/proc"
  # /dev as a container runtime provides it: a tmpfs with the host'"'"'s character devices.
  mount -t tmpfs -o mode=0755,size=64k tmpfs "$r/dev"
  for d in null zero full random urandom; do touch "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
  mount -t tmpfs -o size=64m,mode=1777 tmpfs "$r/models"
  mapfile -t e <"$EMSHAP_RT_OUT/image.env"
  e+=("AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL" "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID"
    "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" "AWS_REGION=${AWS_REGION:-us-east-1}" NO_COLOR=1)
  # shellcheck disable=SC2086
  set +e
  env -i "${e[@]}" chroot --userspec="$EMSHAP_RT_USER" "$r" $EMSHAP_RT_ENTRY \
    fetch --store "$EMSHAP_RT_STORE" --sha "$EMSHAP_RT_SHA" --dest /models/current >"$EMSHAP_RT_OUT/fetch.log" 2>&1
  echo "exit $?" >>"$EMSHAP_RT_OUT/fetch.log"
  env -i "${e[@]}" chroot --userspec="$EMSHAP_RT_USER" "$r" $EMSHAP_RT_ENTRY \
    fetch --store "$EMSHAP_RT_STORE" --sha "$EMSHAP_RT_SHA" --dest /var/models >"$EMSHAP_RT_OUT/readonly.txt" 2>&1
  echo "exit $?" >>"$EMSHAP_RT_OUT/readonly.txt"
  set -e
  (cd "$r/models/current" && find . -type f -printf "%P %U\n" | sort) >"$EMSHAP_RT_OUT/owners.txt"
  (cd "$r/models/current" && sha256sum -- * | sort -k2) >"$EMSHAP_RT_OUT/fetched.txt"
  touch "$r/written-by-root-through-the-ro-bind" 2>/dev/null && echo writable >"$EMSHAP_RT_OUT/rootfs.txt" || echo read-only >"$EMSHAP_RT_OUT/rootfs.txt"
'
# Neither libtorch nor ONNX Runtime is in the image.
(cd "$rootfs" && find . \( -name 'libtorch*' -o -name 'libonnxruntime*' -o -name 'libc10*' \) -print) >"$out/native.txt"
