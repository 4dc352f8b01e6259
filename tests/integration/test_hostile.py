"""Hostile and malformed requests against the real daemon.

Each case sends raw bytes on a fresh TCP connection (so malformed HTTP can
be sent too) and checks the documented answer (protocol/SPEC.md "Errors",
docs/RELIABILITY.md) arrives within a bounded time, that error bodies name
no request bytes beyond field names, and that the daemon stays healthy
afterwards: /healthz answers 200 and a good request still succeeds.
"""
import json
import math
import os
import socket
import struct
import time

import msgpack
import numpy as np
import pytest

from mrad_server import (MradServer, encode_msgpack, metric_value, mrad_testhooks_binary,
                         request_map)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSWER_WITHIN_S = 10.0
KEY = "s3cret-hostile-key-7f1c"


def raw(srv, data, timeout=ANSWER_WITHIN_S):
    """Sends raw bytes, reads one answer.  Returns (status, headers, body,
    seconds) or (None, {}, b"", seconds) when the daemon closed without
    answering."""
    t0 = time.monotonic()
    s = socket.create_connection((srv.host, srv.port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                hdrs = {}
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    hdrs[k.strip().lower().decode()] = v.strip().decode()
                n = int(hdrs.get("content-length", "-1"))
                if n >= 0 and len(rest) >= n:
                    status = int(head.split(b" ")[1])
                    return status, hdrs, rest[:n], time.monotonic() - t0
        if buf.startswith(b"HTTP/"):
            return int(buf.split(b" ")[1]), {}, b"", time.monotonic() - t0
        return None, {}, b"", time.monotonic() - t0
    finally:
        s.close()


def post_raw(body, ctype="application/msgpack", key=KEY, extra=""):
    head = "POST /v1/attention HTTP/1.1\r\nHost: t\r\n"
    if key is not None:
        head += f"Authorization: Bearer {key}\r\n"
    if ctype is not None:
        head += f"Content-Type: {ctype}\r\n"
    if "Content-Length" not in extra and "Transfer-Encoding" not in extra:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


def good_map(N=40, D=8, H=2):
    rng = np.random.default_rng(N)
    q = rng.standard_normal((1, H, N, D)).astype(np.float32)
    return request_map(q, q, q, method="exact")


def mp(m):
    return msgpack.packb(m, use_bin_type=True)


def with_(path, value):
    """The good request map with one field replaced (path 'q.shape')."""
    m = good_map()
    cur = m
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[k]
    if value is DELETE:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return mp(m)


DELETE = object()
GOOD = mp(good_map())


def deep_msgpack(depth):
    return b"\x91" * depth + b"\x00"


def huge_map(n):
    return b"\xdf" + struct.pack(">I", n) + b"".join(
        b"\xa1k" + b"\x00" for _ in range(min(n, 200000)))


def chunked(body, size=1000):
    out = b""
    for i in range(0, len(body), size):
        c = body[i:i + size]
        out += b"%x\r\n" % len(c) + c + b"\r\n"
    return out + b"0\r\n\r\n"


nan_q = good_map()
CASES = [
    # name, raw request bytes, expected statuses
    ("empty body", post_raw(b""), {400}),
    ("truncated body", post_raw(GOOD[:len(GOOD) // 2]), {400}),
    ("garbage body", post_raw(os.urandom(3000)), {400}),
    ("top-level integer", post_raw(mp(7)), {400}),
    ("top-level array", post_raw(mp([1, 2, 3])), {400}),
    ("q missing", post_raw(with_("q", DELETE)), {400}),
    ("q is a string", post_raw(with_("q", "qqqq")), {400}),
    ("unknown dtype", post_raw(with_("q.dtype", "f64")), {400}),
    ("dtype not a string", post_raw(with_("q.dtype", 5)), {400}),
    ("shape of 3 dims", post_raw(with_("q.shape", [1, 2, 40])), {400}),
    ("shape of 5 dims", post_raw(with_("q.shape", [1, 1, 2, 40, 8])), {400}),
    ("negative size", post_raw(with_("q.shape", [1, -2, 40, 8])), {400}),
    ("zero tokens", post_raw(with_("q.shape", [1, 2, 0, 8])), {400}),
    ("zero head dim", post_raw(with_("q.shape", [1, 2, 40, 0])), {400}),
    ("element count overflows 64 bits",
     post_raw(with_("q.shape", [2**31, 2**31, 2**31, 2**31])), {400, 413}),
    ("size past 64 bits", post_raw(with_("q.shape", [1, 2, 2**64 - 1, 8])), {400, 413}),
    ("shape not integers", post_raw(with_("q.shape", [1, 2, 40.5, 8])), {400}),
    ("data shorter than shape", post_raw(with_("q.data", b"\0" * 100)), {400}),
    ("data longer than shape", post_raw(with_("q.data", b"\0" * 2564)), {400}),
    ("data is a string", post_raw(with_("q.data", "x" * 2560)), {400}),
    ("head dim over the limit", post_raw(mp(request_map(
        *(np.zeros((1, 1, 4, 300), np.float32),) * 3))), {400, 413}),
    ("heads not a multiple", post_raw(mp(request_map(
        np.zeros((1, 3, 40, 8), np.float32), np.zeros((1, 2, 40, 8), np.float32),
        np.zeros((1, 2, 40, 8), np.float32)))), {400}),
    ("mask of wrong shape", post_raw(mp(request_map(
        *(np.zeros((1, 2, 40, 8), np.float32),) * 3, mask=np.ones((1, 39), np.uint8)))), {400}),
    ("mask value 2", post_raw(mp(request_map(
        *(np.zeros((1, 2, 40, 8), np.float32),) * 3, mask=np.full((1, 40), 2, np.uint8)))), {400}),
    ("unknown key", post_raw(with_("bogus", 1)), {400}),
    ("duplicate key", post_raw(b"\x84" + GOOD[1:] + b"\xa1q\x00"
                               if GOOD[0] == 0x83 else b"\xde\x00\x04" + GOOD[3:] + b"\xa1q\x00"), {400}),
    ("unknown method", post_raw(with_("method", "fast")), {400}),
    ("negative block_per_row", post_raw(with_("block_per_row", -4)), {400}),
    ("scale is a string", post_raw(with_("scale", "big")), {400}),
    ("negative timeout", post_raw(with_("timeout_ms", -1)), {400}),
    ("huge id string", post_raw(with_("id", "i" * 200000)), {400, 413}),
    ("id not a string", post_raw(with_("id", [1, 2])), {400}),
    ("map claiming 2^32-1 entries", post_raw(huge_map(2**32 - 1)[:5000]), {400}),
    ("huge map of junk keys", post_raw(huge_map(100000)), {400}),
    ("deep nesting", post_raw(deep_msgpack(100000)), {400}),
    ("bin32 claiming 4 GiB", post_raw(b"\x81\xa1q\xc6\xff\xff\xff\xff" + b"\0" * 64), {400}),
    ("array of a million nils", post_raw(b"\xdd" + struct.pack(">I", 1 << 20) + b"\xc0" * (1 << 20)), {400}),
    ("json truncated", post_raw(b'{"q": {"dtype": "f32", "sha', "application/json"), {400}),
    ("json NaN literal", post_raw(b'{"q": NaN}', "application/json"), {400}),
    ("json deep nesting", post_raw(b"[" * 5000 + b"]" * 5000, "application/json"), {400}),
    ("json invalid utf-8", post_raw(b'{"id": "\xff\xfe"}', "application/json"), {400}),
    ("json data of strings", post_raw(json.dumps({
        "q": {"dtype": "f32", "shape": [1, 1, 1, 1], "data": ["1"]},
        "k": {"dtype": "f32", "shape": [1, 1, 1, 1], "data": ["1"]},
        "v": {"dtype": "f32", "shape": [1, 1, 1, 1], "data": ["1"]}}).encode(),
        "application/json"), {400}),
    ("json over its byte limit", post_raw(b" " * 70000 + b"{}", "application/json"), {413}),
    ("wrong content type", post_raw(GOOD, "text/plain"), {415}),
    ("no content type", post_raw(GOOD, None), {415}),
    ("content type with junk parameters", post_raw(GOOD, "application/msgpack; x=\"\x01\""), {200, 400, 415}),
    ("body over the limit (Content-Length)",
     post_raw(b"\0" * 16, extra="Content-Length: 99999999999\r\n"), {413}),
    ("Content-Length not a number", post_raw(GOOD, extra="Content-Length: abc\r\n"), {400, None}),
    ("chunked body over the limit", post_raw(chunked(b"\0" * (5 << 20), 65536),
                                             extra="Transfer-Encoding: chunked\r\n"), {413, None}),
    ("missing API key", post_raw(GOOD, key=None), {401}),
    ("wrong API key", post_raw(GOOD, key="wrong-key-echo-me"), {401}),
    ("GET on the attention path",
     f"GET /v1/attention HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode(), {405}),
    ("POST on a probe", b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", {405}),
    ("unknown path", b"GET /v1/%00%ff/../../etc/passwd HTTP/1.1\r\nHost: t\r\n"
     + f"Authorization: Bearer {KEY}\r\n\r\n".encode(), {404, 400}),
    ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200) + b"\r\n\r\n", {400, None}),
    ("header of 200 KB", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n",
     {400, 413, 431, None}),
    ("HTTP/0.9 request", b"GET /healthz\r\n\r\n", {400, 505, None}),
]


MHD_LEVEL = {"Content-Length not a number", "garbage request line", "header of 200 KB",
             "HTTP/0.9 request"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    keyfile = tmp_path_factory.mktemp("key") / "key"
    keyfile.write_text(KEY + "\n")
    with MradServer(threads=1, extra_args=[
            "--api-key-file", str(keyfile), "--max-body-bytes", str(4 << 20),
            "--max-json-bytes", str(64 << 10), "--max-tokens", "4096",
            "--conn-timeout-s", "3"]) as srv:
        yield srv


def healthy(srv):
    assert srv.get("/healthz")[0] == 200
    out, _ = srv.attention(*(np.ones((1, 1, 40, 8), np.float32),) * 3,
                           headers={"Authorization": f"Bearer {KEY}"})
    assert out.shape == (1, 1, 40, 8) and np.allclose(out, 1.0)


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name,data,want", CASES, ids=[c[0] for c in CASES])
def test_hostile_request_gets_its_answer_and_the_server_stays_healthy(hostile, name, data, want):
    status, hdrs, body, took = raw(hostile, data)
    assert status in want, f"{name}: got {status}, want {want}: {body[:300]!r}"
    assert took < ANSWER_WITHIN_S
    # Malformed HTTP itself (request line, headers, lengths) is answered by
    # libmicrohttpd with its own short HTML page and the connection closed;
    # everything the daemon answers has the JSON error body.
    mhd_level = name in MHD_LEVEL
    if status is not None and status >= 400 and body and not mhd_level:
        assert hdrs.get("content-type", "").startswith("application/json")
        err = json.loads(body)["error"]
        assert err["code"] and err["message"]
        # The message never echoes secrets or request bytes: no key, and
        # no run of request bytes longer than a field name.
        assert KEY not in body.decode() and "wrong-key-echo-me" not in body.decode()
        assert "iiiiiiiiiiiiiiii" not in err["message"]
        assert "xxxxxxxxxxxxxxxx" not in err["message"]
    healthy(hostile)


def test_nan_and_inf_are_computed_per_ieee(hostile):
    """NaN and infinities are not inspected (protocol/SPEC.md): they are
    computed with and reach the outputs they touch; other rows stay finite."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 1, 64, 8)).astype(np.float32)
    k = q.copy()
    v = q.copy()
    q[0, 0, 3, 2] = np.nan
    out, _ = hostile.attention(q, k, v, method="exact", headers={"Authorization": f"Bearer {KEY}"})
    assert np.isnan(out[0, 0, 3]).all()
    assert np.isfinite(np.delete(out[0, 0], 3, axis=0)).all()
    v[0, 0, 10, 0] = np.inf
    out, _ = hostile.attention(np.ones_like(q), k, v, method="exact", headers={"Authorization": f"Bearer {KEY}"})
    assert not np.isfinite(out[0, 0, :, 0]).any()
    assert np.isfinite(out[0, 0, :, 1:]).all()
    healthy(hostile)


def test_limits_answer_413_with_a_clear_message(hostile):
    """--max-tokens 4096: N = 4097 is refused before allocating, naming N."""
    z = np.zeros((1, 1, 4097, 8), np.float32)
    status, hdrs, body, _ = raw(hostile, post_raw(mp(request_map(z, z, z))))
    assert status == 413
    msg = json.loads(body)["error"]["message"]
    assert "4097" in msg and "4096" in msg
    # Element-count bombs: each size allowed, the product over the limit.
    status, _, body, _ = raw(hostile, post_raw(with_("q.shape", [64, 256, 4096, 256])))
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
    healthy(hostile)


def test_limits_are_listed_in_help_and_info(hostile):
    import subprocess
    out = subprocess.run([hostile.binary, "--help"], capture_output=True, text=True).stdout
    for flag in ("--max-batch", "--max-heads", "--max-tokens", "--max-head-dim",
                 "--max-elements", "--max-body-bytes", "--conn-timeout-s"):
        assert flag in out
    status, _, body = hostile.get("/v1/info", headers={"Authorization": f"Bearer {KEY}"})
    info = json.loads(body)
    assert status == 200
    assert info["limits"]["max_tokens"] == 4096


def test_fuzz_corpus_replays_cleanly(tmp_path):
    """Every raw request of tests/fuzz/corpus/http (seeds and inputs a fuzz
    run kept, crashes included) against a daemon configured like the fuzz
    target: each gets an answer or a close in bounded time and the daemon
    stays healthy."""
    keyfile = tmp_path / "key"
    keyfile.write_text("fuzz-key\n")
    d = os.path.join(REPO, "tests", "fuzz", "corpus", "http")
    files = sorted(os.listdir(d))
    assert len(files) >= 20
    with MradServer(threads=1, binary=mrad_testhooks_binary(), extra_args=[
            "--api-key-file", str(keyfile), "--max-body-bytes", "65536",
            "--max-json-bytes", "65536", "--max-tokens", "4096",
            "--max-elements", "1048576", "--conn-timeout-s", "2"]) as srv:
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                data = fh.read()
            _, _, _, took = raw(srv, data, timeout=5)
            assert took < 6, f
            assert srv.get("/healthz")[0] == 200, f
        assert srv.stop() == 0
