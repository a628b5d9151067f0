#!/usr/bin/env bash
# Checks a running `podium serve` against its OpenAPI description with Schemathesis.
#
#   scripts/schemathesis.sh [BASE_URL]          (default http://127.0.0.1:8080)
#
# The description is read from BASE_URL/openapi.yaml. A server that does not serve it yet (404)
# is checked against this checkout's crates/podium-server/openapi.yaml instead (said on stderr,
# and GET /openapi.yaml is then left out). PODIUM_OPENAPI=<path or URL> picks the description.
#
# Schemathesis (4.x) is installed from PyPI into ${PODIUM_VENV:-$HOME/.cache/podium/venv-schemathesis}
# when missing. Environment knobs:
#   PODIUM_ST_MAX_EXAMPLES  test cases per operation (default 50)
#   PODIUM_ST_SEED          random seed (default 1; the run is reproducible)
#   PODIUM_ST_CHECKS        comma-separated checks (default: the five conformance checks below)
#   PODIUM_ST_WORKERS       concurrent workers (default 1: parallel requests could be shed by
#                           admission control, which is not what this run tests)
#   PODIUM_ST_VERSION       schemathesis version spec for pip (default: >=4,<5)
# Extra arguments after BASE_URL go to `schemathesis run` as they are.
# Exits non-zero when any check fails (or Schemathesis itself errors).
set -euo pipefail

BASE=${1:-http://127.0.0.1:8080}
BASE=${BASE%/}
shift $(( $# > 0 ? 1 : 0 ))
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PODIUM_VENV:-$HOME/.cache/podium/venv-schemathesis}
ST=$VENV/bin/schemathesis

if [[ ! -x $ST ]]; then
  echo "installing schemathesis into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet "schemathesis${PODIUM_ST_VERSION:->=4,<5}" >&2
fi
echo "schemathesis $("$ST" --version | awk '{print $NF}')" >&2

CHECKS=${PODIUM_ST_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance}

extra=()
if [[ -n ${PODIUM_OPENAPI:-} ]]; then
  SCHEMA=$PODIUM_OPENAPI
elif [[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/openapi.yaml") == 200 ]]; then
  SCHEMA=$BASE/openapi.yaml
else
  SCHEMA=$ROOT/crates/podium-server/openapi.yaml
  echo "warning: $BASE/openapi.yaml is not served; checking against $SCHEMA" \
    "(GET /openapi.yaml left out)" >&2
  extra+=(--exclude-path /openapi.yaml)
fi

set -x
exec "$ST" run "$SCHEMA" \
  --url "$BASE" \
  --checks "$CHECKS" \
  --max-examples "${PODIUM_ST_MAX_EXAMPLES:-50}" \
  --seed "${PODIUM_ST_SEED:-1}" \
  --workers "${PODIUM_ST_WORKERS:-1}" \
  --generation-database none \
  --request-timeout 30 \
  --no-color \
  "${extra[@]}" "$@"
