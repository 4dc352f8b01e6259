"""The daemon under hostile traffic: a client without a key must not be able
to take the service down or make it do unbounded work (docs/RELIABILITY.md,
"Hostile clients").  One test per finding, each bounded in time, on
loopback.
"""
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import requests

from mrad_server import (MradError, MradServer, encode_msgpack, metric_value,
                         mrad_binary, slow_problem)

KEY = "k" * 40
# Under the sanitizers (make test SANITIZE=...) freed memory stays in
# ASan's quarantine and everything runs several times slower.
SAN = bool(os.environ.get("SANITIZE"))


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def read_answer(s, timeout=10.0):
    """Reads one HTTP answer from socket s: (status, headers, body), or
    (None, {}, b"") when the connection closes or resets first."""
    s.settimeout(timeout)
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout, OSError):
            chunk = b""
        if not chunk:
            return None, {}, b""
        buf += chunk
        # Interim answers (100 Continue) come before the final one.
        while buf.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in buf:
            buf = buf.partition(b"\r\n\r\n")[2]
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if not sep:
            continue
        hdrs = {}
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            hdrs[k.strip().lower().decode()] = v.strip().decode()
        n = int(hdrs.get("content-length", "0"))
        if len(rest) >= n:
            return int(head.split(b" ")[1]), hdrs, rest[:n]


def connect(srv):
    return socket.create_connection((srv.host, srv.port), timeout=10)


def small():
    q = np.random.default_rng(1).standard_normal((1, 2, 64, 16)).astype(np.float32)
    return q, q.copy(), q.copy()


