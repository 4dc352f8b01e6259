#!/usr/bin/env python3
"""sdpa.py SO OUTJSON [NS]: PyTorch SDPA (and its flash kernel) next to
mrad's CUDA kernels (through build/libmrad-bench.so, device pointers, the
same stream) on B=1, H=12, D=64, N in NS (default 4096,16384,65536), bf16
and f32: mrad exact and mra2 (block_per_row 16).  Prints a table, writes
JSON.  Run by tools/gpu-verify.sh."""
import ctypes, json, sys, time
import torch
import torch.nn.functional as F

so, out_json = sys.argv[1], sys.argv[2]
Ns = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "4096,16384,65536").split(",")]
H, D, B = 12, 64, 1
lib = ctypes.CDLL(so)
lib.mrad_bench_open.restype = ctypes.c_void_p
lib.mrad_bench_open.argtypes = [ctypes.c_int]
lib.mrad_bench_device.restype = ctypes.c_char_p
lib.mrad_bench_device.argtypes = [ctypes.c_void_p]
lib.mrad_bench_strerror.restype = ctypes.c_char_p
lib.mrad_bench_strerror.argtypes = [ctypes.c_int]
u32, u64, ptr = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t
lib.mrad_bench_run.restype = ctypes.c_int
# be, method, dtype, B, H, Hkv, Nq, Nk, D, causal, q, k, v, out, bpr,
# num_blocks, stream (bench/cuda/shim.c)
lib.mrad_bench_run.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, u32, u32, u32,
                               u32, u32, u32, ctypes.c_int, ptr, ptr, ptr, ptr, u32, u64,
                               ctypes.c_void_p]
lib.mrad_bench_flops.restype = ctypes.c_double
# method, B, H, Nq, Nk, D, causal, bpr, num_blocks
lib.mrad_bench_flops.argtypes = [ctypes.c_int, u32, u32, u32, u32, u32, ctypes.c_int, u32, u64]
be = lib.mrad_bench_open(0)
if not be:
    print("FAIL mrad CUDA backend did not open"); sys.exit(1)
dev = torch.device("cuda", 0)
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0),
      "| mrad:", lib.mrad_bench_device(be).decode(), flush=True)
try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:
    sdpa_kernel = None
DT = {"bf16": (torch.bfloat16, 2), "f32": (torch.float32, 0)}
st = torch.cuda.Stream(device=dev)
rows = []

def timed(fn, budget=0.4):
    fn(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); fn(); b.record(); torch.cuda.synchronize()
    once = a.elapsed_time(b) / 1e3
    reps = max(1, min(20, int(budget / max(once, 1e-6))))
    a.record()
    for _ in range(reps):
        fn()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / 1e3 / reps

def mrad(method, dtc, q, k, v, o, bpr):
    n = q.shape[2]
    rc = lib.mrad_bench_run(be, method, dtc, B, H, H, n, n, D, 0, q.data_ptr(), k.data_ptr(),
                            v.data_ptr(), o.data_ptr(), bpr, 0,
                            ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
    if rc:
        raise RuntimeError(lib.mrad_bench_strerror(rc).decode())

print("%-5s %6s %12s %12s %12s %12s %9s %9s" % ("dtype", "N", "sdpa ms", "sdpa-flash", "mrad exact", "mrad mra2/16",
                                                 "exact/sd", "sd/mra2"), flush=True)
with torch.cuda.stream(st):
    for name, (tdt, code) in DT.items():
        for N in Ns:
            r = {"dtype": name, "B": B, "H": H, "N": N, "D": D}
            try:
                g = torch.Generator(device=dev).manual_seed(N)
                q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=tdt, generator=g) for _ in range(3))
                o = torch.empty_like(q)
                try:
                    r["sdpa_s"] = timed(lambda: F.scaled_dot_product_attention(q, k, v))
                except Exception as e:  # noqa
                    r["sdpa_err"] = str(e)[:200]
                if sdpa_kernel is not None and name == "bf16":
                    try:
                        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                            r["sdpa_flash_s"] = timed(lambda: F.scaled_dot_product_attention(q, k, v))
                    except Exception as e:  # noqa
                        r["sdpa_flash_err"] = str(e)[:200]
                if not (name == "f32" and N > 65536):
                    r["mrad_exact_s"] = timed(lambda: mrad(0, code, q, k, v, o, 0))
                r["mrad_mra2_bpr16_s"] = timed(lambda: mrad(1, code, q, k, v, o, 16))
                if N <= 16384:
                    mrad(0, code, q, k, v, o, 0); torch.cuda.synchronize()
                    ref = F.scaled_dot_product_attention(q, k, v)
                    r["rel_exact_vs_sdpa"] = float((o.double() - ref.double()).norm() / ref.double().norm())
                r["flops_exact"] = lib.mrad_bench_flops(0, B, H, N, N, D, 0, 0, 0)
                r["flops_mra2_bpr16"] = lib.mrad_bench_flops(1, B, H, N, N, D, 0, 16, 0)
                del q, k, v, o
                torch.cuda.empty_cache()
            except Exception as e:  # noqa
                r["error"] = str(e)[:300]
            rows.append(r)
            f = lambda key: ("%12.3f" % (r[key] * 1e3)) if key in r else "%12s" % "-"
            sd = r.get("sdpa_flash_s", r.get("sdpa_s"))
            ex = ("%9.2f" % (sd / r["mrad_exact_s"])) if sd and "mrad_exact_s" in r else "%9s" % "-"
            mr = ("%9.1f" % (sd / r["mrad_mra2_bpr16_s"])) if sd and "mrad_mra2_bpr16_s" in r else "%9s" % "-"
            print("%-5s %6d %s %s %s %s %s %s %s" % (name, N, f("sdpa_s"), f("sdpa_flash_s"), f("mrad_exact_s"),
                  f("mrad_mra2_bpr16_s"), ex, mr,
                  ("rel(exact,sdpa)=%.2e" % r["rel_exact_vs_sdpa"]) if "rel_exact_vs_sdpa" in r else
                  r.get("error", "")), flush=True)
json.dump({"torch": torch.__version__, "rows": rows, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
          open(out_json, "w"), indent=1)
print("wrote", out_json)
