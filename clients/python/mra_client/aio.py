"""The asynchronous client of the attention service, on httpx.AsyncClient:
the methods of Client, as coroutines.

    async with AsyncClient("http://127.0.0.1:8080") as c:
        r = await c.attention(q, k, v, method="mra2")
        async with await c.kv(k, v) as s:
            r = await s.attend(q1, k_append=k1, v_append=v1, causal=True)

One AsyncClient holds one connection pool and serves any number of tasks
of its event loop at once (up to `max_connections` calls on the wire, the
rest wait for a connection).  Encoding and decoding the tensors runs on
the loop's thread; for very large tensors, prefer Client in a thread.
Errors, retries and sessions behave as in Client.
"""
from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, Union, overload

import httpx
import numpy.typing as npt

from . import wire
from ._core import (MSGPACK, KeptContext, Result, RetryPolicy, SessionState,
                    base_url, decode_answer, error_of, headers_of, kv_info,
                    result_of, retryable_transport, session_path,
                    should_retry_status, transport_error, wire_tokens)
from .errors import KVNotFound, MradError
from .tensors import TensorLike
from .wire import ParamValue

if TYPE_CHECKING:
    import torch

__all__ = ["AsyncClient", "AsyncSession"]

Timeout = Union[float, httpx.Timeout, None]


