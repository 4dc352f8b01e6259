"""`mra-load --decode` against a live bin/mrad: decoding steps on sessions
the tool creates and deletes (every step a 200, the sessions gone from
/metrics afterwards), in an open and a closed loop; sessions the server
expires are created again with everything they held, counted, and their
steps sent again; a session cache too small for the growing sessions
gives 507s that are counted and backed off; and the
usage errors of the decode options."""
import json
import os
import subprocess
import time

from mrad_server import MradServer, metric_value

BIN = os.environ.get("MRAD_BIN_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bin")


def load(url, *args, timeout=120):
    p = subprocess.run([os.path.join(BIN, "mra-load"), "--url", url, "--json",
                        "--quiet", "--decode", *map(str, args)],
                       capture_output=True, timeout=timeout)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def sessions(srv, want):
    """mrad_kv_sessions once it is `want`, or after 5 s.  A session leaves
    the count when its last request has let go of it, which may come a
    moment after the answers the client has seen."""
    deadline = time.monotonic() + 5
    while True:
        n = metric_value(srv.metrics(), "mrad_kv_sessions")
        if n == want or time.monotonic() > deadline:
            return n
        time.sleep(0.02)


def kv_metrics(srv):
    """Sessions now, created, and ended by reason."""
    text = srv.metrics()
    m = {name: metric_value(text, name)
         for name in ("mrad_kv_sessions", "mrad_kv_created_total")}
    for reason in ("deleted", "evicted", "expired"):
        m[reason] = metric_value(text, "mrad_kv_ended_total", {"reason": reason})
    return m


def test_decode_open_and_closed_loop():
    with MradServer(threads=2) as srv:
        rep = load(srv.url, "--decode-context", 512, "--sessions", 3,
                   "--shape", "1,8,1,32", "--hkv", 2, "--method", "mra2,exact",
                   "--rate", 40, "--duration", 1.5, "--warmup", 0.3)
        assert rep["mode"] == "fixed" and rep["sent"] >= 50
        assert rep["completed"] == rep["sent"]
        assert rep["status"] == {"200": rep["sent"], "503": 0, "504": 0,
                                 "other": 0, "transport": 0}
        lat = rep["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
        dec = rep["decode"]
        assert dec == {"sessions": 3, "context": 512, "kv_not_found": 0,
                       "recreated": 0, "retried": 0, "recreate_failed": 0,
                       "kv_cache_full": 0, "abandoned": 0, "deleted": 3,
                       "gone_at_end": 0}
        assert rep["sessions_recreated"] == 0
        assert sessions(srv, 0) == 0
        m = kv_metrics(srv)
        assert m["mrad_kv_created_total"] == 3 and m["deleted"] == 3

        closed = load(srv.url, "--decode-context", 100, "--shape", "1,2,1,16",
                      "--dtype", "f16", "--concurrency", 2, "--duration", 1,
                      "--warmup", 0.2)
        assert closed["mode"] == "closed" and closed["status"]["200"] > 20
        assert closed["status"]["200"] == closed["completed"]
        assert closed["decode"]["sessions"] == 2  # --concurrency's
        assert closed["decode"]["deleted"] == 2
        assert sessions(srv, 0) == 0


def test_expired_sessions_are_created_again():
    """Sessions idle for 150 ms expire; four of them at 5 steps/s are each
    used every 0.8 s, so steps find them gone (404), and the tool makes
    them again, from the context and the tokens of their steps so far, and
    sends each such step once more: every step is answered 200."""
    with MradServer(extra_args=["--kv-ttl-ms", "150"], threads=1) as srv:
        rep = load(srv.url, "--decode-context", 64, "--sessions", 4,
                   "--shape", "1,1,1,16", "--rate", 5, "--duration", 2.5,
                   "--warmup", 0)
        dec = rep["decode"]
        assert dec["kv_not_found"] >= 2
        assert rep["sessions_recreated"] == dec["recreated"]
        assert dec["recreated"] == dec["retried"] == dec["kv_not_found"]
        assert dec["recreate_failed"] == dec["kv_cache_full"] == 0
        assert rep["by_status"].get("404", 0) == 0
        assert rep["status"]["200"] == rep["completed"] == rep["sent"]
        assert rep["status"]["transport"] == 0
        m = kv_metrics(srv)
        assert m["mrad_kv_created_total"] == 4 + dec["recreated"]
        # Tokens admitted: the four contexts, one per step, and each
        # re-create's context plus the steps its session had taken, which
        # is more than the context alone as soon as a session that answered
        # a step is made again.
        admitted = metric_value(srv.metrics(), "mrad_kv_append_tokens_total")
        base = 4 * 64 + rep["status"]["200"] + 64 * dec["recreated"]
        assert base < admitted <= base + dec["recreated"] * rep["status"]["200"]
        assert sessions(srv, 0) == 0


def test_cache_full_is_counted_and_backed_off():
    """One session of 64 tokens fits a 16000-byte budget; its growth does
    not: steps are answered 507, counted, and the session backs off, so a
    second of arrivals does not become a stream of refusals; what still
    waits --timeout after the end is given up."""
    with MradServer(extra_args=["--kv-cache-bytes", "16000"], threads=1) as srv:
        rep = load(srv.url, "--decode-context", 64, "--sessions", 1,
                   "--shape", "1,1,1,16", "--rate", 20, "--duration", 1,
                   "--warmup", 0, "--timeout", 1.5)
        dec = rep["decode"]
        n507 = rep["by_status"].get("507", 0)
        assert n507 >= 2 and dec["kv_cache_full"] >= n507
        assert n507 < 15  # backed off: far fewer tries than arrivals
        assert dec["abandoned"] > 0
        assert rep["completed"] + dec["abandoned"] == rep["sent"]
        assert dec["deleted"] == 1
        assert sessions(srv, 0) == 0


def test_setup_failure_and_usage_errors(tmp_path):
    tool = os.path.join(BIN, "mra-load")

    def run(*args):
        return subprocess.run([tool, *map(str, args)], capture_output=True,
                              timeout=60)

    for args, needle in (
            (["--decode-context", "10"], b"go with --decode"),
            (["--sessions", "2"], b"go with --decode"),
            (["--decode", "--kv-len", "10"], b"--decode takes one --shape"),
            (["--decode", "--dtype", "f32,f16"], b"one --dtype"),
            (["--decode", "--file", "x"], b"no --file"),
            (["--decode", "--concurrency", "4", "--sessions", "2"],
             b"needs --sessions >= 4"),
            (["--decode", "--decode-context", "0"], b"--decode-context"),
    ):
        p = run("--url", "http://127.0.0.1:9", *args)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr, (args, p.stderr)
    assert b"--decode-context N" in run("--help").stdout

    # a context the service cannot hold: a setup error, exit 1
    with MradServer(extra_args=["--kv-cache-bytes", "10000"], threads=1) as srv:
        p = run("--url", srv.url, "--decode", "--decode-context", 64,
                "--sessions", 3, "--shape", "1,1,1,16", "--duration", 0.5,
                "--quiet")
        assert p.returncode == 1
        assert b"creating session" in p.stderr and b"kv_cache_full" in p.stderr
        assert sessions(srv, 0) == 0
