#!/usr/bin/env bash
# Builds Portway's two binaries, `portway` and `portway-agent`, as static musl executables for the
# container images (which have no libc of their own for them), one architecture at a time.
#
# Usage: scripts/build-static.sh <amd64|arm64>...
#   Prints one line per architecture: `<arch> <folder holding portway and portway-agent>`.
# Environment:
#   PORTWAY_CARGO_PROFILE   cargo profile (default: image, see Cargo.toml)
#   CARGO_TARGET_DIR        cargo's target folder (default: target/)
#
# Needs the rustup target (x86_64-unknown-linux-musl / aarch64-unknown-linux-musl; added here
# with rustup when missing) and a C compiler for the target (ring, the TLS library's crypto, has C
# and assembly): for the host's own architecture musl-gcc (Debian: musl-tools) or else gcc; for the
# other one the Debian cross compiler, e.g. gcc-aarch64-linux-gnu (its `<triplet>-gcc` also links).
# scripts/install-test-deps.sh installs all of them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

die() { echo "build-static: $*" >&2; exit 1; }
[ $# -gt 0 ] || die "usage: $0 <amd64|arm64>..."

# Cargo's per-package variables, set when this runs under `cargo test` or `cargo bench`: some build
# scripts (ring's) declare them as inputs, so other values would rebuild the whole tree each time.
for v in $(compgen -e); do
  case "$v" in
    CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_NAME | CARGO_BIN_NAME | CARGO_BIN_EXE_* | \
      CARGO_PRIMARY_PACKAGE | CARGO_TARGET_TMPDIR | OUT_DIR) unset "$v" ;;
  esac
done

profile=${PORTWAY_CARGO_PROFILE:-image}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
host_arch=$(uname -m)

for arch in "$@"; do
  case "$arch" in
    amd64) machine=x86_64 ;;
    arm64) machine=aarch64 ;;
    *) die "unsupported architecture $arch (amd64, arm64)" ;;
  esac
  target=$machine-unknown-linux-musl
  env_target=$(echo "$target" | tr 'a-z-' 'A-Z_')
  if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$target"; then
    echo "build-static: rustup target add $target" >&2
    rustup target add "$target" >&2
  fi
  # A non-PIE static executable: no dynamic relocations to store or apply at start (smaller, and
  # no copy-on-write of relocated pages in every process), like Go's default static binaries.
  cross=("CARGO_TARGET_${env_target}_RUSTFLAGS=-C relocation-model=static")
  if [ "$machine" != "$host_arch" ]; then
    gcc="$machine-linux-gnu-gcc"
    command -v "$gcc" >/dev/null 2>&1 ||
      die "$gcc not found: the $arch build needs a cross C compiler and linker (Debian: apt-get install gcc-$machine-linux-gnu)"
    cross+=("CC_${target//-/_}=$gcc" "AR_${target//-/_}=$machine-linux-gnu-ar"
      "CARGO_TARGET_${env_target}_LINKER=$gcc")
  elif command -v musl-gcc >/dev/null 2>&1; then
    cross+=("CC_${target//-/_}=musl-gcc")
  else
    cross+=("CC_${target//-/_}=${CC:-cc}")
  fi
  echo "build-static: cargo build --profile $profile --target $target (portway, portway-agent)" >&2
  env "${cross[@]}" cargo build --locked --profile "$profile" --target "$target" \
    -p portway-operator --bin portway -p portway-node-agent --bin portway-agent >&2
  profile_dir=$profile
  [ "$profile" = dev ] && profile_dir=debug
  out=$target_dir/$target/$profile_dir
  for b in portway portway-agent; do
    [ -x "$out/$b" ] || die "$out/$b was not built"
  done
  echo "$arch $out"
done
