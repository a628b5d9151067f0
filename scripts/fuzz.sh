#!/usr/bin/env bash
# Runs every cargo-fuzz target under libFuzzer for SECONDS each (default 30), starting from the
# committed corpus (fuzz/corpus/<target>/) and keeping what it finds under target/fuzz-corpus/.
# A crash stops the run and leaves its input in fuzz/artifacts/<target>/: fix the decoder, then
# add the input to fuzz/corpus/<target>/ so the stable replay test (crates/podium-fuzz) keeps it.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# cargo-fuzz passes -Z flags to rustc; RUSTC_BOOTSTRAP lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(decide_request openrtb_request events model_bundle parquet_log)
command -v cargo-fuzz > /dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/podium/target}/fuzz"
for t in "${TARGETS[@]}"; do
  mkdir -p "target/fuzz-corpus/$t"
  echo "== fuzz $t for ${SECS}s" >&2
  log="target/fuzz-corpus/$t.log"
  status=0
  cargo fuzz run --sanitizer none --debug-assertions "$t" "target/fuzz-corpus/$t" "fuzz/corpus/$t" \
    -- -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 > "$log" 2>&1 \
    || status=$?
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added)|panicked|ERROR|Test unit written" "$log" >&2 || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz target $t failed: see fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