def request_head(method, path, extra=""):
    return (f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").encode()


def timed_get(srv, path="/healthz"):
    t0 = time.monotonic()
    status, _, _ = srv.get(path)
    return status, time.monotonic() - t0


# ---- 1. connection exhaustion ----------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_trickled_heads_are_cut_and_probes_stay_reachable():
    """Connections that trickle a request head a byte at a time fill every
    slot of the request port; they are closed once --header-timeout-ms has
    passed since their first byte, and all the while the probes answer at
    once on --admin-port."""
    raise_fd_limit()
    admin = free_port()
    with MradServer(["--max-connections", "40", "--max-connections-per-ip", "0",
                     "--header-timeout-ms", "1500", "--admin-port", str(admin)],
                    threads=1) as srv:
        probe = http.client.HTTPConnection(srv.host, admin, timeout=5)
        socks = []
        for _ in range(80):
            s = socket.socket()
            s.settimeout(5)
            s.connect_ex((srv.host, srv.port))
            try:
                s.send(b"POST /v1/attention HTTP/1.1\r\n")
            except OSError:
                pass
            socks.append(s)
        t0 = time.monotonic()
        worst = 0.0
        closed_at = {}
        while time.monotonic() - t0 < 6.0 and len(closed_at) < len(socks):
            for i, s in enumerate(socks):
                if i in closed_at:
                    continue
                try:
                    s.setblocking(False)
                    s.send(b"X")
                    try:
                        if s.recv(1) == b"":
                            closed_at[i] = time.monotonic() - t0
                    except BlockingIOError:
                        pass
                except OSError:
                    closed_at[i] = time.monotonic() - t0
            t1 = time.monotonic()
            probe.request("GET", "/healthz")
            r = probe.getresponse()
            r.read()
            assert r.status == 200
            worst = max(worst, time.monotonic() - t1)
            time.sleep(0.2)
        print(f"admin probe worst {worst * 1e3:.0f} ms; "
              f"{len(closed_at)} of {len(socks)} trickling connections closed, "
              f"the last after {max(closed_at.values()):.1f} s")
        assert len(closed_at) == len(socks)
        assert worst < 0.5
        for s in socks:
            s.close()
        # The admin port serves no requests.
        probe.request("GET", "/v1/info")
        r = probe.getresponse()
        r.read()
        assert r.status == 404
        text = srv.metrics()
        assert metric_value(text, "mrad_connections_closed_total",
                            {"reason": "head_timeout"}) >= 30


def test_data_connections_past_the_limit_are_refused_but_probes_answer():
    raise_fd_limit()
    with MradServer(["--max-connections", "20", "--max-connections-per-ip", "0"],
                    threads=1) as srv:
        idle = [connect(srv) for _ in range(20)]
        time.sleep(0.2)
        s = connect(srv)
        s.sendall(request_head("GET", "/v1/info"))
        status, hdrs, body = read_answer(s)
        assert status == 503 and json.loads(body)["error"]["code"] == "overloaded"
        assert hdrs.get("connection") == "close"
        s.close()
        for path in ("/healthz", "/readyz", "/metrics"):
            assert srv.get(path)[0] == 200
        for c in idle:
            c.close()
        time.sleep(0.3)
        assert srv.get("/v1/info")[0] == 200


def test_per_ip_limit():
    with MradServer(["--max-connections-per-ip", "5"], threads=1) as srv:
        # Five connections, each answered, then kept open.  The daemon
        # counts a connection until it has seen it close, which may come
        # a little after the client closed it (startup's probes): try
        # again until those are gone.
        for _ in range(50):
            held = [connect(srv) for _ in range(5)]
            answers = []
            for c in held:
                c.sendall(request_head("GET", "/healthz"))
                answers.append(read_answer(c)[0])
            if answers == [200] * 5:
                break
            for c in held:
                c.close()
            time.sleep(0.1)
        assert answers == [200] * 5
        extra = connect(srv)
        extra.sendall(request_head("GET", "/healthz"))
        status, _, _ = read_answer(extra, timeout=5)
        assert status is None  # closed without an answer
        extra.close()
        for c in held:
            c.close()
        time.sleep(0.3)
        assert srv.get("/healthz")[0] == 200


def test_a_burst_of_connections_is_answered_or_refused_promptly():
    """1100 connections at once, each asking /healthz: every one gets an
    answer or a close within a few seconds; none is left hanging."""
    raise_fd_limit()
    with MradServer(["--max-connections", "1000", "--max-connections-per-ip", "0"],
                    threads=1) as srv:
        results = []
        lock = threading.Lock()

        def one():
            t0 = time.monotonic()
            try:
                s = socket.create_connection((srv.host, srv.port), timeout=15)
                s.sendall(request_head("GET", "/healthz"))
                status, _, _ = read_answer(s, timeout=15)
                s.close()
            except OSError:
                status = None
            with lock:
                results.append((status, time.monotonic() - t0))

        threads = [threading.Thread(target=one) for _ in range(1100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 1100
        answered = sum(1 for st, _ in results if st == 200)
        slowest = max(t for _, t in results)
        print(f"1100 connections: {answered} answered 200, slowest {slowest:.2f} s")
        assert slowest < 15
        assert answered >= 1000
        assert srv.get("/healthz")[0] == 200


# ---- 2. unbounded compute ----------------------------------------------------

def test_costly_problems_are_refused_with_the_estimate():
    with MradServer(threads=1) as srv:
        q = np.zeros((1, 8, 131072, 1), np.float16)
        t0 = time.monotonic()
        with pytest.raises(MradError) as e:
            srv.attention(q, q, q, method="exact")
        assert time.monotonic() - t0 < 5
        assert (e.value.status, e.value.code) == (413, "payload_too_large")
        assert "flop" in e.value.message and "--max-problem-flops" in e.value.message
        with pytest.raises(MradError) as e:
            srv.attention(q, q, q, method="mra2", block_per_row=2**32 - 1)
        assert e.value.status == 413
        # The same shape with a sane budget is cheap enough.
        out, _ = srv.attention(q[:, :1, :8192], q[:, :1, :8192], q[:, :1, :8192],
                               method="mra2", block_per_row=2)
        assert out.shape == (1, 1, 8192, 1)


def test_the_cost_limit_is_a_flag():
    with MradServer(["--max-problem-flops", "1000"], threads=1) as srv:
        q, k, v = small()
        with pytest.raises(MradError) as e:
            srv.attention(q, k, v, method="exact")
        assert e.value.status == 413 and "1e+03" in e.value.message


# ---- 3. cancellation -----------------------------------------------------------

def test_a_timed_out_computation_frees_its_worker():
    with MradServer(["--batch-window-us", "0"], threads=2) as srv:
        big = slow_problem(srv, 4.0)
        with pytest.raises(MradError) as e:
            srv.attention(*big, method="exact", timeout_ms=300)
        assert e.value.status == 504
        t0 = time.monotonic()
        q, k, v = small()
        srv.attention(q, k, v)
        took = time.monotonic() - t0
        print(f"after the 504, a small request took {took:.2f} s "
              f"(the cancelled one needed ~4 s)")
        assert took < (2.0 if SAN else 1.0)


def test_a_client_that_leaves_frees_its_worker():
    with MradServer(["--batch-window-us", "0"], threads=2) as srv:
        big = slow_problem(srv, 4.0)
        body = encode_msgpack(*big, method="exact")
        s = connect(srv)
        s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: t\r\nContent-Type: "
                  b"application/msgpack\r\nContent-Length: %d\r\n\r\n" % len(body))
        s.sendall(body)
        deadline = time.monotonic() + 10
        while metric_value(srv.metrics(), "mrad_inflight_requests") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        s.close()
        q, k, v = small()
        srv.attention(q, k, v)
        took = time.monotonic() - t0
        print(f"client gone, then a small request: {took:.2f} s")
        assert took < (3.0 if SAN else 1.5)


def test_sigterm_mid_compute_exits_within_the_drain_timeout():
    srv = MradServer(["--batch-window-us", "0", "--drain-timeout-ms", "500"],
                     threads=2).start()
    try:
        big = slow_problem(srv, 6.0)
        result = {}

        def post():
            try:
                srv.attention(*big, method="exact")
            except MradError as e:
                result["status"] = e.status
            except OSError:
                result["status"] = None

        t = threading.Thread(target=post)
        t.start()
        deadline = time.monotonic() + 10
        while metric_value(srv.metrics(), "mrad_inflight_requests") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert srv.wait(5) == 0
        took = time.monotonic() - t0
        t.join(5)
        print(f"SIGTERM mid-compute: exited after {took:.2f} s")
        assert took < (4.0 if SAN else 1.5)
        assert result.get("status") == 503
    finally:
        srv.kill()


# ---- 4. memory admission ------------------------------------------------------

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_uploads_are_admitted_by_bytes():
    """With --max-inflight-bytes 100 MiB, two 48 MiB uploads in progress
    leave no room for a third: it is refused with 503 as soon as its
    Content-Length is known, before its body is read."""
    mib = 1 << 20
    with MradServer(["--max-inflight-bytes", str(100 * mib)], threads=1) as srv:
        held = []
        for _ in range(2):
            s = connect(srv)
            s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: t\r\nContent-Type: "
                      b"application/msgpack\r\nContent-Length: %d\r\n\r\n" % (48 * mib))
            s.sendall(b"\0" * mib)
            held.append(s)
        time.sleep(0.3)
        rss0 = rss_kib(srv.proc.pid)
        s = connect(srv)
        t0 = time.monotonic()
        s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: t\r\nContent-Type: "
                  b"application/msgpack\r\nContent-Length: %d\r\n\r\n" % (48 * mib))
        status, hdrs, body = read_answer(s)
        assert status == 503 and hdrs.get("retry-after") == "1"
        assert "--max-inflight-bytes" not in body.decode()  # names no flag value
        assert time.monotonic() - t0 < 2
        s.close()
        if not SAN:
            assert rss_kib(srv.proc.pid) - rss0 < 60 * 1024
        for c in held:
            c.close()
        time.sleep(0.5)
        q, k, v = small()
        srv.attention(q, k, v)


