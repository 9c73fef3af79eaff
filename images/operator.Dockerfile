# The Portway operator image: the `portway` binary (operator, `plan`, `migrate`, `crd`).
#
# The binary is built on the host and copied in (scripts/build-images.sh stages it, stripped, with
# examples/): no Rust toolchain, no build stage, nothing but the binary on a slim base.
# The operator needs no privilege: it runs as uid 65532 on a read-only root filesystem.
FROM debian:bookworm-slim

ARG VERSION=dev
LABEL org.opencontainers.image.title="portway-operator" \
      org.opencontainers.image.description="Portway operator: LoadBalancer Services on node ports, pod CIDRs for Nodes" \
      org.opencontainers.image.source="https://github.com/portway-dev/portway" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

COPY portway /usr/local/bin/portway
# `portway plan examples/` works in the image's working directory (a demo without a cluster).
COPY examples /usr/share/portway/examples
WORKDIR /usr/share/portway

USER 65532:65532
ENTRYPOINT ["/usr/local/bin/portway"]
CMD ["run"]
