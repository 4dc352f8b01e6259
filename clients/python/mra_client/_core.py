"""What the sync and the async clients share: the answers as Python
objects, the error of an answer, the retry policy, and the calls of the
API as plain descriptions (method, path, body) with the parsing of their
answers.  No I/O here: client.py sends the calls with httpx.Client,
aio.py with httpx.AsyncClient, so both have the same methods and
behaviour.
"""
from __future__ import annotations

import email.utils
import json
import random
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Generic, Mapping, Optional, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from . import wire
from .errors import MradError, TransportError, error_for
from .tensors import from_wire, mask_to_wire, shape4, to_wire, wire_shape

OutT = TypeVar("OutT")

MSGPACK = "application/msgpack"


class Result(Generic[OutT]):
    """The answer to one attention call.

    out: the output, of q's shape ([B, H, Nq, D]): for numpy queries a
    numpy array, float32 for f32 and bf16 (widened exactly), float16 for
    f16; for torch queries a torch tensor in the wire dtype
    (torch.bfloat16 for bf16) on the queries' device.  It belongs to the
    caller and is writable.  out_raw: the answer as it travelled, a numpy
    array (uint16 bit patterns for bf16), the same memory as out unless
    out was widened.  dtype: the wire dtype.  stats:
    the service's statistics (method, backend, blocks_selected,
    blocks_total, density, queue_us, compute_us, batch_requests; with
    error_samples or target_error, est_rel_err; with per_head_stats, heads:
    a list of every head's budget, blocks_selected, blocks_total, density
    and est_rel_err).  id: the
    echoed id or None.
    """

    __slots__ = ("out", "out_raw", "dtype", "stats", "id")

    def __init__(self, out: OutT, out_raw: Any, dtype: str,
                 stats: dict[str, Any], id: Optional[str]) -> None:
        self.out = out
        self.out_raw = out_raw
        self.dtype = dtype
        self.stats = stats
        self.id = id

    def __repr__(self) -> str:
        o: Any = self.out
        return (f"Result(out={o.dtype}{list(o.shape)}, dtype={self.dtype!r}, "
                f"stats={self.stats!r}, id={self.id!r})")


@dataclass
class RetryPolicy:
    """When and how long the clients wait before sending a call again.

    A 503 `overloaded` answer (the queue, the connections or the bytes in
    flight were at their limit: the service did nothing with the call) is
    retried up to `retries` times, after the answer's Retry-After seconds,
    or else after `backoff` seconds doubling each time (with jitter), never
    more than `max_wait`.  A connection that failed before the call was
    sent is retried the same way; one that failed after sending is retried
    once, and only for calls that are safe to repeat (not session creates
    and appends, which the service may have applied).  `retries=0` turns
    retrying off.
    """

    retries: int = 3
    backoff: float = 0.05
    max_wait: float = 10.0
    sleep: Any = field(default=time.sleep, repr=False)

    def wait_s(self, attempt: int, retry_after: Optional[float]) -> float:
        """Seconds to wait before attempt number `attempt` (1 = the first
        retry)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait)
        base = self.backoff * (2 ** (attempt - 1))
        return float(min(base * (0.5 + random.random()), self.max_wait))


def retry_after_s(headers: Mapping[str, str]) -> Optional[float]:
    """The Retry-After header in seconds (delta-seconds or an HTTP date),
    or None."""
    v = headers.get("Retry-After")
    if v is None:
        return None
    try:
        return max(float(v), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def error_of(r: httpx.Response) -> MradError:
    """The MradError of a non-2xx answer: the wire code and message of its
    JSON error body, or its status and text."""
    data = r.content
    code, message = f"http_{r.status_code}", data.decode("utf-8", "replace")[:400]
    try:
        err = json.loads(data)["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        pass
    return error_for(r.status_code, code, message, retry_after_s(r.headers))


def transport_error(e: httpx.HTTPError, timeout: Any) -> TransportError:
    """The TransportError of a failed exchange."""
    if isinstance(e, httpx.TimeoutException):
        return TransportError(0, "timeout", f"no answer within {timeout} s ({type(e).__name__})")
    return TransportError(0, "transport", str(e) or type(e).__name__)


def retryable_transport(e: httpx.HTTPError, idempotent: bool) -> bool:
    """Whether an exchange that failed with `e` may be sent again: always
    when the call never left (no connection), else only when repeating it
    is harmless."""
    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return True
    return idempotent and isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError,
                                         httpx.WriteError))


def should_retry_status(r: httpx.Response) -> bool:
    """A 503 `overloaded` answer: nothing was done, try again later."""
    if r.status_code != 503:
        return False
    try:
        return bool(json.loads(r.content)["error"]["code"] == "overloaded")
    except (ValueError, KeyError, TypeError):
        return "Retry-After" in r.headers


def base_url(url: str) -> str:
    """The service's base URL, checked, without a trailing slash."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return url.rstrip("/")


def headers_of(api_key: Optional[str]) -> dict[str, str]:
    """The headers every call carries."""
    return {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}


def session_path(kv_id: str, suffix: str = "") -> str:
    return f"/v1/kv/{urllib.parse.quote(kv_id, safe='')}{suffix}"


def decode_answer(r: httpx.Response) -> dict[str, Any]:
    """The decoded msgpack answer of an attention call."""
    try:
        return wire.decode_response(r.content)
    except Exception as e:  # a malformed answer
        raise MradError(r.status_code, "bad_response", str(e)) from e


