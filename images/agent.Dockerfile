# The Portway node-agent image: the static `portway-agent` binary plus the iptables tools it runs,
# on an empty base: no shell, no package manager.
#
# Stage 1 runs on the build machine's own architecture (BUILD_PLATFORM) and unpacks
# Debian's iptables packages for the image's architecture without running them
# (images/agent-rootfs.sh), so arm64 images build on amd64 without emulation. It keeps only
# iptables-legacy and iptables-nft (`xtables-*-multi` and the {ip,ip6}tables-{legacy,nft}
# {,-save,-restore} links the agent runs; the agent picks the variant the node already uses, as
# kubelet does), their extensions and the shared libraries they load (glibc's loader, libc, libm).
# The agent itself is built statically on the host (scripts/build-images.sh) and copied in.
#
# The agent runs as uid 0 (iptables refuses other users) but never privileged: the operator's
# DaemonSets drop every capability and add NET_ADMIN, plus NET_RAW which only iptables-legacy needs
# (its raw socket); iptables-nft works with NET_ADMIN alone. /proc/sys is read-only in containers,
# so forwarding sysctls come from the pod spec where the kubelet allows them (see docs/install.md).
ARG DEBIAN_IMAGE=debian:bookworm-slim
# The build machine's platform and the image's architecture, passed by scripts/build-images.sh
# (BuildKit's automatic BUILDPLATFORM and TARGETARCH are not what every engine sets: podman 4.3
# gives BUILDPLATFORM the target's value, docker's legacy builder sets neither).
ARG BUILD_PLATFORM=linux/amd64
FROM --platform=${BUILD_PLATFORM} ${DEBIAN_IMAGE} AS iptables
ARG IMAGE_ARCH=amd64
COPY agent-rootfs.sh /agent-rootfs.sh
RUN bash /agent-rootfs.sh "${IMAGE_ARCH}" /rootfs

FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="portway-agent" \
      org.opencontainers.image.description="Portway node agent: forwards a LoadBalancer Service's host ports (iptables legacy/nft)" \
      org.opencontainers.image.source="https://github.com/portway-dev/portway" \
      org.opencontainers.image.licenses="Apache-2.0 AND GPL-2.0-only AND GPL-2.0-or-later AND LGPL-2.1-or-later" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=iptables /rootfs/ /
COPY portway-agent /usr/local/bin/portway-agent
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin
USER 0:0
ENTRYPOINT ["/usr/local/bin/portway-agent"]
CMD ["run"]
