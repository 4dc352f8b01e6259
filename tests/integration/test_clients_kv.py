"""`mractl kv` against a live bin/mrad: a problem split across a session
(create with the first keys, append more, attend with the last ones
appended in the same round trip) answers like `mractl run --local` of the
whole problem and like the float64 reference, for every method and dtype,
with grouped heads, masks and causality; get, delete and the 404 after
it; a create over a tiny session budget is a 507; usage errors exit 2
before anything is sent."""
import json
import os
import subprocess
import time

import numpy as np
import pytest

import mra_ref
import wire
from mrad_server import MradServer, metric_value

BIN = os.environ.get("MRAD_BIN_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bin")


def mractl(*args, stdin=None):
    return subprocess.run([os.path.join(BIN, "mractl"), *map(str, args)],
                          capture_output=True, timeout=120, input=stdin)


def ok(p):
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def error_of(p):
    """The JSON error mractl printed on stderr."""
    return json.loads(p.stderr.decode().strip().splitlines()[-1])["error"]


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


def create(url, *args):
    info = json.loads(ok(mractl("kv", "create", "--url", url, *args)))
    assert len(info["kv"]) == 32
    return info


# float32 compute is within 1e-4 of float64 (relative Frobenius error);
# f16 and bf16 answers add their rounding.
TOL = {"f32": 1e-4, "f16": 2e-3, "bf16": 1e-2}


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("method", ["exact", "mra2", "mra2_sparse"])
def test_split_problem_equals_whole(mrad, tmp_path, method, dtype):
    """Keys 0..149 in a create, 150..179 in an append, 180..199 appended by
    the attend: the answer is the whole problem's."""
    problem = ["--shape", "2,4,7,16", "--kv-len", "200", "--hkv", "2",
               "--dtype", dtype, "--seed", "17", "--mask", "random",
               "--method", method, "--block-per-row", "2"]
    info = create(mrad.url, *problem, "--tokens", "0:150", "--ttl-ms", "60000")
    assert info["shape"] == [2, 2, 150, 16] and info["tokens"] == 150
    assert info["dtype"] == dtype and info["ttl_ms"] == 60000
    sid = info["kv"]
    more = json.loads(ok(mractl("kv", "append", "--url", mrad.url, "--kv", sid,
                                *problem, "--tokens", "150:180")))
    assert more["kv"] == sid and more["tokens"] == 180
    ans = ok(mractl("kv", "attend", "--url", mrad.url, "--kv", sid, *problem,
                    "--causal", "--append", "180:200", "--id", "step"))
    out, stats, rid = wire.decode_response(ans)
    assert rid == "step" and out.shape == (2, 4, 7, 16)
    assert stats["method"] == method

    body = tmp_path / "whole.msgpack"
    ok(mractl("random", *problem, "--causal", "-o", body))
    local, lstats, _ = wire.decode_response(ok(mractl("run", "--local", body)))
    assert (stats["blocks_selected"], stats["blocks_total"]) == \
        (lstats["blocks_selected"], lstats["blocks_total"])
    req = wire.decode_request(body.read_bytes())
    ref, sel, tot = mra_ref.attention(req["q"], req["k"], req["v"],
                                      mask=req["mask"], causal=True,
                                      method=method, block_per_row=2)
    assert (sel, tot) == (stats["blocks_selected"], stats["blocks_total"])
    assert mra_ref.rel_err(out.astype(np.float64), ref) <= TOL[dtype]
    assert mra_ref.rel_err(out.astype(np.float64),
                           local.astype(np.float64)) <= TOL[dtype] / 10

    got = json.loads(ok(mractl("kv", "get", "--url", mrad.url, "--kv", sid)))
    assert got["tokens"] == 200 and got["shape"] == [2, 2, 200, 16]
    assert ok(mractl("kv", "delete", "--url", mrad.url, "--kv", sid)) == b""


def test_from_file_and_json(mrad, tmp_path):
    """--from takes the problem of a request body (here JSON, not causal):
    the session holds its keys, the attend sends its queries, and the JSON
    answer equals `mractl run --local` of the body."""
    body = tmp_path / "req.json"
    ok(mractl("random", "--shape", "1,2,5,8", "--kv-len", "70", "--hkv", "1",
              "--method", "exact", "--mask", "blocks", "--id", "from-file",
              "--json", "-o", body))
    sid = create(mrad.url, "--from", body)["kv"]
    ans = json.loads(ok(mractl("kv", "attend", "--url", mrad.url, "--kv", sid,
                               "--from", body, "--json")))
    local = json.loads(ok(mractl("run", "--local", body)))
    assert ans["id"] == "from-file"
    assert ans["out"]["shape"] == [1, 2, 5, 8]
    np.testing.assert_allclose(ans["out"]["data"], local["out"]["data"],
                               rtol=1e-5, atol=1e-6)
    # stdin works as for `mractl run`
    p = mractl("kv", "attend", "--url", mrad.url, "--kv", sid, "--from", "-",
               stdin=body.read_bytes())
    assert p.returncode == 0 and p.stdout[:1] != b"{"  # msgpack by default
    ok(mractl("kv", "delete", "--url", mrad.url, "--kv", sid))


