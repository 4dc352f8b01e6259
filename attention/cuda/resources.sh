#!/usr/bin/env bash
# resources.sh - `make cuda-resources`: compiles every kernel of the CUDA
# backend for sm_90 with `ptxas -v` and prints registers, shared memory and
# spills per kernel.  Exits non-zero if a fused attention kernel spills.
set -euo pipefail
cd "$(dirname "$0")/../.."
NVCC=${NVCC:-nvcc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for f in attention/cuda/*.cu; do
    "$NVCC" -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -Xptxas -v \
        -I. -c "$f" -o "$tmp/o.o" 2> "$tmp/log" || { cat "$tmp/log"; exit 1; }
    python3 - "$f" "$tmp/log" <<'PY' || status=1
import re, subprocess, sys
src, log = sys.argv[1], open(sys.argv[2]).read().splitlines()
bad = False
name = None
for line in log:
    m = re.search(r"Compiling entry function '([^']+)'", line)
    if m:
        name = m.group(1)
        try:
            name = subprocess.run(["c++filt", name], capture_output=True,
                                  text=True).stdout.strip() or name
        except OSError:
            pass
        name = re.sub(r"mrad_cuda::\(anonymous namespace\)::", "", name)
        continue
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and name:
        spill = int(m.group(1)) + int(m.group(2))
    m2 = re.search(r"Used (\d+) registers", line)
    if m2 and name:
        hot = "k_attend" in name
        flag = "  SPILLS" if spill else ""
        print(f"{src:28s} {int(m2.group(1)):4d} regs  spill {spill:4d} B  {name[:90]}{flag}")
        if spill and hot:
            bad = True
        name = None
sys.exit(1 if bad else 0)
PY
done
[ "$status" -eq 0 ] && echo "cuda-resources: no spills in the fused attention kernels" \
    || echo "cuda-resources: a fused attention kernel spills registers"
exit "$status"
