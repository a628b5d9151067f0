#!/usr/bin/env bash
# Capacity of one server core on the standard workload (docs/PERFORMANCE.md, "Capacity").
#
# The server is pinned to one core and the load generator to another (taskset), as the serving
# issue asks. Steps through rates, then runs 50 % of the capacity found for a minute, then 3× it,
# then the same fixed request body at 50 % through `podium loadgen` and through `oha` (if
# installed: cargo install oha) for the HTTP layer.
#
#   scripts/capacity.sh [RATES...]       e.g. scripts/capacity.sh 600 700 800 900 1000
#
# Environment: SERVER_CPU (default 1), LOADGEN_CPU (0), STEP_S (20), DATA (/tmp/podium-std),
# PORT (18094), OUT (target/capacity.jsonl). Needs `cargo build --release` first.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/podium}
SERVER_CPU=${SERVER_CPU:-1}
LOADGEN_CPU=${LOADGEN_CPU:-0}
STEP_S=${STEP_S:-20}
DATA=${DATA:-/tmp/podium-std}
PORT=${PORT:-18094}
OUT=${OUT:-target/capacity.jsonl}
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(600 700 800 900 1000)
URL="http://127.0.0.1:$PORT"

[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 1; }
[ -f "$DATA/marketplace.json" ] || "$BIN" sim gen --seed 1 --out "$DATA" >&2
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

taskset -c "$SERVER_CPU" "$BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
  > target/capacity-server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do curl -sf "$URL/readyz" > /dev/null && break; sleep 1; done
curl -sf "$URL/readyz" > /dev/null || { echo "server did not become ready" >&2; exit 1; }

# One run of the load generator; prints its summary with a label added.
load() {
  local label=$1 rate=$2 secs=$3; shift 3
  taskset -c "$LOADGEN_CPU" "$BIN" loadgen --target "$URL" --rate "$rate" --duration "${secs}s" \
    --workload standard --server-pid "$SERVER" "$@" 2> /dev/null \
    | python3 -c "import json,sys; d=json.load(sys.stdin); d['run']='$label'; print(json.dumps(d))" \
    | tee -a "$OUT"
}

# Warm the caches and the branch predictors before the first measured step.
load warmup 300 5 > /dev/null

best=0
for rate in "${RATES[@]}"; do
  line=$(load "step-$rate" "$rate" "$STEP_S")
  echo "$line" >&2
  # Holds when P99 ≤ 20 ms and at most 1 % of requests were shed or failed.
  if python3 -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d['p99_ms'] <= 20 and (d['shed'] + d['errors']) <= 0.01 * d['sent'] else 1)" "$line"; then
    best=$rate
  fi
done
echo "capacity: $best decisions/s on one core" >&2
[ "$best" -gt 0 ] || exit 0

half=$((best / 2))
load "half-$half" "$half" 60 >&2
load "overload-$((best * 3))" "$((best * 3))" 30 >&2

# The HTTP layer alone: one fixed request body, the same rate, our generator and oha.
BODY=target/capacity-body.json
cat > "$BODY" <<'EOF'
{"request_id":"cap-1","user":{"id":"u-123","country":"US","device":"tv"},"content":{"id":"title-42","genre":"drama","live":false},"breaks":[{"id":"b1","position":"midroll","max_ads":4,"max_duration_s":90}]}
EOF
load "fixed-body-$half" "$half" 30 --body "$BODY" >&2
if command -v oha > /dev/null; then
  taskset -c "$LOADGEN_CPU" oha -z 30s -q "$half" --latency-correction --no-tui \
    -m POST -T application/json -D "$BODY" --output-format json "$URL/v1/decide" \
    | python3 -c "
import json, sys
d = json.load(sys.stdin)
s, p = d['summary'], d['latencyPercentiles']
out = {'run': 'oha-$half', 'requests_per_s': s['requestsPerSec'], 'success_rate': s['successRate'],
       'p50_ms': p['p50'] * 1e3, 'p99_ms': p['p99'] * 1e3, 'p999_ms': p['p99.9'] * 1e3,
       'status': d.get('statusCodeDistribution')}
print(json.dumps(out))" | tee -a "$OUT" >&2
else
  echo "oha not installed (cargo install oha): skipping the oha comparison" >&2
fi
