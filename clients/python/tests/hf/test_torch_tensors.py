"""torch tensors in and out of mra_client against a live bin/mrad: f32,
f16 and bf16 queries get tensors of their dtype back, bit for bit what
the numpy path answers; torch.bfloat16 travels as its own bits (never
widened to float32 on the wire); answers are writable; sessions and the
async client take tensors too.  Runs in the environment with PyTorch
(tools/hf-venv.sh)."""
import asyncio

import msgpack
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mra_client import AsyncClient, Client, encode_request  # noqa: E402


def problem(seed, B=2, H=4, Hkv=2, Nq=40, Nk=70, D=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, Nq, D, generator=g), torch.randn(B, Hkv, Nk, D, generator=g),
            torch.randn(B, Hkv, Nk, D, generator=g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tensors_in_and_out(server, dtype):
    q, k, v = (x.to(dtype) for x in problem(1))
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[1, 60:] = False
    c = Client(server.url)
    r = c.attention(q, k, v, mask=mask, causal=True, method="exact")
    assert isinstance(r.out, torch.Tensor)
    assert r.out.dtype == dtype and r.out.shape == q.shape

    # the same request from numpy: the same bits
    if dtype == torch.bfloat16:
        qn, kn, vn = (x.view(torch.int16).numpy().view(np.uint16) for x in (q, k, v))
        rn = c.attention(qn, kn, vn, mask=mask.numpy(), causal=True, method="exact",
                         dtype="bf16")
    else:
        rn = c.attention(q.numpy(), k.numpy(), v.numpy(), mask=mask.numpy(), causal=True,
                         method="exact")
    assert np.array_equal(r.out_raw, rn.out_raw)
    r.out.add_(1)  # writable (out_raw is the same memory)

    # close to float64 attention of the same (rounded) inputs
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1),
        attn_mask=mask[:, None, None, :] & torch.ones(40, 70, dtype=torch.bool).tril(30))
    tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    err = (rn_out := r.out.double() - 1 - ref).norm() / ref.norm()
    assert float(err) < tol, (rn_out.abs().max(), err)


def test_bf16_travels_as_its_bits():
    """The body of a torch.bfloat16 request holds the tensor's own 16-bit
    patterns, including values float32 could not round-trip through a
    float16 detour, and says bf16."""
    q = torch.tensor([[1.0, 3.0e38, 1e-38, -2.5e-40]], dtype=torch.bfloat16)
    body = msgpack.unpackb(encode_request(q, q, q), raw=False)
    assert body["q"]["dtype"] == "bf16"
    assert body["q"]["data"] == q.view(torch.int16).numpy().tobytes()
    # float32 input asked to travel as bf16 is rounded by torch, to nearest even
    x = torch.tensor([[1 + 2 ** -8, 1 + 3 * 2 ** -8]], dtype=torch.float32)
    body = msgpack.unpackb(encode_request(x, x, x, dtype="bf16"), raw=False)
    assert body["q"]["data"] == x.to(torch.bfloat16).view(torch.int16).numpy().tobytes()


def test_sessions_and_async_take_tensors(server):
    q, k, v = (x.to(torch.bfloat16) for x in problem(2, B=1, Nq=1))
    c = Client(server.url)
    whole = c.attention(q, k, v, causal=True, method="exact")
    with c.kv(k[:, :, :60], v[:, :, :60]) as s:
        assert s.dtype == "bf16"
        step = s.attend(q, k_append=k[:, :, 60:], v_append=v[:, :, 60:], causal=True,
                        method="exact")
    assert step.out.dtype == torch.bfloat16 and torch.equal(step.out, whole.out)

    async def main():
        async with AsyncClient(server.url) as ac:
            return await ac.attention(q, k, v, causal=True, method="exact")

    assert torch.equal(asyncio.run(main()).out, whole.out)
