#!/usr/bin/env bash
# HTTP benchmark of `maestro serve` with wrk (Debian package `wrk`), on loopback.
# The load generator, the server and the agents share the machine's cores.
#
#   scripts/bench/http.sh [duration=20s] [connections=64] [threads=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-20s}
CONN=${2:-64}
THREADS=${3:-2}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 2; }
cargo build --release -q -p maestro --bin maestro --example quickstart_agents
DATA=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DATA"' EXIT
./target/release/examples/quickstart_agents >/dev/null &
MAESTRO_LOG=warn MAESTRO_MAX_QUEUED_EXECUTIONS=1000000 MAESTRO_MAX_CONCURRENT_WORKFLOWS=1000 \
  ./target/release/maestro serve --listen 127.0.0.1:0 --data-dir "$DATA" >"$DATA/out" 2>"$DATA/err" &
for _ in $(seq 100); do grep -q listening "$DATA/out" 2>/dev/null && break; sleep 0.1; done
BASE=$(sed -n 's/^maestro listening on //p' "$DATA/out")
export TOKEN=$(cat "$DATA/admin.token")
H=(-s -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json")
curl "${H[@]}" "$BASE/maestro/agents" -d '{"id": "sentinel-1", "type": "sentinel",
  "endpoint": "http://127.0.0.1:9101", "capabilities": [{"id": "verify-identity"}]}' >/dev/null
curl "${H[@]}" "$BASE/maestro/workflows" -d '{"id": "one-step", "name": "One step", "steps": [
  {"id": "verify-user", "agentId": "sentinel-1", "capability": "verify-identity",
   "inputs": {"userId": "${userId}"}}]}' >/dev/null

echo "== GET /maestro/agents/sentinel-1 ($CONN connections, $THREADS threads, $DUR)"
wrk -t"$THREADS" -c"$CONN" -d"$DUR" --latency -s scripts/bench/get.lua "$BASE/maestro/agents/sentinel-1"
echo
echo "== POST /maestro/workflows/one-step/execute ($CONN connections, $THREADS threads, $DUR)"
wrk -t"$THREADS" -c"$CONN" -d"$DUR" --latency -s scripts/bench/execute.lua "$BASE/maestro/workflows/one-step/execute"
echo
curl "${H[@]}" "$BASE/maestro/metrics"; echo
