/*
 * attend-common.cuh - what the fused attention kernels (attend-mma.cuh for
 * f16 / bf16, attend-simt.cuh for f32) do alike: find a thread block's
 * problem in a grouped launch, the queries of its head and its keys and
 * values (dense tensors or a store's pages), the key tiles it walks,
 * which keys of a tile are real and which a query row sees under
 * causality, and reduce and normalise an output row held by four threads.
 *
 * Compiled against the same primitives as the kernels: prims.cuh, or the
 * file MRAD_CUDA_PRIMS names (the host emulation test).
 */
#ifndef MRAD_CUDA_ATTEND_COMMON_CUH
#define MRAD_CUDA_ATTEND_COMMON_CUH

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef MRAD_CUDA_PRIMS
#include MRAD_CUDA_PRIMS
#else
#include "attention/cuda/prims.cuh"
#endif
#include "attention/cuda/select-rule.cuh"

namespace mrad_cuda
{

namespace
{

/* What one query head reads, with elements stored as E: its queries, and
 * the KV unit whose keys and values it shares (kv_block_rows() and
 * kv_block_mask() of common.cuh find them, in tensors or a store). */
template <typename E> struct head_tensors {
    const E *q;           /* [Nq, D] its query rows */
    const uint8_t *qmask; /* [Nq] its batch entry's query mask, or NULL */
    uint32_t b;           /* its batch entry */
    size_t unit;          /* its KV unit b * Hkv + h / (H / Hkv) */

    /* The key (values: value) rows of key block J. */
    __device__ __forceinline__ const E *rows(const attend_args &a, bool values,
                                             uint32_t J) const
    {
        return kv_block_rows<E>(a.kv, values, unit, J, a.Nk, a.D);
    }
    /* The key mask of key block J (NULL: every key real). */
    __device__ __forceinline__ const uint8_t *mask(const attend_args &a,
                                                   uint32_t J) const
    {
        return kv_block_mask(a.kv, b, J, a.Nk);
    }
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
    t.unit = (size_t)t.b * a.Hkv + h / (a.H / a.Hkv);
    t.q = (const E *)a.q + hb * ((size_t)a.Nq * a.D);
    t.qmask = a.qmask ? a.qmask + (size_t)t.b * a.Nq : nullptr;
    return t;
}

/* The problem of this thread block in a grouped launch, copied into
 * shared memory *sa by the first thread (the kernels read it from there),
 * and the block's index among the problem's own blocks into *local.  Every
 * thread of the block calls it; it ends with a barrier. */
__device__ __forceinline__ void attend_problem(const attend_group &g,
                                               attend_args *sa,
                                               uint32_t *local)
{
    if (threadIdx.x == 0) {
        if (g.n == 1) {
            *sa = g.one;
            *local = blockIdx.x;
        } else {
            uint32_t i = grp_find(g.starts, g.n, blockIdx.x);
            *sa = g.many[i];
            *local = blockIdx.x - g.starts[i];
        }
    }
    __syncthreads();
}

/* The query tile a thread block owns, of `qtiles` per head, from its
 * index `local` among its problem's blocks: under causality the last rows
 * come first, since they see the most keys (the longest blocks start
 * first and the short ones fill the tail). */
__device__ __forceinline__ uint32_t attend_qtile(const attend_args &a,
                                                 uint32_t qtiles,
                                                 uint32_t local)
{
    uint32_t t = local % qtiles;
    return a.causal ? qtiles - 1 - t : t;
}

/* The key tiles a thread block walks, in order: the n0 tiles of a CSR
 * list (MRA: the pairs the budget picked), then the key blocks first,
 * first + 1, ... up to n in all (exact: every block the rows see; MRA
 * under causality: the block row's partial pairs). */
struct tile_walk {
    const uint32_t *list;
    uint32_t n0, first, n;

    __device__ __forceinline__ uint32_t at(uint32_t it) const
    {
        return it < n0 ? list[it] : first + (it - n0);
    }
};

/* The key tiles of the `rows` query rows from row0 of head hb.  MRA
 * (rows = 32, a block row): its CSR row of plan.cu, then its causally
 * partial key blocks vis(I) .. seen(I) - 1.  Exact: the key blocks that
 * hold a key some real row of the block sees (hidden ones are never
 * visited). */
__device__ __forceinline__ tile_walk attend_tiles(const attend_args &a,
                                                  size_t hb, uint32_t row0,
                                                  uint32_t rows)
{
    tile_walk w;
    w.list = nullptr;
    w.n0 = w.first = 0;
    if (!a.list) {
        uint32_t last = row0 + rows < a.Nq ? row0 + rows - 1 : a.Nq - 1;
        w.n = a.causal ? key_blocks_upto((int64_t)last + a.off, a.nbk) : a.nbk;
        return w;
    }
    uint32_t I = row0 / BLK, vis, seen;
    const uint32_t *o = a.row_off + hb * (a.nbq + 1) + I;
    w.list = a.list + hb * a.list_stride + o[0];
    w.n0 = o[1] - o[0];
    attn_grid_row_inline(I, a.off, a.causal, a.nbk, &vis, &seen);
    w.first = vis;
    w.n = w.n0 + (seen - vis);
    return w;
}

/* The columns of the tile that starts at key key0 that query row i sees:
 * bit c for key key0 + c, all of them without causality, else those with
 * key0 + c <= i + off. */
__device__ __forceinline__ uint32_t causal_cols(const attend_args &a,
                                                uint32_t i, uint32_t key0)
{
    if (!a.causal)
        return 0xffffffffu;
    int64_t last = (int64_t)i + a.off - key0; /* the last column seen */
    if (last >= BLK - 1)
        return 0xffffffffu;
    return last < 0 ? 0u : (2u << last) - 1u;
}

/* Which keys of a tile are real: bit c for its key c when c < n (the
 * tile's keys below Nk) and m[c] (its key mask, NULL: all real).  A whole
 * warp calls it; `lane` is the caller's lane. */
__device__ __forceinline__ uint32_t key_tile_mask(const uint8_t *m, uint32_t n,
                                                  int lane)
{
    uint32_t c = (uint32_t)lane;
    return __ballot_sync(0xffffffffu, c < n && (!m || m[c]));
}

/* Whether query row i is real: below Nq and not masked out. */
__device__ __forceinline__ bool query_real(const uint8_t *qmask, uint32_t i,
                                           uint32_t Nq)
{
    return i < Nq && (!qmask || qmask[i]);
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

/* A group of one problem: no table in device memory. */
inline attend_group attend_one(const attend_args &a)
{
    attend_group g;
    memset(&g, 0, sizeof g);
    g.one = a;
    g.n = 1;
    return g;
}

} // namespace

} // namespace mrad_cuda

#endif /* MRAD_CUDA_ATTEND_COMMON_CUH */
