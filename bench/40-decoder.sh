#!/usr/bin/env bash
# 40-decoder.sh - decoder shapes on the CPU backend: causal against
# non-causal attention at N = 16384, decode steps (Nq = 1..32 against
# Nk = 4k..128k, grouped KV heads), one GQA decoder layer's step with
# exact's K/V read rate beside this machine's memory rates, and the same
# step on a store (a session): mra2 against exact (target >= 5x) and
# mra2's error on structured inputs.  Writes
# bench-out/decoder.json.  BENCH_QUICK=1: smaller shapes, for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
"${BIN:-bin}/bench-decoder" ${BENCH_QUICK:+--quick} --out bench-out/decoder.json