def result_of(q: Any, msg: dict[str, Any]) -> Result[Any]:
    """The Result of a decoded answer to queries q."""
    raw, dt = msg["out"]
    shape = wire_shape(q)
    n = 1
    for s in shape:
        n *= s
    if raw.size != n:
        raise MradError(200, "bad_response", "the output's size differs from q's")
    raw = raw.reshape(shape)
    return Result(from_wire(raw, dt, q), raw, dt, msg.get("stats", {}), msg.get("id"))


def kv_info(r: httpx.Response) -> dict[str, Any]:
    """The session answer (JSON) of a create, append or GET."""
    try:
        info = json.loads(r.content)
        if not isinstance(info, dict) or not isinstance(info.get("kv"), str) \
                or not isinstance(info.get("tokens"), int):
            raise ValueError("not a session answer")
    except ValueError as e:
        raise MradError(r.status_code, "bad_response", str(e)) from e
    return info


# Tokens as a session keeps them client-side: k, v [B, Hkv, n, D] in the
# wire dtype (bf16 as uint16 bits) and the mask [B, n] of 0/1 or None.
Tokens = tuple[npt.NDArray[Any], npt.NDArray[Any], Optional[npt.NDArray[np.uint8]]]


def wire_tokens(k: Any, v: Any, mask: Any, dtype: str) -> Tokens:
    """k, v and mask as a session keeps them: the arrays the wire carries
    (so a kept torch tensor on a GPU is a copy in host memory)."""
    kw = to_wire(k, dtype)
    vw = to_wire(v, dtype)
    kw = kw.reshape(shape4(kw, "k"))
    vw = vw.reshape(shape4(vw, "v"))
    mw = None if mask is None else mask_to_wire(mask, "mask")
    return kw, vw, mw


class KeptContext:
    """Every token a session holds, kept by its handle (Client.kv with
    keep_context=True), so that a session the service lost can be made
    again: the tokens of the create, then those of every append, in order.
    The pieces are joined when a create needs them (rarely), not at each
    append (every step)."""

    def __init__(self, first: Tokens, dtype: str, ttl_ms: Optional[int]) -> None:
        self.dtype = dtype
        self.ttl_ms = ttl_ms
        self._pieces: list[Tokens] = [first]

    def add(self, t: Tokens) -> None:
        self._pieces.append(t)

    def tokens(self) -> int:
        return sum(int(k.shape[2]) for k, _, _ in self._pieces)

    def create_body(self) -> bytes:
        """The body of POST /v1/kv that makes the session again."""
        if len(self._pieces) > 1:
            ks = [k for k, _, _ in self._pieces]
            vs = [v for _, v, _ in self._pieces]
            masks = None
            if any(m is not None for _, _, m in self._pieces):
                masks = np.concatenate(
                    [m if m is not None else np.ones((k.shape[0], k.shape[2]), np.uint8)
                     for k, _, m in self._pieces], axis=1)
            self._pieces = [(np.concatenate(ks, axis=2), np.concatenate(vs, axis=2),
                             masks)]
        k, v, m = self._pieces[0]
        return wire.encode_kv_body(k, v, mask=m, dtype=self.dtype, ttl_ms=self.ttl_ms)


class SessionState:
    """What a session handle knows of its session, shared by Session and
    AsyncSession: id, tokens (as of this handle's last call), dtype, shape
    ([B, Hkv, N, D] of the last answer about it), ttl_ms, bytes, closed;
    with a kept context (keep_context), the context and `recreated`, the
    number of times the handle made its session again."""

    def __init__(self, info: dict[str, Any],
                 context: Optional[KeptContext] = None) -> None:
        self.id: str = info["kv"]
        self.closed = False
        self.recreated = 0
        self._context = context
        self.tokens = 0
        self.dtype: Optional[str] = None
        self.shape: tuple[int, ...] = ()
        self.ttl_ms: Optional[int] = None
        self.bytes: Optional[int] = None
        self._set(info)

    def _set(self, info: dict[str, Any]) -> None:
        self.tokens = int(info["tokens"])
        self.dtype = info.get("dtype")
        self.shape = tuple(info.get("shape") or ())
        self.ttl_ms = info.get("ttl_ms")
        self.bytes = info.get("bytes")

    def _appended(self, k_append: Any, kept: Optional[Tokens] = None) -> None:
        """A call that appended k_append succeeded: count the tokens, and
        keep them (`kept`, from _to_keep) with the context."""
        if k_append is not None:
            self.tokens += wire_shape(k_append)[-2]
        if kept is not None and self._context is not None:
            self._context.add(kept)

    def _to_keep(self, k: Any, v: Any, mask: Any) -> Optional[Tokens]:
        """The tokens a call appends, as the kept context will hold them
        once the call succeeds; None without a kept context or tokens."""
        if self._context is None or k is None or v is None:
            return None  # (k without v: the body's encoder says so)
        return wire_tokens(k, v, mask, self._context.dtype)

    def _recreate_body(self, err: MradError) -> bytes:
        """After KVNotFound (`err`): the body that makes the session again,
        or `err` raised when the handle keeps no context."""
        if self._context is None or self.closed:
            raise err
        return self._context.create_body()

    def _recreated(self, info: dict[str, Any]) -> None:
        """The session was made again: adopt its id."""
        self.id = info["kv"]
        self.recreated += 1
        self._set(info)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(id={self.id!r}, tokens={self.tokens}, "
                f"dtype={self.dtype!r}, shape={list(self.shape)})")
