#!/usr/bin/env bash
# Overload drill (docs/reliability.md): find this machine's capacity for one server core, offer
# three times it for 60 s, then half of it, and check what must hold:
#   - admitted decisions keep P99 <= 20 ms at 3x;
#   - the rest are shed fast (P99 of a shed answer <= 50 ms: well inside an exchange's
#     100-300 ms timeout; a shed answer waits for the I/O thread, which shares the saturated
#     core with the compute thread), none errors or times out;
#   - the server's memory stays bounded: peak RSS at most 256 MB above its RSS before (what
#     grows is the calibration monitor's map of placed ads awaiting outcomes, capped at
#     500,000 ads, ~200 MB; the RSS every second is in the output);
#   - full recovery after: at 0.5x, P99 <= 20 ms and at most 1 % shed.
# The server is pinned to one core and the load generator to the other, as in PERFORMANCE.md.
#
#   scripts/overload.sh            # needs a release build: cargo build --release -p podium-cli
#
# Environment: BIN, SERVER_CPU (1), LOADGEN_CPU (0), PORT (18095), OVERLOAD_S (60),
# OUT (target/overload.json).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/podium}
SERVER_CPU=${SERVER_CPU:-1}
LOADGEN_CPU=${LOADGEN_CPU:-0}
PORT=${PORT:-18095}
OVERLOAD_S=${OVERLOAD_S:-60}
OUT=${OUT:-target/overload.json}
URL="http://127.0.0.1:$PORT"
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release -p podium-cli first" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"

DATA=$(mktemp -d)
LOGS=$(mktemp -d)
taskset -c "$SERVER_CPU" "$BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
  --log-dir off --compute-threads 1 --io-threads 1 > "$LOGS/server.out" 2> "$LOGS/server.err" &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$DATA" "$LOGS"; }
trap cleanup EXIT
for _ in $(seq 1 300); do curl -sf "$URL/readyz" > /dev/null && break; sleep 1; done
curl -sf "$URL/readyz" > /dev/null || { echo "server did not become ready" >&2; tail -20 "$LOGS/server.err" >&2; exit 1; }

rss_mb() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$SERVER/status"; }

load() {
  local rate=$1 secs=$2
  taskset -c "$LOADGEN_CPU" "$BIN" loadgen --target "$URL" --rate "$rate" --duration "${secs}s" \
    --timeout-ms 1000 2> /dev/null
}

holds() {
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d['p99_ms'] <= 20 and d['errors'] == 0 and d['shed'] <= 0.01 * d['sent'] else 1)" "$1"
}

load 300 5 > /dev/null   # warm-up
capacity=0
for rate in 400 600 800 1000 1300 1600 2000 2500 3000 4000 5000; do
  line=$(load "$rate" 8)
  echo "step $rate/s: $line" >&2
  if holds "$line"; then capacity=$rate; else break; fi
done
[ "$capacity" -gt 0 ] || { echo "no rate held even 400/s" >&2; exit 1; }
echo "capacity: $capacity decisions/s on one core" >&2

before=$(rss_mb)
peak=$before
over=$((capacity * 3))
load "$over" "$OVERLOAD_S" > "$LOGS/over.json" &
LOADGEN=$!
series=()
while kill -0 "$LOADGEN" 2> /dev/null; do
  now=$(rss_mb); [ "$now" -gt "$peak" ] && peak=$now
  series+=("$now")
  sleep 1
done
wait "$LOADGEN"
overload=$(cat "$LOGS/over.json")
echo "overload $over/s for ${OVERLOAD_S}s: $overload" >&2
after=$(rss_mb)
half=$((capacity / 2))
recovery=$(load "$half" 15)
echo "recovery $half/s: $recovery" >&2

python3 - "$capacity" "$overload" "$recovery" "$before" "$peak" "$after" "$OUT" "$OVERLOAD_S" "${series[*]}" <<'EOF'
import json, sys
capacity = int(sys.argv[1]); over = json.loads(sys.argv[2]); rec = json.loads(sys.argv[3])
before, peak, after = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
series = [int(x) for x in sys.argv[9].split()]
half = series[len(series) // 2] if series else before
out = {"capacity_per_core": capacity, "overload": over, "recovery": rec,
       "rss_mb": {"before": before, "peak": peak, "after": after, "at_half_time": half,
                  "every_s": series}, "overload_s": int(sys.argv[8])}
json.dump(out, open(sys.argv[7], "w"), indent=1)
checks = [
    ("admitted P99 <= 20 ms at 3x", over["p99_ms"] <= 20),
    ("shed answers P99 <= 50 ms", over.get("shed_p99_ms", 0) <= 50),
    ("no errors or timeouts at 3x", over["errors"] == 0),
    ("the excess was shed", over["shed"] > 0),
    ("memory bounded (peak <= before + 256 MB)", peak <= before + 256),
    ("recovery: P99 <= 20 ms", rec["p99_ms"] <= 20),
    ("recovery: <= 1 % shed, no errors", rec["shed"] <= 0.01 * rec["sent"] and rec["errors"] == 0),
]
failed = [name for name, ok in checks if not ok]
for name, ok in checks:
    print(("ok   " if ok else "FAIL ") + name)
print(f"overload drill: {len(checks) - len(failed)} of {len(checks)} checks hold")
sys.exit(1 if failed else 0)
EOF
