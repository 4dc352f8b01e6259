#!/usr/bin/env bash
# 50-session.sh - a decoding step over loopback HTTP (Nq = 1, one appended
# token, Nk = 32768, H = 32, Hkv = 8, D = 128, f16) with a session against
# the same step sending K and V in its body, exact and mra2 side by side:
# step times, body sizes and the 20x and 1% targets (bench/bench-session.c).
# The server-side step at Nk = 65536 on a store (mra2 against exact, and
# mra2's error on structured inputs) is part "session" of 40-decoder.sh.
# Writes bench-out/session.json.  BENCH_QUICK=1: Nk = 4096, for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
mkdir -p bench-out
. bench/mrad-up.sh
mrad_up --threads "${BENCH_THREADS:-0}"
out=$("$BIN/bench-session" --port "$port" ${BENCH_QUICK:+--quick})
echo "$out" | head -n -1
echo "$out" | tail -n 1 > bench-out/session.json
echo "wrote bench-out/session.json"
