"""The KServe v2 / Open Inference Protocol on /v2, with Triton's own client
(tritonclient.http) and load tool (perf_analyzer, tools/perf-analyzer):
health and metadata, inference with JSON and binary tensors for every
dtype, masks, causal and the budget's parameters, checked against the
float64 reference and against /v1 bit for bit; errors as KServe's
{"error": message}; system shared memory for inputs and outputs, its
refusals, and a region that shrinks under a request (a 400, never a
crash); sessions through a request parameter; statistics; the API key.
"""
import json
import mmap
import os
import re
import subprocess
import threading
import time

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

import mra_ref
import wire
from mrad_server import (REPO, MradServer, counted, metric_value, scrape_until,
                         slow_problem)

SAN = bool(os.environ.get("SANITIZE"))


@pytest.fixture(scope="module")
def srv():
    with MradServer(["--allow-shm"], threads=2) as s:
        yield s


def client(s, headers=None):
    return th.InferenceServerClient(f"127.0.0.1:{s.port}")


def rnd(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def as_dtype(a, dtype):
    return {"FP32": a.astype(np.float32), "FP16": a.astype(np.float16),
            "BF16": a.astype(ml_dtypes.bfloat16)}[dtype]


def inputs(arrays, dtype="FP32", binary=True):
    ins = []
    for name, a in arrays.items():
        dt = ("UINT8" if a.dtype == np.uint8 else "BOOL" if a.dtype == bool
              else dtype)
        i = th.InferInput(name, list(a.shape), dt)
        i.set_data_from_numpy(a if dt in ("UINT8", "BOOL")
                              else as_dtype(a, dtype), binary_data=binary)
        ins.append(i)
    return ins


def test_health_and_metadata(srv):
    c = client(srv)
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta["name"] == "mrad"
    assert {"binary_tensor_data", "system_shared_memory",
            "statistics"} <= set(meta["extensions"])
    for model in ("mra2", "mra2_sparse", "exact"):
        assert c.is_model_ready(model)
        m = c.get_model_metadata(model)
        assert m["name"] == model and m["versions"] == ["1"]
        assert [i["name"] for i in m["inputs"]] == ["q", "k", "v"]
        assert m["outputs"][0]["name"] == "out"
        assert c.get_model_config(model)["max_batch_size"] == 0
        assert c.is_model_ready(model, "1")
    assert not c.is_model_ready("nope")
    with pytest.raises(InferenceServerException, match="unknown model"):
        c.get_model_metadata("nope")
    index = c.get_model_repository_index()
    assert sorted(x["name"] for x in index) == ["exact", "mra2",
                                                "mra2_sparse"]
    assert all(x["state"] == "READY" for x in index)


@pytest.mark.parametrize("dtype", ["FP32", "FP16", "BF16"])
@pytest.mark.parametrize("binary", [True, False])
def test_infer_against_the_reference(srv, dtype, binary):
    """Grouped heads, a key mask (BOOL), causal cross-attention, the budget
    as parameters: exact against float64, mra2 with a full budget equals
    exact, and the answer has the bits of /v1's."""
    if dtype == "BF16" and not binary:
        pytest.skip("tritonclient sends BF16 as binary data only")
    c = client(srv)
    rng = np.random.default_rng(hash((dtype, binary)) % 2**32)
    B, H, Hkv, Nq, Nk, D = 2, 4, 2, 40, 70, 16
    q, k, v = rnd(rng, B, H, Nq, D), rnd(rng, B, Hkv, Nk, D), \
        rnd(rng, B, Hkv, Nk, D)
    mask = rng.random((B, Nk)) < 0.9
    arrays = {"q": q, "k": k, "v": v, "mask": mask}
    wdt = {"FP32": "f32", "FP16": "f16", "BF16": "bf16"}[dtype]
    rq, rk, rv = (wire.round_to_dtype(a, wdt) for a in (q, k, v))
    ref = mra_ref.attention(rq, rk, rv, mask.astype(np.uint8),
                            method="exact", causal=True)[0]
    outs = {}
    for model, params in (("exact", {}), ("mra2", {"num_blocks": 1000})):
        r = c.infer(model, inputs(arrays, dtype, binary),
                    outputs=[th.InferRequestedOutput("out",
                                                     binary_data=binary)],
                    parameters=dict(params, causal=True))
        out = r.as_numpy("out")
        assert out.shape == (B, H, Nq, D)
        assert r.get_response()["parameters"]["method"] == model
        outs[model] = np.asarray(out, dtype=np.float64)
    tol = 1e-5 if dtype == "FP32" else 2e-2
    assert mra_ref.rel_err(outs["exact"], ref) < tol
    assert mra_ref.rel_err(outs["mra2"], outs["exact"]) < 1e-6
    # /v1 with the same tensors: the same bits.
    st, _, body = srv.request(
        "POST", "/v1/attention",
        body=wire.encode_request(q, k, v, mask.astype(np.uint8), dtype=wdt,
                                 method="exact", causal=True),
        headers={"Content-Type": "application/msgpack"})
    assert st == 200
    v1 = wire.decode_response(body)[0].astype(np.float64)
    assert np.array_equal(v1, outs["exact"])


def test_errors_are_kserve_errors(srv):
    c = client(srv)
    rng = np.random.default_rng(3)
    q = rnd(rng, 1, 2, 8, 4)
    with pytest.raises(InferenceServerException, match="k: missing"):
        c.infer("exact", inputs({"q": q}))
    with pytest.raises(InferenceServerException,
                       match="k: shape \\[1,2,9,5\\] does not match q's"):
        c.infer("exact", inputs({"q": q, "k": rnd(rng, 1, 2, 9, 5),
                                 "v": rnd(rng, 1, 2, 9, 5)}))
    with pytest.raises(InferenceServerException, match="unknown input \"x\""):
        c.infer("exact", inputs({"q": q, "k": q, "v": q, "x": q}))
    with pytest.raises(InferenceServerException,
                       match="parameters.bogus: unknown parameter"):
        c.infer("exact", inputs({"q": q, "k": q, "v": q}),
                parameters={"bogus": 1})
    # The raw body: status and KServe's form.
    st, hd, body = srv.request("POST", "/v2/models/exact/infer", body=b"{",
                               headers={"Content-Type": "application/json"})
    assert st == 400 and set(json.loads(body)) == {"error"}
    st, _, body = srv.request("POST", "/v2/models/nope/infer", body=b"{}")
    assert st == 404 and "unknown model" in json.loads(body)["error"]
    st, _, body = srv.request("GET", "/v2/nothing")
    assert st == 404 and "error" in json.loads(body)
    st, _, body = srv.request(
        "POST", "/v2/models/exact/infer", body=b"{}",
        headers={"Inference-Header-Content-Length": "9"})
    assert st == 400 and "Inference-Header-Content-Length" in \
        json.loads(body)["error"]


def test_statistics_and_metrics(srv):
    c = client(srv)
    before = c.get_inference_statistics("mra2_sparse")["model_stats"][0]
    rng = np.random.default_rng(4)
    q = rnd(rng, 1, 2, 64, 16)
    for _ in range(3):
        c.infer("mra2_sparse", inputs({"q": q, "k": q, "v": q}))
    with pytest.raises(InferenceServerException):
        c.infer("mra2_sparse", inputs({"q": q}))
    s = c.get_inference_statistics("mra2_sparse")["model_stats"][0]
    ok = s["inference_stats"]["success"]
    assert ok["count"] - before["inference_stats"]["success"]["count"] == 3
    assert s["inference_stats"]["fail"]["count"] >= 1
    assert s["execution_count"] - before["execution_count"] == 3
    assert s["last_inference"] > 0
    assert len(c.get_inference_statistics()["model_stats"]) == 3
    text = scrape_until(srv,
                        counted("mrad_requests_total", 3, {"api": "v2", "code": "200"}),
                        counted("mrad_request_duration_seconds_count", 4, {"api": "v2"}))
    assert metric_value(text, "mrad_requests_total",
                        {"api": "v2", "code": "200"}) >= 3
    assert metric_value(text, "mrad_request_duration_seconds_count",
                        {"api": "v2"}) >= 4


def test_sessions_through_a_parameter(srv):
    """A session made on /v1, stepped on /v2 with its appended tokens as
    inputs: the answer of the same step on /v1."""
    rng = np.random.default_rng(5)
    k = rnd(rng, 1, 2, 50, 16)
    st, _, body = srv.request(
        "POST", "/v1/kv", body=wire.pack({"k": wire.tensor(k, "f32"),
                                          "v": wire.tensor(k, "f32")}),
        headers={"Content-Type": "application/msgpack"})
    sid = json.loads(body)["kv"]
    q, ka = rnd(rng, 1, 4, 1, 16), rnd(rng, 1, 2, 1, 16)
    r = client(srv).infer("exact", inputs({"q": q, "k_append": ka,
                                           "v_append": ka}),
                          parameters={"kv": sid, "causal": True})
    full = np.concatenate([k, ka], 2)
    st, _, body = srv.request(
        "POST", "/v1/attention",
        body=wire.encode_request(q, full, full, method="exact", causal=True),
        headers={"Content-Type": "application/msgpack"})
    assert np.array_equal(r.as_numpy("out"), wire.decode_response(body)[0])
    assert json.loads(srv.request("GET", f"/v1/kv/{sid}")[2])["tokens"] == 51
    with pytest.raises(InferenceServerException, match="no such session"):
        client(srv).infer("exact", inputs({"q": q}),
                          parameters={"kv": "0" * 32})


# ---- system shared memory ----------------------------------------------------

class Regions:
    """Shared-memory objects made with tritonclient's helper, registered
    with the server; all removed at the end."""

    def __init__(self, c):
        self.c, self.handles = c, []

    def make(self, name, arrays, register=True):
        nbytes = sum(a.nbytes for a in arrays) or 64
        key = f"/mrad-v2-{os.getpid()}-{name}"
        h = shm.create_shared_memory_region(name, key, nbytes)
        if arrays:
            shm.set_shared_memory_region(h, arrays)
        self.handles.append((name, h))
        if register:
            self.c.register_system_shared_memory(name, key, nbytes)
        return key, h

    def close(self):
        try:
            self.c.unregister_system_shared_memory()
        finally:
            for _, h in self.handles:
                shm.destroy_shared_memory_region(h)


def shm_inputs(region, arrays):
    ins, off = [], 0
    for name, a in arrays.items():
        i = th.InferInput(name, list(a.shape), "FP32")
        i.set_shared_memory(region, a.nbytes, offset=off)
        off += a.nbytes
        ins.append(i)
    return ins


def test_shared_memory_inputs_and_output(srv):
    c = client(srv)
    regions = Regions(c)
    try:
        rng = np.random.default_rng(6)
        q, k, v = rnd(rng, 1, 4, 64, 16), rnd(rng, 1, 2, 96, 16), \
            rnd(rng, 1, 2, 96, 16)
        regions.make("in", [q, k, v])
        _, out_h = regions.make("out", [np.zeros_like(q)])
        status = c.get_system_shared_memory_status()
        assert {s["name"] for s in status} == {"in", "out"}
        o = th.InferRequestedOutput("out")
        o.set_shared_memory("out", q.nbytes)
        r = c.infer("exact", shm_inputs("in", {"q": q, "k": k, "v": v}),
                    outputs=[o], parameters={"causal": True})
        got = r.get_output("out")  # its data is in the region
        assert got["shape"] == list(q.shape) and "data" not in got
        out = shm.get_contents_as_numpy(out_h, np.float32, list(q.shape))
        ref = mra_ref.attention(q, k, v, method="exact", causal=True)[0]
        assert mra_ref.rel_err(out, ref) < 1e-5
        # an output in the body, inputs in shared memory
        r = c.infer("exact", shm_inputs("in", {"q": q, "k": k, "v": v}),
                    parameters={"causal": True})
        assert np.array_equal(r.as_numpy("out"), out)

        # refusals
        def refused(match, ins, outs=None):
            with pytest.raises(InferenceServerException, match=match):
                c.infer("exact", ins, outputs=outs)
        big = th.InferInput("q", [1, 4, 640, 16], "FP32")
        big.set_shared_memory("in", 4 * 640 * 16 * 4)
        refused("shared_memory_byte_size|past region in",
                [big] + shm_inputs("in", {"k": k, "v": v})[0:0])
        bad = th.InferInput("q", list(q.shape), "FP32")
        bad.set_shared_memory("nope", q.nbytes)
        refused("region nope is not registered",
                [bad] + shm_inputs("in", {"k": k, "v": v}))
        small = th.InferRequestedOutput("out")
        small.set_shared_memory("out", q.nbytes // 2)
        refused("the output needs",
                shm_inputs("in", {"q": q, "k": k, "v": v}), [small])
        c.unregister_system_shared_memory("out")
        assert {s["name"] for s in c.get_system_shared_memory_status()} == \
            {"in"}
        with pytest.raises(InferenceServerException,
                           match="region out is not registered"):
            c.unregister_system_shared_memory("out")
        # a key that is not an object
        with pytest.raises(InferenceServerException, match="cannot open"):
            c.register_system_shared_memory("x", "/mrad-absent-object", 64)
        with pytest.raises(InferenceServerException, match="key"):
            c.register_system_shared_memory("x", "/../etc/passwd", 64)
    finally:
        regions.close()


def test_a_region_that_shrinks_under_a_request():
    """The client truncates its object while the server reads it: the
    request is a 400 naming the region, the daemon goes on (under ASan
    too), and the region must be registered again."""
    with MradServer(["--allow-shm"], threads=1) as s:
        c = client(s)
        regions = Regions(c)
        try:
            sq, sk, sv = slow_problem(s, 1.0)
            key, h = regions.make("big", [sq, sk, sv])
            result = {}

            def run():
                try:
                    c2 = client(s)
                    c2.infer("exact", shm_inputs("big", {"q": sq, "k": sk,
                                                         "v": sv}))
                    result["ok"] = True
                except InferenceServerException as e:
                    result["error"] = e.message()
            t = threading.Thread(target=run)
            t.start()
            deadline = time.monotonic() + 30
            while metric_value(s.metrics(), "mrad_inflight_requests") < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            fd = os.open("/dev/shm" + key, os.O_RDWR)
            os.ftruncate(fd, 4096)
            os.close(fd)
            t.join(120)
            assert "error" in result, result
            assert re.search("region big (shrank|.*shrank)", result["error"])
            assert c.is_server_live()
            # used again: refused until registered again
            with pytest.raises(InferenceServerException, match="shrank"):
                c.infer("exact", shm_inputs("big", {"q": sq, "k": sk,
                                                    "v": sv}))
            q = sq[:, :1, :64]
            r = c.infer("exact", inputs({"q": q, "k": q, "v": q}))
            assert r.as_numpy("out").shape == q.shape
        finally:
            regions.close()


def test_shared_memory_off_and_keys(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("v2-key-0123456789\n")
    with MradServer(["--api-key-file", str(keyfile)], threads=1) as s:
        st, _, body = s.request("GET", "/v2/health/live")
        assert st == 401 and "error" in json.loads(body)
        c = th.InferenceServerClient(f"127.0.0.1:{s.port}")
        auth = {"Authorization": "Bearer v2-key-0123456789"}
        assert c.is_server_live(headers=auth)
        meta = c.get_server_metadata(headers=auth)
        assert "system_shared_memory" not in meta["extensions"]
        with pytest.raises(InferenceServerException,
                           match="not enabled on this server"):
            c.register_system_shared_memory("r", "/x", 64, headers=auth)
        q = np.ones((1, 1, 4, 4), np.float32)
        r = c.infer("exact", inputs({"q": q, "k": q, "v": q}), headers=auth)
        assert r.as_numpy("out").shape == q.shape


# ---- perf_analyzer ---------------------------------------------------------------

PERF = os.path.join(REPO, "tools", "perf-analyzer")


@pytest.mark.parametrize("shared", [False, True])
def test_perf_analyzer(srv, shared):
    """Triton's load tool runs against mrad for a bounded time, over HTTP
    with binary data and with system shared memory, and its report
    parses.  Its stability criterion is set out of reach of a shared
    machine's noise (the three windows must differ by less than ten times
    their mean): what is checked is that every request succeeds."""
    if SAN and shared:
        pytest.skip("one run is enough under the sanitizers")
    args = [PERF, "-m", "mra2", "-u", f"127.0.0.1:{srv.port}", "-i", "http",
            "--shape", "q:1,2,64,16", "--shape", "k:1,2,64,16",
            "--shape", "v:1,2,64,16", "--measurement-interval", "500",
            "--stability-percentage", "1000", "--max-trials", "4"]
    if shared:
        args += ["--shared-memory", "system"]
    start = len(srv.log_lines)
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        # what the daemon said meanwhile besides its access lines, and the
        # connections it closed
        said = [ln for ln in srv.log_lines[start:] if " access " not in ln]
        closed = [ln for ln in srv.get("/metrics")[2].decode().splitlines()
                  if ln.startswith("mrad_connections_closed_total")]
        pytest.fail("\n".join([r.stdout + r.stderr, "mrad:"] + said[-40:] + closed))
    m = re.search(r"Concurrency: 1, throughput: ([0-9.]+) infer/sec, "
                  r"latency (\d+) usec", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) > 0 and int(m.group(2)) > 0
    assert "Unable to" not in r.stdout + r.stderr
    assert re.search(r"Successful request count: \d+", r.stdout)
