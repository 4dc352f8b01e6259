"""Black-box tests of bin/mrad: answers against the float64 reference
(cross-attention and causal masking included), JSON requests, keep-alive,
the GET endpoints, the error bodies of the contract and a live `promtool
check metrics`."""
import json
import shutil
import socket
import subprocess
import time

import msgpack
import numpy as np
import pytest

import mra_ref
from mrad_server import (MradError, counted, decode_answer, encode_msgpack, metric_value,
                         scrape_until)

RNG = np.random.default_rng(1234)


def problem(B=2, H=2, Hkv=1, N=100, D=16, masked=True):
    q = RNG.standard_normal((B, H, N, D)).astype(np.float32)
    k = RNG.standard_normal((B, Hkv, N, D)).astype(np.float32)
    v = RNG.standard_normal((B, Hkv, N, D)).astype(np.float32)
    mask = None
    if masked:
        mask = np.ones((B, N), dtype=np.uint8)
        mask[0, N - 17:] = 0
        mask[-1, :5] = 0
    return q, k, v, mask


def reference(q, k, v, mask, **params):
    f = lambda a: a.astype(np.float64)
    return mra_ref.attention(f(q), f(k), f(v), mask=mask, **params)


@pytest.mark.parametrize("method,params", [
    ("exact", {}),
    ("mra2", {"block_per_row": 2}),
    ("mra2_sparse", {"block_per_row": 2}),
    ("mra2", {"num_blocks": 5, "prior_first": 1, "prior_diagonal": 3}),
    ("mra2_sparse", {"num_blocks": 7, "scale": 0.3}),
])
def test_answers_match_reference(mrad, method, params):
    q, k, v, mask = problem()
    out, stats = mrad.attention(q, k, v, mask, method=method, id="req-1", **params)
    ref, selected, total = reference(q, k, v, mask, method=method, **params)
    assert out.shape == q.shape and out.dtype == np.float32
    assert mra_ref.rel_err(out, ref) <= 1e-4
    assert stats["method"] == method
    assert stats["backend"] == "cpu"
    assert stats["blocks_selected"] == selected
    assert stats["blocks_total"] == total
    assert stats["density"] == pytest.approx(selected / total)
    assert stats["batch_requests"] >= 1
    assert stats["compute_us"] >= 0 and stats["queue_us"] >= 0


# Cross-attention and causal masking through the daemon: (method, B, H,
# Hkv, Nq, Nk, causal, query mask, params, format).
CROSS_CASES = [
    ("mra2", 2, 2, 1, 40, 100, True, True, {"block_per_row": 1}, "msgpack"),
    ("mra2_sparse", 1, 4, 2, 100, 40, True, False,
     {"num_blocks": 3, "prior_diagonal": 3}, "msgpack"),
    ("exact", 2, 2, 2, 1, 257, True, False, {}, "msgpack"),
    ("mra2", 1, 2, 1, 1, 257, False, False, {"block_per_row": 2}, "msgpack"),
    ("mra2", 2, 2, 1, 64, 64, True, True, {"prior_first": 1,
                                           "num_blocks": 2}, "msgpack"),
    ("mra2_sparse", 1, 2, 1, 33, 70, True, True, {"block_per_row": 1},
     "json"),
]


@pytest.mark.parametrize("method,B,H,Hkv,nq,nk,causal,qmask,params,fmt",
                         CROSS_CASES)
