/*
 * attend-common.cuh - what the fused attention kernels (attend-mma.cuh for
 * f16 / bf16, attend-simt.cuh for f32) do alike: find the tensors of a
 * thread block's head, the key tiles it walks, which keys of a tile are
 * real, and reduce and normalise an output row held by four threads.
 *
 * Compiled against the same primitives as the kernels: prims.cuh, or the
 * file MRAD_CUDA_PRIMS names (the host emulation test).
 */
#ifndef MRAD_CUDA_ATTEND_COMMON_CUH
#define MRAD_CUDA_ATTEND_COMMON_CUH

#include <math.h>
#include <stdint.h>

#ifdef MRAD_CUDA_PRIMS
#include MRAD_CUDA_PRIMS
#else
#include "attention/cuda/prims.cuh"
#endif

namespace mrad_cuda
{

namespace
{

/* The tensors one query head reads, with elements stored as E. */
template <typename E> struct head_tensors {
    const E *q;          /* [N, D] its query rows */
    const E *k, *v;      /* [N, D] the rows of the KV head it shares */
    const uint8_t *mask; /* [N] its batch entry's mask, or NULL */
    uint32_t b;          /* its batch entry */
};

/* The tensors of query head hb = b * H + h: the H / Hkv query heads of a
 * batch entry that share a KV head are consecutive (grouped-query
 * attention). */
template <typename E>
__device__ __forceinline__ head_tensors<E> attend_head(const attend_args &a,
                                                       size_t hb)
{
    head_tensors<E> t;
    t.b = (uint32_t)(hb / a.H);
    uint32_t h = (uint32_t)(hb % a.H);
    size_t kvh = (size_t)t.b * a.Hkv + h / (a.H / a.Hkv);
    size_t nd = (size_t)a.N * a.D;
    t.q = (const E *)a.q + hb * nd;
    t.k = (const E *)a.k + kvh * nd;
    t.v = (const E *)a.v + kvh * nd;
    t.mask = a.mask ? a.mask + (size_t)t.b * a.N : nullptr;
    return t;
}

/* The key tiles that query block `tile` of head hb walks: returns their
 * number and points *list at the block row's CSR list of plan.cu, or, for
 * exact attention, sets it NULL: every tile, in order. */
__device__ __forceinline__ uint32_t attend_tiles(const attend_args &a,
                                                 size_t hb, uint32_t tile,
                                                 const uint32_t **list)
{
    *list = nullptr;
    if (!a.list)
        return a.nb;
    const uint32_t *o = a.row_off + hb * (a.nb + 1) + tile;
    *list = a.list + hb * a.list_stride + o[0];
    return o[1] - o[0];
}

/* Which keys of the tile that starts at token key0 are real (below N and
 * not masked): bit c for token key0 + c.  A whole warp calls it; `lane` is
 * the caller's lane. */
__device__ __forceinline__ uint32_t key_tile_mask(const uint8_t *mask,
                                                  uint32_t key0, uint32_t N,
                                                  int lane)
{
    uint32_t j = key0 + lane;
    return __ballot_sync(0xffffffffu, j < N && (!mask || mask[j]));
}

/* Max and sum over the four consecutive lanes that hold one row. */
__device__ __forceinline__ float quad_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* What an output row's accumulators are multiplied by: 1 / the softmax
 * denominator, whose four partial sums `l` the row's lanes hold; 0 for a
 * masked query row (its output is zeros) or an empty sum.  All four lanes
 * call it. */
__device__ __forceinline__ float row_norm(float l, bool real)
{
    l = quad_sum(l);
    return (real && l > 0.0f) ? 1.0f / l : 0.0f;
}

} // namespace

} // namespace mrad_cuda

#endif /* MRAD_CUDA_ATTEND_COMMON_CUH */
