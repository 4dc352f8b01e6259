#!/usr/bin/env bash
# 20-http.sh - the same requests computed in-process and served by mrad
# over loopback, side by side: a large problem (B=1,H=12,N=4096,D=64) and
# a small one (B=1,H=1,N=128,D=64, rate and p50/p99 latency).  Also the CPU
# time per request of the server against the library's, a figure that
# holds on a shared machine where throughput does not.  Writes
# bench-out/http.json.  BENCH_SECONDS sets the length of each measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
SECONDS_EACH=${BENCH_SECONDS:-5}
THREADS=${BENCH_THREADS:-0}
mkdir -p bench-out
. bench/mrad-up.sh
mrad_up --threads "$THREADS"

# Large: two connections keep the worker fed while the other request
# travels.  Small: eight connections, batched by the scheduler.
large=$("$BIN/bench-http" --port "$port" --shape 1,12,4096,64 --seconds "$SECONDS_EACH" \
        --concurrency 2 --threads "$THREADS" --label large)
small=$("$BIN/bench-http" --port "$port" --shape 1,1,128,64 --seconds "$SECONDS_EACH" \
        --concurrency 8 --threads "$THREADS" --label small)
echo "$large" | head -n 2
echo "$small" | head -n 2
printf '{"cpus":%s,"loadavg_1m":%s,"large":%s,"small":%s}\n' "$(nproc)" \
    "$(cut -d' ' -f1 /proc/loadavg)" "$(echo "$large" | tail -n 1)" \
    "$(echo "$small" | tail -n 1)" > bench-out/http.json
echo "wrote bench-out/http.json"
