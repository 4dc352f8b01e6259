"""The HTTP client of the attention service, on the standard library.

Thread safety: one Client may be shared by any number of threads.  Each
thread gets its own keep-alive connection (held in a threading.local), so
calls from different threads run in parallel and never interleave on a
socket.  Connections close with Client.close() (the calling thread's) or
when the client is garbage-collected.  A Session may be used from several
threads too; the service applies the requests on one session one at a
time, in the order they arrive.
"""
import http.client
import json
import select
import socket
import threading
import urllib.parse

import numpy as np

from . import wire
from .errors import KVNotFound, MradError, TransportError, error_for


class Result:
    """The answer to one attention call.

    out: numpy array of q's shape ([B, H, Nq, D]): float32 for f32 and
    bf16 (widened exactly), float16 for f16.  out_raw: the answer as it
    travelled
    (uint16 bit patterns for bf16).  dtype: the wire dtype.  stats: dict
    of the service's statistics (method, backend, blocks_selected,
    blocks_total, density, queue_us, compute_us, batch_requests).  id: the
    echoed id or None.
    """

    __slots__ = ("out", "out_raw", "dtype", "stats", "id")

    def __init__(self, out, out_raw, dtype, stats, id):
        self.out = out
        self.out_raw = out_raw
        self.dtype = dtype
        self.stats = stats
        self.id = id

    def __repr__(self):
        return (f"Result(out={self.out.dtype}{list(self.out.shape)}, "
                f"dtype={self.dtype!r}, stats={self.stats!r}, id={self.id!r})")


