#!/usr/bin/env bash
# Portway's test command (README, CI): installs what the tests need, then runs formatting, lints
# and every test of the workspace. Tiers whose tools are missing print why they skip.
set -euo pipefail
cd "$(dirname "$0")/.."
tools_bin=$(bash scripts/install-test-deps.sh)
export PATH="$tools_bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test --workspace"
cargo test --workspace --locked
