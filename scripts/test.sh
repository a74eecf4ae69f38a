#!/usr/bin/env bash
# The whole test suite: `./scripts/test.sh` (extra arguments go to `cargo test`).
# Starts the local PostgreSQL when it is installed but not running, for the
# Postgres-backed tests (they skip with a printed reason elsewhere, and fail in CI
# when it is unreachable).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1 || true
  fi
fi
exec cargo test --workspace "$@"
