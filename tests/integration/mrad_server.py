"""Start the real bin/mrad on a free loopback port, for black-box tests.

    from mrad_server import MradServer
    with MradServer(extra_args=["--batch-window-us", "50000"]) as srv:
        status, headers, body = srv.get("/healthz")
        out, stats = srv.attention(q, k, v, method="mra2")

The daemon is started with --host 127.0.0.1 --port 0 --backend cpu (and
--threads when given); extra_args come last, so they override those (e.g.
["--backend", "auto"]).  The port it bound is read from its startup log
line.  Its stderr (log and access lines) is collected
in `srv.log_lines`.  The binary is $MRAD_BIN_DIR/mrad (tests/run.sh sets it)
or bin/mrad of the repository.  Also holds a small request encoder so the
helper depends on nothing but numpy and msgpack, and the readers of
/metrics the tests share (metric_value, scrape_until).
"""
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time

import msgpack
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_DTYPES = {"f32": np.float32, "f16": np.float16, "u8": np.uint8}


def mrad_binary():
    """Path of the mrad binary under test."""
    d = os.environ.get("MRAD_BIN_DIR") or os.path.join(REPO, "bin")
    return os.path.join(d, "mrad")


def mrad_testhooks_binary():
    """Path of the test build of mrad (server/module.mk), which honours
    the X-Mrad-Inject-Fault header; $MRAD_TESTHOOKS_BIN (tests/run.sh sets
    it) or build/tests/server/mrad-testhooks."""
    return os.environ.get("MRAD_TESTHOOKS_BIN") or os.path.join(
        REPO, "build", "tests", "server", "mrad-testhooks")


def tensor(a, dtype=None):
    """numpy array -> wire tensor map (f32 unless dtype says otherwise)."""
    dtype = dtype or ("u8" if a.dtype == np.uint8 else
                      "f16" if a.dtype == np.float16 else "f32")
    a = np.ascontiguousarray(a, dtype=_DTYPES[dtype])
    return {"dtype": dtype, "shape": list(a.shape), "data": a.astype(a.dtype.newbyteorder("<")).tobytes()}


def request_map(q, k, v, mask=None, **params):
    """The request map of POST /v1/attention; params are the optional keys
    (method, block_per_row, num_blocks, prior_first, prior_diagonal, scale,
    timeout_ms, id, causal, and q_mask as an array [B, Nq] of 0/1)."""
    m = {"q": tensor(q), "k": tensor(k), "v": tensor(v)}
    if mask is not None:
        m["mask"] = tensor(np.asarray(mask, dtype=np.uint8), "u8")
    if params.get("q_mask") is not None:
        params = dict(params, q_mask=tensor(
            np.asarray(params["q_mask"], dtype=np.uint8), "u8"))
    m.update({key: val for key, val in params.items() if val is not None})
    return m


def encode_msgpack(q, k, v, mask=None, **params):
    return msgpack.packb(request_map(q, k, v, mask, **params), use_bin_type=True)


def encode_json(q, k, v, mask=None, **params):
    def jt(a, dt):
        return {"dtype": dt, "shape": list(a.shape),
                "data": [int(x) if dt == "u8" else float(x) for x in a.reshape(-1)]}
    m = {"q": jt(np.asarray(q, np.float32), "f32"), "k": jt(np.asarray(k, np.float32), "f32"),
         "v": jt(np.asarray(v, np.float32), "f32")}
    if mask is not None:
        m["mask"] = jt(np.asarray(mask, np.uint8), "u8")
    if params.get("q_mask") is not None:
        params = dict(params, q_mask=jt(np.asarray(params["q_mask"], np.uint8),
                                        "u8"))
    m.update({key: val for key, val in params.items() if val is not None})
    return json.dumps(m).encode()


def decode_tensor(t):
    """Wire tensor (msgpack bytes or JSON list data) -> numpy array."""
    dt = _DTYPES[t["dtype"]]
    if isinstance(t["data"], (bytes, bytearray)):
        a = np.frombuffer(t["data"], dtype=np.dtype(dt).newbyteorder("<"))
    else:
        a = np.asarray(t["data"], dtype=dt)
    return a.reshape(t["shape"])


def decode_answer(body, content_type):
    """A 200 body -> (out array, stats dict, whole map)."""
    if content_type.startswith("application/json"):
        m = json.loads(body)
    else:
        m = msgpack.unpackb(body, raw=False)
    return decode_tensor(m["out"]), m["stats"], m


class MradError(Exception):
    """A non-2xx answer: status, code and message of the JSON error body."""

    def __init__(self, status, code, message, headers):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.headers = status, code, message, headers


