#!/usr/bin/env bash
# Heap profile of `maestro serve` under the soak load (docs/RELIABILITY.md): the soak
# example runs against a server started under heaptrack's preload library, then this
# prints the live heap every 30 s and the call sites holding the most at the peak.
# A heap that levels off while RSS still climbs points at the allocator, not at Maestro.
#   scripts/soak-heap.sh                         # 10 minutes at 200 executions/s
#   scripts/soak-heap.sh --minutes 5 --rate 100
# Needs heaptrack and zstd (Debian: apt install heaptrack zstd). Output: target/soak-heap/.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in heaptrack heaptrack_print zstd; do
  command -v "$tool" >/dev/null || { echo "soak-heap: $tool is not installed" >&2; exit 2; }
done
libdir="$(dirname "$(readlink -f "$(command -v heaptrack)")")/../lib/heaptrack"
preload="$libdir/libheaptrack_preload.so"
interpret="$libdir/libexec/heaptrack_interpret"
[ -f "$preload" ] && [ -x "$interpret" ] || { echo "soak-heap: heaptrack's library not found in $libdir" >&2; exit 2; }
if [ "$#" -eq 0 ]; then set -- --minutes 10 --rate 200; fi

# The system allocator: heaptrack hooks malloc, which the default jemalloc build bypasses.
cargo build --release -q -p maestro --no-default-features --features postgres --bins --examples
out="$PWD/target/soak-heap"
rm -rf "$out" && mkdir -p "$out/examples"
# The soak example starts the `maestro` next to its profile directory: here, a wrapper
# that execs the real binary under the preload library (same pid, so the soak's RSS and
# fd samples and its SIGTERM reach the server itself).
cp target/release/examples/soak "$out/examples/soak"
cp target/release/maestro "$out/maestro.real"
cat >"$out/maestro" <<EOF
#!/bin/sh
exec env LD_PRELOAD="$preload" DUMP_HEAPTRACK_OUTPUT="$out/pipe" "$out/maestro.real" "\$@"
EOF
chmod +x "$out/maestro"
mkfifo "$out/pipe"
"$interpret" <"$out/pipe" | zstd -q -c >"$out/heaptrack.zst" &
interpreter=$!
"$out/examples/soak" "$@" | tee "$out/soak.txt"
wait "$interpreter"

echo
echo "Analysing the heap profile (this takes a few minutes)..."
heaptrack_print -f "$out/heaptrack.zst" -p -n 15 -s 3 -M "$out/massif.out" \
  --massif-detailed-freq 0 >"$out/peaks.txt" 2>/dev/null
echo
echo "| t (s) | live heap (MiB) |"
echo "|---:|---:|"
grep -E '^(time|mem_heap_B)=' "$out/massif.out" | paste - - |
  awk -F'[=\t]' '{ t = $2; if (t >= next_t) { printf "| %d | %.1f |\n", t, $4 / 1048576; next_t += 30 } }'
echo
grep -E '^(peak heap memory consumption|peak RSS|total runtime)' "$out/peaks.txt"
echo
echo "Largest holders at the peak (first Maestro frame, or SQLite's):"
awk 'function flush() { if (hdr != "" && (site != "" || sq)) print hdr "  " (site != "" ? site : (top ? "SQLite, all call sites" : "SQLite")) }
     /^PEAK MEMORY CONSUMERS/ { on = 1; next }
     on && /consumed over/ { flush(); hdr = $1; top = /peak memory/; site = ""; sq = 0; next }
     on && site == "" && /at crates\// { site = $0; gsub(/^ +/, "", site) }
     on && site == "" && /sqlite3PcacheFetch/ { site = "SQLite page cache" }
     on && /sqlite3/ { sq = 1 }
     END { flush() }' "$out/peaks.txt" | sort -h -r | head -12
echo
echo "Full report: $out/peaks.txt (heaptrack_print -f $out/heaptrack.zst for more)"
