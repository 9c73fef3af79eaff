#!/usr/bin/env bash
# Builds Portway's two images from static binaries, with docker, podman or buildah:
#   portway/operator:<tag>   images/operator.Dockerfile   `portway` on an empty base, uid 65532
#   portway/agent:<tag>      images/agent.Dockerfile      `portway-agent` + iptables legacy/nft
#
# Usage: scripts/build-images.sh [docker|podman|buildah]
#   With no argument: docker if its daemon answers, else podman, else buildah.
# Environment:
#   PORTWAY_IMAGE_TAG      tag of both images (default: dev)
#   PORTWAY_PLATFORMS      comma-separated, of linux/amd64 and linux/arm64 (default: this machine's).
#                          One platform: the images are portway/<x>:<tag>. Several: one image per
#                          platform, portway/<x>:<tag>-<arch>, and with podman or buildah a
#                          multi-arch manifest list portway/<x>:<tag> of them (docker's own image
#                          store holds no manifest lists: push the per-arch images and use
#                          `docker manifest create`, or `docker buildx`).
#   PORTWAY_BIN_DIR        take static `portway` and `portway-agent` from this folder (one platform
#                          only) instead of scripts/build-static.sh
#   PORTWAY_CARGO_PROFILE  cargo profile for scripts/build-static.sh (default: image)
#   PORTWAY_DEBIAN_IMAGE   image of the stage that unpacks iptables (default: debian:bookworm-slim)
#
# No registry is needed besides the Debian base (with podman it may be a local one:
# ../shared/tools/local-base-image.sh) and Debian's package mirror, which the agent image's first
# stage uses for the iptables packages. Load the result into kind with:
#   kind load docker-image portway/operator:dev portway/agent:dev
# With podman the images are also tagged docker.io/portway/..., the name kind's nodes resolve
# `portway/operator:dev` to; load them with
#   KIND_EXPERIMENTAL_PROVIDER=podman kind load docker-image portway/operator:dev portway/agent:dev
# or `podman save docker.io/portway/operator:dev -o op.tar && kind load image-archive op.tar`.
#
# Prints one line per image on stdout: `<image> <platform> <size in bytes> bytes (<MiB> MiB)`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

die() { echo "build-images: $*" >&2; exit 1; }

engine=${1:-}
if [ -z "$engine" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null 2>&1; then
    engine=podman
  elif command -v buildah >/dev/null 2>&1; then
    engine=buildah
  else
    die "none of a running docker daemon, podman or buildah found"
  fi
fi
case "$engine" in
  docker | podman | buildah) command -v "$engine" >/dev/null 2>&1 || die "$engine is not installed" ;;
  *) echo "usage: $0 [docker|podman|buildah]" >&2; exit 2 ;;
esac

arch_of() { # <uname -m or platform> -> amd64|arm64
  case "$1" in
    x86_64 | amd64 | linux/amd64) echo amd64 ;;
    aarch64 | arm64 | linux/arm64 | linux/arm64/v8) echo arm64 ;;
    *) return 1 ;;
  esac
}
host_arch=$(arch_of "$(uname -m)") || die "unsupported build machine $(uname -m)"
tag=${PORTWAY_IMAGE_TAG:-dev}
debian=${PORTWAY_DEBIAN_IMAGE:-debian:bookworm-slim}
archs=()
IFS=, read -r -a platforms <<<"${PORTWAY_PLATFORMS:-linux/$host_arch}"
for p in "${platforms[@]}"; do
  a=$(arch_of "$p") || die "unsupported platform $p (linux/amd64, linux/arm64)"
  archs+=("$a")