# ---- 5, 6. early answers, lingering close --------------------------------------

def test_an_endless_body_is_not_read_forever():
    """Without a key, Content-Length 2^40: answered 401 at once, and the
    connection is closed within the lingering time however long the client
    goes on sending."""
    keyfile = "/tmp/mrad-hardening-key"
    with open(keyfile, "w") as f:
        f.write(KEY + "\n")
    with MradServer(["--api-key-file", keyfile], threads=1) as srv:
        s = connect(srv)
        s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: t\r\nContent-Type: "
                  b"application/msgpack\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
        t0 = time.monotonic()
        chunk = b"\0" * (1 << 20)
        sent = 0
        s.settimeout(1)
        try:
            while time.monotonic() - t0 < 30:
                sent += s.send(chunk)
        except OSError:
            pass
        took = time.monotonic() - t0
        print(f"2^40 body without a key: closed after {took:.1f} s, {sent >> 20} MiB sent")
        assert took < 10
        s.close()
        # The same for a chunked body that never ends, to a route that
        # reads it: 413 past the limit, then the close.
    with MradServer(["--max-body-bytes", "1048576"], threads=1) as srv:
        s = connect(srv)
        s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: t\r\nContent-Type: "
                  b"application/msgpack\r\nTransfer-Encoding: chunked\r\n\r\n")
        t0 = time.monotonic()
        piece = b"10000\r\n" + b"\0" * 0x10000 + b"\r\n"
        s.settimeout(1)
        try:
            while time.monotonic() - t0 < 30:
                s.send(piece)
        except OSError:
            pass
        assert time.monotonic() - t0 < 10
        s.close()
        assert srv.get("/healthz")[0] == 200


def over_limit_server():
    return MradServer(["--max-body-bytes", str(1 << 20)], threads=1)


