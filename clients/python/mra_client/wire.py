"""Request and response bodies of POST /v1/attention and of sessions
(POST /v1/kv, appends, requests on a session), and dtype handling.

Tensors travel as {"dtype": "f32"|"f16"|"bf16"|"u8", "shape": [...],
"data": bytes} with row-major little-endian data.  numpy has no bfloat16,
so bf16 travels as uint16 bit patterns here: float input is rounded to
nearest even (as the service's own conversion does), uint16 input is taken
as the bits already, and answers are widened to float32 exactly.
"""
import math

import msgpack
import numpy as np

METHODS = ("mra2", "mra2_sparse", "exact")
DTYPES = ("f32", "f16", "bf16")
PARAMS = ("block_per_row", "num_blocks", "prior_first", "prior_diagonal",
          "scale", "timeout_ms")

_LE = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": np.dtype("<u2"),
       "u8": np.dtype("u1")}


def f32_to_bf16(x):
    """float32 (or anything castable) -> bfloat16 bits as uint16, rounding
    to nearest even; NaN stays NaN, overflow becomes infinity."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = np.isnan(b.view(np.float32))
    rounded = (b + (np.uint32(0x7FFF) + ((b >> 16) & 1))) >> 16
    out = rounded.astype(np.uint16)
    if nan.any():
        out[nan] = ((b[nan] >> 16) | 0x0040).astype(np.uint16)
    return out


def bf16_to_f32(bits):
    """bfloat16 bits (uint16) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def infer_dtype(q):
    """The wire dtype a numpy array maps to when none is asked for."""
    dt = np.asarray(q).dtype
    if dt.name == "bfloat16":  # ml_dtypes / jax arrays
        return "bf16"
    if dt == np.float16:
        return "f16"
    if dt == np.uint16:
        raise TypeError("uint16 arrays are bf16 bit patterns: pass dtype='bf16'")
    if dt.kind == "f":
        return "f32"
    raise TypeError(f"tensors must be floating point, not {dt}")


def to_wire(x, dtype):
    """A numpy array as the little-endian bytes of a wire dtype."""
    a = np.asarray(x)
    if dtype == "bf16":
        if a.dtype.name == "bfloat16":
            bits = a.view(np.uint16)
        elif a.dtype == np.uint16:
            bits = a
        else:
            bits = f32_to_bf16(a)
        return np.ascontiguousarray(bits, dtype=_LE["bf16"])
    if dtype not in _LE:
        raise ValueError(f"unknown dtype {dtype!r}; one of {DTYPES}")
    if a.dtype == np.uint16 or a.dtype.name == "bfloat16":
        raise TypeError("bf16 data needs dtype='bf16'")
    return np.ascontiguousarray(a, dtype=_LE[dtype])


def tensor(a, dtype):
    arr = to_wire(a, dtype)
    return {"dtype": dtype, "shape": list(arr.shape), "data": arr.tobytes()}


def as4d(x, name):
    """Accepts [N, D], [H, N, D] or [B, H, N, D]; returns the 4-d view."""
    a = np.asarray(x)
    if a.ndim < 2 or a.ndim > 4:
        raise ValueError(f"{name} must have 2 to 4 dimensions, not {a.ndim}")
    return a.reshape((1,) * (4 - a.ndim) + a.shape)


def as2d(x, name):
    """A mask: [N] or [B, N] of 0/1 -> the [B, N] uint8 wire form."""
    m = np.asarray(x)
    if m.ndim < 1 or m.ndim > 2:
        raise ValueError(f"{name} must have 1 or 2 dimensions, not {m.ndim}")
    m = m.reshape((1,) * (2 - m.ndim) + m.shape)
    return (m != 0).astype(np.uint8)


def _check_call(method, params):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {METHODS}")
    for key in params:
        if key not in PARAMS:
            raise TypeError(f"unknown parameter {key!r}; one of {PARAMS}")


def _put_options(body, causal, q_mask, id, params):
    """The request's optional keys: q_mask, causal (only when true), the
    parameters (None ones left out) and id."""
    if q_mask is not None:
        body["q_mask"] = tensor(as2d(q_mask, "q_mask"), "u8")
    if causal:
        body["causal"] = True
    for key, val in params.items():
        if val is None:
            continue
        if key == "scale":
            val = float(val)
            if not math.isfinite(val):
                raise ValueError("scale must be finite")
        else:
            val = int(val)
        body[key] = val
    if id is not None:
        body["id"] = str(id)


