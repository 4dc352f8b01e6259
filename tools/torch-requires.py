#!/usr/bin/env python3
"""Prints, one a line, what the torch wheel installed in this interpreter
needs so that `import torch` works on a machine without a GPU: its declared
requirements, less the extras and the parts that only GPU work loads.

PyPI's torch wheel for Linux is the CUDA build, and PyPI has no CPU-only
one.  Its libraries link the CUDA libraries (cuDNN, cuBLAS, NCCL, ...), so
those must be installed for the import, but some requirements are loaded
only when a GPU computes: triton (the GPU kernel compiler) and
cuda-bindings (Python bindings) always; and `--without NAME` drops more,
a package or an extra of cuda-toolkit (e.g. cusolver, whose library only
torch.linalg on a GPU opens).  tools/bench-venv.sh and tools/hf-venv.sh
install torch with --no-deps, then what this prints.

    python tools/torch-requires.py [--without NAME]...
"""
import argparse
import importlib.metadata as md
import re
import sys

ALWAYS_WITHOUT = ("triton", "cuda-bindings")


def wanted(requirements, without):
    """The requirement strings to install, their markers dropped (they
    name extras, or hold on this platform: pip already evaluated them when
    it chose the wheel)."""
    out = []
    for r in requirements:
        spec, _, marker = r.partition(";")
        if "extra ==" in marker:
            continue
        spec = spec.strip()
        m = re.match(r"([A-Za-z0-9_.-]+)(\[([^\]]*)\])?(.*)$", spec)
        if not m:
            out.append(spec)
            continue
        name, extras, rest = m.group(1), m.group(3), m.group(4)
        if name.lower().replace("_", "-") in without:
            continue
        if extras is not None:
            kept = [e.strip() for e in extras.split(",")
                    if e.strip() and e.strip().lower() not in without]
            spec = f"{name}[{','.join(kept)}]{rest}" if kept else f"{name}{rest}"
        out.append(spec)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--without", action="append", default=[],
                    help="a package or cuda-toolkit extra to leave out")
    a = ap.parse_args()
    without = {w.lower() for w in (*ALWAYS_WITHOUT, *a.without)}
    try:
        reqs = md.requires("torch") or []
    except md.PackageNotFoundError:
        print("torch-requires: torch is not installed here", file=sys.stderr)
        return 1
    for spec in wanted(reqs, without):
        print(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