def test_cross_attention_matches_reference(mrad, method, B, H, Hkv, nq, nk,
                                           causal, qmask, params, fmt):
    rng = np.random.default_rng(nq * 1000 + nk)
    q = rng.standard_normal((B, H, nq, 16)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, nk, 16)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, nk, 16)).astype(np.float32)
    mask = np.ones((B, nk), np.uint8)
    mask[-1, nk // 2:] = 0  # a padded last entry
    q_mask = None
    if qmask:
        q_mask = (rng.random((B, nq)) < 0.7).astype(np.uint8)
    out, stats = mrad.attention(q, k, v, mask, fmt=fmt, method=method,
                                causal=causal, q_mask=q_mask, **params)
    ref, selected, total = reference(q, k, v, mask, method=method,
                                     causal=causal, q_mask=q_mask, **params)
    assert out.shape == (B, H, nq, 16)
    assert mra_ref.rel_err(out, ref) <= 1e-4
    assert stats["blocks_selected"] == selected
    assert stats["blocks_total"] == total


def test_cross_attention_errors_name_the_field(mrad):
    q, k, v, _ = problem(B=1, H=2, Hkv=1, N=32, D=8, masked=False)
    cases = [
        (dict(causal=1), "causal: must be a boolean"),
        (dict(causal="true"), "causal: must be a boolean"),
        (dict(q_mask=np.ones((1, 31), np.uint8)),
         "q_mask: shape [1,31] does not match q's [B,Nq] = [1,32]"),
        (dict(q_mask=np.full((1, 32), 2, np.uint8)),
         "q_mask.data[0]: must be 0 or 1 (got 2)"),
    ]
    for params, text in cases:
        status, hdrs, body = mrad.post(encode_msgpack(q, k, v, **params))
        assert error_of(status, hdrs, body) == (400, "bad_request")
        assert text in json.loads(body)["error"]["message"]
    # the key mask of a cross-attention problem covers the keys
    k2 = np.concatenate([k, k], axis=2)
    status, hdrs, body = mrad.post(encode_msgpack(q, k2, k2, mask=np.ones(
        (1, 32), np.uint8)))
    assert error_of(status, hdrs, body) == (400, "bad_request")
    assert "mask: shape [1,32] does not match k's [B,Nk] = [1,64]" in \
        json.loads(body)["error"]["message"]
    assert mrad.get("/healthz")[0] == 200


def test_id_is_echoed(mrad):
    q, k, v, _ = problem(B=1, H=1, N=40, masked=False)
    status, hdrs, body = mrad.post(encode_msgpack(q, k, v, id="abc-42"))
    assert status == 200
    assert hdrs["content-type"] == "application/msgpack"
    _, _, m = decode_answer(body, hdrs["content-type"])
    assert m["id"] == "abc-42"


def _wire(a, dtype):
    """A float32 array as a wire tensor of f32, f16 or bf16 (truncated)."""
    if dtype == "bf16":
        data = (np.ascontiguousarray(a, "<f4").view("<u4") >> 16).astype("<u2").tobytes()
    else:
        data = np.ascontiguousarray(a, "<f4" if dtype == "f32" else "<f2").tobytes()
    return {"dtype": dtype, "shape": list(a.shape), "data": data}


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape,rid", [
    ((1, 1, 1, 1), None),
    ((2, 3, 37, 17), "r"),
    ((1, 4, 300, 64), "an id of thirty-one bytes......"),
    ((1, 2, 1100, 32), "z" * 128),
])
def test_msgpack_answer_is_one_exact_map_with_aligned_data(mrad, dtype, shape, rid):
    """The answer is sent in pieces (its head, the output where it was
    computed, its tail): the body must still be exactly one msgpack map,
    Content-Length long, with the output's bytes starting 16-byte aligned
    from the start of the body, as the encoder guarantees."""
    q = RNG.standard_normal(shape).astype(np.float32)
    m = {"q": _wire(q, dtype), "k": _wire(q[:, :1], dtype), "v": _wire(-q[:, :1], dtype),
         "method": "exact"}
    if rid is not None:
        m["id"] = rid
    status, hdrs, body = mrad.post(msgpack.packb(m, use_bin_type=True))
    assert status == 200, body
    assert hdrs["content-type"] == "application/msgpack"
    assert int(hdrs["content-length"]) == len(body)
    ans = msgpack.unpackb(body, raw=False)  # refuses trailing bytes
    out = ans["out"]
    es = 4 if dtype == "f32" else 2
    assert out["dtype"] == dtype and out["shape"] == list(shape)
    assert len(out["data"]) == int(np.prod(shape)) * es
    # Where the payload starts: walk to the end of out.data.
    u = msgpack.Unpacker(raw=False)
    u.feed(body)
    u.read_map_header()
    assert u.unpack() == "out"
    end = None
    for _ in range(u.read_map_header()):
        key, val = u.unpack(), u.unpack()
        if key == "data":
            end = u.tell()
    start = end - len(out["data"])
    assert start % 16 == 0
    assert body[start:end] == out["data"]
    assert ans.get("id") == rid
    assert set(ans["stats"]) >= {"method", "backend", "blocks_selected", "blocks_total",
                                 "density", "queue_us", "compute_us", "batch_requests"}
    if dtype == "f32":  # exact attention averages rows of v
        got = np.frombuffer(out["data"], "<f4")
        assert np.all(np.abs(got) <= np.abs(q[:, :1]).max() + 1e-3)


def test_json_request_gets_json_answer(mrad):
    q, k, v, mask = problem(B=1, H=2, Hkv=2, N=70, D=8)
    out, stats = mrad.attention(q, k, v, mask, fmt="json", method="mra2", block_per_row=1)
    ref, selected, _ = reference(q, k, v, mask, method="mra2", block_per_row=1)
    assert mra_ref.rel_err(out, ref) <= 1e-4
    assert stats["blocks_selected"] == selected
    # x-msgpack is accepted as well, and answered in msgpack.
    status, hdrs, _ = mrad.post(encode_msgpack(q, k, v), "application/x-msgpack")
    assert status == 200 and hdrs["content-type"] == "application/msgpack"


def test_keep_alive_serves_several_requests_on_one_connection(mrad):
    conn = mrad.connection()
    try:
        q, k, v, _ = problem(B=1, H=1, N=64, D=8, masked=False)
        conn.connect()
        sock = conn.sock
        for i in range(4):
            out, _ = mrad.attention(q, k, v, method="exact", conn=conn)
            ref, _, _ = reference(q, k, v, None, method="exact")
            assert mra_ref.rel_err(out, ref) <= 1e-4
            assert mrad.get("/healthz", conn=conn)[0] == 200
        assert conn.sock is sock  # never reconnected
    finally:
        conn.close()


