# The Portway node-agent image: the `portway-agent` binary plus the kernel tools it drives.
#
# - iptables: iptables-legacy and iptables-nft (the `xtables-*-multi` binaries with their
#   -restore/-save links); the agent picks the variant the node already uses, as kube-proxy does.
# - nftables: the `nft` CLI, to inspect nft rules from inside the pod.
# The binary is built on the host and copied in (scripts/build-images.sh).
#
# The agent runs as uid 0 (iptables refuses other users) but never privileged: the operator's
# DaemonSets drop every capability and add NET_ADMIN, plus NET_RAW which only iptables-legacy needs
# (its raw socket); iptables-nft works with NET_ADMIN alone. /proc/sys is read-only in containers,
# so forwarding sysctls come from the pod spec where the kubelet allows them (see docs/install.md).
FROM debian:bookworm-slim

ARG VERSION=dev
LABEL org.opencontainers.image.title="portway-agent" \
      org.opencontainers.image.description="Portway node agent: forwards a LoadBalancer Service's host ports (iptables legacy/nft)" \
      org.opencontainers.image.source="https://github.com/portway-dev/portway" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iptables nftables \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
           /usr/share/doc/* /usr/share/man/* /usr/share/info/* \
 && iptables-legacy --version && iptables-nft --version && nft --version

COPY portway-agent /usr/local/bin/portway-agent

ENTRYPOINT ["/usr/local/bin/portway-agent"]
CMD ["run"]
