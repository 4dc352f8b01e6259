"""AsyncClient against a live bin/mrad: the same methods as Client, with
the same parameters; the same answers, bit for bit, for every method and
dtype; many calls in flight at once on one pool; sessions as async
context managers; the same typed errors."""
import asyncio
import inspect

import numpy as np
import pytest

from mra_client import (AsyncClient, AsyncSession, BadRequest, Client,
                        KVNotFound, Session, TransportError, __version__)


def problem(seed, B=1, H=4, Hkv=2, N=70, D=16):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, H, N, D)).astype(np.float32),
            rng.standard_normal((B, Hkv, N, D)).astype(np.float32),
            rng.standard_normal((B, Hkv, N, D)).astype(np.float32))


def test_the_same_methods():
    """Every public method of Client and Session is on AsyncClient and
    AsyncSession with the same parameters, as a coroutine (close is
    aclose on AsyncClient, as in httpx)."""
    def api(cls):
        return {name: list(inspect.signature(f).parameters.items())
                for name, f in vars(cls).items()
                if inspect.isfunction(f) and not name.startswith("_")}

    for sync, aio in ((Client, AsyncClient), (Session, AsyncSession)):
        want, got = api(sync), api(aio)
        if sync is Client:
            want["aclose"] = want.pop("close")
        assert got == want, sync.__name__
        assert all(inspect.iscoroutinefunction(getattr(aio, name)) for name in got)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("method", ["mra2", "mra2_sparse", "exact"])
def test_same_answers_as_the_sync_client(server, method, dtype):
    q, k, v = problem(1)
    if dtype == "f16":
        q, k, v = (x.astype(np.float16) for x in (q, k, v))
    want = Client(server.url).attention(q, k, v, method=method,
                                        dtype="bf16" if dtype == "bf16" else None,
                                        causal=True, block_per_row=1)

    async def main():
        async with AsyncClient(server.url) as c:
            return await c.attention(q, k, v, method=method,
                                     dtype="bf16" if dtype == "bf16" else None,
                                     causal=True, block_per_row=1)

    got = asyncio.run(main())
    assert got.dtype == want.dtype == dtype
    assert np.array_equal(got.out_raw, want.out_raw)
    assert got.out.dtype == want.out.dtype and got.out.flags.writeable
    assert got.stats["method"] == method


def test_many_in_flight(server):
    """32 calls gathered on one client with a pool of 4: every answer is
    its own request's."""
    probs = [problem(s, N=40) for s in range(8)]
    sync = Client(server.url)
    want = [sync.attention(q, k, v).out for q, k, v in probs]

    async def main():
        async with AsyncClient(server.url, max_connections=4) as c:
            rs = await asyncio.gather(*(c.attention(*probs[i % 8], id=str(i))
                                        for i in range(32)))
            return rs, await c.health(), await c.ready(), await c.info(), await c.metrics()

    rs, health, ready, info, metrics = asyncio.run(main())
    for i, r in enumerate(rs):
        assert r.id == str(i) and np.array_equal(r.out, want[i % 8])
    assert health == {"status": "ok"} and ready is True
    assert info["version"] == __version__ and "mrad_" in metrics


def test_sessions_and_errors(server):
    q, k, v = problem(3, N=50)

    async def main():
        async with AsyncClient(server.url) as c:
            async with await c.kv(k[:, :, :40], v[:, :, :40]) as s:
                assert isinstance(s, AsyncSession) and s.tokens == 40
                await s.append(k[:, :, 40:45], v[:, :, 40:45])
                r = await s.attend(q[:, :, -1:], k_append=k[:, :, 45:], v_append=v[:, :, 45:],
                                   causal=True, method="exact")
                assert s.tokens == 50 and (await s.info())["tokens"] == 50
            assert s.closed
            with pytest.raises(KVNotFound):
                await s.attend(q)
            await s.close()  # twice: nothing sent
            with pytest.raises(BadRequest):
                await c.attention(q, k[:, :, :10], v)
        async with AsyncClient("http://127.0.0.1:9", timeout=2, retries=0) as c:
            with pytest.raises(TransportError):
                await c.health()
        return r

    r = asyncio.run(main())
    whole = Client(server.url).attention(q[:, :, -1:], k, v, causal=True, method="exact")
    assert np.array_equal(r.out_raw, whole.out_raw)
