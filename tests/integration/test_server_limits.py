"""Black-box tests of mrad's limits and failure paths: body and problem
size limits, API keys, a full queue, deadlines, injected backend faults,
and probes that stay fast while the workers are busy."""
import json
import re
import socket
import threading
import time

import numpy as np
import pytest

from mrad_server import (MradError, MradServer, counted, encode_json, encode_msgpack,
                         metric_value, mrad_testhooks_binary, scrape_until,
                         slow_problem)

RNG = np.random.default_rng(99)


def small(N=64, D=8):
    q = RNG.standard_normal((1, 1, N, D)).astype(np.float32)
    return q, q.copy(), q.copy()


def slow(srv, seconds=0.5):
    """Exact attention that keeps srv busy for about `seconds`."""
    return slow_problem(srv, seconds)


class Background:
    """Runs srv.attention(...) in a thread; .result() gives (out, stats) or
    the MradError."""

    def __init__(self, srv, *args, **kw):
        self.value = None
        self.t = threading.Thread(target=self._run, args=(srv, args, kw), daemon=True)
        self.t.start()

    def _run(self, srv, args, kw):
        try:
            self.value = srv.attention(*args, **kw)
        except Exception as e:  # noqa: BLE001 - reported by result()
            self.value = e

    def result(self, timeout=60):
        self.t.join(timeout)
        assert not self.t.is_alive(), "request did not finish"
        return self.value


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def gauge(srv, name):
    return metric_value(srv.metrics(), name)


def error_of(status, hdrs, body):
    assert hdrs["content-type"] == "application/json", body
    err = json.loads(body)["error"]
    assert err["message"]
    return status, err["code"]


def test_body_limits():
    with MradServer(["--max-body-bytes", "100000", "--max-json-bytes", "2000",
                     "--max-tokens", "64"], threads=1) as srv:
        # Refused from Content-Length alone, before any body byte is sent.
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/msgpack\r\n"
                      b"Content-Length: 50000000\r\n\r\n")
            head = s.recv(65536).decode(errors="replace")
        assert head.startswith("HTTP/1.1 413")
        assert '"payload_too_large"' in head

        # A chunked body has no length up front: refused as it passes the
        # limit.
        conn = srv.connection()
        chunks = (b"\0" * 10000 for _ in range(15))
        conn.request("POST", "/v1/attention", body=chunks, encode_chunked=True,
                     headers={"Content-Type": "application/msgpack"})
        r = conn.getresponse()
        assert error_of(r.status, {k.lower(): v for k, v in r.getheaders()},
                        r.read()) == (413, "payload_too_large")
        conn.close()

        # JSON has its own, smaller limit.
        q, k, v = small(N=32)
        assert error_of(*srv.post(encode_json(q, k, v), "application/json")) == \
            (413, "payload_too_large")
        # Problem-size limits are 413 too.
        q, k, v = small(N=96)
        assert error_of(*srv.post(encode_msgpack(q, k, v))) == (413, "payload_too_large")
        # Within the limits all is well.
        q, k, v = small(N=64)
        out, _ = srv.attention(q, k, v)
        assert out.shape == q.shape
        assert srv.get("/healthz")[0] == 200


