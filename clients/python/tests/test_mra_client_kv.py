"""mra_client sessions against a live bin/mrad: Client.kv() and its
Session (attend with appended tokens, append, info, close), checked
against a numpy float64 reference over the whole keys and values for
exact, grouped heads, causal, masks, f16 and bf16; the context manager
deletes the session; 404 raises KVNotFound and 507 (a tiny
--kv-cache-bytes) KVCacheFull; a session call is never sent twice."""
import time

import numpy as np
import pytest

from mrad_server import MradServer, metric_value
from mra_client import (BadRequest, Client, KVCacheFull, KVNotFound,
                        MradError, NotFound, Session, bf16_to_f32,
                        f32_to_bf16)


def reference(q, k, v, mask=None, causal=False):
    """Exact attention in float64: q [B, H, Nq, D] over k, v [B, Hkv, N,
    D]; mask [B, N]; causal: query i sees keys j <= i + N - Nq.  A query
    that sees no key gives 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, H, Nq, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    k = np.repeat(k, H // Hkv, axis=1)
    v = np.repeat(v, H // Hkv, axis=1)
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D)
    seen = np.ones((B, 1, Nq, N), bool)
    if mask is not None:
        seen &= np.asarray(mask, bool)[:, None, None, :]
    if causal:
        i, j = np.arange(Nq)[:, None], np.arange(N)[None, :]
        seen &= j <= i + N - Nq
    logits = np.where(seen, logits, -np.inf)
    top = np.max(logits, axis=-1, keepdims=True)
    w = np.where(seen, np.exp(logits - np.where(np.isfinite(top), top, 0)), 0)
    tot = w.sum(-1, keepdims=True)
    return np.where(tot > 0, (w / np.where(tot > 0, tot, 1)) @ v, 0)


def rel(x, ref):
    return np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref)


def data(seed, B=2, H=4, Hkv=2, Nq=3, N=100, D=32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Nq, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    mask = (rng.random((B, N)) < 0.8).astype(np.uint8)
    mask[:, 0] = 1
    return q, k, v, mask


def sessions(srv, want):
    """mrad_kv_sessions once it is `want`, or after 5 s.  A session leaves
    the count when its last request has let go of it, which may come a
    moment after the answers the client has seen."""
    deadline = time.monotonic() + 5
    while True:
        n = metric_value(srv.metrics(), "mrad_kv_sessions")
        if n == want or time.monotonic() > deadline:
            return n
        time.sleep(0.02)


@pytest.mark.parametrize("H,Hkv", [(2, 2), (4, 2), (4, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_attend_equals_reference(server, H, Hkv, causal):
    """Context of 80 tokens, 12 appended, 8 more appended by the attend:
    the answer is exact attention over all 100."""
    q, k, v, mask = data(H * 10 + Hkv + causal, H=H, Hkv=Hkv)
    c = Client(server.url)
    with c.kv(k[:, :, :80], v[:, :, :80], mask=mask[:, :80], ttl_ms=60000) as s:
        assert isinstance(s, Session) and len(s.id) == 32
        assert s.tokens == 80 and s.dtype == "f32"
        assert s.shape == (2, Hkv, 80, 32) and s.ttl_ms == 60000
        info = s.append(k[:, :, 80:92], v[:, :, 80:92], mask=mask[:, 80:92])
        assert info["tokens"] == s.tokens == 92
        r = s.attend(q, k_append=k[:, :, 92:], v_append=v[:, :, 92:],
                     mask_append=mask[:, 92:], causal=causal, method="exact",
                     id="step")
        assert s.tokens == 100 and r.id == "step" and r.dtype == "f32"
        assert r.out.shape == q.shape and r.out.dtype == np.float32
        ref = reference(q, k, v, mask, causal)
        assert rel(r.out, ref) < 1e-5
        # mra2 with a budget over every block computes exactly
        r = s.attend(q, causal=causal, method="mra2", num_blocks=100)
        assert r.stats["method"] == "mra2" and rel(r.out, ref) < 1e-5
        assert s.info()["tokens"] == 100 and s.tokens == 100


def test_decode_loop_f16(server):
    """A generation loop in f16: one query and one token per step; every
    step equals the reference over the tokens so far."""
    rng = np.random.default_rng(7)
    B, H, Hkv, D, N0, steps = 1, 8, 2, 64, 200, 6
    k = rng.standard_normal((B, Hkv, N0 + steps, D)).astype(np.float16)
    v = rng.standard_normal((B, Hkv, N0 + steps, D)).astype(np.float16)
    c = Client(server.url)
    with c.kv(k[:, :, :N0], v[:, :, :N0]) as s:
        assert s.dtype == "f16"
        for t in range(steps):
            q = rng.standard_normal((B, H, 1, D)).astype(np.float16)
            n = N0 + t + 1
            r = s.attend(q, k_append=k[:, :, n - 1:n], v_append=v[:, :, n - 1:n],
                         causal=True, method="exact")
            assert r.out.dtype == np.float16 and r.dtype == "f16"
            assert rel(r.out, reference(q, k[:, :, :n], v[:, :, :n])) < 2e-3
            assert s.tokens == n
        # float32 queries are sent in the session's dtype
        q32 = rng.standard_normal((B, H, 1, D)).astype(np.float32)
        r = s.attend(q32, method="exact")
        ref = reference(q32.astype(np.float16), k, v)
        assert r.out.dtype == np.float16 and rel(r.out, ref) < 2e-3
        # a dtype other than the session's is the server's 400
        with pytest.raises(BadRequest) as e:
            s.attend(q32, dtype="f32")
        assert "dtype" in e.value.message


def test_bf16_and_shapes(server):
    """bf16 sessions from float32 input (rounded to nearest even), 2-d
    and 3-d arrays taken as B = 1 (and H = 1)."""
    q, k, v, _ = data(3, B=1, H=1, Hkv=1, Nq=2, N=40, D=16)
    c = Client(server.url)
    with c.kv(k[0, 0], v[0, 0], dtype="bf16") as s:
        assert s.dtype == "bf16" and s.shape == (1, 1, 40, 16)
        r = s.attend(q[0], method="exact")
        assert r.dtype == "bf16" and r.out.shape == (1, 2, 16)
        rt = lambda x: bf16_to_f32(f32_to_bf16(x))  # noqa: E731
        ref = reference(rt(q), rt(k), rt(v))
        assert rel(r.out, ref[0]) < 1e-2


def test_context_manager_and_close(server):
    q, k, v, _ = data(4)
    c = Client(server.url)
    assert sessions(server, 0) == 0
    with c.kv(k, v) as s:
        assert sessions(server, 1) == 1
        sid = s.id
    assert s.closed and sessions(server, 0) == 0
    with pytest.raises(KVNotFound) as e:
        s.attend(q)
    assert e.value.status == 404 and e.value.code == "kv_not_found"
    assert isinstance(e.value, NotFound) and isinstance(e.value, MradError)
    with pytest.raises(KVNotFound):
        s.info()
    with pytest.raises(KVNotFound):
        s.append(k[:, :, :1], v[:, :, :1])
    s.close()  # closing twice is not an error

    # a session deleted behind the handle's back closes without error
    s = c.kv(k, v)
    status, _, _ = server.request("DELETE", f"/v1/kv/{s.id}")
    assert status == 204 and s.id != sid
    s.close()
    assert s.closed

    # the exception of the block is the one seen, and the session still ends
    with pytest.raises(ZeroDivisionError):
        with c.kv(k, v):
            1 / 0
    assert sessions(server, 0) == 0


def test_argument_errors(server):
    q, k, v, _ = data(5)
    c = Client(server.url)
    with c.kv(k, v) as s:
        with pytest.raises(ValueError):
            s.attend(q, k_append=k[:, :, :1])
        with pytest.raises(ValueError):
            s.attend(q, mask_append=np.ones((2, 1)))
        with pytest.raises(TypeError):
            s.attend(q, block_per_rwo=2)
        with pytest.raises(ValueError):
            s.attend(q, method="fast")
        with pytest.raises(BadRequest):  # Hkv of the append is not the session's
            s.attend(q, k_append=k[:, :1, :1], v_append=v[:, :1, :1])
        assert s.tokens == 100 and s.info()["tokens"] == 100


def test_cache_full():
    """A 64 KiB budget: a create of 100 KiB is a 507; an append that does
    not fit is one too, and leaves the session as it was."""
    with MradServer(extra_args=["--kv-cache-bytes", "65536"], threads=1) as srv:
        c = Client(srv.url)
        big = np.zeros((1, 4, 100, 32), np.float32)
        with pytest.raises(KVCacheFull) as e:
            c.kv(big, big)
        assert e.value.status == 507 and e.value.code == "kv_cache_full"
        assert isinstance(e.value, MradError) and e.value.message
        with c.kv(big[:, :1, :10], big[:, :1, :10]) as s:
            many = np.zeros((1, 1, 600, 32), np.float32)  # 150 KiB
            with pytest.raises(KVCacheFull):
                s.append(many, many)
            q = np.ones((1, 2, 1, 32), np.float32)
            with pytest.raises(KVCacheFull):
                s.attend(q, k_append=many, v_append=many)
            assert s.info()["tokens"] == 10
        assert sessions(srv, 0) == 0


def test_no_second_send_of_an_append():
    """After the server closed an idle keep-alive connection, calls on a
    session go out on a new one: none of them fails and an append is
    applied once."""
    with MradServer(extra_args=["--conn-timeout-s", "1"], threads=1) as srv:
        c = Client(srv.url)
        k = np.ones((1, 1, 4, 8), np.float32)
        with c.kv(k, k) as s:
            time.sleep(1.6)  # the server closes the idle connection
            assert s.append(k[:, :, :1], k[:, :, :1])["tokens"] == 5
            time.sleep(1.6)
            s.attend(np.ones((1, 1, 1, 8), np.float32), k_append=k[:, :, :1],
                     v_append=k[:, :, :1])
            assert s.info()["tokens"] == 6 == s.tokens
