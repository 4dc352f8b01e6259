"""Black-box tests of `mractl run --local`: request bodies in, answers out,
checked against the float64 reference (tests/pyref/mra_ref.py).

Covers every method, masks (random, whole blocks, all masked), priors,
budgets up to every block (which must equal exact attention), grouped
heads, odd N and D, the three dtypes, JSON bodies, cross-attention (Nq
above, below and equal to Nk, one query), causal masking at offsets that
are and are not multiples of the block, query masks, the committed
request files of tests/data, `mractl random`, and malformed bodies (exit
2, JSON error on stderr naming the field).  The binary is found in
$MRAD_BIN_DIR (default bin/).
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "pyref"))
import mra_ref  # noqa: E402
import wire  # noqa: E402

BIN = pathlib.Path(os.environ.get("MRAD_BIN_DIR") or ROOT / "bin")
MRACTL = BIN / "mractl"
DATA = ROOT / "tests" / "data"
TOL = {"f32": 1e-4, "f16": 1e-2, "bf16": 1e-2}

pytestmark = pytest.mark.skipif(not MRACTL.exists(),
                                reason=f"{MRACTL} is not built")


def mractl(*args, stdin=None):
    return subprocess.run([str(MRACTL), *map(str, args)], input=stdin,
                          capture_output=True, timeout=120)


def run_file(tmp_path, body, name="req.msgpack", extra=()):
    path = tmp_path / name
    path.write_bytes(body)
    return mractl("run", "--local", path, *extra)


def inputs(shape, hkv=None, seed=0, mask=None, nk=None):
    """q [B, H, Nq, D] for shape = (B, H, Nq, D), k and v [B, hkv, nk, D]
    (nk defaults to Nq) and a key mask [B, nk] of the kind asked for."""
    B, H, Nq, D = shape
    N = nk or Nq
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Nq, D), dtype=np.float32)
    k = rng.standard_normal((B, hkv or H, N, D), dtype=np.float32)
    v = rng.standard_normal((B, hkv or H, N, D), dtype=np.float32)
    if mask == "random":
        mask = (rng.random((B, N)) < 0.7).astype(np.uint8)
    elif mask == "blocks":
        mask = np.ones((B, N), dtype=np.uint8)
        mask[:, 32:64] = 0
    elif mask == "zeros":
        mask = np.zeros((B, N), dtype=np.uint8)
    return q, k, v, mask


def check(out, stats, q, k, v, mask, dtype, **params):
    """Compares an answer with the reference on the dtype-rounded inputs."""
    ref_params = {n: params[n] for n in REF_PARAMS
                  if params.get(n) is not None}
    ref, sel, total = mra_ref.attention(
        wire.round_to_dtype(q, dtype), wire.round_to_dtype(k, dtype),
        wire.round_to_dtype(v, dtype), mask=mask, **ref_params)
    assert out.shape == ref.shape
    err = mra_ref.rel_err(out.astype(np.float64), ref)
    assert err <= TOL[dtype], f"relative error {err:.3g} over {TOL[dtype]}"
    assert stats["blocks_selected"] == sel
    assert stats["blocks_total"] == total
    assert stats["density"] == pytest.approx(sel / total, rel=1e-12)
    assert stats["method"] == (params.get("method") or "mra2")
    assert stats["backend"] == "cpu"
    assert stats["queue_us"] == 0
    assert stats["batch_requests"] == 1
    assert stats["compute_us"] >= 0
    return ref


# What the reference takes besides the tensors and the key mask.
REF_PARAMS = ("method", "block_per_row", "num_blocks", "prior_first",
              "prior_diagonal", "scale", "q_mask", "causal",
              "min_blocks_per_row", "error_samples", "target_error")


def roundtrip(tmp_path, q, k, v, mask=None, dtype="f32", fmt="msgpack",
              **params):
    body = wire.encode_request(q, k, v, mask=mask, dtype=dtype, fmt=fmt,
                               **params)
    p = run_file(tmp_path, body)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert p.stderr == b""
    out, stats, rid = wire.decode_response(p.stdout, fmt)
    assert rid == params.get("id")
    return out, stats


@pytest.mark.parametrize("dtype", wire.DTYPES)
@pytest.mark.parametrize("method", ["mra2", "mra2_sparse", "exact"])
def test_methods_and_dtypes(tmp_path, method, dtype):
    q, k, v, mask = inputs((1, 2, 100, 17), seed=1, mask="random")
    out, stats = roundtrip(tmp_path, q, k, v, mask, dtype, method=method,
                           block_per_row=2, id=f"{method}-{dtype}")
    assert out.dtype == (np.float16 if dtype == "f16" else np.float32)
    check(out, stats, q, k, v, mask, dtype, method=method, block_per_row=2)


@pytest.mark.parametrize("mask", [None, "random", "blocks", "zeros"])
def test_masks(tmp_path, mask):
    q, k, v, m = inputs((2, 2, 96, 16), seed=2, mask=mask)
    out, stats = roundtrip(tmp_path, q, k, v, m, method="mra2",
                           block_per_row=2)
    check(out, stats, q, k, v, m, "f32", method="mra2", block_per_row=2)
    if mask == "zeros":
        assert not out.any()
    if m is not None:  # masked query rows are zero
        assert not out[np.broadcast_to(m[:, None, :] == 0,
                                       out.shape[:3])].any()


@pytest.mark.parametrize("prior_first,prior_diagonal", [(1, 0), (0, 3),
                                                        (2, 5)])
@pytest.mark.parametrize("method", ["mra2", "mra2_sparse"])
def test_priors(tmp_path, method, prior_first, prior_diagonal):
    q, k, v, _ = inputs((1, 2, 160, 8), seed=3)
    params = dict(method=method, num_blocks=6, prior_first=prior_first,
                  prior_diagonal=prior_diagonal)
    out, stats = roundtrip(tmp_path, q, k, v, **params)
    check(out, stats, q, k, v, None, "f32", **params)


@pytest.mark.parametrize("method", ["mra2", "mra2_sparse"])
def test_every_block_equals_exact(tmp_path, method):
    q, k, v, mask = inputs((1, 2, 100, 16), seed=4, mask="random")
    nb = 4
    out, stats = roundtrip(tmp_path, q, k, v, mask, method=method,
                           num_blocks=nb * nb)
    check(out, stats, q, k, v, mask, "f32", method=method,
          num_blocks=nb * nb)
    exact, _ = roundtrip(tmp_path, q, k, v, mask, method="exact")
    assert mra_ref.rel_err(out, exact.astype(np.float64)) <= 1e-5
    assert stats["density"] == 1.0


@pytest.mark.parametrize("params", [dict(num_blocks=1), dict(num_blocks=500),
                                    dict(block_per_row=1),
                                    dict(block_per_row=3, num_blocks=5),
                                    dict(scale=0.05), dict()])
def test_budgets_and_scale(tmp_path, params):
    q, k, v, _ = inputs((1, 1, 130, 8), seed=5)
    out, stats = roundtrip(tmp_path, q, k, v, **params)
    check(out, stats, q, k, v, None, "f32", **params)


@pytest.mark.parametrize("H,hkv", [(4, 2), (4, 1), (3, 3)])
def test_grouped_heads(tmp_path, H, hkv):
    q, k, v, mask = inputs((2, H, 70, 8), hkv=hkv, seed=6, mask="random")
    out, stats = roundtrip(tmp_path, q, k, v, mask, block_per_row=1)
    check(out, stats, q, k, v, mask, "f32", block_per_row=1)


@pytest.mark.parametrize("N", [1, 33, 100])
@pytest.mark.parametrize("D", [1, 17, 64])
def test_odd_sizes(tmp_path, N, D):
    q, k, v, _ = inputs((1, 2, N, D), seed=7)
    out, stats = roundtrip(tmp_path, q, k, v, block_per_row=1)
    check(out, stats, q, k, v, None, "f32", block_per_row=1)


def query_mask(B, Nq, seed):
    rng = np.random.default_rng(seed)
    m = (rng.random((B, Nq)) < 0.75).astype(np.uint8)
    m[:, -1] = 1  # the last query (the one a decode step wants) is real
    return m


# Cross-attention and causal masking.  (Nq, Nk): fewer queries than keys
# at offsets that are (64) and are not (60, 299) multiples of the block,
# more queries than keys (negative offsets: the first queries see no key
# when causal), one query, and Nq == Nk.
CROSS = [(40, 100), (32, 96), (100, 40), (70, 5), (1, 300), (1, 1),
         (65, 65)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nq,nk", CROSS)
@pytest.mark.parametrize("method", ["mra2", "mra2_sparse", "exact"])
def test_cross_attention(tmp_path, method, nq, nk, causal):
    q, k, v, mask = inputs((1, 2, nq, 8), hkv=1, seed=20 + nq, mask="random",
                           nk=nk)
    params = dict(method=method, block_per_row=1, causal=causal)
    out, stats = roundtrip(tmp_path, q, k, v, mask, **params)
    assert out.shape == (1, 2, nq, 8)  # the output has q's shape
    check(out, stats, q, k, v, mask, "f32", **params)
    if causal and nq > nk:  # the first Nq - Nk queries see no key
        assert not out[:, :, :nq - nk].any()


@pytest.mark.parametrize("dtype", wire.DTYPES)
@pytest.mark.parametrize("method", ["mra2", "mra2_sparse", "exact"])
def test_cross_dtypes(tmp_path, method, dtype):
    q, k, v, mask = inputs((2, 2, 33, 16), hkv=1, seed=30, mask="blocks",
                           nk=130)
    qm = query_mask(2, 33, 31)
    params = dict(method=method, num_blocks=4, causal=True, q_mask=qm)
    out, stats = roundtrip(tmp_path, q, k, v, mask, dtype, **params)
    check(out, stats, q, k, v, mask, dtype, **params)
    assert not out[np.broadcast_to(qm[:, None, :] == 0, out.shape[:3])].any()


@pytest.mark.parametrize("nq,nk", [(96, 96), (50, 96)])
def test_query_mask(tmp_path, nq, nk):
    """q_mask replaces the key mask for the queries: with Nq == Nk the key
    mask no longer zeroes query rows, and without q_mask it does."""
    q, k, v, mask = inputs((2, 2, nq, 8), seed=32, mask="blocks", nk=nk)
    qm = query_mask(2, nq, 33)
    for params in (dict(q_mask=qm), dict(q_mask=qm, causal=True), dict()):
        out, stats = roundtrip(tmp_path, q, k, v, mask, method="mra2",
                               block_per_row=2, **params)
        check(out, stats, q, k, v, mask, "f32", method="mra2",
              block_per_row=2, **params)
        rows = np.abs(out).sum(axis=-1) != 0  # [B, H, Nq]
        if "q_mask" in params:
            assert not rows[np.broadcast_to(qm[:, None, :] == 0,
                                            rows.shape)].any()
        elif nq == nk:  # the key mask covers the queries too
            assert not rows[:, :, 32:64].any()


def test_padding_and_causal(tmp_path):
    """Right-padded sequences of different lengths, causal: what a batch of
    prompts looks like."""
    q, k, v, _ = inputs((3, 2, 90, 16), seed=34)
    mask = np.zeros((3, 90), np.uint8)
    for b, n in enumerate((90, 61, 7)):
        mask[b, :n] = 1
    for method in ("mra2", "mra2_sparse", "exact"):
        params = dict(method=method, block_per_row=2, causal=True)
        out, stats = roundtrip(tmp_path, q, k, v, mask, **params)
        check(out, stats, q, k, v, mask, "f32", **params)
        assert not out[2, :, 7:].any() and not out[1, :, 61:].any()


@pytest.mark.parametrize("H,hkv,nq,nk", [(4, 2, 64, 64), (4, 1, 20, 150),
                                         (6, 3, 1, 200)])
def test_grouped_heads_causal(tmp_path, H, hkv, nq, nk):
    q, k, v, mask = inputs((2, H, nq, 8), hkv=hkv, seed=35, mask="random",
                           nk=nk)
    params = dict(method="mra2", block_per_row=1, causal=True)
    out, stats = roundtrip(tmp_path, q, k, v, mask, **params)
    check(out, stats, q, k, v, mask, "f32", **params)


@pytest.mark.parametrize("nq,nk", [(64, 160), (40, 125), (120, 50),
                                   (96, 96)])
@pytest.mark.parametrize("prior_first,prior_diagonal", [(0, 3), (1, 1),
                                                        (2, 5)])
def test_priors_with_offsets(tmp_path, nq, nk, prior_first, prior_diagonal):
    """The diagonal band is centred on key block I + floor((Nk - Nq)/32)."""
    q, k, v, _ = inputs((1, 2, nq, 8), hkv=1, seed=36, nk=nk)
    for causal in (False, True):
        params = dict(method="mra2_sparse", num_blocks=2, causal=causal,
                      prior_first=prior_first, prior_diagonal=prior_diagonal)
        out, stats = roundtrip(tmp_path, q, k, v, **params)
        check(out, stats, q, k, v, None, "f32", **params)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nq,nk", [(40, 100), (100, 40), (1, 77), (70, 70)])
def test_full_budget_equals_exact(tmp_path, nq, nk, causal):
    """With a budget of at least the visible pairs, both MRA modes are
    exact attention, for any Nq, Nk, causal or not."""
    q, k, v, mask = inputs((1, 2, nq, 16), seed=37, mask="random", nk=nk)
    qm = query_mask(1, nq, 38)
    exact, ex_stats = roundtrip(tmp_path, q, k, v, mask, method="exact",
                                causal=causal, q_mask=qm)
    nbq, nbk = -(-nq // 32), -(-nk // 32)
    for method in ("mra2", "mra2_sparse"):
        for budget in (dict(num_blocks=nbq * nbk),
                       dict(block_per_row=nbk)):
            out, stats = roundtrip(tmp_path, q, k, v, mask, method=method,
                                   causal=causal, q_mask=qm, **budget)
            check(out, stats, q, k, v, mask, "f32", method=method,
                  causal=causal, q_mask=qm, **budget)
            assert mra_ref.rel_err(out, exact.astype(np.float64)) <= 1e-5
            assert stats["density"] == 1.0
            assert stats["blocks_total"] == ex_stats["blocks_total"]


def test_random_command(tmp_path):
    """`mractl random` writes cross-attention bodies: --kv-len, --causal,
    --mask and --q-mask, the same bytes for the same flags."""
    args = ["random", "--shape", "2,4,3,16", "--kv-len", "130", "--hkv", "2",
            "--causal", "--mask", "blocks", "--q-mask", "random",
            "--method", "mra2_sparse", "--block-per-row", "2", "--seed", "4"]
    a, b = mractl(*args), mractl(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    req = wire.decode_request(a.stdout)
    assert req["q"].shape == (2, 4, 3, 16) and req["k"].shape == (2, 2, 130, 16)
    assert req["v"].shape == (2, 2, 130, 16)
    assert req["causal"] is True
    assert req["mask"].shape == (2, 130) and req["q_mask"].shape == (2, 3)
    assert not req["mask"][:, 32:64].any() and req["mask"][:, :32].all()
    p = run_file(tmp_path, a.stdout)
    assert p.returncode == 0, p.stderr
    out, stats, _ = wire.decode_response(p.stdout)
    params = {n: req[n] for n in REF_PARAMS if n in req}
    check(out, stats, req["q"], req["k"], req["v"], req["mask"], "f32",
          **params)
    # without --kv-len Nk is Nq; a zero length is refused
    c = mractl("random", "--shape", "1,1,5,4", "--json")
    assert json.loads(c.stdout)["k"]["shape"] == [1, 1, 5, 4]
    assert "causal" not in json.loads(c.stdout)
    d = mractl("random", "--shape", "1,1,5,4", "--kv-len", "0")
    assert d.returncode == 2 and b"--kv-len" in d.stderr
    e = mractl("random", "--shape", "1,1,5,4", "--q-mask", "half")
    assert e.returncode == 2 and b"--q-mask" in e.stderr


@pytest.mark.parametrize("dtype", wire.DTYPES)
def test_json_bodies(tmp_path, dtype):
    q, k, v, mask = inputs((1, 2, 40, 5), seed=8, mask="random")
    out, stats = roundtrip(tmp_path, q, k, v, mask, dtype, fmt="json",
                           method="mra2", block_per_row=1, id="json \"é\"")
    check(out, stats, q, k, v, mask, dtype, method="mra2", block_per_row=1)
    # The answer to a JSON body is JSON.
    body = wire.encode_request(q, k, v, mask=mask, dtype=dtype, fmt="json")
    p = run_file(tmp_path, body, "req.json")
    assert json.loads(p.stdout)["out"]["shape"] == [1, 2, 40, 5]


def test_stdin_and_bitwise_repeatable(tmp_path):
    q, k, v, mask = inputs((1, 4, 129, 32), hkv=2, seed=9, mask="random")
    body = wire.encode_request(q, k, v, mask=mask, block_per_row=2, id="same")
    a = mractl("run", "--local", "-", stdin=body)
    b = mractl("run", "--local", "--threads", "1", "-", stdin=body)
    assert a.returncode == 0 and b.returncode == 0
    out_a, _, _ = wire.decode_response(a.stdout)
    out_b, _, _ = wire.decode_response(b.stdout)
    assert out_a.tobytes() == out_b.tobytes()


@pytest.mark.parametrize("path", sorted(DATA.glob("req-*")),
                         ids=lambda p: p.name)
def test_data_files(path):
    fmt = "json" if path.suffix == ".json" else "msgpack"
    body = path.read_bytes()
    req = wire.decode_request(body, fmt)
    p = mractl("run", "--local", path)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out, stats, rid = wire.decode_response(p.stdout, fmt)
    assert rid == req.get("id")
    params = {n: req[n] for n in REF_PARAMS if n in req}
    check(out, stats, req["q"], req["k"], req["v"], req.get("mask"),
          req["dtype"], **params)


def bad_expectations():
    rows = []
    for line in (DATA / "bad-expect.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, status, code, text = line.split(None, 3)
            rows.append((name, int(status), code, text))
    return rows


def assert_error(p, status, code, text):
    assert p.returncode == status, p.stderr
    assert p.stdout == b""
    err = json.loads(p.stderr)["error"]
    assert err["code"] == code
    assert text in err["message"], err["message"]


@pytest.mark.parametrize("name,status,code,text", bad_expectations(),
                         ids=lambda x: str(x))
def test_bad_data_files(name, status, code, text):
    assert_error(mractl("run", "--local", DATA / name), status, code, text)


def bad_bodies():
    q, k, v, _ = inputs((1, 2, 40, 8), hkv=1, seed=10)
    good = {"q": wire.tensor(q, "f32"), "k": wire.tensor(k, "f32"),
            "v": wire.tensor(v, "f32")}
    drop = dict(good)
    del drop["v"]
    yield "missing v", wire.pack(drop), "bad_request", "v: missing"
    yield "bad dtype", wire.pack(dict(good, q=dict(good["q"], dtype="f64"))), \
        "bad_request", "q.dtype"
    yield "rank", wire.pack(dict(good, q=dict(good["q"], shape=[2, 40, 8]))), \
        "bad_request", "q.shape: must have 4"
    yield "zero dim", wire.pack(dict(good, q=dict(good["q"],
                                                   shape=[1, 2, 0, 8]))), \
        "bad_request", "q.shape[2]: Nq must be >= 1"
    yield "hkv", wire.pack(dict(good, q=wire.tensor(
        np.zeros((1, 3, 40, 8)), "f32"), k=wire.tensor(
        np.zeros((1, 2, 40, 8)), "f32"), v=wire.tensor(
        np.zeros((1, 2, 40, 8)), "f32"))), "bad_request", "k.shape[1]"
    yield "method", wire.pack(dict(good, method="linear")), "bad_request", \
        "method: must be"
    yield "scale", wire.pack(dict(good, scale=0.0)), "bad_request", "scale:"
    yield "nan scale", wire.pack(dict(good, scale=float("nan"))), \
        "bad_request", "scale:"
    yield "budget", wire.pack(dict(good, num_blocks=0)), "bad_request", \
        "num_blocks: must be >= 1"
    yield "id", wire.pack(dict(good, id="x" * 129)), "bad_request", \
        "id: must be at most 128 bytes"
    yield "mask shape", wire.pack(dict(good, mask=wire.tensor(
        np.ones((1, 41)), "u8"))), "bad_request", \
        "mask: shape [1,41] does not match k's [B,Nk] = [1,40]"
    yield "q_mask shape", wire.pack(dict(good, q_mask=wire.tensor(
        np.ones((1, 7)), "u8"))), "bad_request", \
        "q_mask: shape [1,7] does not match q's [B,Nq] = [1,40]"
    yield "q_mask value", wire.pack(dict(good, q_mask=wire.tensor(
        np.full((1, 40), 3), "u8"))), "bad_request", \
        "q_mask.data[0]: must be 0 or 1 (got 3)"
    yield "q_mask dtype", wire.pack(dict(good, q_mask=wire.tensor(
        np.ones((1, 40)), "f32"))), "bad_request", "q_mask.dtype: must be"
    yield "causal int", wire.pack(dict(good, causal=1)), "bad_request", \
        "causal: must be a boolean"
    yield "causal str", wire.pack(dict(good, causal="yes")), "bad_request", \
        "causal: must be a boolean, true or false (got a string)"
    yield "k v lengths", wire.pack(dict(good, v=wire.tensor(
        np.zeros((1, 1, 39, 8)), "f32"))), "bad_request", \
        "v: shape [1,1,39,8] does not match k's [B,Hkv,Nk,D] = [1,1,40,8]"
    yield "mask over queries", wire.pack(dict(
        good, k=wire.tensor(np.zeros((1, 1, 70, 8)), "f32"),
        v=wire.tensor(np.zeros((1, 1, 70, 8)), "f32"),
        mask=wire.tensor(np.ones((1, 40)), "u8"))), "bad_request", \
        "mask is over the keys"
    yield "too many keys", wire.pack(dict(
        good, k=dict(good["k"], shape=[1, 1, 200000, 8]),
        v=dict(good["v"], shape=[1, 1, 200000, 8]))), "payload_too_large", \
        "k.shape[2]: Nk = 200000 exceeds the limit of 131072"
    yield "overflow", wire.pack(dict(good, q=dict(
        good["q"], shape=[2**63, 2**63, 2**63, 8]))), "payload_too_large", \
        "q.shape[0]"
    yield "not a map", wire.pack([1, 2, 3]), "bad_request", "body: must be a map"
    yield "garbage", b"\xc1\x00\x00", "bad_request", "body: invalid msgpack"
    yield "empty", b"", "bad_request", "body: empty"
    yield "json syntax", b'{"q": [1,2,}', "bad_request", "invalid JSON at byte"
    t = {"dtype": "f32", "shape": [1, 1, 1, 2], "data": [1, 2]}
    yield "json data", json.dumps({"q": dict(t, data=[1, "x"]), "k": t,
                                   "v": t}).encode(), \
        "bad_request", "q.data[1]: must be a number"


@pytest.mark.parametrize("what,body,code,text", list(bad_bodies()),
                         ids=lambda x: x if isinstance(x, str) else "")
def test_bad_bodies(tmp_path, what, body, code, text):
    p = run_file(tmp_path, body)
    assert_error(p, 2, code, text)


def test_usage_errors(tmp_path):
    # run takes --local or --url, and says so
    p = mractl("run", tmp_path / "x")
    assert p.returncode == 2 and b"give --local (compute here) or --url URL" in p.stderr
    assert b"mractl run --local FILE" in p.stderr and b"mractl run --url URL" in p.stderr
    p = mractl("run", "--local", "--url", "http://127.0.0.1:9", tmp_path / "x")
    assert p.returncode == 2 and b"exclude each other" in p.stderr
    p = mractl("run", "--local", tmp_path / "does-not-exist")
    assert p.returncode == 1 and b"cannot read" in p.stderr
    p = mractl("frobnicate")
    assert p.returncode == 2 and b"unknown command" in p.stderr
    p = mractl("--help")
    assert p.returncode == 0 and b"run" in p.stdout
    p = mractl("run", "--local", "--threads", "x", "-")
    assert p.returncode == 2


@pytest.mark.parametrize("cmd", [["run"], ["run", "--local"], ["run", "--url", "http://x"],
                                 ["random"], ["health"], ["info"], ["metrics"], ["kv"],
                                 ["kv", "attend"], []])
def test_help_goes_to_stdout_and_exits_0(cmd):
    p = mractl(*cmd, "--help")
    assert p.returncode == 0 and p.stderr == b"", (cmd, p.stderr)
    assert p.stdout.startswith(b"usage: mractl"), cmd
    if cmd[:1] == ["run"]:  # both modes, whichever was named
        assert b"--local" in p.stdout and b"--url URL" in p.stdout


def test_version_is_the_project_version():
    version = (ROOT / "VERSION").read_text().strip()
    p = mractl("--version")
    assert p.returncode == 0 and p.stdout == f"mractl {version}\n".encode()
    assert b"--version" in mractl("--help").stdout