class Client:
    """A client of one mrad server.

    url: base URL ("http://127.0.0.1:8080"); api_key: sent as a bearer
    token; timeout: seconds for connecting and for each answer.
    """

    def __init__(self, url="http://127.0.0.1:8080", api_key=None, timeout=60.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self._https = u.scheme == "https"
        self._host = u.hostname
        self._port = u.port or (443 if self._https else 80)
        self._prefix = u.path.rstrip("/")
        self._timeout = timeout
        self._headers = {}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._local = threading.local()

    # -- connections --------------------------------------------------

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            c = cls(self._host, self._port, timeout=self._timeout)
            self._local.conn = c
            self._local.used = False
        return c

    def close(self):
        """Closes the calling thread's connection (a later call reopens)."""
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _closed_while_idle(c):
        """True when an idle keep-alive connection has something to read:
        the server closed it (or sent what nobody asked for)."""
        sock = c.sock
        if sock is None:
            return False
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def _request(self, method, path, body=None, content_type=None,
                 idempotent=True):
        """One HTTP exchange; returns (status, headers, body bytes).

        A keep-alive connection the server closed while idle is replaced
        before sending when that shows already; when it shows only on first
        use, the request is sent again once on a new connection, unless it
        is not idempotent (it creates a session or appends tokens, and the
        service may have applied it).
        """
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (0, 1):
            c = self._conn()
            reused = self._local.used
            if reused and self._closed_while_idle(c):
                self.close()
                c, reused = self._conn(), False
            try:
                c.request(method, self._prefix + path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as e:
                self.close()
                if reused and attempt == 0 and idempotent:
                    continue
                raise TransportError(0, "transport", str(e) or type(e).__name__) from e
            except socket.timeout as e:
                self.close()
                raise TransportError(0, "timeout", f"no answer within {self._timeout} s") from e
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise TransportError(0, "transport", str(e) or type(e).__name__) from e
            self._local.used = True
            if r.will_close:
                self.close()
            return r.status, r.headers, data
        raise AssertionError("unreachable")

    @staticmethod
    def _raise(status, headers, data):
        code, message = f"http_{status}", data.decode("utf-8", "replace")[:400]
        try:
            err = json.loads(data)["error"]
            code, message = err["code"], err["message"]
        except (ValueError, KeyError, TypeError):
            pass
        retry = headers.get("Retry-After")
        try:
            retry = float(retry) if retry is not None else None
        except ValueError:
            retry = None
        raise error_for(status, code, message, retry)

    # -- the API ------------------------------------------------------

    def attention_raw(self, body):
        """POSTs an encoded body (msgpack bytes) and returns the decoded
        answer map; raises MradError for error answers."""
        return self._decode(*self._post("/v1/attention", body))

    @staticmethod
    def _decode(status, data):
        try:
            return wire.decode_response(data)
        except Exception as e:  # malformed answer
            raise MradError(status, "bad_response", str(e)) from e

    def attention(self, q, k, v, mask=None, method="mra2", dtype=None, id=None,
                  causal=False, q_mask=None, **params):
        """Computes attention on the server.

        q: [B, H, Nq, D]; k, v: [B, Hkv, Nk, D] (H % Hkv == 0; Nk may
        differ from Nq, as in cross-attention or a decode step over a
        cache); 2-d and 3-d arrays are taken as B = 1 (and H = 1).  mask:
        [B, Nk] of 0/1 over the keys, or None.  q_mask: [B, Nq] of 0/1 over
        the queries, or None (then the key mask when Nq == Nk, else every
        query is real).  causal: query i sees key j only when
        j <= i + Nk - Nq (the queries are the last Nq positions).
        method: "mra2", "mra2_sparse" or "exact".  dtype: None follows q
        (float32 -> "f32", float16 -> "f16", ml_dtypes bfloat16 -> "bf16",
        other floats -> "f32"); "bf16" rounds float input to nearest even,
        or takes uint16 input as the bits.  params: block_per_row,
        num_blocks, prior_first, prior_diagonal, scale, timeout_ms.
        Returns a Result whose out has q's shape; raises MradError (a
        subclass per error code).
        """
        body = wire.encode_request(q, k, v, mask=mask, method=method,
                                   dtype=dtype, id=id, causal=causal,
                                   q_mask=q_mask, **params)
        return self._result(q, self.attention_raw(body))

    @staticmethod
    def _result(q, msg):
        """The Result of a decoded answer to queries q."""
        qa = np.asarray(q)
        raw, dt = msg["out"]
        if raw.size != qa.size:
            raise MradError(200, "bad_response", "the output's size differs from q's")
        raw = raw.reshape(qa.shape)
        out = wire.bf16_to_f32(raw) if dt == "bf16" else raw
        return Result(out, raw, dt, msg.get("stats", {}), msg.get("id"))

    def _post(self, path, body, idempotent=True):
        """POSTs a msgpack body; returns (status, data) of a 2xx answer,
        raises MradError for the others."""
        status, headers, data = self._request(
            "POST", path, body, "application/msgpack", idempotent=idempotent)
        if status // 100 != 2:
            self._raise(status, headers, data)
        return status, data

    def kv(self, k, v, mask=None, ttl_ms=None, dtype=None):
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

        Raises KVCacheFull (507) when the service cannot hold it, and
        MradError for the other error answers.
        """
        body = wire.encode_kv_body(k, v, mask=mask, dtype=dtype, ttl_ms=ttl_ms)
        _, data = self._post("/v1/kv", body, idempotent=False)
        return Session(self, self._kv_info(data))

    @staticmethod
    def _kv_info(data):
        try:
            info = json.loads(data)
            if not isinstance(info, dict) or not isinstance(info.get("kv"), str) \
                    or not isinstance(info.get("tokens"), int):
                raise ValueError("not a session answer")
        except ValueError as e:
            raise MradError(200, "bad_response", str(e)) from e
        return info

    def _get(self, path):
        status, headers, data = self._request("GET", path)
        if status != 200:
            self._raise(status, headers, data)
        return data

    def health(self):
        """GET /healthz -> dict; raises Unavailable while draining."""
        return json.loads(self._get("/healthz"))

    def ready(self):
        """GET /readyz -> True when the server takes work, else False."""
        try:
            self._get("/readyz")
            return True
        except MradError as e:
            if e.status == 503:
                return False
            raise

    def info(self):
        """GET /v1/info -> dict (version, backend, device, limits, defaults)."""
        return json.loads(self._get("/v1/info"))

    def metrics(self):
        """GET /metrics -> the Prometheus text exposition."""
        return self._get("/metrics").decode("utf-8")


class Session:
    """A session of the service: keys and values it keeps, made by
    Client.kv().  Requests on it send only their queries and new tokens.

    id: the session's id; tokens: the tokens it holds, as of this handle's
    last call (appends by others are not seen until info()); dtype: its
    wire dtype; shape: [B, Hkv, N, D] of the last answer about it.  A
    context manager: leaving the block deletes the session.

    The service may end a session on its own (unused for its ttl_ms, or
    evicted to make room for others): calls then raise KVNotFound, and the
    caller creates a new one with its whole context.
    """

    def __init__(self, client, info):
        self._client = client
        self.id = info["kv"]
        self.closed = False
        self._set(info)

    def _set(self, info):
        self.tokens = int(info["tokens"])
        self.dtype = info.get("dtype")
        self.shape = tuple(info.get("shape") or ())
        self.ttl_ms = info.get("ttl_ms")
        self.bytes = info.get("bytes")

    def __repr__(self):
        return (f"Session(id={self.id!r}, tokens={self.tokens}, "
                f"dtype={self.dtype!r}, shape={list(self.shape)})")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.close()
        except MradError:
            if exc_type is None:
                raise
            # the block's own exception is the one to see

    def _path(self, suffix=""):
        return f"/v1/kv/{urllib.parse.quote(self.id, safe='')}{suffix}"

    def info(self):
        """GET /v1/kv/{id}: what the session holds now, as a dict (kv,
        dtype, shape, tokens, bytes, ttl_ms, idle_ms).  Raises KVNotFound
        when it is gone."""
        c = self._client
        status, headers, data = c._request("GET", self._path())
        if status != 200:
            c._raise(status, headers, data)
        info = c._kv_info(data)
        self._set(info)
        return info

    def append(self, k, v, mask=None):
        """POST /v1/kv/{id}/append: appends tokens k, v [B, Hkv, n, D] (or
        [Hkv, n, D], [n, D]) with their mask [B, n] (None: every token
        real), in the session's dtype.  Returns the session answer (a
        dict).  Raises KVNotFound, KVCacheFull (no room for them)."""
        c = self._client
        body = wire.encode_kv_body(k, v, mask=mask, dtype=self.dtype)
        _, data = c._post(self._path("/append"), body, idempotent=False)
        info = c._kv_info(data)
        self._set(info)
        return info

    def attend(self, q, k_append=None, v_append=None, mask_append=None,
               method="mra2", dtype=None, id=None, causal=False, q_mask=None,
               **params):
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
        body = wire.encode_session_request(
            q, k_append=k_append, v_append=v_append, mask_append=mask_append,
            method=method, dtype=dtype or self.dtype, id=id, causal=causal,
            q_mask=q_mask, **params)
        c = self._client
        msg = c._decode(*c._post(self._path("/attention"), body,
                                 idempotent=k_append is None))
        if k_append is not None:
            self.tokens += wire.as4d(k_append, "k_append").shape[2]
        return c._result(q, msg)

    def close(self):
        """DELETE /v1/kv/{id}: ends the session.  A session already gone
        (deleted, expired, evicted) is not an error, and closing twice
        sends nothing the second time."""
        if self.closed:
            return
        c = self._client
        status, headers, data = c._request("DELETE", self._path())
        if status // 100 != 2:
            try:
                c._raise(status, headers, data)
            except KVNotFound:
                pass
        self.closed = True
