# Shared by the load benchmarks (sourced, not run): start `podium serve` and wait until ready;
# drive it with `podium loadgen` and append the JSON summary, labelled, to $OUT.
# Needs BIN, DATA, PORT, URL, OUT set; SERVER holds the server's pid.

# serve LOG [podium serve flags...]
serve() {
  local log=$1; shift
  "$BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" --feature-snapshot off "$@" \
    > "$log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 300); do curl -sf "$URL/readyz" > /dev/null && return; sleep 1; done
  echo "server did not become ready (see $log)" >&2; exit 1
}

# load LABEL PATH SERVER_TIMING_FIELD RATE SECONDS
load() {
  local label=$1 path=$2 field=$3 rate=$4 secs=$5
  "$BIN" loadgen --target "$URL$path" --rate "$rate" --duration "${secs}s" \
    --workload standard --server-timing "$field" 2> /dev/null \
    | python3 -c "import json,sys; d=json.load(sys.stdin); d['run']='$label'; print(json.dumps(d))" \
    | tee -a "$OUT"
}
