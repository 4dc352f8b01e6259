"""Offline tests of the clients' retries, on httpx mock transports: a 503
`overloaded` answer is retried after its Retry-After (seconds or an HTTP
date), up to the policy's count; other errors are not; a call that may
have been applied is not sent twice after a broken connection; the sync
and the async client behave alike."""
import asyncio
import email.utils
import json
import time

import httpx
import numpy as np
import pytest

from mra_client import (AsyncClient, BadRequest, Client, Overloaded,
                        RetryPolicy, Session, TransportError, Unavailable)
from mra_client import wire


def ok_answer(q):
    out = np.asarray(q, np.float32)
    return wire._pack({"out": {"dtype": "f32", "shape": list(out.shape),
                               "data": out.tobytes()},
                       "stats": {"density": 1.0}})


def error(status, code, retry_after=None):
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers,
                          json={"error": {"code": code, "message": code}})


class Script:
    """A mock server answering from a list, recording what it was sent."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.seen = []

    def __call__(self, request):
        self.seen.append((request.method, request.url.path))
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a


def policy(waits, **kw):
    return RetryPolicy(sleep=waits.append, **kw)


Q = np.ones((1, 1, 2, 4), np.float32)


def test_overloaded_is_retried_after_retry_after():
    s = Script(error(503, "overloaded", "2"), error(503, "overloaded", "0.5"),
               httpx.Response(200, content=ok_answer(Q)))
    waits = []
    c = Client("http://mrad", retries=policy(waits), transport=httpx.MockTransport(s))
    r = c.attention(Q, Q, Q)
    assert np.array_equal(r.out, Q) and r.out.flags.writeable
    assert waits == [2.0, 0.5] and len(s.seen) == 3


def test_retry_after_as_a_date_and_the_cap():
    soon = email.utils.formatdate(time.time() + 3, usegmt=True)
    s = Script(error(503, "overloaded", soon), error(503, "overloaded", "600"),
               httpx.Response(200, content=ok_answer(Q)))
    waits = []
    c = Client("http://mrad", retries=policy(waits, max_wait=10),
               transport=httpx.MockTransport(s))
    c.attention(Q, Q, Q)
    assert 1 <= waits[0] <= 3 and waits[1] == 10


def test_gives_up_after_the_retries():
    s = Script(*[error(503, "overloaded", "1")] * 3)
    waits = []
    c = Client("http://mrad", retries=policy(waits, retries=2),
               transport=httpx.MockTransport(s))
    with pytest.raises(Overloaded) as e:
        c.attention(Q, Q, Q)
    assert e.value.retry_after == 1.0 and waits == [1.0, 1.0] and len(s.seen) == 3
    # retries=0: the first 503 is raised
    s = Script(error(503, "overloaded", "1"))
    with pytest.raises(Overloaded):
        Client("http://mrad", retries=0, transport=httpx.MockTransport(s)).attention(Q, Q, Q)


def test_without_retry_after_the_backoff_doubles():
    s = Script(*[error(503, "overloaded")] * 3, httpx.Response(200, content=ok_answer(Q)))
    waits = []
    c = Client("http://mrad", retries=policy(waits, backoff=0.1),
               transport=httpx.MockTransport(s))
    c.attention(Q, Q, Q)
    assert len(waits) == 3
    for i, w in enumerate(waits):  # 0.1 * 2^i, with jitter in [0.5, 1.5)
        assert 0.05 * 2 ** i <= w < 0.15 * 2 ** i


def test_other_errors_are_not_retried():
    for answer, exc in ((error(503, "unavailable"), Unavailable),
                        (error(400, "bad_request"), BadRequest)):
        s = Script(answer)
        waits = []
        c = Client("http://mrad", retries=policy(waits), transport=httpx.MockTransport(s))
        with pytest.raises(exc):
            c.attention(Q, Q, Q)
        assert waits == [] and len(s.seen) == 1


def test_broken_connections():
    # never connected: the call did not leave, so even a create is retried
    s = Script(httpx.ConnectError("refused"),
               httpx.Response(201, json={"kv": "a" * 32, "tokens": 2}))
    waits = []
    c = Client("http://mrad", retries=policy(waits), transport=httpx.MockTransport(s))
    assert c.kv(Q, Q).id == "a" * 32 and len(waits) == 1
    # lost after sending: an append is not sent twice ...
    s = Script(httpx.RemoteProtocolError("server disconnected"))
    c = Client("http://mrad", retries=policy([]), transport=httpx.MockTransport(s))
    sess = Session(c, {"kv": "b" * 32, "tokens": 2})
    with pytest.raises(TransportError) as e:
        sess.append(Q, Q)
    assert e.value.code == "transport" and len(s.seen) == 1
    # ... an attention call is, once
    s = Script(httpx.RemoteProtocolError("server disconnected"),
               httpx.RemoteProtocolError("server disconnected"),
               httpx.Response(200, content=ok_answer(Q)))
    c = Client("http://mrad", retries=policy([]), transport=httpx.MockTransport(s))
    with pytest.raises(TransportError):
        c.attention(Q, Q, Q)
    assert len(s.seen) == 2
    # a client timeout is a TransportError with code "timeout"
    s = Script(httpx.ReadTimeout("slow"))
    c = Client("http://mrad", timeout=0.5, retries=0, transport=httpx.MockTransport(s))
    with pytest.raises(TransportError) as e:
        c.health()
    assert e.value.code == "timeout" and e.value.status == 0


def test_async_client_retries_alike():
    s = Script(error(503, "overloaded", "0"), httpx.Response(200, content=ok_answer(Q)),
               error(503, "unavailable"))

    async def main():
        async with AsyncClient("http://mrad", transport=httpx.MockTransport(s)) as c:
            r = await c.attention(Q, Q, Q)
            assert np.array_equal(r.out, Q)
            with pytest.raises(Unavailable):
                await c.health()

    asyncio.run(main())
    assert len(s.seen) == 3


def test_requests_follow_the_contract():
    """What goes on the wire: paths, methods, content type, bearer key."""
    seen = []

    def handler(request):
        seen.append(request)
        if request.url.path.endswith("/v1/kv"):
            return httpx.Response(201, json={"kv": "c" * 32, "tokens": 2})
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.url.path.endswith("/append"):
            return httpx.Response(200, json={"kv": "c" * 32, "tokens": 3})
        return httpx.Response(200, content=ok_answer(Q))

    c = Client("http://mrad/prefix/", api_key="k3y", transport=httpx.MockTransport(handler))
    with c.kv(Q, Q, ttl_ms=5) as s:
        s.append(Q[:, :, :1], Q[:, :, :1])
        s.attend(Q, causal=True)
    got = [(r.method, r.url.path) for r in seen]
    assert got == [("POST", "/prefix/v1/kv"), ("POST", f"/prefix/v1/kv/{'c' * 32}/append"),
                   ("POST", f"/prefix/v1/kv/{'c' * 32}/attention"),
                   ("DELETE", f"/prefix/v1/kv/{'c' * 32}")]
    assert all(r.headers["Authorization"] == "Bearer k3y" for r in seen)
    assert seen[0].headers["Content-Type"] == "application/msgpack"
    body = json.loads(json.dumps(wire.msgpack.unpackb(seen[0].content, raw=False),
                                 default=lambda b: len(b)))
    assert body["ttl_ms"] == 5 and body["k"]["shape"] == [1, 1, 2, 4]