def test_api_key(tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cret-key\n")
    with MradServer(["--api-key-file", str(key)], threads=1) as srv:
        q, k, v = small()
        body = encode_msgpack(q, k, v)
        assert error_of(*srv.post(body)) == (401, "unauthorized")
        assert error_of(*srv.post(body, headers={"Authorization": "Bearer wrong"})) == \
            (401, "unauthorized")
        assert error_of(*srv.post(body, headers={"Authorization": "Bearer s3cret-ke"})) == \
            (401, "unauthorized")
        assert error_of(*srv.post(body, headers={"Authorization": "Bearer s3cret-key2"})) == \
            (401, "unauthorized")
        assert error_of(*srv.get("/v1/info")) == (401, "unauthorized")
        auth = {"Authorization": "Bearer s3cret-key"}
        status, hdrs, _ = srv.post(body, headers=auth)
        assert status == 200
        assert srv.get("/v1/info", headers=auth)[0] == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert srv.get(path)[0] == 200, path


def test_full_queue_answers_503_and_accepted_requests_succeed():
    args = ["--max-queue", "1", "--batch-window-us", "0", "--max-batch-requests", "1"]
    with MradServer(args, threads=2) as srv:
        big = slow(srv)
        a = Background(srv, *big, method="exact")
        wait_for(lambda: gauge(srv, "mrad_inflight_requests") == 1 and
                 gauge(srv, "mrad_queue_depth") == 0)
        q, k, v = small()
        b = Background(srv, q, k, v)
        wait_for(lambda: gauge(srv, "mrad_queue_depth") == 1)
        status, hdrs, body = srv.post(encode_msgpack(q, k, v))
        assert error_of(status, hdrs, body) == (503, "overloaded")
        assert int(hdrs["retry-after"]) >= 1
        status, hdrs, body = srv.get("/readyz")
        assert error_of(status, hdrs, body) == (503, "overloaded")
        assert srv.get("/healthz")[0] == 200
        out_a, _ = a.result()
        out_b, _ = b.result()
        assert out_a.shape == big[0].shape and out_b.shape == q.shape
        assert srv.get("/readyz")[0] == 200
        text = scrape_until(srv, counted("mrad_requests_total", 1, {"code": "503"}))
        assert metric_value(text, "mrad_requests_total", {"code": "503"}) >= 1


def test_deadlines_answer_504():
    args = ["--batch-window-us", "0", "--max-batch-requests", "1"]
    with MradServer(args, threads=2) as srv:
        # A request still computing at its deadline is answered then, not
        # when the computation ends.  N=16384 makes the problem heavy in
        # compute and light in bytes (a few heads, 12 MiB each), and the
        # body is encoded before the clock starts, so the time measured is
        # the server's: upload, decode, the 250 ms deadline, the answer.
        big = slow_problem(srv, 2.0)
        body = encode_msgpack(*big, method="exact", timeout_ms=250)
        t0 = time.monotonic()
        status, hdrs, answer = srv.post(body)
        took = time.monotonic() - t0
        assert error_of(status, hdrs, answer) == (504, "timeout")
        assert took < 1.0, f"504 after {took:.2f} s; the computation takes ~2 s"
        # A queued request whose timeout_ms passes while it waits.
        a = Background(srv, *slow(srv), method="exact")
        wait_for(lambda: gauge(srv, "mrad_queue_depth") == 0 and
                 gauge(srv, "mrad_inflight_requests") == 1)
        q, k, v = small()
        t0 = time.monotonic()
        with pytest.raises(MradError) as e:
            srv.attention(q, k, v, timeout_ms=50)
        assert (e.value.status, e.value.code) == (504, "timeout")
        assert time.monotonic() - t0 < 0.35
        assert not isinstance(a.result(), Exception)
        assert srv.get("/healthz")[0] == 200
    # --request-timeout-ms is the default deadline; timeout_ms may shorten
    # it, never lengthen it.
    args += ["--request-timeout-ms", "250"]
    with MradServer(args, threads=2) as srv:
        with pytest.raises(MradError) as e:
            srv.attention(*big, method="exact", timeout_ms=60000)
        assert (e.value.status, e.value.code) == (504, "timeout")


def test_injected_fault_fails_one_batch_only():
    with MradServer(["--batch-window-us", "0"], binary=mrad_testhooks_binary(),
                    threads=1) as srv:
        q, k, v = small()
        out_ok, _ = srv.attention(q, k, v)
        with pytest.raises(MradError) as e:
            srv.attention(q, k, v, headers={"X-Mrad-Inject-Fault": "1",
                                            "X-Request-Id": "faulty-1"})
        assert (e.value.status, e.value.code) == (500, "internal")
        # The error line of the worker names the request.  It is written
        # before the answer, but read from the daemon's stderr by a thread
        # of this process, which may not have reached it yet.
        wait_for(lambda: re.search(r"error .*request faulty-1: its batch of 1 failed",
                                   srv.log_text()), timeout=5)
        for _ in range(3):
            out, _ = srv.attention(q, k, v)
            assert np.array_equal(out, out_ok)
        assert srv.get("/healthz")[0] == 200
        text = scrape_until(srv, counted("mrad_requests_total", 1, {"code": "500"}))
        assert metric_value(text, "mrad_requests_total", {"code": "500"}) == 1


def test_release_build_ignores_the_fault_header(mrad):
    q, k, v = small()
    out, _ = mrad.attention(q, k, v, headers={"X-Mrad-Inject-Fault": "1"})
    assert out.shape == q.shape


def test_probes_answer_quickly_while_workers_are_busy():
    with MradServer(["--batch-window-us", "0"], threads=2) as srv:
        big = slow(srv, 1.0)
        a = Background(srv, *big, method="exact")
        wait_for(lambda: gauge(srv, "mrad_inflight_requests") == 1)
        worst = 0.0
        for path in ("/healthz", "/metrics", "/readyz", "/v1/info") * 3:
            t0 = time.monotonic()
            assert srv.get(path)[0] == 200
            worst = max(worst, time.monotonic() - t0)
        assert gauge(srv, "mrad_inflight_requests") == 1, "the slow request ended too soon"
        assert worst < 0.25
        assert a.result()[0].shape == big[0].shape


def test_queued_request_of_a_client_that_left_is_dropped():
    args = ["--batch-window-us", "0", "--max-batch-requests", "1"]
    with MradServer(args, threads=2) as srv:
        big = slow(srv, 1.0)
        batches = metric_value(srv.metrics(), "mrad_batch_requests_count") or 0
        a = Background(srv, *big, method="exact")
        wait_for(lambda: gauge(srv, "mrad_inflight_requests") == 1)
        q, k, v = small()
        body = encode_msgpack(q, k, v, id="gone")
        s = socket.create_connection((srv.host, srv.port), timeout=10)
        s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/msgpack\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        wait_for(lambda: gauge(srv, "mrad_queue_depth") == 1)
        s.close()
        # Dropped while it waits, long before the slow request ends.
        wait_for(lambda: gauge(srv, "mrad_queue_depth") == 0, timeout=5)
        assert gauge(srv, "mrad_inflight_requests") == 1
        a.result()
        text = scrape_until(srv, counted("mrad_requests_total", 1, {"code": "499"}))
        assert metric_value(text, "mrad_requests_total", {"code": "499"}) == 1
        # Only the slow request was computed.
        assert metric_value(text, "mrad_batch_requests_count") == batches + 1
