#!/usr/bin/env bash
# P99 of the standard workload with and without hot swaps (docs/PERFORMANCE.md, "Hot swap").
#
# Publishes two versions of one of the standard workload's 300-tree GBDTs (ctr_gbdt_a) to a
# fresh file registry, serves the workload from it (server pinned to one core, load generator
# to the other), and runs the same open-loop load three times: without swaps, while the model
# is swapped between its two versions 20 times, and without swaps again.
#
#   scripts/swap_bench.sh [RATE] [SECONDS]      defaults: 350 decisions/s, 60 s per run
#
# Environment: SERVER_CPU (1), LOADGEN_CPU (0), DATA (/tmp/podium-std), PORT (18095),
# OUT (target/swap_bench.jsonl). Needs `cargo build --release` first.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/podium}
RATE=${1:-350}
SECS=${2:-60}
SERVER_CPU=${SERVER_CPU:-1}
LOADGEN_CPU=${LOADGEN_CPU:-0}
DATA=${DATA:-/tmp/podium-std}
PORT=${PORT:-18095}
OUT=${OUT:-target/swap_bench.jsonl}
URL="http://127.0.0.1:$PORT"
WORK=$(mktemp -d)
REG="file://$WORK/registry"
MODEL=ctr_gbdt_a

[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 1; }
[ -f "$DATA/marketplace.json" ] || "$BIN" sim gen --seed 1 --out "$DATA" >&2
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

# Two versions of the same bundle: the manifest's version changes, so its checksum does too.
for v in 1 2; do
  python3 - "$DATA/models/$MODEL" "$WORK/$MODEL-$v" "$v" <<'EOF'
import hashlib, pathlib, re, shutil, sys
src, dst, version = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
shutil.copytree(src, dst)
manifest = dst / "model.toml"
manifest.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', manifest.read_text(), count=1))
lines = []
for p in sorted(q for q in dst.rglob("*") if q.is_file() and q.name != "SHA256SUMS"):
    lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(dst).as_posix()}\n")
(dst / "SHA256SUMS").write_text("".join(lines))
EOF
  "$BIN" model publish "$WORK/$MODEL-$v" --registry "$REG" --by bench > /dev/null
done
"$BIN" model promote "$MODEL" 1 --stage production --registry "$REG" --by bench --why start > /dev/null

taskset -c "$SERVER_CPU" "$BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
  --registry "$REG" --registry-poll-ms 200 > "$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 90); do curl -sf "$URL/readyz" > /dev/null && break; sleep 1; done
curl -sf "$URL/readyz" > /dev/null || { echo "server did not become ready" >&2; exit 1; }

load() {
  taskset -c "$LOADGEN_CPU" "$BIN" loadgen --target "$URL" --rate "$RATE" --duration "${SECS}s" \
    --workload standard --server-pid "$SERVER" 2> /dev/null \
    | python3 -c "import json,sys; d=json.load(sys.stdin); d['run']='$1'; print(json.dumps(d))" \
    | tee -a "$OUT"
}

taskset -c "$LOADGEN_CPU" "$BIN" loadgen --target "$URL" --rate 200 --duration 5s \
  --workload standard > /dev/null 2>&1
load no-swaps
(
  # 20 swaps spread over the run, issued through the CLI as an operator would.
  sleep 2
  for i in $(seq 1 20); do
    v=$(( i % 2 == 1 ? 2 : 1 ))
    "$BIN" model promote "$MODEL" "$v" --stage production --registry "$REG" --by bench \
      --why "swap $i" > /dev/null
    sleep "$(python3 -c "print(($SECS - 4) / 20)")"
  done
) &
SWAPPER=$!
load swaps
wait $SWAPPER
curl -s "$URL/v1/lifecycle" | python3 -c "import json,sys; print(json.dumps({'run':'lifecycle','swaps':json.load(sys.stdin)['registry']['swaps']}))" | tee -a "$OUT"
load no-swaps-again
