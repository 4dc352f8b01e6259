#!/usr/bin/env bash
# bench-venv.sh - prepares what the CPU benchmark (bench/30-cpu.sh) needs
# and the tests do not: Debian's OpenBLAS (for the GEMM yardstick in C) and
# a separate virtual environment .venv-bench with numpy, matplotlib and
# PyTorch (the SDPA baseline).  Kept apart from the project's .venv because
# PyTorch is gigabytes and only the benchmark uses it.
#
# Idempotent: a stamp file records what was installed, so a second run
# returns at once.  Prints the installation time when it installs; the
# time of a fresh install is also kept in .venv-bench/.install-seconds for
# the results page.
#
#   tools/bench-venv.sh            install what is missing
#   TORCH_VERSION=2.15.0 tools/bench-venv.sh
#
# PyPI's torch wheel for Linux is the CUDA build and declares the whole
# CUDA stack (cuDNN, cuBLAS, NCCL, ... several GB) as dependencies; PyPI has
# no CPU-only build.  The wheel's libraries link against those CUDA
# libraries, so `import torch` needs them, but not triton (the GPU kernel
# compiler) nor cuda-bindings (Python bindings): the wheel is installed
# without dependencies and then its declared requirements minus those two
# (tools/torch-requires.py, which tools/hf-venv.sh uses too).
#
# Exit status: 0 when the environment is ready; 1 when something could not
# be installed (the benchmark then skips the parts that need it).
set -euo pipefail
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."

TORCH_VERSION=${TORCH_VERSION:-2.15.0}
PY_PKGS=("numpy>=1.26" "matplotlib>=3.7" "threadpoolctl>=3.1")
VENV=.venv-bench
stamp=$VENV/.stamp
want=$(printf '%s\n' "torch==$TORCH_VERSION" "${PY_PKGS[@]}" "$(sha256sum <"$self")" |
       sha256sum | cut -c1-16)

# Debian's OpenBLAS: only the C GEMM measurement needs it.
if ! dpkg-query -W -f='${Status}' libopenblas-dev 2>/dev/null | grep -q "install ok installed"; then
    echo "bench-venv: installing Debian package libopenblas-dev"
    if [ "$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=none; fi
    if [ "$SUDO" = none ]; then
        echo "bench-venv: need root (or sudo) for libopenblas-dev; the C GEMM is skipped" >&2
    else
        export DEBIAN_FRONTEND=noninteractive
        { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends libopenblas-dev >/dev/null; } ||
            echo "bench-venv: libopenblas-dev could not be installed; the C GEMM is skipped" >&2
    fi
fi

if [ -x $VENV/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi

echo "bench-venv: preparing $VENV (torch $TORCH_VERSION; the first time takes a few minutes)"
t0=$(date +%s)
fresh=0
[ -x $VENV/bin/python ] || { python3 -m venv $VENV; fresh=1; }
pip=($VENV/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" "${PY_PKGS[@]}"
"${pip[@]}" --no-deps "torch==$TORCH_VERSION"
# The wheel's own requirements, without the extras, triton and cuda-bindings.
mapfile -t reqs < <($VENV/bin/python tools/torch-requires.py)
# pip complains that the two left out are missing; show its words only if
# the install itself fails.
log=$(mktemp)
if ! "${pip[@]}" "${reqs[@]}" 2>"$log"; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
if ! $VENV/bin/python -c 'import torch, torch.nn.functional as F; F.scaled_dot_product_attention' 2>/dev/null; then
    echo "bench-venv: torch was installed but does not import" >&2
    exit 1
fi
secs=$(( $(date +%s) - t0 ))
# Only a fresh install tells how long installing takes.
[ $fresh = 1 ] && echo "$secs" > $VENV/.install-seconds
echo "$want" > "$stamp"
echo "bench-venv: ready in ${secs}s ($(du -sh $VENV | cut -f1))"