def test_get_delete_and_not_found(mrad):
    problem = ["--shape", "1,2,1,8", "--kv-len", "40"]
    sid = create(mrad.url, *problem)["kv"]
    got = json.loads(ok(mractl("kv", "get", "--url", mrad.url, "--kv", sid)))
    assert got["kv"] == sid and got["tokens"] == 40 and got["idle_ms"] >= 0
    ok(mractl("kv", "delete", "--url", mrad.url, "--kv", sid))
    for verb, extra in (("get", []), ("delete", []), ("append", problem),
                        ("attend", problem)):
        p = mractl("kv", verb, "--url", mrad.url, "--kv", sid, *extra)
        assert p.returncode == 2, (verb, p.stderr)
        assert p.stdout == b""
        assert error_of(p)["code"] == "kv_not_found", verb
    # an append that does not match the session is the server's 400
    sid = create(mrad.url, *problem)["kv"]
    p = mractl("kv", "append", "--url", mrad.url, "--kv", sid,
               "--shape", "1,2,1,16", "--kv-len", "4")
    assert p.returncode == 2 and error_of(p)["code"] == "bad_request"
    ok(mractl("kv", "delete", "--url", mrad.url, "--kv", sid))


def test_cache_full(tmp_path):
    """A 64 KiB budget: a session of 160 KiB does not fit (507, exit 1);
    one that fits does, and an append past the budget is a 507 too."""
    with MradServer(extra_args=["--kv-cache-bytes", "65536"], threads=1) as srv:
        p = mractl("kv", "create", "--url", srv.url, "--shape", "1,4,1,64",
                   "--kv-len", "80")
        assert p.returncode == 1 and p.stdout == b""
        err = error_of(p)
        assert err["code"] == "kv_cache_full" and err["message"]
        sid = create(srv.url, "--shape", "1,1,1,16", "--kv-len", "32")["kv"]
        p = mractl("kv", "append", "--url", srv.url, "--kv", sid, "--shape",
                   "1,1,1,16", "--kv-len", "4096")
        assert p.returncode == 1 and error_of(p)["code"] == "kv_cache_full"
        ok(mractl("kv", "delete", "--url", srv.url, "--kv", sid))
        assert sessions(srv, 0) == 0


@pytest.mark.parametrize("args,needle", [
    (["kv"], "usage: mractl kv"),
    (["kv", "frobnicate"], "unknown command"),
    (["kv", "get"], "--kv ID is required"),
    (["kv", "get", "--kv", "not/an/id"], "bad value for --kv"),
    (["kv", "create"], "--shape B,H,Nq,D or --from FILE"),
    (["kv", "create", "--shape", "1,1,1,8", "--from", "x"], "one of them"),
    (["kv", "create", "--from", "x", "--causal"], "brings its own problem"),
    (["kv", "create", "--shape", "1,1,1,8", "--tokens", "5:3"], "--tokens"),
    (["kv", "create", "--shape", "1,1,1,8", "--kv-len", "4", "--tokens",
      "0:9"], "beyond the problem's 4 keys"),
    (["kv", "get", "--kv", "abc", "--shape", "1,1,1,8"], "unexpected argument"),
    (["kv", "create", "--shape", "1,1,1,8", "--append", "0:1"],
     "unexpected argument"),
    (["kv", "create", "--shape", "1,3,1,8", "--hkv", "2"], "multiple"),
])
def test_usage_errors(args, needle):
    # nothing listens on port 9: every one of these stops before sending
    p = mractl(*args, "--url", "http://127.0.0.1:9") if len(args) > 1 \
        else mractl(*args)
    assert p.returncode == 2, p
    assert needle in p.stderr.decode()


def test_help():
    p = mractl("kv", "--help")
    assert p.returncode == 0
    for verb in ("create", "append", "get", "delete", "attend"):
        assert f"mractl kv {verb}" in p.stdout.decode()
    assert b"kv create|append|get|delete|attend" in mractl("help").stdout
