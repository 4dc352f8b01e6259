"""The synchronous client of the attention service, on httpx.

Connections: one Client holds one httpx connection pool (keep-alive, at
most `max_connections` sockets).  A Client may be shared by any number of
threads: calls from different threads run in parallel on different
connections.  A connection the server closed while it sat idle in the pool
is noticed and replaced before the next call goes out on it.  Close the
pool with Client.close() or a `with` block.  A Session may be used from
several threads too; the service applies the requests on one session one
at a time, in the order they arrive.

aio.AsyncClient has the same methods, as coroutines.
"""
from __future__ import annotations

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

__all__ = ["Client", "Session", "Result", "RetryPolicy"]

Timeout = Union[float, httpx.Timeout, None]


class Client:
    """A client of one mrad server.

    url: base URL ("http://127.0.0.1:8080"); api_key: sent as a bearer
    token; timeout: seconds for connecting and for each answer (or an
    httpx.Timeout); retries: how many times a 503 `overloaded` answer is
    retried, honouring its Retry-After (or a RetryPolicy; 0: never);
    max_connections: the pool's size; transport: an httpx transport to use
    instead of the network (tests).
    """

    def __init__(self, url: str = "http://127.0.0.1:8080",
                 api_key: Optional[str] = None, timeout: Timeout = 60.0,
                 retries: Union[int, RetryPolicy] = 3, max_connections: int = 16,
                 transport: Optional[httpx.BaseTransport] = None) -> None:
        self.url = base_url(url)
        self.timeout = timeout
        self.retry = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries=retries)
        self._http = httpx.Client(
            base_url=self.url, headers=headers_of(api_key), timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            transport=transport)

    # -- connections --------------------------------------------------

    def close(self) -> None:
        """Closes the pool's connections; the client cannot be used after."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()

    def _send(self, method: str, path: str, body: Optional[bytes] = None,
              content_type: Optional[str] = None, idempotent: bool = True,
              ok: tuple[int, ...] = (200, 201, 204)) -> httpx.Response:
        """One call: sends it, retries it as the RetryPolicy says, and
        returns the answer when its status is in `ok`; raises the
        MradError of any other answer, TransportError when none came."""
        headers = {"Content-Type": content_type} if content_type else None
        attempt, resent = 0, False
        while True:
            try:
                r = self._http.request(method, path, content=body, headers=headers)
            except httpx.HTTPError as e:
                sent = not isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout,
                                          httpx.PoolTimeout))
                if attempt < self.retry.retries and retryable_transport(e, idempotent) \
                        and not (sent and resent):
                    attempt += 1
                    resent |= sent
                    self.retry.sleep(self.retry.wait_s(attempt, None))
                    continue
                raise transport_error(e, self.timeout) from e
            if r.status_code in ok:
                return r
            if should_retry_status(r) and attempt < self.retry.retries:
                attempt += 1
                err = error_of(r)
                self.retry.sleep(self.retry.wait_s(attempt, err.retry_after))
                continue
            raise error_of(r)

    # -- the API ------------------------------------------------------

    def attention_raw(self, body: bytes) -> dict[str, Any]:
        """POSTs an encoded body (msgpack bytes) and returns the decoded
        answer map ("out" as (array, dtype)); raises MradError for error
        answers."""
        return decode_answer(self._send("POST", "/v1/attention", body, MSGPACK))

    @overload
    def attention(self, q: "torch.Tensor", k: TensorLike, v: TensorLike,
                  mask: Any = ..., method: str = ..., dtype: Optional[str] = ...,
                  id: Optional[str] = ..., causal: bool = ..., q_mask: Any = ...,
                  **params: ParamValue) -> Result["torch.Tensor"]: ...

    @overload
    def attention(self, q: npt.NDArray[Any], k: TensorLike, v: TensorLike,
                  mask: Any = ..., method: str = ..., dtype: Optional[str] = ...,
                  id: Optional[str] = ..., causal: bool = ..., q_mask: Any = ...,
                  **params: ParamValue) -> Result[npt.NDArray[Any]]: ...

    def attention(self, q: Any, k: TensorLike, v: TensorLike, mask: Any = None,
                  method: str = "mra2", dtype: Optional[str] = None,
                  id: Optional[str] = None, causal: bool = False,
                  q_mask: Any = None, **params: ParamValue) -> Result[Any]:
        """Computes attention on the server.

        q: [B, H, Nq, D]; k, v: [B, Hkv, Nk, D] (H % Hkv == 0; Nk may
        differ from Nq, as in cross-attention or a decode step over a
        cache); 2-d and 3-d tensors are taken as B = 1 (and H = 1); numpy
        arrays or torch tensors.  mask: [B, Nk] of 0/1 over the keys, or
        None.  q_mask: [B, Nq] of 0/1 over the queries, or None (then the
        key mask when Nq == Nk, else every query is real).  causal: query i
        sees key j only when j <= i + Nk - Nq (the queries are the last Nq
        positions).  method: "mra2", "mra2_sparse" or "exact".  dtype: None
        follows q (float32 -> "f32", float16 -> "f16", bfloat16 -> "bf16",
        other floats -> "f32"); "bf16" rounds float input to nearest even,
        or takes numpy uint16 input as the bits.  params: block_per_row,
        num_blocks, prior_first, prior_diagonal, scale, timeout_ms, and
        the accuracy controls min_blocks_per_row, error_samples (the
        answer's stats then hold est_rel_err, the estimated relative
        error), target_error (each head picks its budget for it) and
        per_head_stats=True (stats["heads"]: every head's budget,
        density and estimate).
        Returns a Result whose out has q's shape (a torch tensor for torch
        queries, else a numpy array); raises MradError (a subclass per
        error code).
        """
        body = wire.encode_request(q, k, v, mask=mask, method=method, dtype=dtype,
                                   id=id, causal=causal, q_mask=q_mask, **params)
        return result_of(q, self.attention_raw(body))

    def kv(self, k: TensorLike, v: TensorLike, mask: Any = None,
           ttl_ms: Optional[int] = None, dtype: Optional[str] = None,
           keep_context: bool = False) -> Session:
        """Creates a session (POST /v1/kv): keys and values kept in the
        service, so that later requests send only their queries and new
        tokens.

        k, v: [B, Hkv, N, D] (or [Hkv, N, D], [N, D]); mask: [B, N] of 0/1
        or None (every token real); ttl_ms: idle lifetime asked for (None:
        the service's default; the service caps it); dtype as in
        attention(), following k's by default.  The session fixes dtype,
        B, Hkv and D.  Returns a Session, a context manager that deletes
        the session on exit:

            with client.kv(k, v) as s:
                out = s.attend(q, k_append=k1, v_append=v1, causal=True).out

        keep_context: the Session also keeps every token of the session
        (these and each one appended since, in host memory), and when the
        service has lost the session (404 kv_not_found: it expired, was
        evicted, or its replica restarted) an attend() or append() creates
        it again from them and sends the call once more; Session.recreated
        counts those re-creates.  Without it such calls raise KVNotFound.

        Raises KVCacheFull (507) when the service cannot hold it, and
        MradError for the other error answers.
        """
        context = None
        if keep_context:
            dt = wire.wire_dtype(dtype, k)
            context = KeptContext(wire_tokens(k, v, mask, dt), dt, ttl_ms)
            body = context.create_body()
        else:
            body = wire.encode_kv_body(k, v, mask=mask, dtype=dtype, ttl_ms=ttl_ms)
        r = self._send("POST", "/v1/kv", body, MSGPACK, idempotent=False)
        return Session(self, kv_info(r), context)

    def health(self) -> dict[str, Any]:
        """GET /healthz -> dict; raises Unavailable while draining."""
        out: dict[str, Any] = json.loads(self._send("GET", "/healthz").content)
        return out

    def ready(self) -> bool:
        """GET /readyz -> True when the server takes work, else False."""
        try:
            self._send("GET", "/readyz")
            return True
        except MradError as e:
            if e.status == 503:
                return False
            raise

    def info(self) -> dict[str, Any]:
        """GET /v1/info -> dict (version, backend, device, limits, defaults)."""
        out: dict[str, Any] = json.loads(self._send("GET", "/v1/info").content)
        return out

    def metrics(self) -> str:
        """GET /metrics -> the Prometheus text exposition."""
        return self._send("GET", "/metrics").content.decode("utf-8")


class Session(SessionState):
    """A session of the service: keys and values it keeps, made by
    Client.kv().  Requests on it send only their queries and new tokens.

    id: the session's id; tokens: the tokens it holds, as of this handle's
    last call (appends by others are not seen until info()); dtype: its
    wire dtype; shape: [B, Hkv, N, D] of the last answer about it.  A
    context manager: leaving the block deletes the session.

    The service may end a session on its own (unused for its ttl_ms,
    evicted to make room for others, or lost with the replica that held
    it): calls then raise KVNotFound, and the caller creates a new one with
    its whole context.  A session made with keep_context=True does that
    itself: attend() and append() create it again from the tokens the
    handle kept (id then changes) and send the call once more; a second
    KVNotFound is raised.  `recreated` counts the re-creates.  Such a
    session should see one call at a time (calls that ran together could
    each make a new session, and the kept tokens would follow the order
    in which the answers came).
    """

    def __init__(self, client: Client, info: dict[str, Any],
                 context: Optional[KeptContext] = None) -> None:
        super().__init__(info, context)
        self._client = client

    def _call(self, suffix: str, body: bytes, idempotent: bool) -> httpx.Response:
        """POSTs body to the session's path + suffix.  On KVNotFound, with
        a kept context, creates the session again and POSTs once more (the
        404 applied nothing, so the call's own tokens go with the retry,
        not with the re-create)."""
        try:
            return self._client._send("POST", session_path(self.id, suffix), body,
                                      MSGPACK, idempotent=idempotent)
        except KVNotFound as e:
            create = self._recreate_body(e)
        r = self._client._send("POST", "/v1/kv", create, MSGPACK, idempotent=False)
        self._recreated(kv_info(r))
        return self._client._send("POST", session_path(self.id, suffix), body,
                                  MSGPACK, idempotent=idempotent)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        try:
            self.close()
        except MradError:
            if exc_type is None:
                raise
            # the block's own exception is the one to see

    def info(self) -> dict[str, Any]:
        """GET /v1/kv/{id}: what the session holds now, as a dict (kv,
        dtype, shape, tokens, bytes, ttl_ms, idle_ms).  Raises KVNotFound
        when it is gone."""
        info = kv_info(self._client._send("GET", session_path(self.id)))
        self._set(info)
        return info

    def append(self, k: TensorLike, v: TensorLike, mask: Any = None) -> dict[str, Any]:
        """POST /v1/kv/{id}/append: appends tokens k, v [B, Hkv, n, D] (or
        [Hkv, n, D], [n, D]) with their mask [B, n] (None: every token
        real), in the session's dtype.  Returns the session answer (a
        dict).  Raises KVNotFound, KVCacheFull (no room for them)."""
        kept = self._to_keep(k, v, mask)
        if kept is not None:
            k, v, mask = kept
        body = wire.encode_kv_body(k, v, mask=mask, dtype=self.dtype)
        info = kv_info(self._call("/append", body, idempotent=False))
        self._set(info)
        self._appended(None, kept)
        return info

    @overload
    def attend(self, q: "torch.Tensor", k_append: Any = ..., v_append: Any = ...,
               mask_append: Any = ..., method: str = ..., dtype: Optional[str] = ...,
               id: Optional[str] = ..., causal: bool = ..., q_mask: Any = ...,
               **params: ParamValue) -> Result["torch.Tensor"]: ...

    @overload
    def attend(self, q: npt.NDArray[Any], k_append: Any = ..., v_append: Any = ...,
               mask_append: Any = ..., method: str = ..., dtype: Optional[str] = ...,
               id: Optional[str] = ..., causal: bool = ..., q_mask: Any = ...,
               **params: ParamValue) -> Result[npt.NDArray[Any]]: ...

    def attend(self, q: Any, k_append: Any = None, v_append: Any = None,
               mask_append: Any = None, method: str = "mra2",
               dtype: Optional[str] = None, id: Optional[str] = None,
               causal: bool = False, q_mask: Any = None,
               **params: ParamValue) -> Result[Any]:
        """POST /v1/kv/{id}/attention: q [B, H, Nq, D] attends to the keys
        and values the session holds, after appending k_append, v_append
        [B, Hkv, n, D] (with mask_append [B, n]) in the same round trip: a
        decoding step is one call.  causal aligns the queries with the end
        of the session after the append (query i sees keys
        j <= i + tokens - Nq).  method, q_mask and params as in
        Client.attention(); dtype defaults to the session's (q and the
        appended tokens are converted to it).  Returns a Result; raises
        KVNotFound, KVCacheFull (no room for the appended tokens), or the
        other MradErrors.
        """
        kept = self._to_keep(k_append, v_append, mask_append)
        if kept is not None:  # converted once, for the body and to keep
            k_append, v_append, mask_append = kept
        body = wire.session_body(q, k_append, v_append, mask_append, method,
                                 dtype or self.dtype, id, causal, q_mask, params)
        r = self._call("/attention", body, idempotent=k_append is None)
        msg = decode_answer(r)
        self._appended(k_append, kept)
        return result_of(q, msg)

    def close(self) -> None:
        """DELETE /v1/kv/{id}: ends the session.  A session already gone
        (deleted, expired, evicted) is not an error, and closing twice
        sends nothing the second time."""
        if self.closed:
            return
        try:
            self._client._send("DELETE", session_path(self.id))
        except KVNotFound:
            pass
        self.closed = True
