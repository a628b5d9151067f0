#!/usr/bin/env bash
# Real-time signal sources under load (docs/PERFORMANCE.md, "Signal sources"): the standard
# workload served with its default definitions, then with three signal sources added (two HTTP,
# one gRPC, no cache: every request calls all three), served by `podium signals demo` processes:
#   baseline   no sources: the feature fetch alone
#   fast       all three sources answering at once (loopback)
#   fast-1ms   all three answering after 1 ms
#   slow       two at once, one after 50 ms (timeout 15 ms, so its breaker opens)
#   tail       two at once, one whose every 20th call takes 10 ms (past the 5 ms budget)
#   tail-hedged  the same, that source hedged after 1 ms
# For each: the server's own hydrate_us of POST /v1/features/hydrate at RATE/s, and of
# POST /v1/decide at 400/s with the decisions' end-to-end latency (deadline 20 ms).
#
#   scripts/signals_bench.sh [RATE] [SECONDS]     default 2000 20
#
# Environment: DATA (/tmp/podium-std), PORT (18096), OUT (target/signals.jsonl).
# Needs `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/podium}
RATE=${1:-2000}
SECS=${2:-20}
DATA=${DATA:-/tmp/podium-std}
PORT=${PORT:-18096}
OUT=${OUT:-target/signals.jsonl}
URL="http://127.0.0.1:$PORT"

[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 1; }
[ -f "$DATA/marketplace.json" ] || "$BIN" sim gen --seed 1 --out "$DATA" >&2
mkdir -p "$(dirname "$OUT")" target
: > "$OUT"

PIDS=()
SERVER=
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

demo() { # http-port grpc-port delay [slow-every]
  "$BIN" signals demo --http "127.0.0.1:$1" --grpc "127.0.0.1:$2" --delay "$3" \
    --slow-every "${4:-1}" 2> /dev/null &
  PIDS+=($!)
}
demo 19100 19101 0ms
demo 19102 19103 1ms
demo 19104 19105 50ms
demo 19106 19107 10ms 20
sleep 0.5

. scripts/bench_lib.sh

sources() { # session-port context-port brand-port [brand settings]
  cat <<TOML

[[source]]
name = "session"
protocol = "http"
url = "http://127.0.0.1:$1/session"
fields = ["user.id", "user.device"]
timeout = "15ms"
[[source.feature]]
name = "sig_session_depth"
field = "session_depth"
default = 0.0
[[source.feature]]
name = "sig_fraud_score"
field = "fraud_score"
default = 0.0

[[source]]
name = "context"
protocol = "grpc"
url = "http://127.0.0.1:$(( $2 + 1 ))"
fields = ["content.id", "content.live"]
timeout = "15ms"
[[source.feature]]
name = "sig_event_minute"
field = "event_minute"
default = 0.0

[[source]]
name = "brand"
protocol = "http"
url = "http://127.0.0.1:$3/brand"
fields = ["content.id"]
timeout = "15ms"
${4:-}
[[source.feature]]
name = "sig_brand_safety"
field = "brand_safety"
default = 1.0
TOML
}

run() { # label [serve flags...]
  local label=$1; shift
  serve target/signals-server.log "$@"
  load "$label-warmup" /v1/features/hydrate hydrate_us 500 3 > /dev/null
  load "$label-hydrate" /v1/features/hydrate hydrate_us "$RATE" "$SECS"
  load "$label-decide" /v1/decide timings_us.hydrate_us 400 "$SECS"
  curl -sf "$URL/readyz" | python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'run': '$label-sources', 'signals': d.get('signals', [])}))" | tee -a "$OUT"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
}

run baseline
# The definitions the baseline server wrote, plus the sources.
sources 19100 19100 19100 | cat "$DATA/features.toml" - > target/signals-fast.toml
sources 19102 19102 19102 | cat "$DATA/features.toml" - > target/signals-fast-1ms.toml
sources 19100 19100 19104 | cat "$DATA/features.toml" - > target/signals-slow.toml
run fast --features target/signals-fast.toml
run fast-1ms --features target/signals-fast-1ms.toml
sources 19100 19100 19106 | cat "$DATA/features.toml" - > target/signals-tail.toml
sources 19100 19100 19106 $'idempotent = true\nhedge_after = "1ms"' \
  | cat "$DATA/features.toml" - > target/signals-tail-hedged.toml
run slow --features target/signals-slow.toml
run tail --features target/signals-tail.toml
run tail-hedged --features target/signals-tail-hedged.toml
