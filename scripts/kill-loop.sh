#!/usr/bin/env bash
# The long kill loop (docs/RELIABILITY.md): 1000 executions of mixed workflows while
# the server is SIGKILLed 50 times and restarted. CI runs the same test with 100 and 5.
#   scripts/kill-loop.sh                  # 1000 executions, 50 kills
#   KILL_LOOP_EXECUTIONS=5000 KILL_LOOP_KILLS=200 scripts/kill-loop.sh
#   KILL_LOOP_SEED=1234 scripts/kill-loop.sh   # repeat a run's kill moments
set -euo pipefail
cd "$(dirname "$0")/.."
export KILL_LOOP_EXECUTIONS="${KILL_LOOP_EXECUTIONS:-1000}"
export KILL_LOOP_KILLS="${KILL_LOOP_KILLS:-50}"
exec cargo test --release -p maestro --test it killloop -- --nocapture
