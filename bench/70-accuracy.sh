#!/usr/bin/env bash
# 70-accuracy.sh - the accuracy controls on the CPU backend: the cost of
# the error estimate (error_samples 32 at 1x12x4096x64, target <= 10%),
# the estimate against the true error on structured inputs (target: within
# 1.5x on >= 90% of heads) and target_error 0.1 against the oracle budget
# (>= 90% of heads meet it, mean density <= 1.5x the oracle's).  Writes
# bench-out/accuracy.json.  BENCH_QUICK=1: smaller shapes.
set -euo pipefail
cd "$(dirname "$0")/.."
"${BIN:-bin}/bench-accuracy" ${BENCH_QUICK:+--quick} --out bench-out/accuracy.json
