"""Offline tests of mra_client's encoding: bf16 rounding, dtype rules,
request bodies as the wire contract spells them, answer decoding."""
import msgpack
import numpy as np
import pytest

from mra_client import bf16_to_f32, encode_request, f32_to_bf16
from mra_client.wire import decode_response, infer_dtype


def test_bf16_round_to_nearest_even():
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.5,
                  np.inf, -np.inf, 3.4e38, 0.0, -0.0], dtype=np.float32)
    bits = f32_to_bf16(x)
    # ties go to the even mantissa; just above a tie rounds up; 3.4e38
    # rounds past the largest bf16 to infinity
    assert bits.tolist() == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC020,
                             0x7F80, 0xFF80, 0x7F80, 0x0000, 0x8000]
    assert np.isnan(bf16_to_f32(f32_to_bf16(np.array([np.nan], np.float32))))[0]
    # every bf16 value survives the round trip exactly
    allbits = np.arange(0, 0x10000, dtype=np.uint32).astype(np.uint16)
    f = bf16_to_f32(allbits)
    finite = np.isfinite(f)
    assert np.array_equal(f32_to_bf16(f[finite]), allbits[finite])


def test_bf16_matches_float64_rounding():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(10000).astype(np.float32)
    y = bf16_to_f32(f32_to_bf16(x)).astype(np.float64)
    # nearest: the error is at most half a unit in the last place (8 bits)
    ulp = 2.0 ** (np.floor(np.log2(np.abs(x.astype(np.float64)))) - 7)
    assert np.all(np.abs(y - x) <= ulp / 2)


def test_dtype_inference():
    assert infer_dtype(np.zeros(2, np.float32)) == "f32"
    assert infer_dtype(np.zeros(2, np.float64)) == "f32"
    assert infer_dtype(np.zeros(2, np.float16)) == "f16"
    with pytest.raises(TypeError):
        infer_dtype(np.zeros(2, np.uint16))
    with pytest.raises(TypeError):
        infer_dtype(np.zeros(2, np.int32))


def test_request_body_follows_the_contract():
    q = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    k = np.ones((1, 1, 3, 4), np.float32)
    body = msgpack.unpackb(encode_request(q, k, k, mask=[[1, 0, 1]],
                                          method="exact", id="a",
                                          block_per_row=3, scale=0.5,
                                          timeout_ms=10), raw=False)
    assert set(body) == {"q", "k", "v", "mask", "method", "id",
                         "block_per_row", "scale", "timeout_ms"}
    assert body["q"]["dtype"] == "f32" and body["q"]["shape"] == [1, 2, 3, 4]
    assert body["q"]["data"] == q.astype("<f4").tobytes()
    assert body["k"]["shape"] == [1, 1, 3, 4]
    assert body["mask"] == {"dtype": "u8", "shape": [1, 3], "data": b"\x01\x00\x01"}
    assert body["method"] == "exact" and body["id"] == "a"
    assert body["block_per_row"] == 3 and body["scale"] == 0.5
    # 3-d input is one batch entry; bf16 travels as rounded bits
    b16 = msgpack.unpackb(encode_request(q[0], k[0], k[0], dtype="bf16"), raw=False)
    assert b16["q"]["shape"] == [1, 2, 3, 4] and b16["q"]["dtype"] == "bf16"
    assert b16["q"]["data"] == f32_to_bf16(q).astype("<u2").tobytes()
    with pytest.raises(TypeError):
        encode_request(q, k, k, blocks_per_row=3)  # misspelt parameter
    with pytest.raises(ValueError):
        encode_request(q, k, k, method="linear")


def test_cross_attention_bodies():
    """Nq and Nk travel independently; q_mask is a second u8 tensor over
    the queries; causal is a msgpack boolean, left out when false."""
    q = np.zeros((1, 2, 3, 4), np.float32)
    k = np.ones((1, 1, 70, 4), np.float32)
    body = msgpack.unpackb(encode_request(q, k, k, mask=np.ones(70),
                                          q_mask=[1, 0, 1], causal=True),
                           raw=False)
    assert body["q"]["shape"] == [1, 2, 3, 4]
    assert body["k"]["shape"] == body["v"]["shape"] == [1, 1, 70, 4]
    assert body["mask"]["shape"] == [1, 70]
    assert body["q_mask"] == {"dtype": "u8", "shape": [1, 3],
                              "data": b"\x01\x00\x01"}
    assert body["causal"] is True
    plain = msgpack.unpackb(encode_request(q, k, k, causal=False), raw=False)
    assert "causal" not in plain and "q_mask" not in plain
    # a decode step: one query of 2-d input over 2-d keys
    one = msgpack.unpackb(encode_request(q[0, 0, :1], k[0, 0], k[0, 0],
                                         causal=True), raw=False)
    assert one["q"]["shape"] == [1, 1, 1, 4]
    assert one["k"]["shape"] == [1, 1, 70, 4]
    with pytest.raises(ValueError):
        encode_request(q, k, k, q_mask=np.ones((1, 1, 3)))


def test_decode_response():
    out = np.arange(6, dtype=np.float16).reshape(1, 1, 2, 3)
    raw = msgpack.packb({"out": {"dtype": "f16", "shape": [1, 1, 2, 3],
                                 "data": out.tobytes()},
                         "stats": {"density": 1.0}}, use_bin_type=True)
    msg = decode_response(raw)
    arr, dt = msg["out"]
    assert dt == "f16" and np.array_equal(arr, out)
    bad = msgpack.packb({"out": {"dtype": "f16", "shape": [1, 1, 2, 4],
                                 "data": out.tobytes()}}, use_bin_type=True)
    with pytest.raises(ValueError):
        decode_response(bad)
