#!/usr/bin/env python3
"""bench.py - `make bench-cuda`: the CUDA backend of mrad against PyTorch's
scaled_dot_product_attention (flash) on the same GPU.

For bf16, D in {64, 128}, B*H = 16 and N from 1024 to 131072 it times one
call of: mrad mra2 (block_per_row 4 and 16), mrad exact, and SDPA; and the
causal variants of mrad exact and mra2 (bpr 16) against their non-causal
selves, in back-to-back rounds (the median ratio of the rounds).  mrad is
loaded with ctypes from build/libmrad-bench.so (MRAD_BENCH_SO) and runs on
PyTorch's tensors and current stream, so both sides are timed the same way
(CUDA events, after warm-up).  Prints a table, writes bench-out/cuda.json,
and reports the targets: mra2 (bpr 16) >= 3x SDPA at N=16384 and >= 10x at
N=65536; mrad exact >= 70% of SDPA's speed; at N=16384 causal exact takes
<= 0.6x the time of non-causal exact, and causal mra2 bpr 16 <= 0.75x.

TFLOP/s use the spec's FLOP counts (attn_flops: exact 4 N^2 D per head, MRA
4 k b^2 D + 2 nb^2 D); bandwidth is the minimum traffic (q, k, v read once,
out written once) over the time.

    python3 bench/cuda/bench.py [--quick] [--max-n N] [--out FILE]
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time

EXACT, MRA2, MRA2_SPARSE = 0, 1, 2
BF16 = 2


def load_lib(path):
    lib = ctypes.CDLL(path)
    lib.mrad_bench_open.restype = ctypes.c_void_p
    lib.mrad_bench_open.argtypes = [ctypes.c_int]
    lib.mrad_bench_close.argtypes = [ctypes.c_void_p]
    lib.mrad_bench_device.restype = ctypes.c_char_p
    lib.mrad_bench_device.argtypes = [ctypes.c_void_p]
    lib.mrad_bench_strerror.restype = ctypes.c_char_p
    lib.mrad_bench_strerror.argtypes = [ctypes.c_int]
    lib.mrad_bench_describe.restype = ctypes.c_int
    lib.mrad_bench_describe.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    u32, u64, ptr = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t
    lib.mrad_bench_run.restype = ctypes.c_int
    i32 = ctypes.c_int
    # be, method, dtype, B, H, Hkv, Nq, Nk, D, causal, q, k, v, out, bpr,
    # num_blocks, stream
    lib.mrad_bench_run.argtypes = [ctypes.c_void_p, i32, i32, u32, u32, u32,
                                   u32, u32, u32, i32, ptr, ptr, ptr, ptr,
                                   u32, u64, ctypes.c_void_p]
    lib.mrad_bench_flops.restype = ctypes.c_double
    # method, B, H, Nq, Nk, D, causal, bpr, num_blocks
    lib.mrad_bench_flops.argtypes = [i32, u32, u32, u32, u32, u32, i32, u32,
                                     u64]
    return lib


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer sizes (1024, 16384, 65536) and repetitions")
    ap.add_argument("--max-n", type=int, default=131072)
    ap.add_argument("--out", default="bench-out/cuda.json")
    ap.add_argument("--device", type=int, default=0)
    args = ap.parse_args()

    # Nothing measured is a failure, with the reason: a benchmark that
    # cannot run must not look like one that ran.
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"bench-cuda: FAILED: {sys.executable} cannot import torch "
              f"({e}); set PYTHON= to a python with PyTorch for CUDA "
              "(tools/bench-venv.sh makes one)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"bench-cuda: FAILED: torch {torch.__version__} (CUDA "
              f"{torch.version.cuda}) sees no GPU", file=sys.stderr)
        return 1
    so = os.environ.get("MRAD_BENCH_SO", "build/libmrad-bench.so")
    lib = load_lib(so)
    be = lib.mrad_bench_open(args.device)
    if not be:
        why = ctypes.create_string_buffer(1024)
        lib.mrad_bench_describe(why, len(why))
        print(f"bench-cuda: FAILED: the mrad CUDA backend does not open on "
              f"device {args.device}: {why.value.decode()}", file=sys.stderr)
        return 1
    torch.cuda.set_device(args.device)
    dev = torch.device("cuda", args.device)
    device_name = lib.mrad_bench_device(be).decode()
    print(f"device: {device_name}; torch {torch.__version__}")

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        flash_ctx = lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    except ImportError:
        import contextlib
        flash_ctx = contextlib.nullcontext

    B, H = 1, 16
    sizes = [1024 << i for i in range(8) if (1024 << i) <= args.max_n]
    if args.quick:
        sizes = [n for n in (1024, 16384, 65536) if n <= args.max_n]

    # Everything runs on one explicit stream: mrad's own streams do not
    # wait for the legacy default stream, so torch's work and mrad's must
    # share a real stream handle to be ordered.
    bench_stream = torch.cuda.Stream(device=dev)

    def run_mrad(method, q, k, v, out, bpr, num_blocks=0, causal=False):
        Nq, Nk, D = q.shape[2], k.shape[2], q.shape[3]
        stream = torch.cuda.current_stream().cuda_stream
        assert stream, "run under torch.cuda.stream(bench_stream)"
        rc = lib.mrad_bench_run(be, method, BF16, B, H, H, Nq, Nk, D,
                                int(causal), q.data_ptr(), k.data_ptr(),
                                v.data_ptr(), out.data_ptr(), bpr, num_blocks,
                                ctypes.c_void_p(stream))
        if rc != 0:
            raise RuntimeError("mrad: " + lib.mrad_bench_strerror(rc).decode())

    def timed(fn, budget_s):
        fn()  # warm-up (pool growth, cuBLAS heuristics, flash setup)
        torch.cuda.synchronize()
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
            enable_timing=True)
        t0.record()
        fn()
        t1.record()
        torch.cuda.synchronize()
        once = t0.elapsed_time(t1) / 1e3
        reps = max(1, min(50, int(budget_s / max(once, 1e-6))))
        if args.quick:
            reps = min(reps, 5)
        t0.record()
        for _ in range(reps):
            fn()
        t1.record()
        torch.cuda.synchronize()
        return t0.elapsed_time(t1) / 1e3 / reps

    def rel(a, b):
        a, b = a.double(), b.double()
        return float((a - b).norm() / b.norm())

    def ratio_rounds(fast, slow, budget_s):
        """Median over back-to-back rounds of time(fast) / time(slow), so
        that drift of a shared GPU hits both sides alike."""
        rounds = 1 if args.quick else 3
        ratios, tf, ts = [], [], []
        for _ in range(rounds):
            ts.append(timed(slow, budget_s))
            tf.append(timed(fast, budget_s))
            ratios.append(tf[-1] / ts[-1])
        ratios.sort()
        return ratios[len(ratios) // 2], min(tf), min(ts)

    def measure(rows, checks):
        for D in (64, 128):
            # correctness spot checks against SDPA at a small size
            g = torch.Generator(device=dev).manual_seed(1)
            q, k, v = (torch.randn(B, H, 1024, D, device=dev, generator=g,
                                   dtype=torch.bfloat16) for _ in range(3))
            ref = F.scaled_dot_product_attention(q, k, v)
            out = torch.empty_like(q)
            run_mrad(EXACT, q, k, v, out, 0)
            torch.cuda.synchronize()
            checks.append({"D": D, "what": "exact vs sdpa", "rel": rel(out, ref)})
            run_mrad(MRA2, q, k, v, out, 0, num_blocks=32 * 32)
            torch.cuda.synchronize()
            checks.append({"D": D, "what": "mra2 full budget vs sdpa",
                           "rel": rel(out, ref)})
            # causal (Nq == Nk: SDPA's top-left alignment is ours too)
            ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            run_mrad(EXACT, q, k, v, out, 0, causal=True)
            torch.cuda.synchronize()
            checks.append({"D": D, "what": "causal exact vs sdpa",
                           "rel": rel(out, ref)})
            run_mrad(MRA2, q, k, v, out, 0, num_blocks=32 * 32, causal=True)
            torch.cuda.synchronize()
            checks.append({"D": D, "what": "causal mra2 full vs sdpa",
                           "rel": rel(out, ref)})
            # cross-attention: 256 queries over the 1024 keys
            qc = q[:, :, :256].contiguous()
            ref = F.scaled_dot_product_attention(qc, k, v)
            outc = torch.empty_like(qc)
            run_mrad(EXACT, qc, k, v, outc, 0)
            torch.cuda.synchronize()
            checks.append({"D": D, "what": "cross exact vs sdpa",
                           "rel": rel(outc, ref)})
            for N in sizes:
                g = torch.Generator(device=dev).manual_seed(N + D)
                q, k, v = (torch.randn(B, H, N, D, device=dev, generator=g,
                                       dtype=torch.bfloat16) for _ in range(3))
                out = torch.empty_like(q)
                nbytes = 4 * q.numel() * q.element_size()
                budget = 0.3 if N <= 16384 else 1.0
                res = {"D": D, "N": N}
                with flash_ctx():
                    res["sdpa"] = timed(
                        lambda: F.scaled_dot_product_attention(q, k, v), budget)
                res["exact"] = timed(lambda: run_mrad(EXACT, q, k, v, out, 0),
                                     budget)
                for bpr in (4, 16):
                    res[f"mra2_bpr{bpr}"] = timed(
                        lambda: run_mrad(MRA2, q, k, v, out, bpr), budget)
                # causal against non-causal, back to back
                res["causal_exact_ratio"], res["exact_causal"], _ = \
                    ratio_rounds(
                        lambda: run_mrad(EXACT, q, k, v, out, 0, causal=True),
                        lambda: run_mrad(EXACT, q, k, v, out, 0), budget)
                res["causal_mra2_bpr16_ratio"], res["mra2_bpr16_causal"], _ = \
                    ratio_rounds(
                        lambda: run_mrad(MRA2, q, k, v, out, 16, causal=True),
                        lambda: run_mrad(MRA2, q, k, v, out, 16), budget)
                fl_exact = lib.mrad_bench_flops(EXACT, B, H, N, N, D, 0, 0, 0)
                flops = {"sdpa": fl_exact, "exact": fl_exact,
                         "exact_causal": lib.mrad_bench_flops(
                             EXACT, B, H, N, N, D, 1, 0, 0),
                         "mra2_bpr16_causal": lib.mrad_bench_flops(
                             MRA2, B, H, N, N, D, 1, 16, 0)}
                for bpr in (4, 16):
                    flops[f"mra2_bpr{bpr}"] = lib.mrad_bench_flops(
                        MRA2, B, H, N, N, D, 0, bpr, 0)
                for key, fl in flops.items():
                    res[key + "_tflops"] = fl / res[key] / 1e12
                    res[key + "_gbps"] = nbytes / res[key] / 1e9
                rows.append(res)
                print(f"D={D:3d} N={N:6d}  sdpa {res['sdpa']*1e3:9.3f} ms "
                      f"({res['sdpa_tflops']:6.1f} TF/s)  exact "
                      f"{res['exact']*1e3:9.3f} ms ({res['exact_tflops']:6.1f})  "
                      f"mra2/4 {res['mra2_bpr4']*1e3:8.3f} ms  mra2/16 "
                      f"{res['mra2_bpr16']*1e3:8.3f} ms "
                      f"({res['mra2_bpr16_tflops']:6.1f} TF/s, "
                      f"{res['mra2_bpr16_gbps']:6.0f} GB/s)  x{res['sdpa']/res['mra2_bpr16']:.1f}  "
                      f"causal/non-causal: exact "
                      f"{res['causal_exact_ratio']:.2f} mra2/16 "
                      f"{res['causal_mra2_bpr16_ratio']:.2f}",
                      flush=True)
                del q, k, v, out
                torch.cuda.empty_cache()

    rows, checks = [], []
    with torch.cuda.stream(bench_stream):
        measure(rows, checks)
    torch.cuda.synchronize()

    print("\ncorrectness (bf16, N=1024, B*H=16, relative Frobenius):")
    for c in checks:
        print(f"  D={c['D']:3d} {c['what']:26s} {c['rel']:.2e}")

    # targets: (name, value, wanted bound, True when the value must be at
    # least the bound, False when at most)
    targets = []
    for D in (64, 128):
        by_n = {r["N"]: r for r in rows if r["D"] == D}
        for N, want in ((16384, 3.0), (65536, 10.0)):
            if N in by_n:
                x = by_n[N]["sdpa"] / by_n[N]["mra2_bpr16"]
                targets.append((f"D={D} N={N} mra2 bpr16 speedup", x, want,
                                True))
        for N, r in sorted(by_n.items()):
            if N >= 4096:
                targets.append((f"D={D} N={N} exact / sdpa speed",
                                r["sdpa"] / r["exact"], 0.7, True))
        if 16384 in by_n:
            r = by_n[16384]
            targets.append((f"D={D} N=16384 causal/non-causal exact",
                            r["causal_exact_ratio"], 0.6, False))
            targets.append((f"D={D} N=16384 causal/non-causal mra2/16",
                            r["causal_mra2_bpr16_ratio"], 0.75, False))
    print("\ntargets:")
    for name, got, want, at_least in targets:
        ok = got >= want if at_least else got <= want
        print(f"  {name:38s} {got:7.2f}  (want {'>=' if at_least else '<='} "
              f"{want})  {'ok' if ok else 'MISSED'}")

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": device_name, "torch": torch.__version__,
                   "B": B, "H": H, "dtype": "bf16", "rows": rows,
                   "checks": checks,
                   "targets": [{"name": n, "value": g, "want": w,
                                "at_least": a} for n, g, w, a in targets],
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                  f, indent=1)
    print(f"\nwrote {args.out}")
    lib.mrad_bench_close(be)
    bad = [c for c in checks if not c["rel"] < 2e-2]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