def test_http_client_reads_the_413_of_a_large_body():
    body = b"\0" * (8 << 20)
    with over_limit_server() as srv:
        for _ in range(3):
            c = http.client.HTTPConnection(srv.host, srv.port, timeout=20)
            c.request("POST", "/v1/attention", body=body,
                      headers={"Content-Type": "application/msgpack"})
            r = c.getresponse()
            assert r.status == 413
            assert json.loads(r.read())["error"]["code"] == "payload_too_large"
            c.close()


def test_requests_reads_the_413_of_a_large_body():
    with over_limit_server() as srv:
        r = requests.post(srv.url + "/v1/attention", data=b"\0" * (8 << 20),
                          headers={"Content-Type": "application/msgpack"}, timeout=20)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"


def test_curl_reads_the_413_of_a_large_body(tmp_path):
    f = tmp_path / "big"
    f.write_bytes(b"\0" * (8 << 20))
    with over_limit_server() as srv:
        for expect in ([], ["-H", "Expect:"]):
            out = subprocess.run(
                ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-H",
                 "Content-Type: application/msgpack", *expect, "--data-binary",
                 f"@{f}", srv.url + "/v1/attention"],
                capture_output=True, timeout=30)
            assert out.stdout.decode().rsplit("\n", 1)[1] == "413", out


# ---- 7. memory returns ---------------------------------------------------------

@pytest.mark.skipif(SAN, reason="ASan keeps freed memory in its quarantine")
def test_memory_returns_after_a_burst():
    """Resident memory after a burst returns to within 20% of the idle
    daemon's.  Each idle period is awaited by its log line (the first heap
    trim after the release), not by a fixed sleep: on a loaded machine the
    release comes later."""
    def released(srv, times, timeout=30):
        deadline = time.monotonic() + timeout
        while sum("idle: cached memory released" in ln
                  for ln in list(srv.log_lines)) < times:
            assert time.monotonic() < deadline, "no idle release"
            time.sleep(0.1)

    with MradServer(["--idle-release-ms", "1000", "--log-level", "debug"],
                    threads=2) as srv:
        rng = np.random.default_rng(3)
        big = rng.standard_normal((1, 12, 2048, 64)).astype(np.float32)
        # Idle after one request of the kind: code and thread stacks in.
        srv.attention(big, big, big, method="mra2")
        released(srv, 1)
        time.sleep(0.5)
        idle = rss_kib(srv.proc.pid)

        def burst():
            for _ in range(3):
                srv.attention(big, big, big, method="mra2")

        ts = [threading.Thread(target=burst) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        peak = rss_kib(srv.proc.pid)
        released(srv, 2)
        deadline = time.monotonic() + 10
        while rss_kib(srv.proc.pid) > 1.2 * idle and time.monotonic() < deadline:
            time.sleep(0.25)
        after = rss_kib(srv.proc.pid)
        print(f"RSS idle {idle >> 10} MiB, after the burst {peak >> 10} MiB, "
              f"then {after >> 10} MiB")
        assert peak > 1.5 * idle
        assert after <= 1.2 * idle


# ---- 8. request framing ---------------------------------------------------------

@pytest.mark.parametrize("head,status", [
    ("Content-Length: 4\r\nContent-Length: 4\r\n", 400),
    ("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", 400),
    ("Transfer-Encoding: gzip, chunked\r\n", 501),
])
def test_ambiguous_framing_is_refused(head, status):
    with MradServer(threads=1) as srv:
        s = connect(srv)
        s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: t\r\nContent-Type: "
                  b"application/msgpack\r\n" + head.encode() + b"\r\n0\r\n\r\n")
        got, hdrs, body = read_answer(s, timeout=5)
        assert got == status
        assert hdrs["content-type"] == "application/json"
        assert json.loads(body)["error"]["message"]
        assert read_answer(s, timeout=5)[0] is None  # then closed
        s.close()
        assert srv.get("/healthz")[0] == 200


def test_http11_without_host_is_refused():
    with MradServer(threads=1) as srv:
        s = connect(srv)
        s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        status, _, body = read_answer(s, timeout=5)
        assert status == 400 and b"Host" in body
        s.close()


# ---- 9. half-close ----------------------------------------------------------------

def test_a_half_closed_client_gets_its_answer():
    with MradServer(threads=1) as srv:
        q, k, v = small()
        body = encode_msgpack(q, k, v, method="mra2")
        for _ in range(20):
            s = connect(srv)
            s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: t\r\nContent-Type: "
                      b"application/msgpack\r\nContent-Length: %d\r\n\r\n" % len(body)
                      + body)
            s.shutdown(socket.SHUT_WR)
            status, _, _ = read_answer(s)
            assert status == 200
            s.close()


