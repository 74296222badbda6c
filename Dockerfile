# The two images of a release (DESIGN §11), made from the release asset, not from source:
# release.yml builds the executables once on the runner from the tagged source, packages them
# (scripts/package.sh) and attests the tarball, and these images carry exactly those bytes.
# No Rust toolchain and no network in here; every base is pinned by digest.
#
#   --target runtime  `emshap-ci` alone: no libtorch, no ONNX Runtime (fetch, publish,
#                     promote and rollback need neither), on distroless cc (glibc, libgcc_s,
#                     CA certificates, /etc/passwd with nonroot), as uid 65532, writing
#                     nothing outside its volumes: the Attribution Service's init container,
#                     fine with readOnlyRootFilesystem.
#   --target train    emshap-ci and emshap-ci-train in /opt/emshap-ci/bin, libtorch (CPU)
#                     and ONNX Runtime in /opt/emshap-ci/lib, found relative to the binaries
#                     (the trainer's RUNPATH is $ORIGIN/../lib, set at link time by
#                     release.yml's EMSHAP_CI_TRAIN_RPATH; emshap-ci looks in ../lib): for
#                     self-hosted runners.
#
# The build context is the repository; .dockerignore lets in only dist/:
#   scripts/package.sh target/release dist vX.Y.Z    dist/emshap-ci-vX.Y.Z-<target>.tar.gz
#   scripts/image_libs.sh dist/train-lib             (train only) the pinned native libraries
#   docker build --build-arg VERSION=vX.Y.Z --target runtime -t emshap-ci:vX.Y.Z .
# BASE and TRAIN_BASE may be replaced (the tests build from a locally assembled base).
ARG BASE=gcr.io/distroless/cc-debian12@sha256:b7550f0b15838de14c564337eef2b804ba593ae55d81ca855421bd52f19bb480
ARG TRAIN_BASE=debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818

# The release asset, unpacked (ADD extracts a local .tar.gz): /emshap-ci, /emshap-ci-train.
FROM scratch AS dist
ARG VERSION
ADD dist/emshap-ci-${VERSION}-x86_64-unknown-linux-gnu.tar.gz /

FROM ${BASE} AS runtime
ARG VERSION
LABEL org.opencontainers.image.title="emshap-ci" \
      org.opencontainers.image.description="emshap-ci without libtorch: fetch, publish, promote, rollback" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=dist --chmod=0555 /emshap-ci /usr/local/bin/emshap-ci
USER 65532:65532
# Temporary folders go where a volume or an emptyDir is mounted, never onto the root.
ENV TMPDIR=/tmp
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/emshap-ci"]
CMD ["--help"]

FROM ${TRAIN_BASE} AS train
ARG VERSION
LABEL org.opencontainers.image.title="emshap-ci-train" \
      org.opencontainers.image.description="emshap-ci and emshap-ci-train with libtorch (CPU) and ONNX Runtime" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# CA certificates from the runtime base: no package manager run, nothing fetched.
COPY --from=runtime /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=dist --chmod=0555 /emshap-ci /emshap-ci-train /opt/emshap-ci/bin/
COPY --chmod=0555 dist/train-lib/ /opt/emshap-ci/lib/
ENV PATH=/opt/emshap-ci/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["/opt/emshap-ci/bin/emshap-ci"]
CMD ["--help"]
