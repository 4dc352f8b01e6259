"""Black-box tests of the C clients against a live bin/mrad: `mractl run
--url` answers bitwise like `mractl run --local` for every method and
dtype, and for causal cross-attention bodies (checked against the float64
reference too), errors surface as the service's JSON error with the
documented exit statuses, and bin/mra-load measures a rate the server
holds (all 200), a causal decode-shaped load and an overload (503s
counted), measures latency from intended send times (no coordinated
omission), says what its warm-up sent apart from what it measured, and
writes its sweep CSV and plot (points joined by offered rate)."""
import csv
import http.server
import json
import os
import pty
import re
import subprocess
import threading
import time

import msgpack
import numpy as np
import pytest

import mra_ref
import wire
from mrad_server import MradServer

BIN = os.environ.get("MRAD_BIN_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bin")


def tool(name, *args, timeout=120):
    return subprocess.run([os.path.join(BIN, name), *map(str, args)],
                          capture_output=True, timeout=timeout)


def random_body(path, shape, *extra):
    p = tool("mractl", "random", "--shape", shape, "-o", path, *extra)
    assert p.returncode == 0, p.stderr.decode()
    return path


def out_tensor(raw):
    m = msgpack.unpackb(raw, raw=False)
    return m["out"], m["stats"]


def error_of(p):
    """The JSON error mractl printed on stderr."""
    return json.loads(p.stderr.decode().strip().splitlines()[-1])["error"]


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("method", ["mra2", "mra2_sparse", "exact"])
def test_run_url_matches_local(mrad, tmp_path, method, dtype):
    body = random_body(tmp_path / "req.msgpack", "2,4,100,32", "--hkv", "2",
                       "--method", method, "--dtype", dtype,
                       "--block-per-row", "2", "--seed", "7", "--id", "r1")
    remote = tool("mractl", "run", "--url", mrad.url, body)
    local = tool("mractl", "run", "--local", body)
    assert remote.returncode == 0, remote.stderr.decode()
    assert local.returncode == 0, local.stderr.decode()
    (rout, rstats), (lout, lstats) = out_tensor(remote.stdout), out_tensor(local.stdout)
    assert rout["dtype"] == dtype and rout["shape"] == [2, 4, 100, 32]
    assert rout["data"] == lout["data"]
    assert rstats["blocks_selected"] == lstats["blocks_selected"]
    assert msgpack.unpackb(remote.stdout, raw=False)["id"] == "r1"


CROSS_SHAPES = [("2,4,20,32", "150"), ("1,2,1,16", "500"),
                ("1,2,90,16", "40")]


@pytest.mark.parametrize("shape,kv_len", CROSS_SHAPES)
@pytest.mark.parametrize("method", ["mra2", "mra2_sparse", "exact"])
def test_run_url_cross_attention(mrad, tmp_path, method, shape, kv_len):
    """Causal cross-attention bodies from `mractl random --kv-len --causal
    --q-mask`: the server answers bitwise like the offline runner, with q's
    shape, and both match the float64 reference."""
    body = random_body(tmp_path / "req.msgpack", shape, "--kv-len", kv_len,
                       "--hkv", "1", "--causal", "--mask", "random",
                       "--q-mask", "random", "--method", method,
                       "--block-per-row", "1", "--seed", "11")
    remote = tool("mractl", "run", "--url", mrad.url, body)
    local = tool("mractl", "run", "--local", body)
    assert remote.returncode == 0, remote.stderr.decode()
    assert local.returncode == 0, local.stderr.decode()
    (rout, rstats), (lout, lstats) = out_tensor(remote.stdout), out_tensor(local.stdout)
    B, H, Nq, D = (int(x) for x in shape.split(","))
    assert rout["shape"] == [B, H, Nq, D]
    assert rout["data"] == lout["data"]
    req = wire.decode_request(body.read_bytes())
    assert req["causal"] is True and req["k"].shape[2] == int(kv_len)
    ref, sel, tot = mra_ref.attention(req["q"], req["k"], req["v"],
                                      mask=req["mask"], q_mask=req["q_mask"],
                                      causal=True, method=method,
                                      block_per_row=1)
    out = np.frombuffer(rout["data"], "<f4").reshape(rout["shape"])
    assert mra_ref.rel_err(out, ref) <= 1e-4
    assert (rstats["blocks_selected"], rstats["blocks_total"]) == (sel, tot)


