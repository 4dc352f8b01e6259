#!/usr/bin/env bash
# 80-scaleout.sh - replicas behind the proxies of deploy/proxy/ (HAProxy and
# NGINX from Debian, installed by tools/deps.sh): a decoding step's p50
# through each proxy against direct (target: within 1.2x), and stateless
# throughput with three replicas against one on this machine (printed; no
# gain is expected where the replicas share the cores).  The driver is
# bench/scaleout.py; it writes bench-out/scaleout.json.  BENCH_QUICK=1:
# one short round of each.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
"$py" bench/scaleout.py --bin "${BIN:-bin}" ${BENCH_QUICK:+--quick} --out bench-out/scaleout.json
