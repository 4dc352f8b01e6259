"""numpy arrays and torch tensors to and from the wire's dtypes.

The wire carries f32, f16 and bf16 as little-endian bytes.  numpy has no
bfloat16, so on the numpy side bf16 travels as uint16 bit patterns: float
input is rounded to nearest even (as the service's own conversion does),
uint16 input is taken as the bits already, ml_dtypes bfloat16 arrays as
theirs, and answers are widened to float32 exactly.  torch has bfloat16:
a torch.bfloat16 tensor travels as its own bits (no float32 on the way),
and the answer to torch queries is a torch tensor in the wire dtype, on
the queries' device.

torch is never imported here: a tensor is recognised by its type's module,
so the package works, and is typed, without torch installed.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

DTYPES = ("f32", "f16", "bf16")

# What a tensor argument may be: a numpy array (or anything numpy takes),
# or a torch tensor.
TensorLike = Union[npt.NDArray[Any], Sequence[Any], "torch.Tensor"]

_LE: dict[str, np.dtype[Any]] = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"),
                                 "bf16": np.dtype("<u2"), "u8": np.dtype("u1")}


def is_torch(x: object) -> bool:
    """True when x is a torch tensor (torch is then already imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def f32_to_bf16(x: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """float32 (or anything castable) -> bfloat16 bits as uint16, rounding
    to nearest even; NaN stays NaN, overflow becomes infinity."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = np.isnan(b.view(np.float32))
    rounded = (b + (np.uint32(0x7FFF) + ((b >> 16) & 1))) >> 16
    out: npt.NDArray[np.uint16] = rounded.astype(np.uint16)
    if nan.any():
        out[nan] = ((b[nan] >> 16) | 0x0040).astype(np.uint16)
    return out


def bf16_to_f32(bits: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """bfloat16 bits (uint16) -> float32, exactly."""
    wide = np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16
    out: npt.NDArray[np.float32] = wide.view(np.float32)
    return out


def infer_dtype(x: Any) -> str:
    """The wire dtype a tensor maps to when none is asked for: float32 ->
    f32, float16 -> f16, bfloat16 (torch, ml_dtypes) -> bf16, other floats
    -> f32."""
    if is_torch(x):
        name = str(x.dtype).removeprefix("torch.")
        if name == "bfloat16":
            return "bf16"
        if name == "float16":
            return "f16"
        if x.is_floating_point():
            return "f32"
        raise TypeError(f"tensors must be floating point, not {x.dtype}")
    dt = np.asarray(x).dtype
    if dt.name == "bfloat16":  # ml_dtypes / jax arrays
        return "bf16"
    if dt == np.float16:
        return "f16"
    if dt == np.uint16:
        raise TypeError("uint16 arrays are bf16 bit patterns: pass dtype='bf16'")
    if dt.kind == "f":
        return "f32"
    raise TypeError(f"tensors must be floating point, not {dt}")


def _torch_to_numpy(t: "torch.Tensor", dtype: str) -> npt.NDArray[Any]:
    """A torch tensor in wire dtype `dtype` as a numpy array (bf16 as
    uint16 bits), converted by torch itself (round to nearest even)."""
    import torch

    t = t.detach()
    want = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    if not t.is_floating_point():
        raise TypeError(f"tensors must be floating point, not {t.dtype}")
    t = t.to(want)
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if dtype == "bf16":
        return t.view(torch.int16).numpy().view(np.uint16)
    out: npt.NDArray[Any] = t.numpy()
    return out


def to_wire(x: Any, dtype: str) -> npt.NDArray[Any]:
    """A tensor as the contiguous little-endian array of a wire dtype (bf16
    as uint16 bits)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {DTYPES}")
    a = _torch_to_numpy(x, dtype) if is_torch(x) else np.asarray(x)
    if dtype == "bf16":
        if a.dtype.name == "bfloat16":
            bits = a.view(np.uint16)
        elif a.dtype == np.uint16:
            bits = a
        else:
            bits = f32_to_bf16(a)
        return np.ascontiguousarray(bits, dtype=_LE["bf16"])
    if a.dtype == np.uint16 or a.dtype.name == "bfloat16":
        raise TypeError("bf16 data needs dtype='bf16'")
    return np.ascontiguousarray(a, dtype=_LE[dtype])


def mask_to_wire(m: Any, name: str) -> npt.NDArray[np.uint8]:
    """A mask, [N] or [B, N] of 0/1 (bool, ints, floats; numpy or torch) ->
    the [B, N] uint8 wire form."""
    if is_torch(m):
        m = m.detach().cpu().numpy()
    a = np.asarray(m)
    if a.ndim < 1 or a.ndim > 2:
        raise ValueError(f"{name} must have 1 or 2 dimensions, not {a.ndim}")
    a = a.reshape((1,) * (2 - a.ndim) + a.shape)
    out: npt.NDArray[np.uint8] = (a != 0).astype(np.uint8)
    return out


def shape4(x: Any, name: str) -> tuple[int, int, int, int]:
    """The [B, H, N, D] shape of a tensor given as [N, D], [H, N, D] or
    [B, H, N, D]."""
    shape = tuple(int(s) for s in x.shape) if is_torch(x) else np.shape(x)
    if len(shape) < 2 or len(shape) > 4:
        raise ValueError(f"{name} must have 2 to 4 dimensions, not {len(shape)}")
    b, h, n, d = (1,) * (4 - len(shape)) + tuple(shape)
    return b, h, n, d


def wire_shape(x: Any) -> tuple[int, ...]:
    """A tensor's shape as a tuple of ints."""
    return tuple(int(s) for s in x.shape) if is_torch(x) else np.shape(x)


def decode_tensor(t: Any) -> tuple[npt.NDArray[Any], str]:
    """A wire tensor map -> (a writable numpy array in its wire dtype, the
    dtype name)."""
    dt = t["dtype"]
    if dt not in _LE:
        raise ValueError(f"unknown dtype {dt!r} in the answer")
    shape = tuple(int(s) for s in t["shape"])
    # msgpack hands out immutable bytes; the caller owns the answer and may
    # write to it (torch.from_numpy needs a writable array), so copy once.
    arr = np.frombuffer(t["data"], dtype=_LE[dt])
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError("tensor data length does not match its shape")
    return arr.reshape(shape).copy(), dt


def from_wire(raw: npt.NDArray[Any], dtype: str, like: Any) -> Any:
    """The answer array `raw` (wire dtype `dtype`, already of the queries'
    shape) as the caller wants it: for torch queries a torch tensor in the
    wire dtype (bfloat16 from the bits, without a copy) on the queries'
    device; for numpy queries a numpy array, bf16 widened to float32."""
    if is_torch(like):
        import torch

        if dtype == "bf16":
            out = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
        else:
            out = torch.from_numpy(raw)
        if like.device.type != "cpu":
            out = out.to(like.device)
        return out
    return bf16_to_f32(raw) if dtype == "bf16" else raw

