#!/usr/bin/env python3
"""Writes a POST /v1/attention request body with random tensors, for trying
mractl and mrad by hand and for generating test data.  It needs numpy and
msgpack: run by a python3 without them, it runs itself again with the
project's .venv/bin/python.

    .venv/bin/python tools/mkreq.py --shape 1,2,100,64 --method mra2 > req.msgpack
    .venv/bin/python tools/mkreq.py --shape 2,4,33,17 --hkv 2 --dtype bf16 \
        --mask random --num-blocks 3 --id demo -o req.msgpack
    .venv/bin/python tools/mkreq.py --shape 1,1,5,4 --json > req.json
    .venv/bin/python tools/mkreq.py --shape 1,8,4,64 --kv-len 1000 --hkv 2 \
        --causal --mask random --q-mask ones -o step.msgpack

Tensors are standard normal from --seed (numpy's default generator), so
the same arguments always write the same bytes.  q is [B, H, Nq, D] from
--shape; k and v are [B, Hkv, Nk, D] with Nk from --kv-len (default Nq).
Masks, --mask over the keys [B, Nk] and --q-mask over the queries [B, Nq]:
none (left out), ones, random (each token kept with probability 0.75),
blocks (the second 32-token block and the last token masked) or zeros.
"""
import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
try:
    import numpy as np
except ImportError:
    # Run as `tools/mkreq.py` by a python3 without numpy: the project's
    # environment has it (make deps prepares .venv).
    venv = ROOT / ".venv"
    if (venv / "bin" / "python").is_file() and \
            pathlib.Path(sys.prefix).resolve() != venv.resolve():
        os.execv(str(venv / "bin" / "python"), [str(venv / "bin" / "python"), *sys.argv])
    raise SystemExit("mkreq: needs numpy and msgpack: run `make deps`, then "
                     ".venv/bin/python tools/mkreq.py ...")

sys.path.insert(0, str(ROOT / "tests" / "pyref"))
import wire  # noqa: E402


def make_mask(kind, B, N, rng):
    if kind == "none":
        return None
    if kind == "ones":
        return np.ones((B, N), dtype=np.uint8)
    if kind == "zeros":
        return np.zeros((B, N), dtype=np.uint8)
    if kind == "random":
        return (rng.random((B, N)) < 0.75).astype(np.uint8)
    if kind == "blocks":
        m = np.ones((B, N), dtype=np.uint8)
        m[:, 32:64] = 0
        m[:, N - 1] = 0
        return m
    raise ValueError(kind)


def build(args):
    """The request body (bytes) for parsed arguments."""
    try:
        B, H, Nq, D = (int(x) for x in args.shape.split(","))
    except ValueError:
        raise SystemExit("mkreq: --shape wants B,H,Nq,D")
    hkv = args.hkv or H
    Nk = args.kv_len or Nq
    rng = np.random.default_rng(args.seed)
    # q, k, v and the key mask come first, so bodies without the new
    # options keep their bytes
    q = rng.standard_normal((B, H, Nq, D), dtype=np.float32)
    k = rng.standard_normal((B, hkv, Nk, D), dtype=np.float32)
    v = rng.standard_normal((B, hkv, Nk, D), dtype=np.float32)
    mask = make_mask(args.mask, B, Nk, rng)
    q_mask = make_mask(args.q_mask, B, Nq, rng)
    params = dict(method=args.method, block_per_row=args.block_per_row,
                  num_blocks=args.num_blocks, prior_first=args.prior_first,
                  prior_diagonal=args.prior_diagonal, scale=args.scale,
                  timeout_ms=args.timeout_ms, id=args.id,
                  causal=True if args.causal else None,
                  min_blocks_per_row=args.min_blocks_per_row,
                  error_samples=args.error_samples,
                  target_error=args.target_error,
                  per_head_stats=True if args.per_head_stats else None)
    fmt = "json" if args.json else "msgpack"
    return wire.encode_request(q, k, v, mask=mask, dtype=args.dtype, fmt=fmt,
                               q_mask=q_mask, **params)


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", required=True, help="B,H,Nq,D of q")
    p.add_argument("--kv-len", type=int,
                   help="Nk, the keys of k and v (default Nq)")
    p.add_argument("--hkv", type=int, help="key/value heads (default H)")
    p.add_argument("--causal", action="store_true",
                   help="causal: query i sees keys j <= i + Nk - Nq")
    p.add_argument("--dtype", default="f32", choices=wire.DTYPES)
    p.add_argument("--method", choices=("mra2", "mra2_sparse", "exact"))
    p.add_argument("--block-per-row", type=int)
    p.add_argument("--num-blocks", type=int)
    p.add_argument("--prior-first", type=int)
    p.add_argument("--prior-diagonal", type=int)
    p.add_argument("--scale", type=float)
    p.add_argument("--min-blocks-per-row", type=int,
                   help="blocks every block row of real queries gets")
    p.add_argument("--error-samples", type=int,
                   help="rows per head the error is estimated on")
    p.add_argument("--target-error", type=float,
                   help="each head's budget picked for this error")
    p.add_argument("--per-head-stats", action="store_true",
                   help="the answer lists every head's statistics")
    p.add_argument("--timeout-ms", type=int)
    p.add_argument("--id")
    p.add_argument("--mask", default="none",
                   choices=("none", "ones", "random", "blocks", "zeros"),
                   help="key mask [B, Nk]")
    p.add_argument("--q-mask", default="none",
                   choices=("none", "ones", "random", "blocks", "zeros"),
                   help="query mask [B, Nq]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="write a JSON body")
    p.add_argument("-o", "--output", help="file to write (default stdout)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    body = build(args)
    if args.output:
        pathlib.Path(args.output).write_bytes(body)
    else:
        sys.stdout.buffer.write(body)


if __name__ == "__main__":
    main()
