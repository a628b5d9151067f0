#!/usr/bin/env bash
# Starts a podium binary on a free port with a fresh data directory, waits until it is ready,
# runs scripts/schemathesis.sh against it, stops it, and exits with Schemathesis' status.
# Builds nothing.
#
#   scripts/schemathesis_ci.sh PATH/TO/podium [extra schemathesis run arguments...]
#
# PODIUM_READY_TIMEOUT_S (default 300: the first start trains the demo models) bounds the wait.
# The server's stdout and stderr are kept in the temporary directory and printed when it fails
# to start or when the checks fail (PODIUM_KEEP_TMP=1 keeps the directory).
set -uo pipefail

BIN=${1:?usage: $0 PATH/TO/podium [schemathesis args...]}
shift
[[ -x $BIN ]] || { echo "$BIN is not an executable" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/podium-schemathesis.XXXXXX")
OUT=$TMP/server.out
ERR=$TMP/server.err
SERVER=

cleanup() {
  if [[ -n $SERVER ]] && kill -0 "$SERVER" 2> /dev/null; then
    kill -TERM "$SERVER" 2> /dev/null
    for _ in $(seq 1 100); do kill -0 "$SERVER" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER" 2> /dev/null
    wait "$SERVER" 2> /dev/null
  fi
  if [[ ${PODIUM_KEEP_TMP:-0} == 1 ]]; then
    echo "kept $TMP" >&2
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() {
  echo "---- server stdout ($OUT) ----" >&2; tail -n 50 "$OUT" >&2
  echo "---- server stderr ($ERR) ----" >&2; tail -n 200 "$ERR" >&2
}

"$BIN" serve --listen 127.0.0.1:0 --data-dir "$TMP/data" --log-dir off > "$OUT" 2> "$ERR" &
SERVER=$!

# The first stdout line is `podium listening on http://ADDR`.
URL=
for _ in $(seq 1 300); do
  URL=$(sed -n '1s/^podium listening on \(http:\/\/[^ ]*\).*$/\1/p' "$OUT" 2> /dev/null)
  [[ -n $URL ]] && break
  kill -0 "$SERVER" 2> /dev/null || { echo "podium exited before listening" >&2; show_logs; exit 1; }
  sleep 0.1
done
[[ -n $URL ]] || { echo "podium printed no listening address" >&2; show_logs; exit 1; }
echo "podium listening on $URL; waiting for /readyz" >&2

deadline=$(( SECONDS + ${PODIUM_READY_TIMEOUT_S:-300} ))
until [[ $(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz") == 200 ]]; do
  kill -0 "$SERVER" 2> /dev/null || { echo "podium exited before ready" >&2; show_logs; exit 1; }
  if (( SECONDS >= deadline )); then
    echo "podium not ready after ${PODIUM_READY_TIMEOUT_S:-300} s" >&2; show_logs; exit 1
  fi
  sleep 1
done
echo "podium ready" >&2

"$ROOT/scripts/schemathesis.sh" "$URL" "$@"
status=$?

if ! kill -0 "$SERVER" 2> /dev/null; then
  echo "podium died during the run" >&2
  (( status == 0 )) && status=1
fi
if (( status != 0 )) || grep -q "panicked" "$ERR"; then
  show_logs
fi
if grep -q "panicked" "$ERR"; then
  echo "the server panicked during the run (see stderr above)" >&2
  (( status == 0 )) && status=1
fi
exit "$status"
