"""mra_client against a live bin/mrad: every method and dtype round trips
bitwise like `mractl run --local` and close to the float64 reference;
error answers surface as typed exceptions."""
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import numpy as np
import pytest

import mra_ref
from mrad_server import MradServer, metric_value
from mra_client import (BadRequest, Client, DeadlineExceeded, MradError,
                        Overloaded, PayloadTooLarge, RetryPolicy,
                        TransportError, Unauthorized, bf16_to_f32,
                        encode_request, f32_to_bf16)

BIN = pathlib.Path(os.environ.get("MRAD_BIN_DIR")
                   or pathlib.Path(__file__).resolve().parents[3] / "bin")


def run_local(body):
    """The answer `mractl run --local` gives for a request body (bytes)."""
    with tempfile.NamedTemporaryFile(suffix=".msgpack") as f:
        f.write(body)
        f.flush()
        p = subprocess.run([str(BIN / "mractl"), "run", "--local", f.name],
                           capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout


# float32 compute is within 1e-4 of float64; the 16-bit dtypes add the
# rounding of the answer (2^-11, 2^-8 relative) to that.
TOL = {"f32": 1e-4, "f16": 2e-3, "bf16": 1e-2}


def problem(seed=0, B=2, H=4, Hkv=2, N=100, D=32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, N, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    mask = np.ones((B, N), np.uint8)
    mask[-1, 70:] = 0  # a padded last entry
    return q, k, v, mask


def quantized(x, dtype):
    """What the service sees of float32 input sent as `dtype`, in float64."""
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float64)
    if dtype == "bf16":
        return bf16_to_f32(f32_to_bf16(x)).astype(np.float64)
    return x.astype(np.float64)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("method", ["mra2", "mra2_sparse", "exact"])
def test_round_trip(server, method, dtype):
    q, k, v, mask = problem()
    c = Client(server.url)
    qin = q.astype(np.float16) if dtype == "f16" else q
    params = dict(block_per_row=2, prior_diagonal=1)
    r = c.attention(qin, k, v, mask=mask, method=method,
                    dtype="bf16" if dtype == "bf16" else None, id=f"{method}-{dtype}",
                    **params)
    assert r.dtype == dtype and r.id == f"{method}-{dtype}"
    assert r.out.shape == q.shape
    assert r.out.dtype == (np.float16 if dtype == "f16" else np.float32)
    assert r.out.flags.writeable  # the caller's to keep and change
    assert r.stats["method"] == method
    nb = 4  # ceil(100 / 32)
    assert r.stats["blocks_total"] == 2 * 4 * nb * nb
    if method == "exact":
        assert r.stats["blocks_selected"] == r.stats["blocks_total"]
    else:
        # budget 2 per block row: half of the 4x4 grid per head
        assert r.stats["blocks_selected"] == 2 * 4 * 2 * nb

    # bitwise what the offline runner computes from the same body
    body = encode_request(qin, k, v, mask=mask, method=method,
                          dtype="bf16" if dtype == "bf16" else None,
                          id=f"{method}-{dtype}", **params)
    local = msgpack.unpackb(run_local(body), raw=False)
    assert local["out"]["dtype"] == dtype
    assert local["out"]["data"] == r.out_raw.tobytes()

    ref, sel, tot = mra_ref.attention(quantized(q, dtype), quantized(k, dtype),
                                      quantized(v, dtype), mask, method=method,
                                      prior_diagonal=1, block_per_row=2)
    assert (sel, tot) == (r.stats["blocks_selected"], r.stats["blocks_total"])
    assert mra_ref.rel_err(r.out, ref) < TOL[dtype]


@pytest.mark.parametrize("nq,nk", [(20, 150), (1, 300), (90, 40)])
@pytest.mark.parametrize("method", ["mra2", "mra2_sparse", "exact"])
def test_cross_attention(server, method, nq, nk):
    """attention(q, k, v, causal=True, q_mask=...) with Nq != Nk: the answer
    has q's shape, is bitwise what `mractl run --local` computes and close
    to the float64 reference."""
    rng = np.random.default_rng(nq + nk)
    q = rng.standard_normal((2, 4, nq, 16)).astype(np.float32)
    k = rng.standard_normal((2, 2, nk, 16)).astype(np.float32)
    v = rng.standard_normal((2, 2, nk, 16)).astype(np.float32)
    mask = (rng.random((2, nk)) < 0.8).astype(np.uint8)
    q_mask = (rng.random((2, nq)) < 0.8).astype(np.uint8)
    q_mask[:, -1] = 1
    params = dict(block_per_row=1, prior_diagonal=3)
    c = Client(server.url)
    r = c.attention(q, k, v, mask=mask, method=method, causal=True,
                    q_mask=q_mask, **params)
    assert r.out.shape == (2, 4, nq, 16)
    body = encode_request(q, k, v, mask=mask, method=method, causal=True,
                          q_mask=q_mask, **params)
    local = msgpack.unpackb(run_local(body), raw=False)
    assert local["out"]["data"] == r.out_raw.tobytes()
    ref, sel, tot = mra_ref.attention(q, k, v, mask, method=method,
                                      causal=True, q_mask=q_mask, **params)
    assert (sel, tot) == (r.stats["blocks_selected"], r.stats["blocks_total"])
    assert mra_ref.rel_err(r.out, ref) < TOL["f32"]
    assert not r.out[np.broadcast_to(q_mask[:, None, :] == 0,
                                     r.out.shape[:3])].any()
    if nq > nk:  # the first Nq - Nk queries see no key
        assert not r.out[:, :, :nq - nk].any()


def test_shapes_and_bf16_bits(server):
    """2-d input is one head of one entry; uint16 input is bf16 bits."""
    q, k, v, _ = problem(seed=3, B=1, H=1, Hkv=1, N=33, D=16)
    c = Client(server.url)
    r2 = c.attention(q[0, 0], k[0, 0], v[0, 0], method="exact")
    assert r2.out.shape == (33, 16)
    r4 = c.attention(q, k, v, method="exact")
    assert np.array_equal(r2.out, r4.out[0, 0])
    bits = c.attention(f32_to_bf16(q), f32_to_bf16(k), f32_to_bf16(v),
                       method="exact", dtype="bf16")
    flt = c.attention(q, k, v, method="exact", dtype="bf16")
    assert bits.out_raw.dtype == np.uint16
    assert np.array_equal(bits.out_raw, flt.out_raw)


def test_health_info_metrics_and_keepalive(server):
    c = Client(server.url)
    assert c.health() == {"status": "ok"}
    assert c.ready() is True
    info = c.info()
    assert info["backend"] == "cpu" and "limits" in info
    q, k, v, _ = problem(seed=1, B=1, H=1, Hkv=1, N=40, D=8)
    for _ in range(3):
        c.attention(q, k, v)
    m = c.metrics()
    assert "# TYPE" in m and "mrad_" in m


def test_thread_safety(server):
    """One client shared by threads: each gets its own connection and
    every answer belongs to its own request."""
    c = Client(server.url)
    probs = [problem(seed=s, B=1, H=2, Hkv=1, N=64, D=16) for s in range(8)]
    want = [c.attention(q, k, v).out for q, k, v, _ in probs]

    def call(i):
        q, k, v, _ = probs[i % 8]
        return i, c.attention(q, k, v, id=str(i))

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        for i, r in ex.map(call, range(32)):
            assert r.id == str(i)
            assert np.array_equal(r.out, want[i % 8])


def test_bad_request(server):
    c = Client(server.url)
    q, k, v, _ = problem(seed=2, B=1, H=2, Hkv=2, N=64, D=16)
    with pytest.raises(BadRequest) as e:
        c.attention(q, k[:, :, :32], v)
    assert e.value.status == 400 and e.value.code == "bad_request"
    assert "shape" in e.value.message or "N" in e.value.message
    with pytest.raises(BadRequest):
        c.attention(q, k, v, block_per_row=0)
    with pytest.raises(BadRequest):  # H % Hkv != 0
        c.attention(np.concatenate([q, q[:, :1]], axis=1), k, v)


def test_transport_error():
    with pytest.raises(TransportError) as e:
        Client("http://127.0.0.1:9", timeout=5).health()
    assert e.value.status == 0


def test_unauthorized(tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cret-key\n")
    q, k, v, _ = problem(seed=4, B=1, H=1, Hkv=1, N=32, D=8)
    with MradServer(extra_args=["--api-key-file", str(key)], threads=1) as srv:
        for bad in (None, "wrong"):
            with pytest.raises(Unauthorized) as e:
                Client(srv.url, api_key=bad).attention(q, k, v)
            assert e.value.status == 401 and e.value.code == "unauthorized"
        r = Client(srv.url, api_key="s3cret-key").attention(q, k, v)
        assert r.out.shape == q.shape


def test_payload_too_large():
    q, k, v, _ = problem(seed=5, B=1, H=2, Hkv=2, N=256, D=32)
    with MradServer(extra_args=["--max-body-bytes", "16384"], threads=1) as srv:
        c = Client(srv.url)
        with pytest.raises(PayloadTooLarge) as e:
            c.attention(q, k, v)
        assert e.value.status == 413 and e.value.code == "payload_too_large"
        small = c.attention(q[:, :1, :32, :8], k[:, :1, :32, :8], v[:, :1, :32, :8])
        assert small.out.shape == (1, 1, 32, 8)


def gauge(text, name):
    """The value of an unlabelled sample in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_overloaded_retried_and_deadline():
    """One worker, a queue of one: a long request computes, one waits, the
    rest are turned away with 503 and Retry-After, which a client without
    retries raises and the default client waits out and retries; a short
    deadline behind the long request gives 504."""
    rng = np.random.default_rng(6)
    big = rng.standard_normal((1, 8, 2048, 64)).astype(np.float32)
    args = ["--max-queue", "1", "--max-batch-requests", "1"]
    with MradServer(extra_args=args, threads=1) as srv:
        def burst(c):
            start = threading.Barrier(6)

            def long_call(_):
                start.wait()
                try:
                    c.attention(big, big, big, method="exact")
                    return "ok"
                except Overloaded as e:
                    assert e.status == 503 and e.code == "overloaded"
                    assert e.retry_after is not None and e.retry_after >= 0
                    return "503"

            with concurrent.futures.ThreadPoolExecutor(6) as ex:
                return list(ex.map(long_call, range(6)))

        got = burst(Client(srv.url, timeout=120, retries=0))
        assert got.count("ok") >= 1 and got.count("503") >= 1, got
        rejected = metric_value(srv.metrics(), "mrad_requests_total", {"code": "503"})
        waits = []
        policy = RetryPolicy(retries=20, sleep=lambda s: (waits.append(s), time.sleep(s)))
        c = Client(srv.url, timeout=120, retries=policy)
        assert burst(c) == ["ok"] * 6
        # the 503s were there, and each retry waited what Retry-After said
        assert metric_value(srv.metrics(), "mrad_requests_total", {"code": "503"}) > rejected
        assert waits and all(0 <= w <= policy.max_wait for w in waits)

        # a deadline that passes while the request waits in the queue
        q, k, v, _ = problem(seed=7, B=1, H=1, Hkv=1, N=64, D=8)
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(lambda: Client(srv.url, timeout=120).attention(
                big, big, big, method="exact"))
            # wait until the long request is computing (accepted, and
            # nothing waiting for the worker)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                m = c.metrics()
                if gauge(m, "mrad_inflight_requests") >= 1 and gauge(m, "mrad_queue_depth") == 0:
                    break
                time.sleep(0.01)
            with pytest.raises(DeadlineExceeded) as e:
                c.attention(q, k, v, timeout_ms=20)
            assert e.value.status == 504 and e.value.code == "timeout"
            assert isinstance(e.value, MradError)
            fut.result()


def test_bench_module(server):
    """python -m mra_client.bench reports percentiles of its calls."""
    p = subprocess.run([sys.executable, "-m", "mra_client.bench", "--url", server.url,
                        "--shape", "1,2,64,16", "--requests", "12",
                        "--concurrency", "3", "--dtype", "f16", "--json"],
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    rep = json.loads(p.stdout)
    assert rep["ok"] == 12 and rep["errors"] == {}
    lat = rep["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # a causal decode-shaped load: one query over many keys
    p = subprocess.run([sys.executable, "-m", "mra_client.bench", "--url", server.url,
                        "--shape", "1,2,1,16", "--kv-len", "500", "--causal",
                        "--requests", "4", "--json"],
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(p.stdout)["ok"] == 4


def test_accuracy_controls(server):
    """min_blocks_per_row, error_samples, target_error and per_head_stats go
    through as keyword parameters; the answer has the estimate and every
    head's statistics, as the float64 reference computes them."""
    q, k, v, mask = problem()
    c = Client(server.url)
    params = dict(block_per_row=1, min_blocks_per_row=2, error_samples=24)
    r = c.attention(q, k, v, mask=mask, method="mra2_sparse", per_head_stats=True,
                    **params)
    ref, sel, tot, info = mra_ref.attention(q, k, v, mask, method="mra2_sparse",
                                            heads=True, **params)
    assert mra_ref.rel_err(r.out, ref) < TOL["f32"]
    assert r.stats["est_rel_err"] == pytest.approx(info["est_rel_err"], rel=1e-3, abs=1e-5)
    assert [h["budget"] for h in r.stats["heads"]] == [h["budget"] for h in info["heads"]]
    r = c.attention(q, k, v, mask=mask, target_error=0.2)
    assert "est_rel_err" in r.stats and "heads" not in r.stats
    with pytest.raises(TypeError, match="per_head_stats"):
        c.attention(q, k, v, per_head_stats=1)