def test_healthz_readyz_info(mrad):
    status, hdrs, body = mrad.get("/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert hdrs["content-type"] == "application/json"
    status, _, body = mrad.get("/readyz")
    assert status == 200
    status, _, body = mrad.get("/v1/info")
    info = json.loads(body)
    assert status == 200
    assert info["backend"] == "cpu" and info["device"]
    assert info["version"]
    assert info["limits"]["max_head_dim"] == 256
    assert info["defaults"]["method"] == "mra2"
    assert {"max_queue", "max_batch_requests", "max_batch_tokens",
            "batch_window_us"} <= set(info["batching"])


def error_of(status, hdrs, body):
    assert hdrs["content-type"] == "application/json"
    err = json.loads(body)["error"]
    assert set(err) == {"code", "message"} and err["message"]
    return status, err["code"]


def test_errors_have_the_contract_body(mrad):
    assert error_of(*mrad.get("/nope")) == (404, "not_found")
    status, hdrs, body = mrad.get("/v1/attention")
    assert error_of(status, hdrs, body) == (405, "method_not_allowed")
    assert hdrs["allow"] == "POST"
    status, hdrs, body = mrad.request("DELETE", "/metrics")
    assert error_of(status, hdrs, body) == (405, "method_not_allowed")
    assert "GET" in hdrs["allow"]
    assert error_of(*mrad.post(b"\x01\x02", "text/plain")) == (415, "unsupported_media_type")
    assert error_of(*mrad.post(b"{}", "application/xml")) == (415, "unsupported_media_type")
    assert error_of(*mrad.post(b"\xc1\xc1garbage")) == (400, "bad_request")
    assert error_of(*mrad.post(b"{not json", "application/json")) == (400, "bad_request")
    q, k, v, _ = problem(B=1, H=2, Hkv=1, N=32, D=8, masked=False)
    bad = msgpack.unpackb(encode_msgpack(q, k, v), raw=False)
    bad["surprise"] = 1
    assert error_of(*mrad.post(msgpack.packb(bad))) == (400, "bad_request")
    status, hdrs, body = mrad.post(encode_msgpack(q, k[:, :, :16], v))
    assert error_of(status, hdrs, body) == (400, "bad_request")
    assert "k" in json.loads(body)["error"]["message"]
    # The daemon is still fine after all that.
    assert mrad.get("/healthz")[0] == 200


def test_metrics_count_requests_and_pass_promtool(mrad):
    q, k, v, _ = problem(B=1, H=1, N=96, D=8, masked=False)
    mrad.attention(q, k, v)
    mrad.get("/nope")
    # Both are counted once their answers went out (scrape_until).
    text = scrape_until(mrad, counted("mrad_requests_total", 1, {"code": "200"}),
                        counted("mrad_requests_total", 1, {"code": "404"}),
                        counted("mrad_request_duration_seconds_count", 2))
    assert metric_value(text, "mrad_requests_total", {"code": "200"}) >= 1
    assert metric_value(text, "mrad_requests_total", {"code": "404"}) >= 1
    assert metric_value(text, "mrad_tokens_total") >= 96
    assert metric_value(text, "mrad_blocks_total") >= 9
    assert metric_value(text, "mrad_blocks_selected_total") >= 1
    assert metric_value(text, "mrad_batch_requests_count") >= 1
    assert metric_value(text, "mrad_block_density_count") >= 1
    assert metric_value(text, "mrad_compute_duration_seconds_count") >= 1
    assert metric_value(text, "mrad_queue_duration_seconds_count") >= 1
    assert metric_value(text, "mrad_request_duration_seconds_count") >= 2
    assert metric_value(text, "mrad_queue_depth") == 0
    assert metric_value(text, "mrad_inflight_requests") == 0
    assert 'mrad_build_info{version="' in text and 'backend="cpu"' in text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds", "process_max_fds", "process_start_time_seconds",
                 "process_virtual_memory_bytes"):
        assert metric_value(text, name) > 0, name
    # The CPU backend has no device memory: no GPU series.
    assert "mrad_gpu_memory_used_bytes" not in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_access_log_has_one_line_per_request(mrad):
    q, k, v, _ = problem(B=1, H=1, N=32, D=8, masked=False)
    mrad.attention(q, k, v, id="log-me")
    # The line is written once the answer is sent, just after the client
    # got it.
    for _ in range(100):
        line = [l for l in mrad.log_text().splitlines() if "id=log-me" in l]
        if line:
            break
        time.sleep(0.02)
    assert len(line) == 1
    assert "POST /v1/attention 200" in line[0]
    assert "queue_us=" in line[0] and "compute_us=" in line[0]


def test_problem_with_mismatched_data_length_is_rejected_without_harm(mrad):
    q, k, v, _ = problem(B=1, H=1, N=32, D=8, masked=False)
    m = msgpack.unpackb(encode_msgpack(q, k, v), raw=False)
    m["q"]["data"] = m["q"]["data"][:-4]
    status, hdrs, body = mrad.post(msgpack.packb(m))
    assert error_of(status, hdrs, body) == (400, "bad_request")
    with pytest.raises(MradError) as e:
        mrad.attention(q, k, v, method="fancy")
    assert e.value.status == 400 and e.value.code == "bad_request"
