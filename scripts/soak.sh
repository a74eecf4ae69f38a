#!/usr/bin/env bash
# The soak run (docs/RELIABILITY.md): a steady load against a real `maestro serve`
# on loopback, sampling RSS, open fds, SQLite size and p99 latency every 10 s.
#   scripts/soak.sh                 # 30 minutes at 200 executions/s, then 3000 connections of churn
#   scripts/soak.sh --minutes 5 --rate 100 --churn 3000
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p maestro
if [ "$#" -eq 0 ]; then set -- --minutes 30 --rate 200 --churn 3000; fi
exec cargo run --release -q -p maestro --example soak -- "$@"