done
[ ${#archs[@]} -gt 0 ] || die "PORTWAY_PLATFORMS is empty"
multi=0
[ ${#archs[@]} -gt 1 ] && multi=1

# --- binaries -----------------------------------------------------------------------------------
declare -A bin_dirs
if [ -n "${PORTWAY_BIN_DIR:-}" ]; then
  [ "$multi" = 0 ] || die "PORTWAY_BIN_DIR holds one platform's binaries; build one platform at a time"
  bin_dirs[${archs[0]}]=$PORTWAY_BIN_DIR
else
  built=$(bash scripts/build-static.sh "${archs[@]}") || die "scripts/build-static.sh ${archs[*]} failed"
  while read -r a dir; do bin_dirs[$a]=$dir; done <<<"$built"
fi
for a in "${archs[@]}"; do
  for b in portway portway-agent; do
    f=${bin_dirs[$a]:-}/$b
    [ -x "$f" ] || die "$f is missing (scripts/build-static.sh $a builds it)"
    # The images have no libc for these binaries: a dynamically linked one would not start.
    if command -v readelf >/dev/null 2>&1 && readelf -lW "$f" | grep -q 'program interpreter'; then
      die "$f is dynamically linked; the images need static binaries (scripts/build-static.sh $a)"
    fi
  done
done

# --- build contexts -----------------------------------------------------------------------------
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
strip_tool() { # <arch>: a strip that understands that architecture's binaries, if any
  local machine
  machine=$([ "$1" = amd64 ] && echo x86_64 || echo aarch64)
  if [ "$1" = "$host_arch" ] && command -v strip >/dev/null 2>&1; then echo strip
  elif command -v "$machine-linux-gnu-strip" >/dev/null 2>&1; then echo "$machine-linux-gnu-strip"
  fi
}
for a in "${archs[@]}"; do
  mkdir -p "$stage/$a/operator" "$stage/$a/agent"
  install -m 0755 "${bin_dirs[$a]}/portway" "$stage/$a/operator/portway"
  install -m 0755 "${bin_dirs[$a]}/portway-agent" "$stage/$a/agent/portway-agent"
  s=$(strip_tool "$a")
  if [ -n "$s" ]; then "$s" --strip-unneeded "$stage/$a/operator/portway" "$stage/$a/agent/portway-agent"; fi
  mkdir -p "$stage/$a/operator/examples"
  cp examples/*.yaml "$stage/$a/operator/examples/"
  if [ -d examples/k3s ]; then cp -r examples/k3s "$stage/$a/operator/examples/k3s"; fi
  install -m 0755 images/agent-rootfs.sh "$stage/$a/agent/agent-rootfs.sh"
done

# --- images -------------------------------------------------------------------------------------
build() { # <dockerfile> <context> <name:tag> <arch>
  local file=$1 context=$2 ref=$3 arch=$4
  # The agent's first stage runs on this machine's platform and unpacks <arch>'s packages.
  local args=(build -f "$file" --platform "linux/$arch" --build-arg "VERSION=$tag"
    --build-arg "DEBIAN_IMAGE=$debian" --build-arg "BUILD_PLATFORM=linux/$host_arch"
    --build-arg "IMAGE_ARCH=$arch" -t "$ref")
  if [ "$engine" != docker ]; then
    # kind resolves `portway/x:tag` to docker.io/portway/x:tag; podman would store the short name
    # under localhost/, so tag the fully qualified name too.
    args+=(-t "docker.io/$ref")
    # The base may exist only locally (../shared/tools/local-base-image.sh): never pull it then.
    if "$engine" inspect --type image "$debian" >/dev/null 2>&1; then args+=(--pull=never); fi
  fi
  echo "build-images: $engine build $ref (linux/$arch)" >&2
  "$engine" "${args[@]}" "$context" >&2
}

size_of() { # <ref>: uncompressed size in bytes
  case "$engine" in
    docker | podman) "$engine" image inspect --format '{{.Size}}' "$1" ;;
    buildah) podman image inspect --format '{{.Size}}' "$1" 2>/dev/null || echo "?" ;;
  esac
}

for name in portway/operator portway/agent; do
  kind=${name#portway/}
  refs=()
  for a in "${archs[@]}"; do
    ref="$name:$tag"
    [ "$multi" = 1 ] && ref="$name:$tag-$a"
    build "images/$kind.Dockerfile" "$stage/$a/$kind" "$ref" "$a"
    refs+=("$ref")
    size=$(size_of "$ref")
    if [ "$size" = "?" ]; then
      printf '%s linux/%s ? bytes\n' "$ref" "$a"
    else
      printf '%s linux/%s %s bytes (%s MiB)\n' "$ref" "$a" "$size" "$((size / 1048576))"
    fi
  done
  if [ "$multi" = 1 ]; then
    list="$name:$tag"
    if [ "$engine" = docker ]; then
      echo "build-images: docker keeps no manifest lists locally; per-arch images: ${refs[*]}" >&2
      continue
    fi
    # The list's name must not also name an image (e.g. from a one-platform build).
    "$engine" manifest rm "$list" >/dev/null 2>&1 || true
    if "$engine" inspect --type image "$list" >/dev/null 2>&1; then
      "$engine" rmi "$list" >/dev/null 2>&1 || true
    fi
    "$engine" manifest create "$list" >/dev/null
    for ref in "${refs[@]}"; do
      "$engine" manifest add "$list" "containers-storage:localhost/$ref" >/dev/null
    done
    echo "build-images: manifest list $list: ${refs[*]}" >&2
  fi
done
