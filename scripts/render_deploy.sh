#!/usr/bin/env bash
# deploy.yml's rollout file: the committed manifest with the promoted version and the
# images pinned by version and digest. A committed manifest cannot hold the digest of an
# image built after it, so the images come from the release's own record,
# emshap-ci-vX.Y.Z-images.txt (release.yml writes it: "runtime REF" and "train REF" lines).
#
#   scripts/render_deploy.sh MANIFEST SHA IMAGES_FILE SERVICE_IMAGE > rollout.yaml
#
# Replaces EMSHAP_CI_SHA_PLACEHOLDER (the version to fetch), EMSHAP_CI_IMAGE_PLACEHOLDER (the
# runtime image) and ATTRIBUTION_SERVICE_IMAGE_PLACEHOLDER (the service's own image). Every
# image must be NAME:TAG@sha256:<64 hex>; a mutable reference (:latest, no digest) is refused
# with exit 2, as is a placeholder left over.
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: scripts/render_deploy.sh MANIFEST SHA IMAGES_FILE SERVICE_IMAGE" >&2
  exit 2
fi
manifest=$1 sha=$2 images=$3 service=$4
die() { echo "render_deploy.sh: $*" >&2; exit 2; }
pinned='^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$'
[[ "$sha" =~ ^[A-Za-z0-9._-]+$ ]] || die "the version '$sha' is not a commit sha or version id"
[ -r "$images" ] || die "no image record $images (the release's emshap-ci-<tag>-images.txt)"
runtime=$(awk '$1 == "runtime" { print $2 }' "$images")
[ -n "$runtime" ] || die "$images names no runtime image"
for ref in "$runtime" "$service"; do
  [[ "$ref" =~ $pinned ]] || die "'$ref' is not pinned by version and digest (NAME:TAG@sha256:<digest>)"
  case "$ref" in *:latest@*) die "'$ref' is tagged latest: name the release" ;; esac
done
out=$(sed -e "s|EMSHAP_CI_SHA_PLACEHOLDER|$sha|g" \
  -e "s|EMSHAP_CI_IMAGE_PLACEHOLDER|$runtime|g" \
  -e "s|ATTRIBUTION_SERVICE_IMAGE_PLACEHOLDER|$service|g" "$manifest")
if grep -n 'PLACEHOLDER' <<<"$out" | grep -v '^[0-9]*:[[:space:]]*#' >&2; then
  die "placeholders left in $manifest (above)"
fi
printf '%s\n' "$out"
