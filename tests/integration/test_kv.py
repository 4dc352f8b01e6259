"""Black-box tests of sessions (protocol/SPEC.md, "Sessions"): keys and
values kept in the daemon between requests.

Each step on a session must answer exactly what the same request with the
whole K, V and mask in its body answers (the same bits), for every method,
dtype, grouped heads, causal or not; the session API's bad inputs and
faults (wrong ids and keys, mismatched appends, the budget, eviction,
expiry, deletion in flight, concurrent appends, SIGTERM) each get their
status and message; and what sessions hold returns to the idle values when
they end.  A generation loop decodes 64 tokens of a small random decoder
through sessions and must pick the tokens a local computation picks.
"""
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

import mra_ref
import wire
from mrad_server import (MradServer, metric_value, slow_problem)

MSGPACK = {"Content-Type": "application/msgpack"}
KV_HEADER = "x-mrad-kv"


# ---- helpers ------------------------------------------------------------------

def body(fields, fmt="msgpack"):
    return wire.pack(fields, fmt)


def tokens_body(k, v, mask=None, dtype="f32", ttl_ms=None, fmt="msgpack"):
    b = {"k": wire.tensor(k, dtype, fmt), "v": wire.tensor(v, dtype, fmt)}
    if mask is not None:
        b["mask"] = wire.tensor(np.asarray(mask, np.uint8), "u8", fmt)
    if ttl_ms is not None:
        b["ttl_ms"] = ttl_ms
    return body(b, fmt)


def call(srv, method, path, data=None, headers=None, fmt="msgpack", conn=None):
    h = {"Content-Type": "application/json" if fmt == "json" else
         "application/msgpack"} if data is not None else {}
    h.update(headers or {})
    return srv.request(method, path, body=data, headers=h, conn=conn)


def error_of(b):
    return json.loads(b)["error"]


def create(srv, k, v, mask=None, dtype="f32", ttl_ms=None, headers=None,
           fmt="msgpack"):
    st, hd, b = call(srv, "POST", "/v1/kv",
                     tokens_body(k, v, mask, dtype, ttl_ms, fmt), headers, fmt)
    assert st == 201, b
    info = json.loads(b)
    assert hd[KV_HEADER] == info["kv"]
    assert hd["content-type"].startswith("application/json")
    return info


def step(srv, sid, q, ka=None, va=None, ma=None, dtype="f32", headers=None,
         in_path=False, conn=None, **params):
    """A request on session sid; returns (status, headers, body)."""
    b = {"q": wire.tensor(q, dtype)}
    if ka is not None:
        b["k_append"] = wire.tensor(ka, dtype)
        b["v_append"] = wire.tensor(va, dtype)
    if ma is not None:
        b["mask_append"] = wire.tensor(np.asarray(ma, np.uint8), "u8")
    if not in_path:
        b["kv"] = sid
    b.update({k: v for k, v in params.items() if v is not None})
    path = f"/v1/kv/{sid}/attention" if in_path else "/v1/attention"
    return call(srv, "POST", path, body(b), headers, conn=conn)


def stateless(srv, q, k, v, mask=None, dtype="f32", **params):
    st, _, b = call(srv, "POST", "/v1/attention",
                    wire.encode_request(q, k, v, mask, dtype=dtype,
                                        **params))
    assert st == 200, b
    return wire.decode_response(b)[0]


def kv_metrics(srv):
    text = srv.metrics()
    return {name: metric_value(text, "mrad_kv_" + name) for name in
            ("sessions", "bytes", "budget_bytes", "created_total",
             "append_tokens_total", "full_total")} | {
        r: metric_value(text, "mrad_kv_ended_total", {"reason": r})
        for r in ("deleted", "evicted", "expired")}


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def srv():
    with MradServer(threads=2) as s:
        yield s


