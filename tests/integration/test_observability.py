"""What an operator sees of the daemon: request metrics labelled by API
surface, route and attention method, with the probes and /metrics counted
apart; block density by method (never exact); tokens per batch, bytes per
request and the transport time; and request ids (X-Request-Id, W3C
traceparent or made up) sent back and written in every access line, text
and JSON, with the probes logged at debug only.

A request is counted when libmicrohttpd reports it complete, once the last
byte of its answer has gone out: its duration and its send time end there,
so they cannot be recorded before the client can read the answer.  A
scrape right after a request can therefore miss it, and the tests scrape
until the request they made is counted (mrad_server.scrape_until)."""
import json
import re
import shutil
import subprocess
import time

import msgpack
import numpy as np
import pytest

from mrad_server import (MradServer, counted, encode_msgpack, metric_value,
                         scrape_until)


def rnd(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def attention(srv, method="mra2", N=128, headers=None):
    """POSTs a problem; returns (status, headers, body)."""
    q = rnd(N, 1, 2, N, 16)
    return srv.post(encode_msgpack(q, q, q, method=method), headers=headers)


def wait_for_line(srv, pred, timeout=10.0):
    """The access line is written once the answer is sent: just after the
    client got it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [l for l in srv.log_text().splitlines() if pred(l)]
        if lines:
            return lines
        time.sleep(0.02)
    raise AssertionError("no such log line in:\n" + srv.log_text())


@pytest.fixture(scope="module")
def srv():
    with MradServer() as s:
        yield s


def test_probes_and_scrapes_stay_out_of_the_request_metrics():
    with MradServer() as s:
        # The start-up probe is counted once its answer is out.
        base = scrape_until(s, counted("mrad_probe_requests_total", 1,
                                       {"route": "GET /healthz"}))
        healthz = metric_value(base, "mrad_probe_requests_total", {"route": "GET /healthz"})
        for _ in range(10):
            assert s.get("/healthz")[0] == 200
        s.get("/readyz")
        text = scrape_until(
            s, counted("mrad_probe_requests_total", 10 + healthz, {"route": "GET /healthz"}),
            counted("mrad_probe_requests_total", 1, {"route": "GET /readyz"}))
        # 11 probes and a scrape: no request.
        assert metric_value(text, "mrad_requests_total") == metric_value(
            base, "mrad_requests_total")
        assert metric_value(text, "mrad_request_duration_seconds_count") == \
            metric_value(base, "mrad_request_duration_seconds_count")
        assert metric_value(text, "mrad_probe_requests_total",
                            {"route": "GET /healthz", "code": "200"}) == 10 + healthz
        assert metric_value(text, "mrad_probe_requests_total",
                            {"route": "GET /metrics"}) >= 1
        # A computed request, then: counted and timed once.
        attention(s, "exact")
        text = scrape_until(s, counted("mrad_requests_total", 1))
        assert metric_value(text, "mrad_requests_total") == 1
        assert metric_value(text, "mrad_request_duration_seconds_count") == 1


def test_request_metrics_by_surface_route_and_method(srv):
    for m in ("exact", "mra2", "mra2_sparse"):
        attention(srv, m)
    q = rnd(1, 1, 2, 64, 16)
    v2 = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(q.shape),
                      "data": q.ravel().tolist()} for n in ("q", "k", "v")]}
    st, _, _ = srv.request("POST", "/v2/models/mra2/infer", json.dumps(v2).encode(),
                           {"Content-Type": "application/json"})
    assert st == 200
    k = rnd(2, 1, 2, 64, 16)
    st, hd, _ = srv.request("POST", "/v1/kv", msgpack.packb({
        "k": {"dtype": "f32", "shape": list(k.shape), "data": k.tobytes()},
        "v": {"dtype": "f32", "shape": list(k.shape), "data": k.tobytes()}}),
        {"Content-Type": "application/msgpack"})
    assert st == 201, st
    sid = hd["x-mrad-kv"]
    qq = rnd(3, 1, 2, 1, 16)
    st, _, _ = srv.request("POST", f"/v1/kv/{sid}/attention", msgpack.packb({
        "q": {"dtype": "f32", "shape": list(qq.shape), "data": qq.tobytes()},
        "method": "exact"}), {"Content-Type": "application/msgpack"})
    assert st == 200
    assert srv.request("DELETE", f"/v1/kv/{sid}")[0] == 204
    srv.get("/nope")
    want = [
        ({"api": "v1", "route": "POST /v1/attention", "method": "exact", "code": "200"}, 1),
        ({"api": "v1", "route": "POST /v1/attention", "method": "mra2", "code": "200"}, 1),
        ({"api": "v1", "route": "POST /v1/attention", "method": "mra2_sparse", "code": "200"}, 1),
        ({"api": "v2", "route": "POST /v2/models/*/infer", "method": "mra2", "code": "200"}, 1),
        ({"api": "v1", "route": "POST /v1/kv", "code": "201"}, 1),
        ({"api": "v1", "route": "POST /v1/kv/*/attention", "method": "exact", "code": "200"}, 1),
        ({"api": "v1", "route": "DELETE /v1/kv/*", "code": "204"}, 1),
        ({"route": "none", "code": "404"}, 1),
    ]
    text = scrape_until(srv, *(counted("mrad_requests_total", n, labels)
                               for labels, n in want))
    for labels, n in want:
        assert metric_value(text, "mrad_requests_total", labels) >= n, labels
    for labels, _ in want:
        timed = {k: v for k, v in labels.items() if k != "code"}
        assert metric_value(text, "mrad_request_duration_seconds_count", timed) >= 1, timed
    # Density by method, exact left out (it computes every block).
    assert 'mrad_block_density_count{method="exact"}' not in text
    assert metric_value(text, "mrad_block_density_count", {"method": "mra2"}) >= 2
    assert metric_value(text, "mrad_block_density_count", {"method": "mra2_sparse"}) >= 1
    assert 0 < metric_value(text, "mrad_block_density_sum", {"method": "mra2"}) <= 2.0 * 3
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_tokens_bytes_and_transport_time():
    with MradServer() as s:
        N = 256
        q = rnd(5, 1, 2, N, 16)
        body = encode_msgpack(q, q, q, method="exact")
        st, _, answer = s.request("POST", "/v1/attention", body,
                                  {"Content-Type": "application/msgpack"})
        assert st == 200
        text = scrape_until(s, counted("mrad_request_duration_seconds_count", 1))
        # One batch of one request: B*N tokens.
        assert metric_value(text, "mrad_batch_tokens_count") == 1
        assert metric_value(text, "mrad_batch_tokens_sum") == N
        assert metric_value(text, "mrad_batch_tokens_bucket", {"le": "+Inf"}) == 1
        # The bytes of the body in and of the answer out.
        assert metric_value(text, "mrad_request_bytes_sum", {"direction": "in"}) == len(body)
        assert metric_value(text, "mrad_request_bytes_sum", {"direction": "out"}) == len(answer)
        assert metric_value(text, "mrad_request_bytes_count", {"direction": "in"}) == 1
        # The transport share: one receive and one send, each shorter than
        # the whole request.
        total = metric_value(text, "mrad_request_duration_seconds_sum")
        for d in ("receive", "send"):
            assert metric_value(text, "mrad_transport_duration_seconds_count",
                                {"direction": d}) == 1, d
            t = metric_value(text, "mrad_transport_duration_seconds_sum", {"direction": d})
            assert 0 <= t <= total, (d, t, total)


def test_a_slow_upload_shows_in_the_receive_time():
    with MradServer() as s:
        q = rnd(6, 1, 1, 64, 16)
        body = encode_msgpack(q, q, q, method="exact")
        conn = s.connection()
        conn.putrequest("POST", "/v1/attention")
        conn.putheader("Content-Type", "application/msgpack")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[:100])
        time.sleep(0.4)
        conn.send(body[100:])
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        text = scrape_until(s, counted("mrad_request_duration_seconds_count", 1))
        receive = metric_value(text, "mrad_transport_duration_seconds_sum",
                               {"direction": "receive"})
        assert receive >= 0.35, receive
        assert metric_value(text, "mrad_request_duration_seconds_sum") >= receive


def test_request_ids_come_back_and_are_logged(srv):
    _, hd, _ = srv.request("GET", "/v1/info", headers={"X-Request-Id": "order-42.a_b:c"})
    assert hd["x-request-id"] == "order-42.a_b:c"
    wait_for_line(srv, lambda l: "rid=order-42.a_b:c" in l and "/v1/info" in l)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    _, hd, _ = srv.request("GET", "/v1/info", headers={
        "traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert hd["x-request-id"] == trace
    # X-Request-Id wins over traceparent.
    _, hd, _ = srv.request("GET", "/v1/info", headers={
        "X-Request-Id": "mine", "traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert hd["x-request-id"] == "mine"
    # None, or one unfit to repeat (too long, odd characters), or an
    # all-zero trace id: one made here, different each time.
    made = set()
    for h in ({}, {"X-Request-Id": "a" * 65}, {"X-Request-Id": "two words"},
              {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"},
              {"traceparent": "garbage"}):
        _, hd, _ = srv.request("GET", "/v1/info", headers=h)
        assert re.fullmatch(r"[0-9a-f]{16}", hd["x-request-id"]), (h, hd)
        made.add(hd["x-request-id"])
    assert len(made) == 5
    # Errors carry it too, in the header and the log line.
    st, hd, _ = srv.request("POST", "/v1/attention", b"\xc1",
                            {"Content-Type": "application/msgpack",
                             "X-Request-Id": "bad-one"})
    assert st == 400 and hd["x-request-id"] == "bad-one"
    line = wait_for_line(srv, lambda l: "rid=bad-one" in l)[0]
    assert " 400 " in line
    # A computed request.
    st, hd, _ = attention(srv, "mra2", headers={"X-Request-Id": "computed-1"})
    assert st == 200 and hd["x-request-id"] == "computed-1"
    wait_for_line(srv, lambda l: "rid=computed-1" in l and "POST /v1/attention 200" in l)


def test_json_log_lines_and_probes_at_debug():
    with MradServer(["--log-format", "json"]) as s:
        s.get("/healthz")
        s.request("GET", "/v1/info", headers={"X-Request-Id": "json-1"})
        line = wait_for_line(s, lambda l: '"json-1"' in l)[0]
        rec = json.loads(line)
        assert rec["request_id"] == "json-1" and rec["path"] == "/v1/info"
        time.sleep(0.1)
        # At info, the probes write nothing.
        assert not [l for l in s.log_text().splitlines() if "/healthz" in l]
    with MradServer(["--log-level", "debug"]) as s:
        s.get("/healthz")
        lines = wait_for_line(s, lambda l: "GET /healthz 200" in l)
        assert "rid=" in lines[-1] and " debug " in lines[-1], lines[-1]