def _wire_dtype(dtype, like):
    dt = dtype or infer_dtype(like)
    if dt not in DTYPES:
        raise ValueError(f"unknown dtype {dt!r}; one of {DTYPES}")
    return dt


def encode_request(q, k, v, mask=None, method="mra2", dtype=None, id=None,
                   causal=False, q_mask=None, **params):
    """The msgpack body of POST /v1/attention.

    q: [B, H, Nq, D] (or [H, Nq, D], [Nq, D]); k, v: [B, Hkv, Nk, D]
    likewise, where Nk may differ from Nq; mask: [B, Nk] (or [Nk]) of 0/1
    over the keys; q_mask: [B, Nq] (or [Nq]) of 0/1 over the queries;
    causal: query i sees keys j <= i + Nk - Nq (written only when true);
    dtype: "f32", "f16", "bf16" or None to follow q's dtype; params:
    block_per_row, num_blocks, prior_first, prior_diagonal, scale,
    timeout_ms.  Returns bytes.
    """
    _check_call(method, params)
    dt = _wire_dtype(dtype, q)
    body = {
        "q": tensor(as4d(q, "q"), dt),
        "k": tensor(as4d(k, "k"), dt),
        "v": tensor(as4d(v, "v"), dt),
        "method": method,
    }
    if mask is not None:
        body["mask"] = tensor(as2d(mask, "mask"), "u8")
    _put_options(body, causal, q_mask, id, params)
    return msgpack.packb(body, use_bin_type=True)


def encode_kv_body(k, v, mask=None, dtype=None, ttl_ms=None):
    """The msgpack body of POST /v1/kv (a create; ttl_ms asks for an idle
    lifetime) or POST /v1/kv/{id}/append (no ttl_ms): k, v [B, Hkv, n, D]
    (or [Hkv, n, D], [n, D]), mask [B, n] (or [n]) of 0/1 or None; dtype
    as in encode_request, following k's by default.  Returns bytes."""
    dt = _wire_dtype(dtype, k)
    body = {"k": tensor(as4d(k, "k"), dt), "v": tensor(as4d(v, "v"), dt)}
    if mask is not None:
        body["mask"] = tensor(as2d(mask, "mask"), "u8")
    if ttl_ms is not None:
        body["ttl_ms"] = int(ttl_ms)
    return msgpack.packb(body, use_bin_type=True)


def encode_session_request(q, kv=None, k_append=None, v_append=None,
                           mask_append=None, method="mra2", dtype=None,
                           id=None, causal=False, q_mask=None, **params):
    """The msgpack body of a request on a session: q as in encode_request,
    and the tokens to append first, k_append, v_append [B, Hkv, n, D] (both
    or neither) and mask_append [B, n].  kv names the session (the body of
    POST /v1/attention); None leaves it out (the body of POST
    /v1/kv/{id}/attention).  Returns bytes."""
    _check_call(method, params)
    if (k_append is None) != (v_append is None):
        raise ValueError("k_append and v_append go together")
    if mask_append is not None and k_append is None:
        raise ValueError("mask_append needs k_append and v_append")
    dt = _wire_dtype(dtype, q)
    body = {"q": tensor(as4d(q, "q"), dt), "method": method}
    if k_append is not None:
        body["k_append"] = tensor(as4d(k_append, "k_append"), dt)
        body["v_append"] = tensor(as4d(v_append, "v_append"), dt)
    if mask_append is not None:
        body["mask_append"] = tensor(as2d(mask_append, "mask_append"), "u8")
    if kv is not None:
        body["kv"] = str(kv)
    _put_options(body, causal, q_mask, id, params)
    return msgpack.packb(body, use_bin_type=True)


def decode_tensor(t):
    """A wire tensor map -> (numpy array in its wire dtype, dtype name)."""
    dt = t["dtype"]
    if dt not in _LE:
        raise ValueError(f"unknown dtype {dt!r} in the answer")
    shape = tuple(int(s) for s in t["shape"])
    arr = np.frombuffer(t["data"], dtype=_LE[dt])
    if arr.size != math.prod(shape):
        raise ValueError("tensor data length does not match its shape")
    return arr.reshape(shape), dt


def decode_response(raw):
    """The msgpack body of a 200 answer -> its map, with "out" decoded to
    (array, dtype)."""
    msg = msgpack.unpackb(raw, raw=False)
    if not isinstance(msg, dict) or "out" not in msg:
        raise ValueError("the answer has no 'out' tensor")
    msg["out"] = decode_tensor(msg["out"])
    return msg
