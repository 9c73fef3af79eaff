#!/usr/bin/env bash
# Runs every cargo-fuzz target of Portway for a fixed time each and prints one line per target:
#   fuzz <target>: <execs> execs in <s> s (<rate>/s), <n> corpus inputs, <new> new, crashes <k>
#
#   bash fuzz/run.sh [seconds per target, default 60] [target...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds: examples/ for
# plan_yaml, fuzz/seeds/<target>/ where present. The working corpus grows in fuzz/corpus/<target>
# and crashes land in fuzz/artifacts/<target>/ (both ignored by git). Exits 1 if any target
# crashed. FUZZ_TARGET_DIR sets cargo's target dir (default: fuzz/target).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
seconds=${1:-60}
shift || true
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "SKIP fuzz: cargo-fuzz or the nightly toolchain is missing (rustup toolchain install nightly; cargo install cargo-fuzz)"
  exit 0
fi
target_dir=${FUZZ_TARGET_DIR:-$repo/fuzz/target}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then mapfile -t targets < <(cargo +nightly fuzz list); fi
failed=0
for t in "${targets[@]}"; do
  seeds=()
  case "$t" in
    plan_yaml) seeds=(examples examples/k3s) ;;
  esac
  if [ -d "fuzz/seeds/$t" ]; then seeds+=("fuzz/seeds/$t"); fi
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  rc=0
  cargo +nightly fuzz run --sanitizer none --target-dir "$target_dir" "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096 -timeout=10 >"$log" 2>&1 || rc=$?
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  new=$(stat new_units_added)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  crashes=$(find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
  echo "fuzz $t: ${execs:-?} execs in $seconds s (${rate:-?}/s), $corpus corpus inputs, ${new:-?} new, crashes $crashes, exit $rc"
  if [ "$rc" != 0 ]; then
    failed=1
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -n 20 >&2 || true
  fi
  rm -f "$log"
done
exit "$failed"
