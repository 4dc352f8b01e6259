"""Faults around the daemon: clients that leave at every stage of a
request, slow senders (connection timeout), SIGTERM with 50 requests in
flight.  After each, /metrics must show nothing left in flight, the open
descriptors back where they were, and the daemon still serving."""
import os
import socket
import threading
import time

import numpy as np

from mrad_server import (MradServer, decode_answer, encode_msgpack, metric_value,
                         slow_problem)

SAN = bool(os.environ.get("SANITIZE"))


def gauge(srv, name):
    return metric_value(srv.metrics(), name)


def wait_for(cond, timeout=20.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    raise AssertionError("condition not reached")


def http_post(body):
    return (b"POST /v1/attention HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/msgpack\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def small(seed=0, N=64):
    q = np.random.default_rng(seed).standard_normal((1, 1, N, 16)).astype(np.float32)
    return q, q.copy(), q.copy()


class Background:
    def __init__(self, srv, *prob, **params):
        self.res = None
        self.t = threading.Thread(target=self._run, args=(srv, prob, params))
        self.t.start()

    def _run(self, srv, prob, params):
        try:
            self.res = srv.attention(*prob, **params)
        except Exception as e:  # noqa: BLE001 - checked by result()
            self.res = e

    def result(self, timeout=120):
        self.t.join(timeout)
        if isinstance(self.res, Exception):
            raise self.res
        return self.res


class Posted(Background):
    """A pre-encoded body POSTed on a thread; result() is (status, headers,
    body)."""
    def __init__(self, srv, body):
        self.res = None
        self.t = threading.Thread(target=self._post, args=(srv, body))
        self.t.start()

    def _post(self, srv, body):
        try:
            self.res = srv.post(body)
        except Exception as e:  # noqa: BLE001 - checked by result()
            self.res = e


def settled(srv, fds0):
    """Nothing in flight, descriptors back to the baseline, still serving."""
    wait_for(lambda: gauge(srv, "mrad_inflight_requests") == 0)
    wait_for(lambda: gauge(srv, "process_open_fds") <= fds0 + 1, timeout=10)
    out, _ = srv.attention(*small(9))
    assert out.shape == (1, 1, 64, 16)
    assert srv.get("/healthz")[0] == 200


def test_client_disconnects_at_every_stage():
    # libmicrohttpd sometimes notices a client that closed mid-body only at
    # the idle timeout: a short one bounds how long its descriptor stays.
    args = ["--batch-window-us", "0", "--max-batch-requests", "1", "--conn-timeout-s", "3"]
    with MradServer(args, threads=2) as srv:
        srv.attention(*small())
        fds0 = gauge(srv, "process_open_fds")
        body = encode_msgpack(*small(1))

        # While uploading: half the body, then gone.
        for _ in range(5):
            s = socket.create_connection((srv.host, srv.port))
            s.sendall(http_post(body)[: len(body) // 2])
            s.close()
        settled(srv, fds0)

        # While computing: a slow problem, closed once it is in flight.
        big = slow_problem(srv, 0.5)
        s = socket.create_connection((srv.host, srv.port))
        s.sendall(http_post(encode_msgpack(*big, method="exact")))
        wait_for(lambda: gauge(srv, "mrad_inflight_requests") == 1)
        time.sleep(0.1)
        s.close()
        settled(srv, fds0)

        # While queued (behind a slow request) and while computing, with
        # a well-behaved request queued too: it is still answered.
        a = Background(srv, *big, method="exact")
        wait_for(lambda: gauge(srv, "mrad_inflight_requests") == 1)
        gone = socket.create_connection((srv.host, srv.port))
        gone.sendall(http_post(body))
        b = Background(srv, *small(2))
        wait_for(lambda: gauge(srv, "mrad_inflight_requests") == 3)
        gone.close()
        assert a.result()[0].shape == big[0].shape
        assert b.result()[0].shape == (1, 1, 64, 16)
        settled(srv, fds0)

        # While receiving: a large answer, read a little of, then gone.
        q = np.random.default_rng(3).standard_normal((1, 8, 4096, 64)).astype(np.float32)
        for _ in range(3):
            s = socket.create_connection((srv.host, srv.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(http_post(encode_msgpack(q, q, q)))
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            s.close()
        settled(srv, fds0)
        assert srv.stop() == 0


def test_disconnect_in_a_batch_fails_only_that_client():
    """Five requests share a batch; one client leaves while it computes;
    the other four get their (exact) answers."""
    # The batch starts when its fifth request arrives; the window is only a
    # bound should one be late.  The body is encoded once, before any is
    # sent, and N=16384 keeps it light in bytes for its compute (a few
    # heads of 12 MiB), so the five arrive together on a slow machine too.
    args = ["--batch-window-us", "1000000", "--max-batch-requests", "5"]
    with MradServer(args, threads=2) as srv:
        fds0 = gauge(srv, "process_open_fds")
        big = slow_problem(srv, 0.3)
        body = encode_msgpack(*big, method="exact")
        solo, _ = srv.attention(*big, method="exact")
        runs = [Posted(srv, body) for _ in range(4)]
        s = socket.create_connection((srv.host, srv.port))
        s.sendall(http_post(body))
        wait_for(lambda: gauge(srv, "mrad_inflight_requests") == 5)
        wait_for(lambda: gauge(srv, "mrad_queue_depth") == 0)
        s.close()
        for r in runs:
            status, hdrs, answer = r.result()
            assert status == 200, answer[:200]
            out, _, _ = decode_answer(answer, hdrs.get("content-type", ""))
            assert np.array_equal(out, solo)
        settled(srv, fds0)


def test_slow_senders_are_dropped_and_do_not_block_others():
    """--conn-timeout-s 2: clients that stop in the middle of their headers
    or body (slowloris) are disconnected within a bounded time, a body
    trickled byte by byte too, and other clients are served meanwhile."""
    with MradServer(["--conn-timeout-s", "2", "--http-threads", "2"], threads=1) as srv:
        fds0 = gauge(srv, "process_open_fds")
        body = encode_msgpack(*small(4))
        slow = []
        for i in range(20):
            s = socket.create_connection((srv.host, srv.port))
            s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: x\r\n" if i % 2
                      else http_post(body)[:-200])
            slow.append(s)
        t0 = time.monotonic()
        # Others are served while the slow ones hang.
        for i in range(5):
            out, _ = srv.attention(*small(i))
            assert out.shape == (1, 1, 64, 16)
        assert time.monotonic() - t0 < 5
        # Each slow sender is cut off: the daemon closes its side.
        for s in slow:
            s.settimeout(15)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            s.close()
        took = time.monotonic() - t0
        assert took < 12, took
        # A body trickled a byte at a time (never silent long enough for
        # the idle timeout) is cut off once the request is older than
        # --conn-timeout-s.
        s = socket.create_connection((srv.host, srv.port))
        s.sendall(http_post(body)[: -len(body)])
        s.settimeout(0.1)
        t0 = time.monotonic()
        closed = False
        for ch in body[:40]:
            try:
                s.sendall(bytes([ch]))
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.3)
        s.close()
        assert closed and time.monotonic() - t0 < 8
        settled(srv, fds0)


def test_sigterm_with_50_in_flight_answers_every_accepted_request():
    """A slow request holds the worker while 50 more queue; SIGTERM: all 51
    are computed and answered 200, then mrad exits 0."""
    n = 50
    args = ["--max-batch-requests", "8", "--max-queue", "256"]
    srv = MradServer(args, threads=2).start()
    try:
        big = slow_problem(srv, 3.0 if SAN else 2.0)
        first = Background(srv, *big, method="exact")
        wait_for(lambda: gauge(srv, "mrad_inflight_requests") == 1)
        runs = [Background(srv, *small(i)) for i in range(n)]
        wait_for(lambda: gauge(srv, "mrad_inflight_requests") == n + 1, timeout=60)
        srv.signal()
        assert first.result()[0].shape == big[0].shape
        for i, r in enumerate(runs):
            out, _ = r.result()
            assert out.shape == (1, 1, 64, 16)
        assert srv.wait(60) == 0
        assert "stopped" in srv.log_text()
    finally:
        srv.kill()


def test_conn_timeout_does_not_cut_a_long_computation():
    """A request computing longer than --conn-timeout-s is still answered:
    the idle limit applies to reading, not to a suspended connection."""
    with MradServer(["--conn-timeout-s", "1"], threads=2) as srv:
        prob = slow_problem(srv, 2.0)
        out, st = srv.attention(*prob, method="exact")
        assert out.shape == prob[0].shape and st["compute_us"] > 1e6
