#!/usr/bin/env bash
# OpenAPI-driven API fuzzing (docs/RELIABILITY.md): schemathesis, pinned, in a venv of
# its own, against a live server on loopback with an admin token. Fails on any 5xx, any
# status code or content type the document does not list, and any answer (SSE events
# included) that does not match its schema.
#   scripts/schemathesis.sh                       # 50 examples per operation
#   ST_MAX_EXAMPLES=500 scripts/schemathesis.sh   # a longer run
#   ST_MAX_EXAMPLES=10 scripts/schemathesis.sh    # the bounded run of .ci/run
#   ST_SEED=1234 scripts/schemathesis.sh          # replay a run (each run prints its seed)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
VENV="${ST_VENV:-target/schemathesis-venv}"
if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
fi
if [ -z "${MAESTRO_BIN:-}" ]; then
  cargo build -q -p maestro
fi
BIN="${MAESTRO_BIN:-target/debug/maestro}"
SEED="${ST_SEED:-$(( (RANDOM << 15 | RANDOM) ))}"
echo "schemathesis seed: $SEED (replay with ST_SEED=$SEED)"
DATA="$(mktemp -d)"
OUT="$DATA/stdout"
ADMIN="st-$(date +%s%N)"
# Agent endpoints, callbacks and subscriptions that the fuzzer makes up may only be
# reached on loopback: nothing it generates is contacted beyond this machine.
# maxWaitMs 2000: a poll of a poll agent the fuzzer registered is a long poll (30 s by
# default), longer than the tool's 10 s request timeout, which it reports as a network
# error (found with seed 699743992 in one run of ten); every wait is shortened to 2 s.
MAESTRO_ADMIN_TOKEN="$ADMIN" MAESTRO_LOG=warn MAESTRO_MAX_WAIT_MS=2000 \
  MAESTRO_OUTBOUND_ALLOW_LIST='["127.0.0.0/8"]' \
  "$BIN" serve --listen 127.0.0.1:0 --data-dir "$DATA" >"$OUT" 2>"$DATA/stderr" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do
  grep -q "maestro listening on" "$OUT" 2>/dev/null && break
  sleep 0.1
done
BASE="$(sed -n 's/^maestro listening on //p' "$OUT")"
[ -n "$BASE" ] || { echo "the server did not start"; cat "$DATA/stderr"; exit 1; }
# One worker: with two, hypothesis (under CPython 3.11) sometimes fails inside its own
# AST handling ("AST constructor recursion depth mismatch"), a tool error, not a finding.
"$VENV/bin/st" run "$BASE/maestro/openapi.json" \
  --header "Authorization: Bearer $ADMIN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "${ST_MAX_EXAMPLES:-50}" \
  --seed "$SEED" \
  --workers 1 \
  --no-color
