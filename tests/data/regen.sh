#!/usr/bin/env bash
# regen.sh - writes the request bodies of tests/data again, byte for byte
# (tools/mkreq.py is deterministic for a given --seed).  The req-* files
# are valid requests that tests/integration/test_mractl.py computes and
# checks against the float64 reference; the bad-* files are malformed
# bodies kept as regression cases, each refused with the field named in
# bad-expect.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
out=tests/data

$py tools/mkreq.py --shape 1,2,70,4 --hkv 1 --mask random --block-per-row 1 \
    --id data-mra2 --seed 1 -o $out/req-mra2-f32.msgpack
$py tools/mkreq.py --shape 1,2,65,8 --dtype bf16 --method mra2_sparse \
    --mask blocks --num-blocks 4 --prior-first 1 --seed 2 \
    -o $out/req-sparse-bf16.msgpack
$py tools/mkreq.py --shape 2,2,33,3 --hkv 2 --dtype f16 --method mra2 \
    --prior-diagonal 3 --block-per-row 1 --scale 0.5 --seed 3 \
    -o $out/req-diag-f16.msgpack
$py tools/mkreq.py --shape 1,1,5,4 --dtype f16 --method exact --scale 0.5 \
    --id data-json --json --seed 4 -o $out/req-exact-f16.json
# Cross-attention: 40 queries over 100 keys (causal, both masks, a prior
# on the shifted diagonal), a decode step of one query over 300 keys, and
# more queries than keys (the first 35 see no key).
$py tools/mkreq.py --shape 1,2,40,8 --kv-len 100 --hkv 1 --causal \
    --mask random --q-mask random --block-per-row 1 --prior-diagonal 3 \
    --id data-cross --seed 6 -o $out/req-cross-causal-f32.msgpack
$py tools/mkreq.py --shape 2,2,1,8 --kv-len 300 --hkv 1 --dtype bf16 \
    --causal --mask blocks --num-blocks 3 --seed 7 \
    -o $out/req-decode-bf16.msgpack
$py tools/mkreq.py --shape 1,1,40,4 --kv-len 5 --dtype f16 --causal \
    --method mra2_sparse --json --seed 8 -o $out/req-wide-causal-f16.json

# The accuracy controls: a row minimum, an estimate on 16 rows and a
# target, with every head's statistics.
$py tools/mkreq.py --shape 1,2,96,8 --mask random --method mra2_sparse \
    --block-per-row 1 --min-blocks-per-row 1 --error-samples 16 \
    --target-error 0.3 --per-head-stats --seed 9 \
    -o $out/req-accuracy-f32.msgpack

# Malformed bodies: a valid one edited in one place each.
$py - "$out" <<'PY'
import pathlib, sys
import msgpack
sys.path.insert(0, "tests/pyref")
import wire
import numpy as np

out = pathlib.Path(sys.argv[1])
rng = np.random.default_rng(5)
q = rng.standard_normal((1, 2, 40, 8), dtype=np.float32)
k = rng.standard_normal((1, 1, 40, 8), dtype=np.float32)
good = msgpack.unpackb(wire.encode_request(q, k, k), raw=False)

def write(name, body):
    (out / name).write_bytes(body)

bad = dict(good, colour="blue")
write("bad-unknown-key.msgpack", wire.pack(bad))
bad = dict(good, k=wire.tensor(k[:, :, :39], "f32"))
write("bad-shape-mismatch.msgpack", wire.pack(bad))
bad = dict(good, q=dict(good["q"], data=good["q"]["data"][:-4]))
write("bad-length.msgpack", wire.pack(bad))
write("bad-truncated.msgpack", wire.pack(good)[:-100])
bad = dict(good, mask=wire.tensor(np.full((1, 40), 2, np.uint8), "u8"))
write("bad-mask-value.msgpack", wire.pack(bad))
bad = dict(good, q=dict(good["q"], shape=[1, 2, 400000, 8]))
write("bad-too-big.msgpack", wire.pack(bad))
bad = dict(good, q_mask=wire.tensor(np.ones((1, 39), np.uint8), "u8"))
write("bad-q-mask-shape.msgpack", wire.pack(bad))
bad = dict(good, causal=1)
write("bad-causal-type.msgpack", wire.pack(bad))
# 8 queries over 40 keys, with the key mask sized like the queries
bad = dict(good, q=wire.tensor(q[:, :, :8], "f32"),
           mask=wire.tensor(np.ones((1, 8), np.uint8), "u8"))
write("bad-mask-queries.msgpack", wire.pack(bad))
# Session bodies (protocol/SPEC.md, "Sessions"), seeds of the fuzz
# target: a create, a step on a session with an appended token, and an
# append.
rng = np.random.default_rng(11)
kk = rng.standard_normal((1, 2, 40, 8)).astype(np.float32)
write("kv-create-f16.msgpack", wire.pack({
    "k": wire.tensor(kk, "f16"), "v": wire.tensor(kk[:, :, ::-1], "f16"),
    "mask": wire.tensor(np.ones((1, 40), np.uint8), "u8"), "ttl_ms": 60000}))
write("kv-step-f16.msgpack", wire.pack({
    "q": wire.tensor(rng.standard_normal((1, 4, 1, 8)), "f16"),
    "kv": "0123456789abcdef0123456789abcdef",
    "k_append": wire.tensor(kk[:, :, :1], "f16"),
    "v_append": wire.tensor(kk[:, :, 1:2], "f16"),
    "mask_append": wire.tensor(np.ones((1, 1), np.uint8), "u8"),
    "causal": True, "method": "mra2"}))
write("kv-append-f32.json", wire.pack({
    "k": wire.tensor(kk[:, :, :3], "f32", "json"),
    "v": wire.tensor(kk[:, :, 3:6], "f32", "json")}, "json"))
PY
