"""Request and response bodies of POST /v1/attention, built and read with
numpy and msgpack, for tests and tools (protocol/SPEC.md is the contract).

    body = encode_request(q, k, v, mask=None, dtype="f32", fmt="msgpack",
                          method="mra2", block_per_row=8, q_mask=None,
                          causal=None, ...)
    out, stats, id = decode_response(body, fmt="msgpack")

q: [B, H, Nq, D]; k, v: [B, Hkv, Nk, D]; mask: [B, Nk] of 0/1 or None;
q_mask: [B, Nq] of 0/1 or None; causal: True/False, or None to leave the
key out.  The answer's out is [B, H, Nq, D].  Arrays
are converted to `dtype` ("f32", "f16", "bf16"; bf16 rounds to nearest even
through uint16).  decode_response returns the output as float32 for f32
and bf16 (every bf16 value is a float32) and float16 for f16.

tensor() and pack() are the pieces, for tests that build invalid bodies on
purpose; round_to_dtype() gives the values a dtype actually carries, which
is what a reference must be computed from.
"""
import json
import math

import msgpack
import numpy as np

DTYPES = ("f32", "f16", "bf16")
PARAMS = ("method", "block_per_row", "num_blocks", "prior_first",
          "prior_diagonal", "scale", "timeout_ms", "id", "causal",
          "min_blocks_per_row", "error_samples", "target_error",
          "per_head_stats")


def f32_to_bf16_bits(x):
    """float32 array -> uint16 bfloat16 bits, round to nearest even; NaN
    stays NaN (quiet)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def bf16_bits_to_f32(b):
    """uint16 bfloat16 bits -> float32 array."""
    b = np.ascontiguousarray(b, dtype=np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)


def round_to_dtype(x, dtype):
    """The values of x as `dtype` carries them, as float64."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "f32":
        return x.astype(np.float64)
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float64)
    if dtype == "bf16":
        return bf16_bits_to_f32(f32_to_bf16_bits(x)).reshape(x.shape) \
            .astype(np.float64)
    raise ValueError(f"unknown dtype {dtype!r}")


def to_bytes(x, dtype):
    """Row-major little-endian bytes of x in `dtype` ("u8" for masks)."""
    if dtype == "u8":
        return np.ascontiguousarray(x, dtype=np.uint8).tobytes()
    x = np.asarray(x, dtype=np.float32)
    if dtype == "f32":
        return x.astype("<f4").tobytes()
    if dtype == "f16":
        return x.astype("<f2").tobytes()
    if dtype == "bf16":
        return f32_to_bf16_bits(x).astype("<u2").tobytes()
    raise ValueError(f"unknown dtype {dtype!r}")


def from_bytes(data, dtype, shape):
    """Inverse of to_bytes for float dtypes."""
    if dtype == "f32":
        a = np.frombuffer(data, dtype="<f4")
    elif dtype == "f16":
        a = np.frombuffer(data, dtype="<f2")
    elif dtype == "bf16":
        a = bf16_bits_to_f32(np.frombuffer(data, dtype="<u2"))
    else:
        raise ValueError(f"unknown dtype {dtype!r}")
    return a.reshape(shape)


def tensor(x, dtype, fmt="msgpack"):
    """The wire form of one tensor: {"dtype", "shape", "data"}; data is bin
    for msgpack and a list of numbers for JSON."""
    x = np.asarray(x)
    if fmt == "json":
        vals = np.asarray(x, dtype=np.float64) if dtype != "u8" else x
        if dtype in ("f16", "bf16"):
            vals = round_to_dtype(x, dtype)
        data = [int(v) if dtype == "u8" else float(v) for v in vals.ravel()]
    else:
        data = to_bytes(x, dtype)
    return {"dtype": dtype, "shape": [int(s) for s in x.shape], "data": data}


def pack(obj, fmt="msgpack"):
    """Serialises a body dict (msgpack with bin data, or JSON text)."""
    if fmt == "json":
        return json.dumps(obj, allow_nan=False).encode()
    return msgpack.packb(obj, use_bin_type=True)


def encode_request(q, k, v, mask=None, dtype="f32", fmt="msgpack",
                   q_mask=None, **params):
    """A request body.  params: method, block_per_row, num_blocks,
    prior_first, prior_diagonal, scale, timeout_ms, id, causal,
    min_blocks_per_row, error_samples, target_error, per_head_stats; None
    leaves a parameter out."""
    for name in params:
        if name not in PARAMS:
            raise TypeError(f"unknown request parameter {name!r}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}")
    body = {"q": tensor(q, dtype, fmt), "k": tensor(k, dtype, fmt),
            "v": tensor(v, dtype, fmt)}
    if mask is not None:
        body["mask"] = tensor(np.asarray(mask, dtype=np.uint8), "u8", fmt)
    if q_mask is not None:
        body["q_mask"] = tensor(np.asarray(q_mask, dtype=np.uint8), "u8", fmt)
    for name, val in params.items():
        if val is None:
            continue
        if name in ("scale", "target_error"):
            val = float(val)
        elif name in ("causal", "per_head_stats"):
            val = bool(val)
        body[name] = val
    return pack(body, fmt)


def decode_response(body, fmt="msgpack"):
    """(out, stats, id) of a 200 answer; id is None when absent."""
    if fmt == "json":
        msg = json.loads(body)
        o = msg["out"]
        vals = np.array([math.nan if x is None else x for x in o["data"]],
                        dtype=np.float64)
        out = vals.reshape(o["shape"])
        out = out.astype(np.float16 if o["dtype"] == "f16" else np.float32)
    else:
        msg = msgpack.unpackb(body, raw=False)
        o = msg["out"]
        out = from_bytes(o["data"], o["dtype"], o["shape"])
    return out, msg["stats"], msg.get("id")


def decode_request(body, fmt="msgpack"):
    """The arrays and parameters of a request body (float32 arrays, masks
    as uint8 or absent), as a dict ready for mra_ref.attention()."""
    msg = json.loads(body) if fmt == "json" else msgpack.unpackb(body,
                                                                 raw=False)
    out = {}
    for name in ("q", "k", "v"):
        t = msg[name]
        if fmt == "json":
            out[name] = round_to_dtype(np.array(t["data"], dtype=np.float64)
                                       .reshape(t["shape"]), t["dtype"])
        else:
            out[name] = from_bytes(t["data"], t["dtype"], t["shape"]) \
                .astype(np.float64)
        out["dtype"] = t["dtype"]
    for name in ("mask", "q_mask"):
        if name not in msg:
            continue
        t = msg[name]
        data = t["data"]
        m = np.array(data, dtype=np.uint8) if fmt == "json" else \
            np.frombuffer(data, dtype=np.uint8)
        out[name] = m.reshape(t["shape"])
    for name in PARAMS:
        if name in msg:
            out[name] = msg[name]
    return out
