# The Portway operator image: the static `portway` binary (operator, `plan`, `migrate`, `crd`,
# `cleanup`) and examples/, on an empty base: no shell, no package manager, no libc.
#
# The binary is built statically on the host and staged, stripped, with examples/ by
# scripts/build-images.sh. The operator needs no privilege: it runs as uid 65532 on a read-only
# root filesystem; it reads the cluster's CA and token from its ServiceAccount, so the image needs
# no CA bundle.
FROM scratch
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
ENV PATH=/usr/local/bin
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/portway"]
CMD ["run"]
