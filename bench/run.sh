#!/usr/bin/env bash
# run.sh - `make bench`: runs each bench/NN-*.sh step in order.  Figures
# go to stdout; JSON and plots to bench-out/.  BENCH_ONLY=NN runs one step.
set -euo pipefail
cd "$(dirname "$0")/.."
export BIN=${BIN:-bin}
mkdir -p bench-out
for s in bench/[0-9][0-9]-*.sh; do
    [ -e "$s" ] || continue
    if [ -n "${BENCH_ONLY:-}" ] && [[ "$(basename "$s")" != "$BENCH_ONLY"* ]]; then continue; fi
    echo "== $(basename "$s" .sh)"
    bash "$s"
done
