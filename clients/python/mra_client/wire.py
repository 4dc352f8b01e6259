"""Request and response bodies of POST /v1/attention and of sessions
(POST /v1/kv, appends, requests on a session), as protocol/SPEC.md spells
them.

Tensors travel as {"dtype": "f32"|"f16"|"bf16"|"u8", "shape": [...],
"data": bytes} with row-major little-endian data; tensors.py converts
numpy arrays and torch tensors to and from that form.  Nothing here does
I/O.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Union

import msgpack

from .tensors import (DTYPES, bf16_to_f32, decode_tensor, f32_to_bf16,
                      infer_dtype, mask_to_wire, shape4, to_wire)

__all__ = ["METHODS", "DTYPES", "PARAMS", "encode_request", "encode_kv_body",
           "encode_session_request", "decode_response", "decode_tensor",
           "f32_to_bf16", "bf16_to_f32", "infer_dtype"]

METHODS = ("mra2", "mra2_sparse", "exact")
PARAMS = ("block_per_row", "num_blocks", "prior_first", "prior_diagonal",
          "scale", "timeout_ms", "min_blocks_per_row", "error_samples",
          "target_error", "per_head_stats")
# The parameters that are numbers and the one that is a boolean.
_FLOAT_PARAMS = ("scale", "target_error")
_BOOL_PARAMS = ("per_head_stats",)

# A parameter's value: ints, except scale and target_error (floats) and
# per_head_stats (a bool); None leaves it out.
ParamValue = Union[bool, int, float, None]


def tensor(a: Any, dtype: str, name: str = "tensor") -> dict[str, Any]:
    """A float tensor's wire map in `dtype`, taken as [B, H, N, D]."""
    arr = to_wire(a, dtype)
    arr = arr.reshape(shape4(arr, name))
    return {"dtype": dtype, "shape": list(arr.shape), "data": arr.tobytes()}


def mask_tensor(m: Any, name: str) -> dict[str, Any]:
    """A mask's wire map: u8 [B, N]."""
    arr = mask_to_wire(m, name)
    return {"dtype": "u8", "shape": list(arr.shape), "data": arr.tobytes()}


def check_call(method: str, params: dict[str, ParamValue]) -> None:
    """Refuses an unknown method or a misspelt parameter before anything
    is sent."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {METHODS}")
    for key in params:
        if key not in PARAMS:
            raise TypeError(f"unknown parameter {key!r}; one of {PARAMS}")


def _put_options(body: dict[str, Any], causal: bool, q_mask: Any,
                 id: Optional[str], params: dict[str, ParamValue]) -> None:
    """The request's optional keys: q_mask, causal (only when true), the
    parameters (None ones left out) and id."""
    if q_mask is not None:
        body["q_mask"] = mask_tensor(q_mask, "q_mask")
    if causal:
        body["causal"] = True
    for key, val in params.items():
        if val is None:
            continue
        if key in _FLOAT_PARAMS:
            f = float(val)
            if not math.isfinite(f):
                raise ValueError(f"{key} must be finite")
            body[key] = f
        elif key in _BOOL_PARAMS:
            if not isinstance(val, bool):
                raise TypeError(f"{key} must be True or False")
            if val:
                body[key] = True
        else:
            body[key] = int(val)
    if id is not None:
        body["id"] = str(id)


def wire_dtype(dtype: Optional[str], like: Any) -> str:
    """The dtype asked for, or the one `like` maps to."""
    dt = dtype or infer_dtype(like)
    if dt not in DTYPES:
        raise ValueError(f"unknown dtype {dt!r}; one of {DTYPES}")
    return dt


def _pack(body: dict[str, Any]) -> bytes:
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def encode_request(q: Any, k: Any, v: Any, mask: Any = None,
                   method: str = "mra2", dtype: Optional[str] = None,
                   id: Optional[str] = None, causal: bool = False,
                   q_mask: Any = None, **params: ParamValue) -> bytes:
    """The msgpack body of POST /v1/attention.

    q: [B, H, Nq, D] (or [H, Nq, D], [Nq, D]); k, v: [B, Hkv, Nk, D]
    likewise, where Nk may differ from Nq; numpy arrays or torch tensors.
    mask: [B, Nk] (or [Nk]) of 0/1 over the keys; q_mask: [B, Nq] (or
    [Nq]) of 0/1 over the queries; causal: query i sees keys
    j <= i + Nk - Nq (written only when true); dtype: "f32", "f16", "bf16"
    or None to follow q's dtype; params: block_per_row, num_blocks,
    prior_first, prior_diagonal, scale, timeout_ms, min_blocks_per_row,
    error_samples, target_error, per_head_stats.  Returns bytes.
    """
    check_call(method, params)
    dt = wire_dtype(dtype, q)
    body: dict[str, Any] = {
        "q": tensor(q, dt, "q"),
        "k": tensor(k, dt, "k"),
        "v": tensor(v, dt, "v"),
        "method": method,
    }
    if mask is not None:
        body["mask"] = mask_tensor(mask, "mask")
    _put_options(body, causal, q_mask, id, params)
    return _pack(body)


def encode_kv_body(k: Any, v: Any, mask: Any = None,
                   dtype: Optional[str] = None,
                   ttl_ms: Optional[int] = None) -> bytes:
    """The msgpack body of POST /v1/kv (a create; ttl_ms asks for an idle
    lifetime) or POST /v1/kv/{id}/append (no ttl_ms): k, v [B, Hkv, n, D]
    (or [Hkv, n, D], [n, D]), mask [B, n] (or [n]) of 0/1 or None; dtype
    as in encode_request, following k's by default.  Returns bytes."""
    dt = wire_dtype(dtype, k)
    body: dict[str, Any] = {"k": tensor(k, dt, "k"), "v": tensor(v, dt, "v")}
    if mask is not None:
        body["mask"] = mask_tensor(mask, "mask")
    if ttl_ms is not None:
        body["ttl_ms"] = int(ttl_ms)
    return _pack(body)