def test_random_is_deterministic(tmp_path):
    a = random_body(tmp_path / "a", "1,2,64,16", "--seed", "3")
    b = random_body(tmp_path / "b", "1,2,64,16", "--seed", "3")
    c = random_body(tmp_path / "c", "1,2,64,16", "--seed", "4")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    bad = tool("mractl", "random", "--shape", "1,3,64,16", "--hkv", "2")
    assert bad.returncode == 2 and error_of(bad)["code"] == "bad_request"


def test_json_body_round_trip(mrad, tmp_path):
    body = random_body(tmp_path / "req.json", "1,2,40,8", "--json", "--method", "exact")
    remote = tool("mractl", "run", "--url", mrad.url, body)
    local = tool("mractl", "run", "--local", body)
    assert remote.returncode == 0, remote.stderr.decode()
    assert json.loads(remote.stdout)["out"]["data"] == json.loads(local.stdout)["out"]["data"]


def test_get_endpoints(mrad):
    h = tool("mractl", "health", "--url", mrad.url)
    assert h.returncode == 0 and json.loads(h.stdout) == {"status": "ok"}
    i = tool("mractl", "info", "--url", mrad.url)
    assert i.returncode == 0 and json.loads(i.stdout)["backend"] == "cpu"
    m = tool("mractl", "metrics", "--url", mrad.url)
    assert m.returncode == 0 and b"# TYPE" in m.stdout


def test_errors(mrad, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"q": 1}')
    p = tool("mractl", "run", "--url", mrad.url, bad)
    assert p.returncode == 2 and p.stdout == b""
    assert error_of(p)["code"] == "bad_request"
    # nothing listens on port 9: a transport error, exit 1
    p = tool("mractl", "run", "--url", "http://127.0.0.1:9", bad)
    assert p.returncode == 1 and error_of(p)["code"] == "transport"
    p = tool("mractl", "health", "--url", "http://127.0.0.1:9")
    assert p.returncode == 1
    p = tool("mractl", "run", "--url", mrad.url)
    assert p.returncode == 2


