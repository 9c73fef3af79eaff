#!/usr/bin/env bash
# Runs the node agent's tests as arm64 code under qemu-user on an amd64 machine: the test binaries
# are cross-built for aarch64-unknown-linux-musl and run by qemu-aarch64-static (cargo's runner);
# the real-kernel tests start the arm64 `portway-agent` through binfmt_misc and use this machine's
# iptables tools (an arm64 iptables cannot reach the kernel under qemu-user: no netfilter
# sockets there).
#
# Usage: scripts/test-arm64.sh [cargo test arguments...]   e.g. `-- rules` for rule rendering only
# Needs what scripts/install-test-deps.sh installs (the aarch64 musl target, gcc-aarch64-linux-gnu,
# qemu-user-static, qemu registered in binfmt_misc) and root for the real-kernel tests. Not part of
# scripts/test.sh: the cross build of the whole dependency tree takes several minutes, and the
# image tests already run the arm64 agent binary (rules and forwarding) in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-musl
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || { echo "test-arm64: aarch64-linux-gnu-gcc missing (scripts/install-test-deps.sh)" >&2; exit 1; }
command -v qemu-aarch64-static >/dev/null 2>&1 || { echo "test-arm64: qemu-aarch64-static missing (scripts/install-test-deps.sh)" >&2; exit 1; }
if ! [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  echo "test-arm64: qemu-aarch64 is not registered in binfmt_misc: tests that start the agent binary will fail (scripts/install-test-deps.sh registers it as root)" >&2
fi
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static
exec cargo test --locked --target "$target" -p portway-node-agent "$@"
