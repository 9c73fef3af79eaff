#!/usr/bin/env bash
# Builds Portway's two images with docker or podman:
#   portway/operator:<tag>   images/operator.Dockerfile   (the `portway` binary, runs as uid 65532)
#   portway/agent:<tag>      images/agent.Dockerfile      (`portway-agent` + iptables legacy/nft + nft)
#
# Usage: scripts/build-images.sh [docker|podman]
#   With no argument: docker if its daemon answers, else podman.
# Environment:
#   PORTWAY_IMAGE_TAG   tag of both images (default: dev)
#   PORTWAY_BIN_DIR     take `portway` and `portway-agent` from this folder instead of running
#                       `cargo build --release` (e.g. target/debug for a quick local image)
#   CARGO_TARGET_DIR    where cargo puts the release build (default: target/)
#
# The binaries are built on the host and COPY'd into debian:bookworm-slim (no rust: builder image:
# the host's glibc must not be newer than bookworm's 2.36 — build on Debian 12 or in a bookworm
# container). Load the result into kind with:
#   kind load docker-image portway/operator:dev portway/agent:dev
# With podman the images are also tagged docker.io/portway/..., the name kind's nodes resolve
# `portway/operator:dev` to; load them with
#   KIND_EXPERIMENTAL_PROVIDER=podman kind load docker-image portway/operator:dev portway/agent:dev
# or `podman save docker.io/portway/operator:dev -o op.tar && kind load image-archive op.tar`.
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
  else
    die "neither a running docker daemon nor podman found"
  fi
fi
case "$engine" in
  docker|podman) command -v "$engine" >/dev/null 2>&1 || die "$engine is not installed" ;;
  *) echo "usage: $0 [docker|podman]" >&2; exit 2 ;;
esac

tag=${PORTWAY_IMAGE_TAG:-dev}
bin_dir=${PORTWAY_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
  echo "build-images: cargo build --release (portway, portway-agent)" >&2
  cargo build --release --locked -p portway-operator --bin portway -p portway-node-agent --bin portway-agent >&2
  bin_dir=${CARGO_TARGET_DIR:-$repo/target}/release
fi
for b in portway portway-agent; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing (build it, or set PORTWAY_BIN_DIR)"
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/operator/examples" "$stage/agent"
install -m 0755 "$bin_dir/portway" "$stage/operator/portway"
install -m 0755 "$bin_dir/portway-agent" "$stage/agent/portway-agent"
if command -v strip >/dev/null 2>&1; then
  strip --strip-unneeded "$stage/operator/portway" "$stage/agent/portway-agent"
fi
cp examples/*.yaml "$stage/operator/examples/"
if [ -d examples/k3s ]; then cp -r examples/k3s "$stage/operator/examples/k3s"; fi

build() { # <dockerfile> <context> <name>
  local file=$1 context=$2 name=$3
  local args=(build -f "$file" --build-arg "VERSION=$tag" -t "$name:$tag")
  if [ "$engine" = podman ]; then
    # kind resolves `portway/x:tag` to docker.io/portway/x:tag; podman would store the short name
    # under localhost/, so tag the fully qualified name too.
    args+=(-t "docker.io/$name:$tag")
    # The base may exist only locally (../shared/tools/local-base-image.sh): never pull it then.
    if podman image exists debian:bookworm-slim; then args+=(--pull=never); fi
  fi
  echo "build-images: $engine build $name:$tag" >&2
  "$engine" "${args[@]}" "$context" >&2
}

build images/operator.Dockerfile "$stage/operator" portway/operator
build images/agent.Dockerfile "$stage/agent" portway/agent

for name in portway/operator portway/agent; do
  size=$("$engine" image inspect --format '{{.Size}}' "$name:$tag")
  printf '%s:%s %s bytes (%s MiB)\n' "$name" "$tag" "$size" "$((size / 1048576))"
done