class AsyncClient:
    """An asyncio client of one mrad server; the arguments are Client's
    (transport: an httpx.AsyncBaseTransport)."""

    def __init__(self, url: str = "http://127.0.0.1:8080",
                 api_key: Optional[str] = None, timeout: Timeout = 60.0,
                 retries: Union[int, RetryPolicy] = 3, max_connections: int = 16,
                 transport: Optional[httpx.AsyncBaseTransport] = None) -> None:
        self.url = base_url(url)
        self.timeout = timeout
        self.retry = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries=retries)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers_of(api_key), timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            transport=transport)

    async def aclose(self) -> None:
        """Closes the pool's connections; the client cannot be used after."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: Optional[type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, body: Optional[bytes] = None,
                    content_type: Optional[str] = None, idempotent: bool = True,
                    ok: tuple[int, ...] = (200, 201, 204)) -> httpx.Response:
        """Client._send, awaiting the answer and the waits between tries."""
        headers = {"Content-Type": content_type} if content_type else None
        attempt, resent = 0, False
        while True:
            try:
                r = await self._http.request(method, path, content=body, headers=headers)
            except httpx.HTTPError as e:
                sent = not isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout,
                                          httpx.PoolTimeout))
                if attempt < self.retry.retries and retryable_transport(e, idempotent) \
                        and not (sent and resent):
                    attempt += 1
                    resent |= sent
                    await asyncio.sleep(self.retry.wait_s(attempt, None))
                    continue
                raise transport_error(e, self.timeout) from e
            if r.status_code in ok:
                return r
            if should_retry_status(r) and attempt < self.retry.retries:
                attempt += 1
                err = error_of(r)
                await asyncio.sleep(self.retry.wait_s(attempt, err.retry_after))
                continue
            raise error_of(r)

    async def attention_raw(self, body: bytes) -> dict[str, Any]:
        """Client.attention_raw."""
        return decode_answer(await self._send("POST", "/v1/attention", body, MSGPACK))

    @overload
    async def attention(self, q: "torch.Tensor", k: TensorLike, v: TensorLike,
                        mask: Any = ..., method: str = ..., dtype: Optional[str] = ...,
                        id: Optional[str] = ..., causal: bool = ..., q_mask: Any = ...,
                        **params: ParamValue) -> Result["torch.Tensor"]: ...

    @overload
    async def attention(self, q: npt.NDArray[Any], k: TensorLike, v: TensorLike,
                        mask: Any = ..., method: str = ..., dtype: Optional[str] = ...,
                        id: Optional[str] = ..., causal: bool = ..., q_mask: Any = ...,
                        **params: ParamValue) -> Result[npt.NDArray[Any]]: ...

    async def attention(self, q: Any, k: TensorLike, v: TensorLike, mask: Any = None,
                        method: str = "mra2", dtype: Optional[str] = None,
                        id: Optional[str] = None, causal: bool = False,
                        q_mask: Any = None, **params: ParamValue) -> Result[Any]:
        """Client.attention."""
        body = wire.encode_request(q, k, v, mask=mask, method=method, dtype=dtype,
                                   id=id, causal=causal, q_mask=q_mask, **params)
        return result_of(q, await self.attention_raw(body))

    async def kv(self, k: TensorLike, v: TensorLike, mask: Any = None,
                 ttl_ms: Optional[int] = None, dtype: Optional[str] = None,
                 keep_context: bool = False) -> AsyncSession:
        """Client.kv: creates a session; returns an AsyncSession, an async
        context manager that deletes it on exit (keep_context as there)."""
        context = None
        if keep_context:
            dt = wire.wire_dtype(dtype, k)
            context = KeptContext(wire_tokens(k, v, mask, dt), dt, ttl_ms)
            body = context.create_body()
        else:
            body = wire.encode_kv_body(k, v, mask=mask, dtype=dtype, ttl_ms=ttl_ms)
        r = await self._send("POST", "/v1/kv", body, MSGPACK, idempotent=False)
        return AsyncSession(self, kv_info(r), context)

    async def health(self) -> dict[str, Any]:
        """Client.health."""
        out: dict[str, Any] = json.loads((await self._send("GET", "/healthz")).content)
        return out

    async def ready(self) -> bool:
        """Client.ready."""
        try:
            await self._send("GET", "/readyz")
            return True
        except MradError as e:
            if e.status == 503:
                return False
            raise

    async def info(self) -> dict[str, Any]:
        """Client.info."""
        out: dict[str, Any] = json.loads((await self._send("GET", "/v1/info")).content)
        return out

    async def metrics(self) -> str:
        """Client.metrics."""
        return (await self._send("GET", "/metrics")).content.decode("utf-8")


class AsyncSession(SessionState):
    """Session, for AsyncClient: the same attributes, its calls as
    coroutines, and `async with` deletes it."""

    def __init__(self, client: AsyncClient, info: dict[str, Any],
                 context: Optional[KeptContext] = None) -> None:
        super().__init__(info, context)
        self._client = client

    async def _call(self, suffix: str, body: bytes, idempotent: bool) -> httpx.Response:
        """Session._call."""
        try:
            return await self._client._send("POST", session_path(self.id, suffix), body,
                                            MSGPACK, idempotent=idempotent)
        except KVNotFound as e:
            create = self._recreate_body(e)
        r = await self._client._send("POST", "/v1/kv", create, MSGPACK, idempotent=False)
        self._recreated(kv_info(r))
        return await self._client._send("POST", session_path(self.id, suffix), body,
                                        MSGPACK, idempotent=idempotent)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, exc_type: Optional[type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        try:
            await self.close()
        except MradError:
            if exc_type is None:
                raise

    async def info(self) -> dict[str, Any]:
        """Session.info."""
        info = kv_info(await self._client._send("GET", session_path(self.id)))
        self._set(info)
        return info

    async def append(self, k: TensorLike, v: TensorLike, mask: Any = None) -> dict[str, Any]:
        """Session.append."""
        kept = self._to_keep(k, v, mask)
        if kept is not None:
            k, v, mask = kept
        body = wire.encode_kv_body(k, v, mask=mask, dtype=self.dtype)
        info = kv_info(await self._call("/append", body, idempotent=False))
        self._set(info)
        self._appended(None, kept)
        return info

    @overload
    async def attend(self, q: "torch.Tensor", k_append: Any = ..., v_append: Any = ...,
                     mask_append: Any = ..., method: str = ..., dtype: Optional[str] = ...,
                     id: Optional[str] = ..., causal: bool = ..., q_mask: Any = ...,
                     **params: ParamValue) -> Result["torch.Tensor"]: ...

    @overload
    async def attend(self, q: npt.NDArray[Any], k_append: Any = ..., v_append: Any = ...,
                     mask_append: Any = ..., method: str = ..., dtype: Optional[str] = ...,
                     id: Optional[str] = ..., causal: bool = ..., q_mask: Any = ...,
                     **params: ParamValue) -> Result[npt.NDArray[Any]]: ...

    async def attend(self, q: Any, k_append: Any = None, v_append: Any = None,
                     mask_append: Any = None, method: str = "mra2",
                     dtype: Optional[str] = None, id: Optional[str] = None,
                     causal: bool = False, q_mask: Any = None,
                     **params: ParamValue) -> Result[Any]:
        """Session.attend."""
        kept = self._to_keep(k_append, v_append, mask_append)
        if kept is not None:  # converted once, for the body and to keep
            k_append, v_append, mask_append = kept
        body = wire.session_body(q, k_append, v_append, mask_append, method,
                                 dtype or self.dtype, id, causal, q_mask, params)
        r = await self._call("/attention", body, idempotent=k_append is None)
        msg = decode_answer(r)
        self._appended(k_append, kept)
        return result_of(q, msg)

    async def close(self) -> None:
        """Session.close."""
        if self.closed:
            return
        try:
            await self._client._send("DELETE", session_path(self.id))
        except KVNotFound:
            pass
        self.closed = True
