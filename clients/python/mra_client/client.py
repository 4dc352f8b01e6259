"""The HTTP client of the attention service, on the standard library.

Thread safety: one Client may be shared by any number of threads.  Each
thread gets its own keep-alive connection (held in a threading.local), so
calls from different threads run in parallel and never interleave on a
socket.  Connections close with Client.close() (the calling thread's) or
when the client is garbage-collected.
"""
import http.client
import json
import socket
import threading
import urllib.parse

import numpy as np

from . import wire
from .errors import MradError, TransportError, error_for


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

    def _request(self, method, path, body=None, content_type=None):
        """One HTTP exchange; returns (status, headers, body bytes).

        A keep-alive connection the server closed while idle fails on
        first use; that (and only that) is retried once on a new one.
        """
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (0, 1):
            c = self._conn()
            reused = self._local.used
            try:
                c.request(method, self._prefix + path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as e:
                self.close()
                if reused and attempt == 0:
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
        status, headers, data = self._request(
            "POST", "/v1/attention", body, "application/msgpack")
        if status != 200:
            self._raise(status, headers, data)
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
        qa = np.asarray(q)
        body = wire.encode_request(q, k, v, mask=mask, method=method,
                                   dtype=dtype, id=id, causal=causal,
                                   q_mask=q_mask, **params)
        msg = self.attention_raw(body)
        raw, dt = msg["out"]
        if raw.size != qa.size:
            raise MradError(200, "bad_response", "the output's size differs from q's")
        raw = raw.reshape(qa.shape)
        out = wire.bf16_to_f32(raw) if dt == "bf16" else raw
        return Result(out, raw, dt, msg.get("stats", {}), msg.get("id"))

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
