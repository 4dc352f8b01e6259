"""peak.py - single-precision GEMM rate of numpy (its bundled OpenBLAS) and
of PyTorch (MKL), one and all threads: candidates for the machine's
measured peak, next to Debian's OpenBLAS measured by gemm-peak.c.  With
--dtype bf16, PyTorch's bf16 matrix product instead (oneDNN, on the AMX
tiles where the CPU has them): the bf16 peak.

    python peak.py [--n 4096] [--reps 5] [--threads 1,2] [--dtype f32|bf16]

Prints one JSON object per line: source, detail, threads, n, gflops_best,
gflops_median.  A library that is not installed is left out (a line on
stderr says so).  Run it without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE in the
environment: those are for Debian's older OpenBLAS and slow numpy's.
"""
import argparse
import json
import statistics
import sys
import time


def measure(fn, n, reps, threads):
    """Best and median GFLOP/s of an n x n x n product, after a warm-up,
    and the share of the cores the process had meanwhile: CPU time of all
    threads over wall time x threads, under 1 when other processes had part
    of the cores."""
    fn()
    rates, wall = [], 0.0
    c0 = time.process_time()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        wall += dt
        rates.append(2.0 * n**3 / dt * 1e-9)
    share = (time.process_time() - c0) / (wall * threads)
    return max(rates), statistics.median(rates), share


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtype", choices=("f32", "bf16"), default="f32")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    if a.dtype == "bf16":
        bf16(a, threads)
        return

    try:
        import numpy as np
        from threadpoolctl import threadpool_info, threadpool_limits

        rng = np.random.default_rng(1)
        x = rng.standard_normal((a.n, a.n), dtype=np.float32)
        y = rng.standard_normal((a.n, a.n), dtype=np.float32)
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        detail = "numpy %s, %s" % (np.__version__, ", ".join(
            "%s %s (%s)" % (i["internal_api"], i.get("version"),
                            i.get("architecture")) for i in blas))
        for t in threads:
            with threadpool_limits(t, user_api="blas"):
                best, med, share = measure(lambda: x @ y, a.n, a.reps, t)
            print(json.dumps({"source": "numpy", "detail": detail,
                              "threads": t, "n": a.n, "gflops_best": best,
                              "gflops_median": med,
                              "cpu_share": share}), flush=True)
    except ImportError as e:
        print("peak.py: numpy GEMM skipped: %s" % e, file=sys.stderr)

    try:
        import torch

        g = torch.Generator().manual_seed(1)
        x = torch.randn(a.n, a.n, generator=g)
        y = torch.randn(a.n, a.n, generator=g)
        blas = "mkl" if torch.backends.mkl.is_available() else "default BLAS"
        for t in threads:
            torch.set_num_threads(t)
            best, med, share = measure(lambda: torch.mm(x, y), a.n, a.reps,
                                       t)
            print(json.dumps({"source": "torch",
                              "detail": "torch %s, %s" % (torch.__version__,
                                                          blas),
                              "threads": t, "n": a.n, "gflops_best": best,
                              "gflops_median": med,
                              "cpu_share": share}), flush=True)
    except ImportError as e:
        print("peak.py: torch GEMM skipped: %s" % e, file=sys.stderr)


def bf16(a, threads):
    """PyTorch's bf16 matrix product (f32 accumulation), one line per
    thread count, tagged "dtype": "bf16"."""
    try:
        import torch
    except ImportError as e:
        print("peak.py: torch bf16 GEMM skipped: %s" % e, file=sys.stderr)
        return
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.n, a.n, generator=g).to(torch.bfloat16)
    y = torch.randn(a.n, a.n, generator=g).to(torch.bfloat16)
    detail = "torch %s, %s" % (torch.__version__, "onednn" if
                               torch.backends.mkldnn.is_available() else
                               "no onednn")
    for t in threads:
        torch.set_num_threads(t)
        best, med, share = measure(lambda: torch.mm(x, y), a.n, a.reps, t)
        print(json.dumps({"source": "torch", "dtype": "bf16",
                          "detail": detail, "threads": t, "n": a.n,
                          "gflops_best": best, "gflops_median": med,
                          "cpu_share": share}), flush=True)


if __name__ == "__main__":
    main()