def test_auth_and_size_limits(tmp_path):
    key = tmp_path / "key"
    key.write_text("k3y\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    body = random_body(tmp_path / "req", "1,2,256,32")
    args = ["--api-key-file", key, "--max-body-bytes", "32768"]
    with MradServer(extra_args=args, threads=1) as srv:
        small = random_body(tmp_path / "small", "1,1,32,8")
        p = tool("mractl", "run", "--url", srv.url, small)
        assert p.returncode == 2 and error_of(p)["code"] == "unauthorized"
        p = tool("mractl", "run", "--url", srv.url, "--api-key-file", wrong, small)
        assert p.returncode == 2 and error_of(p)["code"] == "unauthorized"
        p = tool("mractl", "run", "--url", srv.url, "--api-key-file", key, small)
        assert p.returncode == 0, p.stderr.decode()
        p = tool("mractl", "run", "--url", srv.url, "--api-key-file", key, body)
        assert p.returncode == 2 and error_of(p)["code"] == "payload_too_large"
        # mra-load sends the key too
        r = tool("mra-load", "--url", srv.url, "--api-key-file", key, "--file", small,
                 "--rate", "20", "--duration", "0.5", "--warmup", "0", "--json")
        assert r.returncode == 0, r.stderr.decode()
        rep = json.loads(r.stdout)
        assert rep["status"]["200"] == rep["sent"] > 0


def load(url, *args):
    r = tool("mra-load", "--url", url, "--json", "--quiet", *args)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_load_held_rate(mrad):
    rep = load(mrad.url, "--shape", "1,2,256,32", "--method", "mra2,exact",
               "--dtype", "f32,bf16", "--rate", "40", "--poisson",
               "--duration", "2", "--warmup", "0.5")
    assert rep["mode"] == "poisson"
    assert rep["sent"] > 40 and rep["completed"] == rep["sent"]
    assert rep["status"] == {"200": rep["sent"], "503": 0, "504": 0,
                             "other": 0, "transport": 0}
    lat = rep["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert 20 < rep["throughput_rps"] < 60

    closed = load(mrad.url, "--shape", "1,2,128,32", "--concurrency", "2",
                  "--duration", "1", "--warmup", "0.2")
    assert closed["mode"] == "closed" and closed["status"]["200"] > 0
    assert closed["status"]["200"] == closed["completed"]


def test_load_decode_shapes(mrad):
    """Decode-shaped causal load: 1 and 16 queries over 2048 keys."""
    rep = load(mrad.url, "--shape", "1,4,1,32", "--shape", "1,4,16,32",
               "--kv-len", "2048", "--hkv", "2", "--causal", "--method",
               "mra2,exact", "--rate", "30", "--duration", "1",
               "--warmup", "0.2")
    assert rep["sent"] > 10 and rep["completed"] == rep["sent"]
    assert rep["status"]["200"] == rep["sent"]
    bad = tool("mra-load", "--url", mrad.url, "--kv-len", "0")
    assert bad.returncode == 2 and b"--kv-len" in bad.stderr
    bad = tool("mra-load", "--url", mrad.url, "--file", "x", "--causal")
    assert bad.returncode == 2 and b"not both" in bad.stderr


def test_load_overload_and_sweep(tmp_path):
    """One compute thread and a queue of two: several times the rate it
    holds is answered largely with 503, and mra-load counts them."""
    args = ["--max-queue", "2", "--max-batch-requests", "1"]
    with MradServer(extra_args=args, threads=1) as srv:
        # exact attention on one long head: much compute for a small body,
        # so the compute thread saturates before the HTTP intake does
        shape = ["--shape", "1,1,4096,16", "--method", "exact"]
        one = load(srv.url, *shape, "--concurrency", "1", "--duration", "1",
                   "--warmup", "0.2")
        capacity = one["throughput_rps"]
        assert capacity > 0
        over = load(srv.url, *shape, "--rate", str(round(6 * capacity, 1)),
                    "--duration", "1.5", "--warmup", "0")
        assert over["status"]["503"] > 0
        assert over["status"]["200"] > 0
        assert over["status"]["other"] == over["status"]["transport"] == 0
        assert over["completed"] == over["sent"]

        csv_path, png = tmp_path / "sweep.csv", tmp_path / "sweep.png"
        rates = f"{capacity / 4:.1f},{capacity * 4:.1f}"
        sw = load(srv.url, *shape, "--sweep", rates, "--duration", "1",
                  "--warmup", "0", "--csv", csv_path, "--plot", png)
        assert len(sw["runs"]) == 2
        rows = list(csv.DictReader(open(csv_path)))
        assert [float(r["offered_rps"]) for r in rows] == [float(x) for x in rates.split(",")]
        assert int(rows[0]["n503"]) == 0 and int(rows[1]["n503"]) > 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _StallingServer(http.server.ThreadingHTTPServer):
    """Answers every POST with 200 at once, except that from 0.5 s to 1.0 s
    after the first request it answers nothing: requests arriving then
    wait for the end of the stall."""
    daemon_threads = True

    def __init__(self):
        self.first = None
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 65536  # headers and body in one segment

            def log_message(self, *args):
                pass

            def do_POST(h):
                h.rfile.read(int(h.headers["Content-Length"]))
                now = time.monotonic()
                with self.lock:
                    if self.first is None:
                        self.first = now
                    stall_end = self.first + 1.0
                if self.first + 0.5 <= now < stall_end:
                    time.sleep(stall_end - now)
                h.send_response(200)
                h.send_header("Content-Length", "2")
                h.end_headers()
                h.wfile.write(b"ok")
                h.wfile.flush()

        super().__init__(("127.0.0.1", 0), Handler)


def test_load_names_transport_errors():
    """Nothing listens on port 9: every request is a transport error, and
    the report says which (libcurl's message), in JSON and in text."""
    rep = load("http://127.0.0.1:9", "--shape", "1,1,32,8", "--rate", "20",
               "--duration", "0.5", "--warmup", "0")
    assert rep["status"]["transport"] == rep["sent"] > 0
    assert rep["transport_errors"] == {"Couldn't connect to server": rep["sent"]}
    r = tool("mra-load", "--url", "http://127.0.0.1:9", "--shape", "1,1,32,8",
             "--rate", "20", "--duration", "0.5", "--warmup", "0")
    assert b"transport  Couldn't connect to server: " in r.stdout


def test_load_counts_stalls_from_intended_send_time():
    """A 0.5 s stall at 100 requests/s: the ~50 requests intended during it
    wait up to 0.5 s, and the percentiles show it (a closed-loop tool would
    record a single slow request)."""
    srv = _StallingServer()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        rep = load(f"http://127.0.0.1:{srv.server_address[1]}", "--shape", "1,1,32,8",
                   "--rate", "100", "--duration", "2", "--warmup", "0")
    finally:
        srv.shutdown()
        srv.server_close()
    assert rep["sent"] == rep["completed"] == rep["status"]["200"] == 200
    lat = rep["latency_ms"]
    assert lat["p50"] < 100           # most requests are not delayed
    assert lat["p90"] > 150           # a quarter of them fall in the stall
    assert 400 < lat["p99"] <= lat["max"] < 900


class _OkServer(http.server.ThreadingHTTPServer):
    """Answers every POST with 200 at once."""
    daemon_threads = True

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(h):
                h.rfile.read(int(h.headers["Content-Length"]))
                h.send_response(200)
                h.send_header("Content-Length", "2")
                h.end_headers()
                h.wfile.write(b"ok")

        super().__init__(("127.0.0.1", 0), Handler)

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


def test_load_reports_the_warmup_apart():
    """What the warm-up sends is counted on its own, in the report and in
    the progress line (which shows it while the warm-up runs)."""
    with _OkServer() as url:
        rep = load(url, "--shape", "1,1,32,8", "--rate", "50", "--duration", "0.6",
                   "--warmup", "0.6")
        assert 20 <= rep["warmup_sent"] <= 40 and 20 <= rep["sent"] <= 40
        assert rep["completed"] == rep["sent"] == rep["status"]["200"]
        text = tool("mra-load", "--url", url, "--shape", "1,1,32,8", "--rate", "50",
                    "--duration", "0.4", "--warmup", "0.4", "--quiet").stdout.decode()
        assert re.search(r"\d+ sent in the measured phase, \d+ completed in [\d.]+ s "
                         r"\(and \d+ sent in the warm-up, not counted\)", text), text
        # the progress line, on a terminal
        master, slave = pty.openpty()
        p = subprocess.Popen([os.path.join(BIN, "mra-load"), "--url", url, "--shape",
                              "1,1,32,8", "--rate", "50", "--duration", "0.9",
                              "--warmup", "1.2"], stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        assert p.wait(timeout=30) == 0
        os.close(master)
    warm = [int(n) for n in re.findall(rb"warmup sent (\d+) \(not measured\)", seen)]
    assert warm and max(warm) > 0, seen
    assert re.search(rb"run sent \d+", seen), seen


def test_sweep_plot_joins_points_by_offered_rate(tmp_path):
    """The sweep's rates in any order: the plot's points go by offered
    rate, its axes say plainly what they show, and the legend sits below
    the plot, off the points."""
    fake = tmp_path / "bin"
    fake.mkdir()
    script = tmp_path / "script.gp"
    (fake / "gnuplot").write_text(f"#!/bin/sh\ncat > {script}\n")
    (fake / "gnuplot").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    with _OkServer() as url:
        p = subprocess.run([os.path.join(BIN, "mra-load"), "--url", url, "--shape",
                            "1,1,32,8", "--sweep", "30,10,20", "--duration", "0.3",
                            "--warmup", "0", "--quiet", "--csv", tmp_path / "s.csv",
                            "--plot", tmp_path / "s.png"], env=env,
                           capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    gp = script.read_text()
    block = gp.split("$sweep << EOD\n")[1].split("EOD\n")[0].splitlines()
    assert [float(line.split()[0]) for line in block] == [10, 20, 30]
    assert "set xlabel 'throughput (successful requests per second)'" in gp
    assert "set ylabel 'latency (ms)'" in gp and "answers per second" not in gp
    assert "set key below" in gp
    # the CSV keeps the order the rates were run in
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [float(r["offered_rps"]) for r in rows] == [30, 10, 20]


def test_load_version():
    version = open(os.path.join(os.path.dirname(__file__), "..", "..", "VERSION")).read()
    p = tool("mra-load", "--version")
    assert p.returncode == 0 and p.stdout.decode() == f"mra-load {version.strip()}\n"
