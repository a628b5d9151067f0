#!/usr/bin/env bash
# Hydration of the standard workload under load (docs/PERFORMANCE.md, "Hydration"): the
# server's own `hydrate_us` of POST /v1/features/hydrate (retrieval, then one batched read of the
# viewer, the content and every eligible candidate's line item and advertiser), histogrammed by
# the load generator at RATE requests/s, for the embedded store and for a local Redis (behind the
# in-process cache of line items and advertisers), then the same through full decisions.
#
#   scripts/hydration_bench.sh [RATE] [SECONDS]     default 2000 30
#
# Environment: DATA (/tmp/podium-std), PORT (18095), REDIS_PORT (16399), OUT
# (target/hydration.jsonl). Needs `cargo build --release` and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/podium}
RATE=${1:-2000}
SECS=${2:-30}
DATA=${DATA:-/tmp/podium-std}
PORT=${PORT:-18095}
REDIS_PORT=${REDIS_PORT:-16399}
OUT=${OUT:-target/hydration.jsonl}
URL="http://127.0.0.1:$PORT"

[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 1; }
[ -f "$DATA/marketplace.json" ] || "$BIN" sim gen --seed 1 --out "$DATA" >&2
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

SERVER=
REDIS=
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
  [ -n "$REDIS" ] && kill "$REDIS" 2>/dev/null || true
}
trap cleanup EXIT

. scripts/bench_lib.sh

for store in embedded redis; do
  if [ "$store" = redis ]; then
    redis-server --port "$REDIS_PORT" --save '' --appendonly no > /dev/null 2>&1 &
    REDIS=$!
    sleep 0.5
    serve target/hydration-server.log --feature-store "redis://127.0.0.1:$REDIS_PORT"
  else
    serve target/hydration-server.log
  fi
  load "$store-warmup" /v1/features/hydrate hydrate_us 500 5 > /dev/null
  load "$store-hydrate" /v1/features/hydrate hydrate_us "$RATE" "$SECS"
  # Full decisions at a rate the two cores sustain, for the hydrate stage inside the pipeline.
  load "$store-decide" /v1/decide timings_us.hydrate_us 400 "$SECS"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
done
