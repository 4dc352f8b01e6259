"""Sessions that the service lost, against a live bin/mrad: with
keep_context=True, Session and AsyncSession create the session again from
the tokens they kept (the create's and every append's) and send the call
once more, so the answer is the float64 reference's over the whole
context (mra2 and exact, masks, bf16), the appended tokens of the failed
call go in once, and `recreated` counts the re-creates; a session deleted
behind the handle's back, and a server that restarted, both recover.
Without keep_context the call raises KVNotFound; a second KVNotFound
after a re-create is raised too."""
import asyncio
import json
import signal

import httpx
import numpy as np
import pytest

import mra_ref
from mrad_server import MradServer
from mra_client import (AsyncClient, Client, KVNotFound, bf16_to_f32,
                        f32_to_bf16)

TOL = 2e-5


def data(seed, B=2, H=4, Hkv=2, N=120, D=32):
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    mask = (rng.random((B, N)) < 0.8).astype(np.uint8)
    mask[:, 0] = 1
    q = lambda n: rng.standard_normal((B, H, n, D)).astype(np.float32)  # noqa: E731
    return q, k, v, mask


def delete(server, sid):
    status, _, _ = server.request("DELETE", f"/v1/kv/{sid}")
    assert status == 204


@pytest.mark.parametrize("method", ["mra2", "exact"])
def test_deleted_session_is_made_again(server, method):
    """80 tokens at the create, 20 by append(), then steps of 4 tokens:
    the session is deleted twice behind the handle's back, before an
    attend and before an append; each call re-creates it once and the
    answers are the reference's over every token so far."""
    q, k, v, mask = data(1 + (method == "exact"))
    c, other = Client(server.url), Client(server.url)
    with c.kv(k[:, :, :80], v[:, :, :80], mask=mask[:, :80], ttl_ms=60000,
              keep_context=True) as s:
        assert s.recreated == 0
        s.append(k[:, :, 80:100], v[:, :, 80:100], mask=mask[:, 80:100])
        first = s.id
        other.kv(k, v).close()  # a second client's session: not this one
        delete(server, s.id)
        qq = q(2)
        r = s.attend(qq, k_append=k[:, :, 100:104], v_append=v[:, :, 100:104],
                     mask_append=mask[:, 100:104], causal=True, method=method)
        assert s.recreated == 1 and s.id != first and s.tokens == 104
        ref, _, _ = mra_ref.attention(qq, k[:, :, :104], v[:, :, :104],
                                      mask[:, :104], method=method, causal=True)
        assert mra_ref.rel_err(r.out, ref) < TOL
        assert s.info()["tokens"] == 104  # the step's tokens went in once

        # an append to a lost session: made again, then appended once
        delete(server, s.id)
        info = s.append(k[:, :, 104:112], v[:, :, 104:112])
        assert s.recreated == 2 and info["tokens"] == s.tokens == 112
        qq = q(1)
        r = s.attend(qq, k_append=k[:, :, 112:], v_append=v[:, :, 112:],
                     mask_append=mask[:, 112:], method=method)
        whole = mask.copy()
        whole[:, 104:112] = 1  # the append had no mask: every token real
        ref, _, _ = mra_ref.attention(qq, k, v, whole, method=method)
        assert s.recreated == 2 and mra_ref.rel_err(r.out, ref) < TOL
        assert s.info()["tokens"] == 120
        sid = s.id
    status, _, _ = server.request("GET", f"/v1/kv/{sid}")
    assert status == 404  # the block deleted the last one


def test_without_keep_context_the_error_is_raised(server):
    q, k, v, _ = data(3)
    c = Client(server.url)
    with c.kv(k, v) as s:
        delete(server, s.id)
        with pytest.raises(KVNotFound) as e:
            s.attend(q(1), k_append=k[:, :, :1], v_append=v[:, :, :1])
        assert e.value.status == 404 and e.value.code == "kv_not_found"
        with pytest.raises(KVNotFound):
            s.append(k[:, :, :1], v[:, :, :1])
        assert s.recreated == 0 and s.tokens == 120


def test_bf16_and_a_restarted_server():
    """A bf16 session (kept as its bits) survives a restart of the
    server on the same port: the next step makes it again."""
    q, k, v, _ = data(4, B=1, H=2, Hkv=1, N=64, D=16)
    srv = MradServer(threads=1).start()
    try:
        c = Client(srv.url, timeout=20)
        s = c.kv(k[:, :, :60], v[:, :, :60], dtype="bf16", keep_context=True)
        s.attend(q(1), k_append=k[:, :, 60:62], v_append=v[:, :, 60:62])
        port = srv.port
        srv.signal(signal.SIGKILL)
        srv.wait()
        srv = MradServer(threads=1, extra_args=["--port", str(port)]).start()
        assert srv.port == port
        qq = q(1)
        r = s.attend(qq, k_append=k[:, :, 62:], v_append=v[:, :, 62:],
                     method="exact")
        assert s.recreated == 1 and s.tokens == 64 and s.dtype == "bf16"
        rt = lambda x: bf16_to_f32(f32_to_bf16(x))  # noqa: E731
        ref, _, _ = mra_ref.attention(rt(qq), rt(k), rt(v), method="exact")
        assert mra_ref.rel_err(r.out, ref) < 1e-2
        assert s.info()["tokens"] == 64
        s.close()
    finally:
        srv.stop()


def test_async_session_is_made_again(server):
    q, k, v, mask = data(5)
    qq = q(1)

    async def main():
        async with AsyncClient(server.url) as c:
            async with await c.kv(k[:, :, :100], v[:, :, :100], mask=mask[:, :100],
                                  keep_context=True) as s:
                delete(server, s.id)
                r = await s.attend(qq, k_append=k[:, :, 100:], v_append=v[:, :, 100:],
                                   mask_append=mask[:, 100:], method="exact")
                assert s.recreated == 1 and (await s.info())["tokens"] == 120
                delete(server, s.id)
                await s.append(k[:, :, :1], v[:, :, :1])
                assert s.recreated == 2 and s.tokens == 121
                return r

    r = asyncio.run(main())
    ref, _, _ = mra_ref.attention(qq, k, v, mask, method="exact")
    assert mra_ref.rel_err(r.out, ref) < TOL


def test_a_second_loss_is_raised():
    """A service that loses the session again right after making it: the
    call is retried once, then KVNotFound is raised."""
    calls = []

    def handler(req):
        calls.append((req.method, req.url.path))
        if req.url.path == "/v1/kv":
            n = len([c for c in calls if c[1] == "/v1/kv"])
            return httpx.Response(201, json={"kv": f"s{n}", "tokens": 4,
                                             "dtype": "f32", "shape": [1, 1, 4, 8]})
        return httpx.Response(404, json={"error": {"code": "kv_not_found",
                                                   "message": "gone"}})

    c = Client("http://mrad.test", transport=httpx.MockTransport(handler))
    k = np.ones((1, 1, 4, 8), np.float32)
    s = c.kv(k, k, keep_context=True)
    with pytest.raises(KVNotFound):
        s.attend(np.ones((1, 1, 1, 8), np.float32))
    assert s.recreated == 1 and s.id == "s2"
    assert calls == [("POST", "/v1/kv"), ("POST", "/v1/kv/s1/attention"),
                     ("POST", "/v1/kv"), ("POST", "/v1/kv/s2/attention")]
    # the re-create sent the kept tokens, nothing more
    assert json.dumps(s.shape) == "[1, 1, 4, 8]" and s.tokens == 4
