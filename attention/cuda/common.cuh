/*
 * common.cuh - what the CUDA translation units of the backend share: the
 * device-side description of a problem, the work buffers one problem needs,
 * dtype helpers and the prototypes of the kernel launchers.
 *
 * Nothing here is visible outside attention/cuda/; the C world sees
 * attn-cuda.h and the vtable only.
 */
#ifndef MRAD_CUDA_COMMON_CUH
#define MRAD_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <stddef.h>
#include <stdint.h>

#include "attention/attn.h"

namespace mrad_cuda
{

constexpr int BLK = ATTN_BLOCK; /* 32: the spec's block size b */

/* One problem as the kernels see it: device pointers, resolved scale,
 * query mask and budget.  Built by the backend from a checked struct
 * attn_problem. */
struct dev_problem {
    int method; /* enum attn_method */
    int dtype;  /* enum attn_dtype */
    uint32_t B, H, Hkv, Nq, Nk, D;
    uint32_t nbq, nbk; /* query and key blocks */
    const void *q, *k, *v;
    const uint8_t *mask;  /* keys [B, Nk] or NULL */
    const uint8_t *qmask; /* queries [B, Nq] or NULL: q_mask, or in
                             self-attention the key mask */
    void *out;
    float scale;
    int causal;
    int64_t off;     /* Nk - Nq: query i sits at key position i + off */
    uint64_t budget; /* k of the spec, already capped at the visible pairs */
    uint32_t prior_first, prior_diagonal;
};

/* Device work buffers of one MRA problem (all carved from the pool).
 * Shapes: "heads" = B*H query heads, "kvh" = B*Hkv. */
struct mra_work {
    float *cnt;          /* [B, nbk] key block counts c_J */
    float *cntq;         /* [B, nbq] query block counts c_I */
    float *qh;           /* [heads, nbq, D] query block means */
    float *kh, *vh;      /* [kvh, nbk, D] key / value block means */
    float *L;            /* [heads, nbq, nbk] logits, later low-res weights */
    float *rmax;         /* [heads, nbq] r_I */
    float *low_m;        /* [heads, nbq] max low-res logit of each block row */
    float *low_z;        /* [heads, nbq] sum of low-res weights */
    float *low_num;      /* [heads, nbq, D] low-res weighted value sums */
    uint32_t *hist;      /* [heads, 256] radix histogram */
    uint64_t *rstate;    /* [heads, 2] radix prefix and remaining count */
    uint32_t *row_gt;    /* [heads, nbq] pairs above the threshold per row */
    uint32_t *row_eq;    /* [heads, nbq] pairs equal to the threshold */
    uint32_t *eq_before; /* [heads, nbq] equal pairs in earlier rows */
    uint32_t *row_off;   /* [heads, nbq + 1] CSR offsets into the list */
    uint32_t *list;      /* [heads, budget] selected J per row, ascending */
};

/* Byte sizes of the buffers of struct mra_work, in declaration order, for
 * a problem; returns false when a size overflows size_t. */
constexpr int MRA_NBUF = 17;
bool mra_work_sizes(const dev_problem &p, size_t sizes[MRA_NBUF]);
/* Points the members of *w at consecutive slices of `bufs`. */
void mra_work_bind(mra_work *w, void *const bufs[MRA_NBUF]);

/* Builds the selection (CSR lists of the pairs the budget picked; the
 * causally partial pairs of a row, forced into the set, are not listed:
 * the fused kernels add them) and, in mra2 mode, the low-resolution
 * softmax state of every block row.  Enqueued on `stream` (the cuBLAS
 * handle is bound to it).  Returns a cudaError_t / cuBLAS failure mapped
 * to an attn_err code. */
int mra_plan(const dev_problem &p, const mra_work &w, cublasHandle_t blas,
             cudaStream_t stream);

/* Arguments of the fused attention kernels. */
struct attend_args {
    const void *q, *k, *v;
    const uint8_t *mask;  /* keys [B, Nk] or NULL */
    const uint8_t *qmask; /* queries [B, Nq] or NULL (every query real) */
    void *out;
    uint32_t B, H, Hkv, Nq, Nk, D, nbq, nbk;
    float scale;
    int causal;  /* query i sees key j only when j <= i + off */
    int64_t off; /* Nk - Nq */
    /* MRA: per query head, row_off[nbq + 1] into list (stride list_stride
     * per head); NULL list = exact attention over every key block that is
     * not hidden.  Under causality the partial key blocks of a block row
     * follow its list. */
    const uint32_t *list;
    const uint32_t *row_off;
    uint64_t list_stride;
    /* mra2 low-resolution state per block row (NULL in sparse/exact). */
    const float *low_m, *low_z, *low_num;
    int vec_ok; /* rows start 16-byte aligned: vector / cp.async loads */
};

/* Launch the fused kernels; return ATTN_OK, ATTN_ENOTSUP (D too large) or
 * ATTN_EBACKEND (launch failure). */
int attend_f32(const attend_args &a, cudaStream_t stream);
int attend_f16(const attend_args &a, cudaStream_t stream);
int attend_bf16(const attend_args &a, cudaStream_t stream);

/* Head dimension padded to the tile widths the kernels are built for. */
static inline uint32_t pad_dim(uint32_t D)
{
    return D <= 32 ? 32 : D <= 64 ? 64 : D <= 128 ? 128 : 256;
}

/* Maps the result of a CUDA call to an attn_err code. */
static inline int cuda_err(cudaError_t e)
{
    if (e == cudaSuccess)
        return ATTN_OK;
    if (e == cudaErrorMemoryAllocation)
        return ATTN_ENOMEM;
    return ATTN_EBACKEND;
}

/* dtype conversions used by the loaders. */
__device__ __forceinline__ float to_f32(float x)
{
    return x;
}
__device__ __forceinline__ float to_f32(__half x)
{
    return __half2float(x);
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

} // namespace mrad_cuda

#endif /* MRAD_CUDA_COMMON_CUH */
