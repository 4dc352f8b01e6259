"""Errors raised by mra_client: one class per wire error code.

Every error the service answers is an MradError carrying the HTTP status,
the wire code and the server's message; the subclasses let callers catch
what they can act on (Overloaded: back off for retry_after seconds; the
clients already retry it a few times, see Client).
"""
from __future__ import annotations

from typing import Optional


class MradError(Exception):
    """An error answer of the service, or a failure to reach it.

    status: HTTP status (0 when no answer arrived); code: the wire error
    code ("bad_request", "overloaded", ...; "transport" when no answer);
    message: the server's explanation; retry_after: seconds from the
    Retry-After header, or None.
    """

    def __init__(self, status: int, code: str, message: str,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class BadRequest(MradError):
    """400: the request was malformed or out of range."""


class Unauthorized(MradError):
    """401: the API key is missing or wrong."""


class NotFound(MradError):
    """404 or 405: no such endpoint or method."""


class KVNotFound(NotFound):
    """404 kv_not_found: the session is gone (unknown, expired, evicted or
    deleted); create it again with its whole context."""


class PayloadTooLarge(MradError):
    """413: the body, a tensor or the problem is over the server's limits."""


class UnsupportedMediaType(MradError):
    """415: the content type is not msgpack or JSON."""


class Overloaded(MradError):
    """503 overloaded: the queue is full; retry after .retry_after seconds."""


class Unavailable(MradError):
    """503 unavailable: the server is draining or its backend is broken."""


class DeadlineExceeded(MradError):
    """504: the request's deadline passed before its result was ready."""


class KVCacheFull(MradError):
    """507 kv_cache_full: the service cannot hold a session's tokens, even
    after evicting idle sessions; end sessions, or retry later."""


class InternalError(MradError):
    """500: a fault of the service."""


class TransportError(MradError):
    """No answer: connection refused or reset, or a client-side timeout."""


_BY_CODE: dict[str, type[MradError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "kv_not_found": KVNotFound,
    "method_not_allowed": NotFound,
    "payload_too_large": PayloadTooLarge,
    "unsupported_media_type": UnsupportedMediaType,
    "overloaded": Overloaded,
    "unavailable": Unavailable,
    "timeout": DeadlineExceeded,
    "kv_cache_full": KVCacheFull,
    "internal": InternalError,
}

_BY_STATUS: dict[int, type[MradError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    503: Unavailable,
    504: DeadlineExceeded,
    507: KVCacheFull,
    500: InternalError,
}


def error_for(status: int, code: str, message: str,
              retry_after: Optional[float] = None) -> MradError:
    """The MradError subclass for a wire code (or, failing that, a status)."""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, MradError)
    return cls(status, code, message, retry_after)