def rnd(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- results -------------------------------------------------------------------

@pytest.mark.parametrize("method", ["exact", "mra2", "mra2_sparse"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_steps_equal_the_same_request_with_its_keys(srv, method, dtype):
    """Decoding steps (one query, one appended token each; then three
    queries and two tokens), causal, grouped heads, a key mask: each answer
    has the bits of the request that carries the whole K, V and mask."""
    rng = np.random.default_rng(hash((method, dtype)) % 2**32)
    B, H, Hkv, D, N0 = 2, 4, 2, 32, 77
    k, v = rnd(rng, B, Hkv, N0, D), rnd(rng, B, Hkv, N0, D)
    mask = (rng.random((B, N0)) < 0.9).astype(np.uint8)
    info = create(srv, k, v, mask, dtype)
    assert info["tokens"] == N0 and info["shape"] == [B, Hkv, N0, D]
    assert info["dtype"] == dtype
    sid = info["kv"]
    params = dict(method=method, block_per_row=2, causal=True)
    for i, (nq, na) in enumerate([(1, 1), (1, 1), (3, 2), (1, 0), (2, 1)]):
        q = rnd(rng, B, H, nq, D)
        ka = va = ma = None
        if na:
            ka, va = rnd(rng, B, Hkv, na, D), rnd(rng, B, Hkv, na, D)
            ma = np.ones((B, na), np.uint8)
            ma[0, -1] = i % 2
            k, v = np.concatenate([k, ka], 2), np.concatenate([v, va], 2)
            mask = np.concatenate([mask, ma], 1)
        st, hd, b = step(srv, sid, q, ka, va, ma, dtype, in_path=i % 2 == 1,
                         **params)
        assert st == 200, b
        assert hd[KV_HEADER] == sid
        out, stats, _ = wire.decode_response(b)
        want = stateless(srv, q, k, v, mask, dtype, **params)
        assert out.dtype == want.dtype and out.shape == (B, H, nq, D)
        assert np.array_equal(out.view(np.uint8), want.view(np.uint8)), i
        if method == "exact":
            ref = mra_ref.attention(wire.round_to_dtype(q, dtype),
                                    wire.round_to_dtype(k, dtype),
                                    wire.round_to_dtype(v, dtype), mask,
                                    method="exact", causal=True)[0]
            tol = 1e-5 if dtype == "f32" else 2e-2
            assert mra_ref.rel_err(out, ref) < tol
    st, _, b = call(srv, "GET", f"/v1/kv/{sid}")
    assert json.loads(b)["tokens"] == k.shape[2]
    assert call(srv, "DELETE", f"/v1/kv/{sid}")[0] == 204


def test_not_causal_cross_attention_and_json(srv):
    """A fixed context attended by queries without appends (repeated
    cross-attention), created from a JSON body."""
    rng = np.random.default_rng(5)
    k, v = rnd(rng, 1, 1, 50, 8), rnd(rng, 1, 1, 50, 8)
    info = create(srv, k, v, fmt="json")
    q = rnd(rng, 1, 2, 40, 8)
    for method in ("exact", "mra2"):
        st, _, b = step(srv, info["kv"], q, method=method)
        assert st == 200, b
        out = wire.decode_response(b)[0]
        assert np.array_equal(out, stateless(srv, q, k, v, method=method))
    call(srv, "DELETE", f"/v1/kv/{info['kv']}")


def test_the_session_answer(srv):
    rng = np.random.default_rng(6)
    info = create(srv, rnd(rng, 1, 2, 40, 16), rnd(rng, 1, 2, 40, 16),
                  dtype="f16", ttl_ms=5000)
    sid = info["kv"]
    assert len(sid) == 32 and all(c in "0123456789abcdef" for c in sid)
    assert info["ttl_ms"] == 5000 and info["bytes"] > 40 * 2 * 16 * 2 * 2
    st, hd, b = call(srv, "POST", f"/v1/kv/{sid}/append",
                     tokens_body(rnd(rng, 1, 2, 30, 16), rnd(rng, 1, 2, 30, 16),
                                 dtype="f16"))
    assert st == 200 and hd[KV_HEADER] == sid
    a = json.loads(b)
    assert a["tokens"] == 70 and a["shape"] == [1, 2, 70, 16]
    assert a["bytes"] > info["bytes"]
    time.sleep(0.2)
    st, hd, b = call(srv, "GET", f"/v1/kv/{sid}")
    g = json.loads(b)
    assert st == 200 and hd[KV_HEADER] == sid
    assert g["tokens"] == 70 and g["idle_ms"] >= 150
    # The header comes once, on each kind of answer.
    conn = srv.connection()
    for method, path, data in (
            ("GET", f"/v1/kv/{sid}", None),
            ("POST", f"/v1/kv/{sid}/append",
             tokens_body(rnd(rng, 1, 2, 1, 16), rnd(rng, 1, 2, 1, 16),
                         dtype="f16")),
            ("POST", f"/v1/kv/{sid}/attention",
             body({"q": wire.tensor(rnd(rng, 1, 2, 1, 16), "f16")})),
            ("POST", "/v1/kv", tokens_body(rnd(rng, 1, 2, 1, 16),
                                           rnd(rng, 1, 2, 1, 16)))):
        conn.request(method, path, body=data, headers=MSGPACK if data else {})
        r = conn.getresponse()
        r.read()
        names = [k.lower() for k, _ in r.getheaders()]
        assert r.status in (200, 201) and names.count(KV_HEADER) == 1, names
        if method == "POST" and path == "/v1/kv":
            call(srv, "DELETE", f"/v1/kv/{r.getheader('X-Mrad-KV')}")
    conn.close()
    st, hd, b = call(srv, "DELETE", f"/v1/kv/{sid}")
    assert st == 204 and b == b"" and hd[KV_HEADER] == sid
    info = json.loads(call(srv, "GET", "/v1/info")[2])["kv"]
    assert set(info) >= {"budget_bytes", "bytes", "sessions", "max_sessions",
                         "ttl_ms", "max_ttl_ms"}
    assert info["budget_bytes"] > 0


# ---- bad input -------------------------------------------------------------------

def test_bad_requests_on_sessions(srv):
    rng = np.random.default_rng(7)
    info = create(srv, rnd(rng, 1, 2, 40, 16), rnd(rng, 1, 2, 40, 16))
    sid = info["kv"]
    q = rnd(rng, 1, 4, 1, 16)
    tok = rnd(rng, 1, 2, 1, 16)
    cases = [
        # (status, code, message part, request)
        (404, "kv_not_found", "no such session",
         lambda: step(srv, "0" * 32, q)),
        (404, "kv_not_found", "no such session",
         lambda: step(srv, "bad.id", q, in_path=True)),
        (404, "kv_not_found", "no such session",
         lambda: call(srv, "GET", "/v1/kv/" + "f" * 32)),
        (404, "kv_not_found", "no such session",
         lambda: call(srv, "DELETE", "/v1/kv/nope")),
        (404, "kv_not_found", "no such session",
         lambda: call(srv, "POST", f"/v1/kv/{'a' * 32}/append",
                      tokens_body(tok, tok))),
        (400, "bad_request", "kv: must be a session id",
         lambda: step(srv, "a b", q)),
        (400, "bad_request", "k: not with kv",
         lambda: call(srv, "POST", "/v1/attention", body({
             "q": wire.tensor(q, "f32"), "kv": sid,
             "k": wire.tensor(tok, "f32"), "v": wire.tensor(tok, "f32")}))),
        (400, "bad_request", "q.dtype: f16, the session's is f32",
         lambda: step(srv, sid, q, dtype="f16")),
        (400, "bad_request", "q.shape: B = 1 and D = 8",
         lambda: step(srv, sid, rnd(rng, 1, 4, 1, 8))),
        (400, "bad_request", "not a multiple of the session's Hkv = 2",
         lambda: step(srv, sid, rnd(rng, 1, 3, 1, 16))),
        (400, "bad_request", "k_append.shape[1]: Hkv = 1",
         lambda: step(srv, sid, q, rnd(rng, 1, 1, 1, 16),
                      rnd(rng, 1, 1, 1, 16))),
        (400, "bad_request", "kv: not in the body when the path",
         lambda: call(srv, "POST", f"/v1/kv/{sid}/attention", body({
             "q": wire.tensor(q, "f32"), "kv": sid}))),
        (400, "bad_request", "k.dtype: f16, the session's is f32",
         lambda: call(srv, "POST", f"/v1/kv/{sid}/append",
                      tokens_body(tok, tok, dtype="f16"))),
        (400, "bad_request", "does not match the session's [B,Hkv,n,D]",
         lambda: call(srv, "POST", f"/v1/kv/{sid}/append",
                      tokens_body(rnd(rng, 1, 2, 1, 8), rnd(rng, 1, 2, 1, 8)))),
        (400, "bad_request", "ttl_ms: unknown key",
         lambda: call(srv, "POST", f"/v1/kv/{sid}/append",
                      tokens_body(tok, tok, ttl_ms=5))),
        (400, "bad_request", "v: shape",
         lambda: call(srv, "POST", "/v1/kv",
                      tokens_body(tok, rnd(rng, 1, 2, 2, 16)))),
        (400, "bad_request", "ttl_ms: must be >= 1",
         lambda: call(srv, "POST", "/v1/kv", tokens_body(tok, tok, ttl_ms=0))),
        (415, "unsupported_media_type", "Content-Type",
         lambda: call(srv, "POST", "/v1/kv", tokens_body(tok, tok),
                      {"Content-Type": "text/plain"})),
        (405, "method_not_allowed", "",
         lambda: call(srv, "PUT", f"/v1/kv/{sid}", b"x")),
    ]
    for status, code, part, send in cases:
        st, hd, b = send()
        assert st == status, (part, b)
        err = error_of(b)
        assert err["code"] == code and part in err["message"], (part, err)
    # Nothing above changed the session.
    st, _, b = call(srv, "GET", f"/v1/kv/{sid}")
    assert json.loads(b)["tokens"] == 40
    # Answers naming a session in the path carry it, found or not, the
    # body decoded or not.
    st, hd, _ = call(srv, "GET", "/v1/kv/" + "c" * 32)
    assert st == 404 and hd[KV_HEADER] == "c" * 32
    st, hd, _ = call(srv, "POST", f"/v1/kv/{sid}/attention", b"\xc1")
    assert st == 400 and hd[KV_HEADER] == sid
    call(srv, "DELETE", f"/v1/kv/{sid}")


def test_tokens_limit():
    with MradServer(["--max-tokens", "100"], threads=1) as s:
        rng = np.random.default_rng(8)
        info = create(s, rnd(rng, 1, 1, 90, 8), rnd(rng, 1, 1, 90, 8))
        tok = rnd(rng, 1, 1, 20, 8)
        st, _, b = call(s, "POST", f"/v1/kv/{info['kv']}/append",
                        tokens_body(tok, tok))
        assert st == 413 and "a session may hold" in error_of(b)["message"]
        st, _, b = step(s, info["kv"], rnd(rng, 1, 1, 1, 8), tok, tok)
        assert st == 413
        st, _, b = step(s, info["kv"], rnd(rng, 1, 1, 1, 8), tok[:, :, :10],
                        tok[:, :, :10])
        assert st == 200, b
        assert json.loads(call(s, "GET", f"/v1/kv/{info['kv']}")[2])[
            "tokens"] == 100


def test_sessions_belong_to_their_key(tmp_path):
    """Several keys in the key file: a session is visible only to the key
    that made it; no key at all is 401."""
    keyfile = tmp_path / "keys"
    keyfile.write_text("key-one-0123456789\nkey-two-9876543210\n")
    with MradServer(["--api-key-file", str(keyfile)], threads=1) as s:
        one = {"Authorization": "Bearer key-one-0123456789"}
        two = {"Authorization": "Bearer key-two-9876543210"}
        rng = np.random.default_rng(9)
        k = rnd(rng, 1, 1, 40, 8)
        info = create(s, k, k, headers=one)
        sid = info["kv"]
        q = rnd(rng, 1, 1, 1, 8)
        assert step(s, sid, q, headers=one)[0] == 200
        for send in (lambda h: step(s, sid, q, headers=h),
                     lambda h: call(s, "GET", f"/v1/kv/{sid}", headers=h),
                     lambda h: call(s, "POST", f"/v1/kv/{sid}/append",
                                    tokens_body(q[:, :1], q[:, :1]), h),
                     lambda h: call(s, "DELETE", f"/v1/kv/{sid}", headers=h)):
            st, _, b = send(two)
            assert st == 404 and error_of(b)["code"] == "kv_not_found"
            assert send({})[0] == 401
        assert call(s, "GET", f"/v1/kv/{sid}", headers=one)[0] == 200
        assert call(s, "DELETE", f"/v1/kv/{sid}", headers=one)[0] == 204


# ---- the budget, eviction, expiry -------------------------------------------------

def session_bytes(srv, n, D=64):
    """Bytes one f32 session of [1,1,n,D] counts (from a create)."""
    rng = np.random.default_rng(1)
    k = rnd(rng, 1, 1, n, D)
    info = create(srv, k, k)
    call(srv, "DELETE", f"/v1/kv/{info['kv']}")
    return info["bytes"]


def test_lru_eviction_spares_sessions_in_use_then_507():
    with MradServer(threads=1) as probe:
        size = session_bytes(probe, 64)
    budget = 2 * size + size // 2
    with MradServer(["--kv-cache-bytes", str(budget)], threads=1) as s:
        rng = np.random.default_rng(10)
        k = rnd(rng, 1, 1, 64, 64)
        a, b = create(s, k, k)["kv"], create(s, k, k)["kv"]
        q = rnd(rng, 1, 1, 1, 64)
        assert step(s, a, q)[0] == 200  # a is now the most recently used
        c = create(s, k, k)["kv"]       # evicts b
        st, _, body_ = step(s, b, q)
        assert st == 404 and "create it again" in error_of(body_)["message"]
        assert step(s, a, q)[0] == 200
        m = kv_metrics(s)
        assert m["evicted"] == 1 and m["sessions"] == 2
        assert m["bytes"] == 2 * size

        # Both sessions in use (their steps wait behind a long request):
        # nothing may be evicted, so a create is 507.
        sq, sk, sv = slow_problem(s, 1.0)
        results = {}

        def send(name, fn):
            results[name] = fn()
        threads = [threading.Thread(target=send, args=("slow", lambda: s.post(
            wire.encode_request(sq, sk, sv, method="exact"))))]
        threads[0].start()
        wait_for(lambda: metric_value(s.metrics(), "mrad_inflight_requests")
                 >= 1, what="the long request")
        for name, sid in (("a", a), ("c", c)):
            t = threading.Thread(target=send, args=(name, lambda sid=sid: step(
                s, sid, q)))
            t.start()
            threads.append(t)
        wait_for(lambda: metric_value(s.metrics(), "mrad_inflight_requests")
                 >= 3, what="the steps queued")
        st, _, body_ = call(s, "POST", "/v1/kv", tokens_body(k, k))
        assert st == 507, body_
        err = error_of(body_)
        assert err["code"] == "kv_cache_full" and "in use" in err["message"]
        for t in threads:
            t.join(60)
        assert results["a"][0] == 200 and results["c"][0] == 200
        assert kv_metrics(s)["full_total"] == 1
        # Idle again: a create evicts the least recently used.
        d = create(s, k, k)["kv"]
        assert step(s, d, q)[0] == 200
        # A session larger than the whole budget never fits.
        big = rnd(rng, 1, 1, 64 * 8, 64)
        st, _, body_ = call(s, "POST", "/v1/kv", tokens_body(big, big))
        assert st == 507
        # Nor an append that would take the session past the budget.
        st, _, body_ = call(s, "POST", f"/v1/kv/{d}/append",
                            tokens_body(big, big))
        assert st == 507 and "append needs" in error_of(body_)["message"]


def test_session_limit_and_ttl():
    with MradServer(["--kv-max-sessions", "2", "--kv-ttl-ms", "400",
                     "--kv-max-ttl-ms", "5000"], threads=1) as s:
        rng = np.random.default_rng(11)
        k = rnd(rng, 1, 1, 10, 8)
        a = create(s, k, k)
        assert a["ttl_ms"] == 400
        b = create(s, k, k, ttl_ms=10 ** 9)
        assert b["ttl_ms"] == 5000
        c = create(s, k, k, ttl_ms=3000)  # evicts a, the oldest
        assert call(s, "GET", f"/v1/kv/{a['kv']}")[0] == 404
        time.sleep(1.0)  # over a's 400 ms had it lived; b and c live on
        assert call(s, "GET", f"/v1/kv/{b['kv']}")[0] == 200
        # Looking does not count as a use: b is still the least recently
        # used, and goes for d (which lives 400 ms).
        d = create(s, k, k)
        assert call(s, "GET", f"/v1/kv/{b['kv']}")[0] == 404
        wait_for(lambda: kv_metrics(s)["expired"] >= 1, 5, "expiry")
        assert call(s, "GET", f"/v1/kv/{d['kv']}")[0] == 404
        m = kv_metrics(s)
        assert m["evicted"] == 2 and m["sessions"] == 1
        assert call(s, "DELETE", f"/v1/kv/{c['kv']}")[0] == 204
    with MradServer(["--kv-max-sessions", "0"], threads=1) as s:
        k = rnd(np.random.default_rng(0), 1, 1, 4, 8)
        st, _, b = call(s, "POST", "/v1/kv", tokens_body(k, k))
        assert st == 507 and "--kv-max-sessions 0" in error_of(b)["message"]


# ---- order, concurrency, faults ----------------------------------------------------

def test_requests_on_a_session_apply_in_arrival_order():
    """Appends and steps sent one after the other on separate connections,
    all waiting behind a long request: each sees exactly the tokens of
    those that arrived before it."""
    with MradServer(threads=1) as s:
        rng = np.random.default_rng(12)
        D = 16
        k0 = rnd(rng, 1, 1, 33, D)
        sid = create(s, k0, k0)["kv"]
        sq, sk, sv = slow_problem(s, 1.0)
        slow = threading.Thread(target=lambda: s.post(
            wire.encode_request(sq, sk, sv, method="exact")))
        slow.start()
        wait_for(lambda: metric_value(s.metrics(), "mrad_inflight_requests")
                 >= 1, what="the long request")
        toks = [(rnd(rng, 1, 1, 1, D), rnd(rng, 1, 1, 1, D)) for _ in range(6)]
        q = rnd(rng, 1, 1, 1, D)
        results = [None] * 6
        threads = []
        for i in range(6):
            if i % 2 == 0:
                send = (lambda i=i: call(s, "POST", f"/v1/kv/{sid}/append",
                                         tokens_body(*toks[i])))
            else:
                send = (lambda i=i: step(s, sid, q, *toks[i], method="exact",
                                         causal=True))
            t = threading.Thread(target=lambda i=i, send=send:
                                 results.__setitem__(i, send()))
            t.start()
            threads.append(t)
            wait_for(lambda i=i: metric_value(
                s.metrics(), "mrad_inflight_requests") >= i + 2,
                what=f"request {i} queued")
        for t in threads:
            t.join(60)
        slow.join(60)
        k, v = k0, k0
        for i in range(6):
            st, _, b = results[i]
            assert st == 200, b
            k = np.concatenate([k, toks[i][0]], 2)
            v = np.concatenate([v, toks[i][1]], 2)
            if i % 2 == 0:
                assert json.loads(b)["tokens"] == 33 + i + 1
            else:
                out = wire.decode_response(b)[0]
                ref = stateless(s, q, k, v, method="exact", causal=True)
                assert np.array_equal(out, ref), i


def test_concurrent_appends_lose_nothing():
    with MradServer(threads=2) as s:
        rng = np.random.default_rng(13)
        k0 = rnd(rng, 1, 2, 8, 8)
        sid = create(s, k0, k0)["kv"]
        tok = rnd(rng, 1, 2, 3, 8)
        errors = []

        def worker():
            conn = s.connection()
            for _ in range(20):
                st, _, b = call(s, "POST", f"/v1/kv/{sid}/append",
                                tokens_body(tok, tok), conn=conn)
                if st != 200:
                    errors.append(b)
            conn.close()
        ts = [threading.Thread(target=worker) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not errors
        info = json.loads(call(s, "GET", f"/v1/kv/{sid}")[2])
        assert info["tokens"] == 8 + 6 * 20 * 3


def test_delete_while_a_step_is_in_flight():
    """DELETE answers at once; the step already admitted still computes on
    the session; then it is gone, and its bytes leave the budget."""
    with MradServer(threads=1) as s:
        rng = np.random.default_rng(14)
        k = rnd(rng, 1, 1, 64, 32)
        sid = create(s, k, k)["kv"]
        sq, sk, sv = slow_problem(s, 1.0)
        slow = threading.Thread(target=lambda: s.post(
            wire.encode_request(sq, sk, sv, method="exact")))
        slow.start()
        wait_for(lambda: metric_value(s.metrics(), "mrad_inflight_requests")
                 >= 1, what="the long request")
        res = []
        q = rnd(rng, 1, 1, 1, 32)
        t = threading.Thread(target=lambda: res.append(step(
            s, sid, q, method="exact")))
        t.start()
        wait_for(lambda: metric_value(s.metrics(), "mrad_inflight_requests")
                 >= 2, what="the step queued")
        assert call(s, "DELETE", f"/v1/kv/{sid}")[0] == 204
        assert call(s, "GET", f"/v1/kv/{sid}")[0] == 404
        assert kv_metrics(s)["bytes"] > 0  # the step still holds it
        t.join(60)
        slow.join(60)
        assert res[0][0] == 200
        out = wire.decode_response(res[0][2])[0]
        assert np.array_equal(out, stateless(s, q, k, k, method="exact"))
        wait_for(lambda: kv_metrics(s)["bytes"] == 0, what="bytes returned")
        assert step(s, sid, q)[0] == 404


def test_steps_through_sigterm():
    """SIGTERM while steps run: the admitted ones are answered, new ones
    get 503, the daemon exits 0 with its sessions freed."""
    s = MradServer(threads=2, extra_args=["--drain-timeout-ms", "20000"])
    s.start()
    try:
        rng = np.random.default_rng(15)
        k = rnd(rng, 1, 8, 4096, 64)
        sids = [create(s, k, k)["kv"] for _ in range(4)]
        statuses = []
        stop = threading.Event()

        def decode(sid):
            conn = s.connection()
            while not stop.is_set():
                try:
                    st, _, _ = step(s, sid, rnd(rng, 1, 8, 1, 64),
                                    rnd(rng, 1, 8, 1, 64),
                                    rnd(rng, 1, 8, 1, 64), conn=conn,
                                    method="exact", causal=True)
                except OSError:
                    break
                statuses.append(st)
                if st != 200:
                    break
        ts = [threading.Thread(target=decode, args=(x,)) for x in sids]
        for t in ts:
            t.start()
        wait_for(lambda: len(statuses) >= 20, 30, "steps")
        s.signal(signal.SIGTERM)
        rc = s.wait(60)
        stop.set()
        for t in ts:
            t.join(30)
        assert rc == 0, s.log_text()
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= 20
        assert "stopped" in s.log_text()
    finally:
        s.kill()


# ---- resources return ----------------------------------------------------------------

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(bool(os.environ.get("SANITIZE")),
                    reason="ASan keeps freed memory in its quarantine")
def test_what_sessions_hold_returns_to_idle():
    """About 400 MiB of sessions made, appended to, stepped, deleted,
    evicted and expired: the budget's count, the open descriptors and the
    resident memory return to their idle values."""
    with MradServer(["--idle-release-ms", "300"], threads=2) as s:
        pid = s.proc.pid
        rng = np.random.default_rng(16)
        q = rnd(rng, 1, 8, 1, 128)
        # Warm up the paths once, then measure the idle state.
        k = rnd(rng, 1, 8, 64, 128)
        sid = create(s, k, k)["kv"]
        step(s, sid, q, k[:, :, :1], k[:, :, :1])
        call(s, "DELETE", f"/v1/kv/{sid}")
        time.sleep(1.0)
        fds0, rss0 = open_fds(pid), rss_kib(pid)
        m0 = kv_metrics(s)
        assert m0["sessions"] == 0 and m0["bytes"] == 0
        big = rnd(rng, 1, 8, 12800, 128)  # 50 MiB each for k and v
        sids = [create(s, big, big, ttl_ms=None if i < 3 else 1500)["kv"]
                for i in range(4)]
        for sid in sids:
            tok = rnd(rng, 1, 8, 40, 128)
            assert call(s, "POST", f"/v1/kv/{sid}/append",
                        tokens_body(tok, tok))[0] == 200
            assert step(s, sid, q, tok[:, :, :1], tok[:, :, :1],
                        method="mra2", causal=True)[0] == 200
        peak = rss_kib(pid)
        assert peak - rss0 > 300 * 1024
        for sid in sids[:3]:
            assert call(s, "DELETE", f"/v1/kv/{sid}")[0] == 204
        # The last one expires, 1.5 s after its last use.
        wait_for(lambda: kv_metrics(s)["sessions"] == 0, 10, "expiry")
        m = kv_metrics(s)
        assert m["bytes"] == 0 and m["expired"] == 1
        assert m["deleted"] - m0["deleted"] == 3
        wait_for(lambda: rss_kib(pid) < rss0 + 40 * 1024, 15,
                 f"RSS back near idle ({rss0} KiB; now {rss_kib(pid)})")
        wait_for(lambda: open_fds(pid) <= fds0, 10, "descriptors back")


# ---- a generation loop ----------------------------------------------------------------

def test_generation_loop_through_sessions(srv):
    """A two-layer decoder with random weights generates 64 tokens
    greedily: the prompt's keys and values go into one session per layer,
    each step sends its query and its token's key and value (causal,
    exact), and the tokens equal those of the same model computed here."""
    rng = np.random.default_rng(17)
    V, d, H, Hkv, D, L = 96, 64, 4, 2, 16, 2
    W = {
        "emb": rng.standard_normal((V, d)) * 1.0,
        "out": rng.standard_normal((d, V)) * 1.0,
    }
    for layer in range(L):
        for name, cols in (("q", H * D), ("k", Hkv * D), ("v", Hkv * D),
                           ("o", d)):
            rows = H * D if name == "o" else d
            W[f"{name}{layer}"] = rng.standard_normal((rows, cols)) / np.sqrt(rows)
    W = {k: v.astype(np.float32) for k, v in W.items()}

    def norm(x):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)

    def heads(x, n):  # [T, n*D] -> [1, n, T, D]
        return x.reshape(x.shape[0], n, D).transpose(1, 0, 2)[None]

    def local_attention(q, k, v):  # float64, causal, grouped heads
        T, Tk = q.shape[2], k.shape[2]
        kk = np.repeat(k, H // Hkv, 1).astype(np.float64)
        vv = np.repeat(v, H // Hkv, 1).astype(np.float64)
        lg = q.astype(np.float64) @ kk.transpose(0, 1, 3, 2) / np.sqrt(D)
        lg += np.triu(np.full((T, Tk), -np.inf), Tk - T + 1)
        p = np.exp(lg - lg.max(-1, keepdims=True))
        return ((p / p.sum(-1, keepdims=True)) @ vv).astype(np.float32)

    def forward(tokens, attend):
        """Runs the model over new tokens; attend(layer, q, k, v) returns
        the attention of the new queries (it keeps the cache)."""
        x = W["emb"][tokens]
        for layer in range(L):
            h = norm(x)
            q = heads(h @ W[f"q{layer}"], H)
            k = heads(h @ W[f"k{layer}"], Hkv)
            v = heads(h @ W[f"v{layer}"], Hkv)
            a = attend(layer, q, k, v)  # [1, H, T, D]
            x = x + a[0].transpose(1, 0, 2).reshape(len(tokens), H * D) @ \
                W[f"o{layer}"]
        return (norm(x) @ W["out"])[-1]

    prompt = list(rng.integers(0, V, 8))

    # Here: a cache of numpy arrays.
    cache = [None] * L

    def attend_local(layer, q, k, v):
        if cache[layer] is None:
            cache[layer] = (k, v)
        else:
            cache[layer] = tuple(np.concatenate([c, n], 2)
                                 for c, n in zip(cache[layer], (k, v)))
        return local_attention(q, *cache[layer])

    # Through the service: the prompt creates the sessions, then steps.
    sids = [None] * L

    def attend_service(layer, q, k, v):
        if sids[layer] is None:
            sids[layer] = create(srv, k, v)["kv"]
            st, _, b = step(srv, sids[layer], q, method="exact", causal=True)
        else:
            st, _, b = step(srv, sids[layer], q, k, v, method="exact",
                            causal=True)
        assert st == 200, b
        return wire.decode_response(b)[0]

    want, got = list(prompt), list(prompt)
    lw = forward(np.array(want), attend_local)
    lg = forward(np.array(got), attend_service)
    gaps = []
    for _ in range(64):
        want.append(int(np.argmax(lw)))
        got.append(int(np.argmax(lg)))
        top = np.sort(lw)[-2:]
        gaps.append(top[1] - top[0])
        lw = forward(np.array(want[-1:]), attend_local)
        lg = forward(np.array(got[-1:]), attend_service)
    assert got == want
    assert min(gaps) > 1e-3  # the comparison decided something
    assert len(set(got[8:])) > 4  # and the model does not repeat one token
    for sid in sids:
        info = json.loads(call(srv, "GET", f"/v1/kv/{sid}")[2])
        assert info["tokens"] == 8 + 64
        call(srv, "DELETE", f"/v1/kv/{sid}")
