#!/usr/bin/env bash
# 10-attn.sh - attention library speed: time per head of exact and mra2
# (block_per_row 16) at D = 64, N in {1024, 4096, 16384}, on the CPU
# backend with every online core.  Writes bench-out/attn.json.
set -euo pipefail
cd "$(dirname "$0")/.."
"${BIN:-bin}/bench-attn" --backend "${ATTN_BENCH_BACKEND:-cpu}" --out bench-out/attn.json