def encode_session_request(q: Any, kv: Optional[str] = None,
                           k_append: Any = None, v_append: Any = None,
                           mask_append: Any = None, method: str = "mra2",
                           dtype: Optional[str] = None, id: Optional[str] = None,
                           causal: bool = False, q_mask: Any = None,
                           **params: ParamValue) -> bytes:
    """The msgpack body of a request on a session: q as in encode_request,
    and the tokens to append first, k_append, v_append [B, Hkv, n, D] (both
    or neither) and mask_append [B, n].  kv names the session (the body of
    POST /v1/attention); None leaves it out (the body of POST
    /v1/kv/{id}/attention).  Returns bytes."""
    return session_body(q, k_append, v_append, mask_append, method, dtype, id,
                        causal, q_mask, params, kv)


def session_body(q: Any, k_append: Any, v_append: Any, mask_append: Any,
                 method: str, dtype: Optional[str], id: Optional[str],
                 causal: bool, q_mask: Any, params: dict[str, ParamValue],
                 kv: Optional[str] = None) -> bytes:
    """encode_session_request, with the parameters as a dict."""
    check_call(method, params)
    if (k_append is None) != (v_append is None):
        raise ValueError("k_append and v_append go together")
    if mask_append is not None and k_append is None:
        raise ValueError("mask_append needs k_append and v_append")
    dt = wire_dtype(dtype, q)
    body: dict[str, Any] = {"q": tensor(q, dt, "q"), "method": method}
    if k_append is not None:
        body["k_append"] = tensor(k_append, dt, "k_append")
        body["v_append"] = tensor(v_append, dt, "v_append")
    if mask_append is not None:
        body["mask_append"] = mask_tensor(mask_append, "mask_append")
    if kv is not None:
        body["kv"] = str(kv)
    _put_options(body, causal, q_mask, id, params)
    return _pack(body)


def decode_response(raw: bytes) -> dict[str, Any]:
    """The msgpack body of a 200 answer -> its map, with "out" decoded to
    (writable array in the wire dtype, dtype name)."""
    msg = msgpack.unpackb(raw, raw=False)
    if not isinstance(msg, dict) or "out" not in msg:
        raise ValueError("the answer has no 'out' tensor")
    msg["out"] = decode_tensor(msg["out"])
    return msg
