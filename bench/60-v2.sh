#!/usr/bin/env bash
# 60-v2.sh - the KServe v2 path against /v1 and against the library
# in-process, side by side on one mrad started with --allow-shm
# (bench/bench-v2.c): 1x12x4096x64 f32 mra2 over /v1 msgpack, /v2 binary
# tensor data and /v2 system shared memory, with the targets (shared
# memory >= 90% of in-process, v2 binary >= 95% of v1 msgpack).  Writes
# bench-out/v2.json.  BENCH_SECONDS sets each mode's time (default 9);
# BENCH_QUICK=1: a smaller shape, for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
mkdir -p bench-out
. bench/mrad-up.sh
mrad_up --threads "${BENCH_THREADS:-0}" --allow-shm
shape=1,12,4096,64
[ -n "${BENCH_QUICK:-}" ] && shape=1,2,512,64
out=$("$BIN/bench-v2" --port "$port" --shape "$shape" \
      --seconds "${BENCH_SECONDS:-9}" --threads "${BENCH_THREADS:-0}")
echo "$out" | head -n -1
echo "$out" | tail -n 1 > bench-out/v2.json
echo "wrote bench-out/v2.json"