# ---- 11, 12, 14. keys and signals --------------------------------------------------

def test_unauthorized_names_the_scheme(tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY + "\n")
    with MradServer(["--api-key-file", str(keyfile)], threads=1) as srv:
        status, hdrs, _ = srv.get("/v1/info")
        assert status == 401 and hdrs["www-authenticate"] == "Bearer"


def test_several_keys_and_long_keys(tmp_path):
    keys = ["a" * 4096, "second-key", "third.key-3"]
    keyfile = tmp_path / "keys"
    keyfile.write_text("\n".join(keys) + "\n\n")
    with MradServer(["--api-key-file", str(keyfile)], threads=1) as srv:
        for k in keys:
            assert srv.get("/v1/info", headers={"Authorization": f"Bearer {k}"})[0] == 200
        assert srv.get("/v1/info", headers={"Authorization": "Bearer " + "a" * 4095})[0] == 401
        assert srv.get("/v1/info", headers={"Authorization": "Bearer " + "a" * 4097})[0] == 401


def test_a_key_line_too_long_refuses_to_start(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("a" * 5000 + "\n")
    out = subprocess.run([mrad_binary(), "--port", "0", "--api-key-file", str(keyfile)],
                         capture_output=True, timeout=20)
    assert out.returncode == 2
    assert b"line 1: the key is longer than 4096 bytes" in out.stderr


def test_sighup_reloads_keys_and_reopens_the_log(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("old-key\n")
    log = tmp_path / "mrad.log"
    srv = MradServer(["--api-key-file", str(keyfile), "--log-file", str(log)],
                     threads=1)
    # The port is read from the log file rather than stderr.
    srv.proc = subprocess.Popen(srv.args, env=srv.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while srv.port is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
            if log.exists():
                for line in log.read_text().splitlines():
                    if "listening on" in line:
                        srv.port = int(line.rsplit(":", 1)[1].split()[0])
        auth = {"Authorization": "Bearer old-key"}
        assert srv.get("/v1/info", headers=auth)[0] == 200
        keyfile.write_text("new-key\n")
        os.rename(log, tmp_path / "mrad.log.1")
        srv.signal(signal.SIGHUP)
        # The main thread takes signals between its rounds of housekeeping:
        # wait for the reload rather than for a fixed time.
        deadline = time.monotonic() + 10
        while (srv.get("/v1/info", headers=auth)[0] != 401 and
               time.monotonic() < deadline):
            time.sleep(0.05)
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            srv.signal(sig)  # ignored
        time.sleep(0.2)
        assert srv.proc.poll() is None
        assert srv.get("/v1/info", headers=auth)[0] == 401
        assert srv.get("/v1/info", headers={"Authorization": "Bearer new-key"})[0] == 200
        # The access line is written once the answer has gone out.
        deadline = time.monotonic() + 5
        while ("access GET /v1/info 200" not in log.read_text() and
               time.monotonic() < deadline):
            time.sleep(0.05)
        assert "SIGHUP" in log.read_text()
        assert "access GET /v1/info 200" in log.read_text()
        assert "access GET /v1/info 200" in (tmp_path / "mrad.log.1").read_text()
        # A key file that no longer loads keeps the keys in use.
        keyfile.write_text("")
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while ("the keys in use stay" not in log.read_text() and
               time.monotonic() < deadline):
            time.sleep(0.05)
        assert "the keys in use stay" in log.read_text()
        assert srv.get("/v1/info", headers={"Authorization": "Bearer new-key"})[0] == 200
        srv.signal(signal.SIGTERM)
        assert srv.proc.wait(20) == 0
    finally:
        srv.kill()


# ---- 13. log lines cannot be forged -----------------------------------------------

@pytest.mark.parametrize("fmt", ["text", "json"])
def test_control_characters_never_reach_the_log(fmt):
    with MradServer(["--log-format", fmt], threads=1) as srv:
        s = connect(srv)
        s.sendall(b"GET /x%0d%0a2026-01-01T00:00:00.000Z%20info%20forged HTTP/1.1\r\n"
                  b"Host: t\r\n\r\n")
        assert read_answer(s)[0] == 404
        s.close()
        time.sleep(0.2)
        lines = srv.log_text().splitlines()
        assert not any(l.startswith("2026-01-01") or "forged" in l and not
                       ("\\x0d" in l or "\\r" in l or "\\u000d" in l) for l in lines)
        access = [l for l in lines if "forged" in l]
        assert len(access) == 1
        if fmt == "json":
            assert "\r" in json.loads(access[0])["path"]
