"""Black-box tests of mrad's shutdown: on SIGTERM it stops taking work,
answers every accepted request, then exits 0; past --drain-timeout-ms it
answers what is left with 503 and exits."""
import json
import threading
import time

import numpy as np

from mrad_server import (MradError, MradServer, encode_msgpack, metric_value,
                         slow_problem)



def run_bg(srv, results, i, prob, **params):
    try:
        results[i] = srv.attention(*prob, **params)
    except Exception as e:  # noqa: BLE001 - checked by the test
        results[i] = e


def wait_inflight(srv, n, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric_value(srv.metrics(), "mrad_inflight_requests") == n:
            return
        time.sleep(0.01)
    raise AssertionError(f"never saw {n} requests in flight")


def two_slow_in_flight(srv):
    """Two slow exact requests on their way, once both are in flight:
    (results, threads); results[i] is filled when thread i ends."""
    results = [None] * 2
    big = slow_problem(srv, 0.6)
    threads = [threading.Thread(target=run_bg, args=(srv, results, i, big),
                                kwargs={"method": "exact"}) for i in range(2)]
    for t in threads:
        t.start()
    wait_inflight(srv, 2)
    return results, threads


def test_sigterm_finishes_accepted_requests_then_exits_0():
    args = ["--batch-window-us", "0", "--max-batch-requests", "1"]
    srv = MradServer(args, threads=2).start()
    try:
        probs = [slow_problem(srv, 0.3) for _ in range(3)]
        results = [None] * 3
        threads = [threading.Thread(target=run_bg, args=(srv, results, i, probs[i]),
                                    kwargs={"method": "exact"}) for i in range(3)]
        for t in threads:
            t.start()
        wait_inflight(srv, 3)
        srv.signal()
        # While draining: not ready, not healthy, and new work is refused.
        time.sleep(0.05)
        status, hdrs, body = srv.get("/readyz")
        assert status == 503 and json.loads(body)["error"]["code"] == "unavailable"
        status, _, body = srv.get("/healthz")
        assert status == 503
        q = np.ones((1, 1, 32, 8), np.float32)
        status, hdrs, body = srv.post(encode_msgpack(q, q, q))
        assert status == 503 and hdrs["content-type"] == "application/json"
        assert json.loads(body)["error"]["code"] == "unavailable"
        for t in threads:
            t.join(60)
        for (q, _, _), r in zip(probs, results):
            assert not isinstance(r, Exception), r
            assert r[0].shape == q.shape
        assert srv.wait(30) == 0
        assert "stopped" in srv.log_text()
    finally:
        srv.kill()


def test_drain_timeout_answers_503_and_exits():
    args = ["--batch-window-us", "0", "--max-batch-requests", "1",
            "--drain-timeout-ms", "100"]
    srv = MradServer(args, threads=2).start()
    try:
        results, threads = two_slow_in_flight(srv)
        t0 = time.monotonic()
        srv.signal()
        for t in threads:
            t.join(60)
        # Both were cut short: the running one and the queued one.
        for r in results:
            assert isinstance(r, MradError), r
            assert (r.status, r.code) == (503, "unavailable")
        assert time.monotonic() - t0 < 1.5
        assert srv.wait(30) == 0
    finally:
        srv.kill()


def test_second_signal_ends_the_drain_at_once():
    args = ["--batch-window-us", "0", "--max-batch-requests", "1",
            "--drain-timeout-ms", "60000"]
    srv = MradServer(args, threads=2).start()
    try:
        results, threads = two_slow_in_flight(srv)
        srv.signal()
        time.sleep(0.05)
        t0 = time.monotonic()
        srv.signal()
        for t in threads:
            t.join(60)
        assert any(isinstance(r, MradError) and (r.status, r.code) == (503, "unavailable")
                   for r in results), results
        assert time.monotonic() - t0 < 1.5
        assert srv.wait(30) == 0
        assert "second signal" in srv.log_text()
    finally:
        srv.kill()
