"""sdpa.py - PyTorch's scaled_dot_product_attention on the CPU: the exact
attention baseline mrad is compared with.

    python sdpa.py --n 1024,4096,16384 [--heads 12] [--dim 64]
                   [--threads 2] [--budget 10] [--min-reps 1] [--max-reps 7]
                   [--dtype f32|bf16|f16]

B = 1, no mask, default scale 1/sqrt(D), in --dtype (f32 by default).  For each N: one warm-up
call, then as many calls as fit in --budget seconds (at least --min-reps,
at most --max-reps); prints one JSON object per line with the median time and the
GFLOP/s counted as the spec counts exact attention (4 N^2 D per head).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def kernel_name(q):
    """Which SDPA implementation PyTorch picks for these inputs (the CPU
    has a fused flash-attention kernel and the plain math fallback)."""
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(torch._fused_sdp_choice(q, q, q)).name.lower()
    except (ImportError, AttributeError, ValueError, RuntimeError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="1024,4096,16384")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--budget", type=float, default=10.0)
    ap.add_argument("--min-reps", type=int, default=1)
    ap.add_argument("--max-reps", type=int, default=7)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    a = ap.parse_args()
    dt = DTYPES[a.dtype]
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        for n in (int(x) for x in a.n.split(",")):
            q, k, v = (torch.randn(1, a.heads, n, a.dim, generator=g).to(dt)
                       for _ in range(3))
            t0 = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v)
            first = time.perf_counter() - t0
            reps = max(a.min_reps,
                       min(a.max_reps, int(a.budget / max(first, 1e-9))))
            times = []
            c0 = time.process_time()
            for _ in range(reps):
                t0 = time.perf_counter()
                F.scaled_dot_product_attention(q, k, v)
                times.append(time.perf_counter() - t0)
            # CPU time of all threads over wall time: how much of the cores
            # PyTorch really had (other processes share them).
            share = (time.process_time() - c0) / (sum(times) * threads)
            med = statistics.median(times)
            flops = 4.0 * n * n * a.dim * a.heads
            print(json.dumps({
                "method": "sdpa", "dtype": a.dtype, "N": n, "H": a.heads,
                "D": a.dim,
                "threads": threads, "time_s": med, "times": times,
                "flops": flops, "gflops": flops / med * 1e-9,
                "cpu_share": share,
                "torch": torch.__version__, "kernel": kernel_name(q),
                "capability": torch.backends.cpu.get_cpu_capability()}),
                flush=True)
            del q, k, v


if __name__ == "__main__":
    main()