class MradServer:
    """A running bin/mrad.  Use as a context manager (stops with SIGTERM)."""

    def __init__(self, extra_args=(), env=None, binary=None, host="127.0.0.1",
                 startup_timeout=30.0, threads=None):
        self.binary = binary or mrad_binary()
        self.args = [self.binary, "--host", host, "--port", "0", "--backend", "cpu"]
        if threads is not None:
            self.args += ["--threads", str(threads)]
        self.args += list(extra_args)
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.host = host
        self.port = None
        self.startup_timeout = startup_timeout
        self.proc = None
        self.log_lines = []
        self._log_lock = threading.Lock()
        self._port_seen = threading.Event()

    # -- lifetime -----------------------------------------------------------
    def start(self):
        self.proc = subprocess.Popen(self.args, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._port_seen.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("mrad did not start:\n" + self.log_text())
        while time.monotonic() < deadline:
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("mrad never answered /healthz:\n" + self.log_text())

    def _read_log(self):
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._log_lock:
                self.log_lines.append(line)
            if self.port is None:
                m = re.search(r"listening on .*:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    self._port_seen.set()

    def log_text(self):
        with self._log_lock:
            return "\n".join(self.log_lines)

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait(self, timeout=30.0):
        """Waits for exit; returns the exit status."""
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def stop(self, timeout=30.0):
        """SIGTERM, then wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            self.kill()

    # -- HTTP -----------------------------------------------------------------
    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def connection(self, timeout=60.0):
        """A new keep-alive http.client connection to the daemon."""
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None, timeout=60.0):
        """One request; returns (status, headers dict with lower-case names,
        body bytes).  Reuses `conn` when given (keep-alive)."""
        own = conn is None
        c = conn or self.connection(timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            if own:
                c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, body, content_type="application/msgpack", headers=None, **kw):
        h = {"Content-Type": content_type}
        h.update(headers or {})
        return self.request("POST", "/v1/attention", body=body, headers=h, **kw)

    def attention(self, q, k, v, mask=None, fmt="msgpack", headers=None, conn=None, **params):
        """POSTs a problem; returns (out, stats) or raises MradError."""
        if fmt == "json":
            status, hdrs, body = self.post(encode_json(q, k, v, mask, **params),
                                           "application/json", headers, conn=conn)
        else:
            status, hdrs, body = self.post(encode_msgpack(q, k, v, mask, **params),
                                           "application/msgpack", headers, conn=conn)
        if status != 200:
            err = json.loads(body)["error"]
            raise MradError(status, err["code"], err["message"], hdrs)
        out, stats, _ = decode_answer(body, hdrs.get("content-type", ""))
        return out, stats

    def metrics(self):
        """GET /metrics as text."""
        status, _, body = self.get("/metrics")
        assert status == 200
        return body.decode()


_SECONDS_PER_HEAD = {}


def slow_problem(srv, min_seconds=0.5, N=16384, D=64, max_heads=256):
    """(q, k, v) of an exact-attention problem that keeps `srv` computing
    for at least about `min_seconds`, for tests that need busy workers.
    The long sequence makes it heavy in compute and light in bytes (12 MiB
    a head), so that uploads and encoding take little of that time and
    tests that need several requests in flight together get them on a
    slow machine too.
    The compute time per head is measured once per --threads setting (a
    few requests to `srv`, timed by their compute_us: count metrics as
    differences) and reused by later servers."""
    threads = srv.args[srv.args.index("--threads") + 1] if "--threads" in srv.args else None
    key = (threads, N, D)
    if key not in _SECONDS_PER_HEAD:
        rng = np.random.default_rng(2024)
        H = 1
        while True:
            q = rng.standard_normal((1, H, N, D)).astype(np.float32)
            _, st = srv.attention(q, q, q, method="exact")
            took = max(st["compute_us"], 1) / 1e6
            # Long enough to time well, or as large as allowed.
            if took >= 0.2 or H >= max_heads:
                break
            H = min(max_heads, H * 4)
        _SECONDS_PER_HEAD[key] = took / H
    H = min(max_heads, int(1.25 * min_seconds / _SECONDS_PER_HEAD[key]) + 1)
    # q, k and v must fit the body limit: past it, a sequence twice as long
    # does the work of four heads in the bytes of two.
    limit = (int(srv.args[srv.args.index("--max-body-bytes") + 1])
             if "--max-body-bytes" in srv.args else 512 << 20)
    while H > 1 and 3 * H * N * D * 4 > 0.95 * limit:
        N *= 2
        H = (H + 3) // 4
    q = np.random.default_rng(H).standard_normal((1, H, N, D)).astype(np.float32)
    return q, q.copy(), q.copy()


def metric_value(text, name, labels=None):
    """The value of a metric in a Prometheus text exposition: the sum of
    its samples whose labels include `labels` (a dict; None or {} for all
    of them), or None when no sample matches."""
    want = {k: str(v) for k, v in (labels or {}).items()}
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, val = line.rpartition(" ")
        metric, brace, rest = key.partition("{")
        if metric != name:
            continue
        have = {}
        if brace:
            for part in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest):
                have[part[0]] = part[1]
        if all(have.get(k) == v for k, v in want.items()):
            total += float(val)
            found = True
    return total if found else None


def counted(name, n, labels=None):
    """A test of a scrape for scrape_until: `name` (its samples matching
    `labels`) is at least n."""
    return lambda text: (metric_value(text, name, labels) or 0) >= n


def scrape_until(srv, *done, timeout=5.0):
    """/metrics of `srv` once every test of `done` holds (each a function
    of the text, as counted() makes), or the last scrape after `timeout`
    seconds (whose assertions then say what is missing).

    A request is counted in mrad_requests_total,
    mrad_request_duration_seconds, mrad_request_bytes and
    mrad_transport_duration_seconds when libmicrohttpd reports it
    complete, after the last byte of its answer went out: a scrape right
    after reading an answer can come before that.  Metrics the worker
    records before answering (mrad_batch_*, queue and compute times, block
    density) need no waiting."""
    deadline = time.monotonic() + timeout
    while True:
        text = srv.metrics()
        if all(d(text) for d in done) or time.monotonic() > deadline:
            return text
        time.sleep(0.02)
