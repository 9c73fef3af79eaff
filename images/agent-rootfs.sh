#!/usr/bin/env bash
# Assembles the agent image's files, except the agent itself, into <out>: the iptables tools the
# agent runs and exactly the shared libraries they load, taken from Debian's packages for <arch>.
# Runs in the first stage of images/agent.Dockerfile (a Debian container of the *build* machine's
# architecture): packages of another architecture are downloaded (`dpkg --add-architecture`,
# `apt-get download`) and unpacked with `dpkg-deb -x`, never installed or run, so an arm64 image
# builds on amd64 without emulation.
#
# Usage: agent-rootfs.sh <debian-arch: amd64|arm64> <out>
#
# What goes in, and why (see docs/design-packaging.md):
# - /usr/sbin/xtables-{legacy,nft}-multi and the {ip,ip6}tables-{legacy,nft}{,-save,-restore}
#   links the agent runs (it detects the variant like kubelet; the multi-binaries act on argv[0]);
# - every iptables and ip6tables extension (/usr/lib/<triplet>/xtables/lib{xt,ipt,ip6t}_*.so, not
#   ebtables' or arptables'): detection and the agent's diff dump whole tables, which hold
#   kube-proxy's and the CNI's matches as well;
# - the libraries those need, the glibc loader, libc and libm; nothing else of libc6 (no
#   locales, gconv modules or NSS files);
# - each package's copyright file and a list of the packages and versions (licences: iptables
#   and the netfilter libraries are GPL-2.0, libmnl and glibc LGPL-2.1).
# The script then checks that every ELF file's DT_NEEDED libraries and program interpreter are in
# <out> and fails otherwise, so a new dependency cannot slip into the image unnoticed.
set -euo pipefail

arch=${1:?usage: agent-rootfs.sh <amd64|arm64> <out>}
out=${2:?usage: agent-rootfs.sh <amd64|arm64> <out>}
case "$arch" in
  amd64) triplet=x86_64-linux-gnu loader=/lib64/ld-linux-x86-64.so.2 ;;
  arm64) triplet=aarch64-linux-gnu loader=/lib/ld-linux-aarch64.so.1 ;;
  *) echo "agent-rootfs: unsupported architecture $arch (amd64, arm64)" >&2; exit 2 ;;
esac

packages=(iptables libxtables12 libip4tc2 libip6tc2 libnftnl11 libmnl0
  libnetfilter-conntrack3 libnfnetlink0 libc6)

export DEBIAN_FRONTEND=noninteractive
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
  dpkg --add-architecture "$arch"
fi
apt-get update -q
# readelf, for the dependency check below (build stage only; nothing of it reaches the image).
apt-get install -y -q --no-install-recommends binutils >/dev/null

work=$(mktemp -d)
chmod 0755 "$work" # apt-get download fetches as the unprivileged _apt user
(cd "$work" && apt-get download -q "${packages[@]/%/:$arch}")
mkdir -p "$work/x"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
src=$work/x

mkdir -p "$out"
pick() { # <path relative to the unpacked packages>... : copied with their parent folders
  local p
  for p in "$@"; do
    [ -e "$src/$p" ] || [ -L "$src/$p" ] || { echo "agent-rootfs: $p is not in the packages" >&2; exit 1; }
    (cd "$src" && cp -a --parents "$p" "$out/")
  done
}

pick usr/sbin/xtables-legacy-multi usr/sbin/xtables-nft-multi
for family in iptables ip6tables; do
  for variant in legacy nft; do
    for tool in "" -save -restore; do pick "usr/sbin/$family-$variant$tool"; done
  done
done
# Extensions of iptables and ip6tables (libxt_, libipt_, libip6t_), not of ebtables or arptables.
(cd "$src" && for f in usr/lib/"$triplet"/xtables/lib{xt,ipt,ip6t}_*.so; do pick "$f"; done)
for lib in libxtables.so.12 libip4tc.so.2 libip6tc.so.2 libnftnl.so.11 libmnl.so.0 \
           libnetfilter_conntrack.so.3 libnfnetlink.so.0; do
  pick "usr/lib/$triplet/$lib" "usr/lib/$triplet/$(readlink "$src/usr/lib/$triplet/$lib")"
done
loader_target=$(readlink "$src${loader}")
pick "${loader#/}" "lib/$triplet/${loader_target##*/}" "lib/$triplet/libc.so.6" "lib/$triplet/libm.so.6"

for p in "${packages[@]}"; do pick "usr/share/doc/$p/copyright"; done
mkdir -p "$out/usr/share/doc/portway-agent"
for deb in "$work"/*.deb; do
  dpkg-deb -f "$deb" Package Version Architecture Source | tr '\n' ' '
  echo
done | sort >"$out/usr/share/doc/portway-agent/debian-packages.txt"
# Empty mount points: the pod's /run (probe files, xtables lock) and /tmp.
mkdir -p "$out/run" "$out/tmp"
chmod 1777 "$out/tmp"

# Every ELF's interpreter and DT_NEEDED libraries must be in the image. Paths are resolved inside
# <out> (absolute links such as the loader's would otherwise point into this build container).
in_image() { # <absolute path in the image>: exists there as a file, following links inside <out>
  local p=$1 t i
  for i in 1 2 3 4 5 6 7 8; do
    [ -L "$out$p" ] || break
    t=$(readlink "$out$p")
    case "$t" in /*) p=$t ;; *) p=$(dirname "$p")/$t ;; esac
  done
  [ -f "$out$p" ] && ! [ -L "$out$p" ]
}
missing=0
while IFS= read -r -d '' f; do
  readelf -h "$f" >/dev/null 2>&1 || continue
  interp=$(readelf -lW "$f" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  if [ -n "$interp" ] && ! in_image "$interp"; then
    echo "agent-rootfs: ${f#"$out"} needs the loader $interp, which is not in the image" >&2
    missing=1
  fi
  for lib in $(readelf -dW "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    if ! in_image "/lib/$triplet/$lib" && ! in_image "/usr/lib/$triplet/$lib"; then
      echo "agent-rootfs: ${f#"$out"} needs $lib, which is not in the image" >&2
      missing=1
    fi
  done
done < <(find "$out" -type f -print0)
[ "$missing" = 0 ] || exit 1
du -sh "$out" >&2
rm -rf "$work"
