#!/usr/bin/env bash
# Coverage-guided fuzzing (docs/RELIABILITY.md) with cargo-fuzz (libFuzzer, nightly).
# Each target starts from the committed seeds (fuzz/seeds/<target>) and keeps what it
# learns in fuzz/corpus/<target>; a crash is written to fuzz/artifacts/<target>.
#   scripts/fuzz.sh                    # every target for 60 s
#   FUZZ_SECONDS=600 scripts/fuzz.sh condition
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then TARGETS=(workflow condition template api_bodies); fi
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${SECONDS_EACH}s"
  cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048
done
