"""A closed-loop latency benchmark from Python:

    python -m mra_client.bench --url http://127.0.0.1:8080 \\
        --shape 1,8,1024,64 --requests 200 --concurrency 4
    python -m mra_client.bench --shape 1,8,1,64 --kv-len 8192 --causal

C threads share one Client (a pooled connection each) and send
--requests random problems in total, back to back (--kv-len gives the keys
their own length, as in a decode step over a cache; --causal makes the
problem causal); prints throughput and
latency percentiles (of successful calls) and counts errors by code.  For
open-loop load and saturation sweeps use bin/mra-load instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from typing import Optional, Sequence

import numpy as np

from .client import Client
from .errors import MradError
from .wire import encode_request


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ceil(q*n)-th smallest value (what mra-load reports)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(np.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


def parse_shape(s: str) -> list[int]:
    dims = [int(x) for x in s.split(",")]
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError("want B,H,Nq,D")
    return dims


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mra_client.bench",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api-key-file")
    ap.add_argument("--shape", type=parse_shape, default=[1, 8, 1024, 64])
    ap.add_argument("--kv-len", type=int, help="Nk (default Nq)")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--hkv", type=int)
    ap.add_argument("--method", default="mra2", choices=["mra2", "mra2_sparse", "exact"])
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print a JSON report")
    a = ap.parse_args(argv)
    if a.requests < 1 or a.concurrency < 1:
        ap.error("--requests and --concurrency must be at least 1")
    if a.kv_len is not None and a.kv_len < 1:
        ap.error("--kv-len must be at least 1")

    key = None
    if a.api_key_file:
        with open(a.api_key_file) as f:
            key = f.readline().strip()
    B, H, Nq, D = a.shape
    hkv, Nk = a.hkv or H, a.kv_len or Nq
    rng = np.random.default_rng(a.seed)
    q = rng.uniform(-1, 1, (B, H, Nq, D)).astype(np.float32)
    k = rng.uniform(-1, 1, (B, hkv, Nk, D)).astype(np.float32)
    v = rng.uniform(-1, 1, (B, hkv, Nk, D)).astype(np.float32)
    body = encode_request(q, k, v, method=a.method, dtype=a.dtype,
                          causal=a.causal)

    # Every error counts, so nothing is retried.
    client = Client(a.url, api_key=key, timeout=a.timeout, retries=0,
                    max_connections=a.concurrency)
    lock = threading.Lock()
    todo = [a.requests]
    lat: list[float] = []
    errors: Counter[str] = Counter()

    def worker() -> None:
        while True:
            with lock:
                if todo[0] == 0:
                    return
                todo[0] -= 1
            t0 = time.perf_counter()
            try:
                client.attention_raw(body)
                ok = True
            except MradError as e:
                ok, code = False, e.code
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    lat.append(dt)
                else:
                    errors[code] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    rep = {
        "requests": a.requests, "concurrency": a.concurrency,
        "ok": len(lat), "errors": dict(errors), "wall_s": wall,
        "throughput_rps": len(lat) / wall if wall > 0 else 0.0,
        "latency_ms": {name: percentile(lat, q) * 1e3 for name, q in
                       (("p50", .5), ("p90", .9), ("p99", .99), ("max", 1.0))},
    }
    if a.json:
        print(json.dumps(rep))
    else:
        L = rep["latency_ms"]
        print(f"{a.requests} requests, concurrency {a.concurrency}: {len(lat)} ok, "
              f"errors {dict(errors) or 0}, {rep['throughput_rps']:.1f} req/s")
        print(f"latency p50 {L['p50']:.2f}  p90 {L['p90']:.2f}  "
              f"p99 {L['p99']:.2f}  max {L['max']:.2f} ms")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
