/*
 * common.cuh - what the CUDA translation units of the backend share: the
 * device-side description of a problem, the work buffers one problem needs,
 * addressing of keys and values (dense tensors or a store's pages), the
 * tables of grouped launches (one launch runs a kernel for every problem
 * of a batch), dtype helpers and the prototypes of the kernel launchers.
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

/* ---- grouped launches -------------------------------------------------- */

/*
 * A kernel of a batch runs as one launch over every problem it concerns:
 * the launch's grid is the problems' grids one after the other, and a
 * thread block finds its problem in a table of first blocks, starts[i] <=
 * block < starts[i + 1] (n + 1 entries, starts[0] = 0).  A problem may
 * own no block of a launch (starts[i] == starts[i + 1]).  A group of one
 * problem carries it in the launch's parameters instead, so that it needs
 * no table in device memory.  Returns i; every thread of a block gets the
 * same answer.
 */
__host__ __device__ inline uint32_t grp_find(const uint32_t *starts, uint32_t n,
                                             uint32_t block)
{
    uint32_t lo = 0, hi = n; /* starts[lo] <= block < starts[hi] */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (starts[mid] <= block)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Thread blocks a grouped launch may have (a grid's x dimension). */
constexpr uint64_t GRID_MAX = 0x7fffffffu;

/* ---- where keys and values live ---------------------------------------- */

/*
 * A page of a store of keys and values (kv.cu): 32 tokens of every unit
 * u = b * Hkv + h (entry b, KV head h) and what MRA reads of them, in two
 * pieces so that each keeps the alignment its loads need:
 *   kv:    keys [units][32][D], then values [units][32][D], in the dtype
 *   meta:  ksum [units][D] f32, vsum [units][D] f32 (sums of the block's
 *          real keys and values, in token order), mask [B][32] (1 = real),
 *          cnt [B] f32 (real tokens of the block)
 * Together exactly attn_kv_page_bytes() bytes.
 */
struct kv_page {
    char *kv, *meta;
};

/* How the kernels find a store's pages: table[P] holds tokens 32 P ..
 * 32 P + 31, and the offsets of the pieces of a page. */
struct kv_pages {
    const kv_page *table;   /* device memory; NULL: not a store */
    size_t vals;            /* bytes of a page's keys: its values follow */
    size_t unit;            /* bytes of one unit's 32 rows: 32 * D * es */
    size_t vsum, mask, cnt; /* offsets in meta (ksum at 0) */
};

/* A problem's keys, values and key mask: dense tensors, or a store's
 * pages (pg.table set; k, v and mask are then unused). */
struct kv_src {
    const void *k, *v;   /* [B * Hkv, Nk, D] */
    const uint8_t *mask; /* [B, Nk] or NULL */
    kv_pages pg;
};

/* The 32 key rows (values: value rows) of key block J of unit u, a row
 * every D elements (rows past Nk, in the last block, are not to be read).
 * The one place that turns (unit, block) into an address, for dense
 * tensors and stores alike. */
template <typename E>
__host__ __device__ __forceinline__ const E *
kv_block_rows(const kv_src &s, bool values, size_t u, uint32_t J, uint32_t Nk,
              uint32_t D)
{
    if (s.pg.table)
        return (const E *)(s.pg.table[J].kv + (values ? s.pg.vals : 0) +
                           u * s.pg.unit);
    return (const E *)(values ? s.v : s.k) + (u * Nk + (size_t)J * BLK) * D;
}

/* The key mask of key block J of entry b: m[c] for token 32 J + c (c below
 * Nk - 32 J), or NULL when every key is real. */
__host__ __device__ __forceinline__ const uint8_t *
kv_block_mask(const kv_src &s, uint32_t b, uint32_t J, uint32_t Nk)
{
    if (s.pg.table)
        return (const uint8_t *)s.pg.table[J].meta + s.pg.mask +
               (size_t)b * BLK;
    return s.mask ? s.mask + (size_t)b * Nk + (size_t)J * BLK : nullptr;
}

/* ---- a problem ------------------------------------------------------------
 */

/* One problem as the kernels see it: device pointers, resolved scale,
 * query mask and budget.  Built by the backend from a checked struct
 * attn_problem. */
struct dev_problem {
    int method; /* enum attn_method */
    int dtype;  /* enum attn_dtype */
    uint32_t B, H, Hkv, Nq, Nk, D;
    uint32_t nbq, nbk; /* query and key blocks */
    const void *q;
    kv_src kv;            /* keys, values, key mask */
    const uint8_t *qmask; /* queries [B, Nq] or NULL: q_mask, or in
                             self-attention the key mask */
    bool qmask_of_store;  /* the query mask is the store's key mask, to be
                             gathered into a [B, Nq] buffer first */
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

/* One MRA problem of a grouped plan: its description, work buffers, and
 * what the kernels would otherwise derive again in every thread. */
struct plan_item {
    dev_problem p;
    mra_work w;
    int64_t shift;   /* the diagonal's shift (attn_grid_diag_shift()) */
    uint64_t chunks; /* histogram chunks of a head's grid */
};
/* The plan item of a problem and its work buffers. */
plan_item plan_item_of(const dev_problem &p, const mra_work &w);

/* The launches of a plan that cover several problems, each with its own
 * table of first blocks: counts and radix init (256 threads), block means
 * (128), the warp-per-row passes (256), the radix histograms (256), the
 * radix steps (128) and the row scans (512). */
enum { PH_PREP, PH_MEANS, PH_ROWS, PH_HIST, PH_STEP, PH_SCAN, PH_COUNT };

/* What the plan kernels get: n problems, `one` when n == 1, else tables
 * in device memory: many[n] and starts[PH_COUNT][n + 1]. */
struct plan_group {
    plan_item one;
    const plan_item *many;
    const uint32_t *starts;
    uint32_t n;
};

/* ATTN_OK when the plan's launches can hold the problem (grids, 32-bit
 * grid arithmetic), else ATTN_ENOTSUP. */
int plan_check(const dev_problem &p);
/* The thread blocks a checked problem takes in each phase. */
void plan_blocks(const dev_problem &p, uint64_t blocks[PH_COUNT]);

/*
 * Builds the selection (CSR lists of the pairs the budget picked; the
 * causally partial pairs of a row, forced into the set, are not listed:
 * the fused kernels add them) and, in mra2 mode, the low-resolution
 * softmax state of every block row, for the n problems of `items` (host
 * copies, checked with plan_check()) at once: one launch per kernel for
 * all of them, and the two low-resolution products (cuBLAS) per problem.
 * `starts` [PH_COUNT][n + 1] are the host copies of the tables of first
 * blocks, `g` what the kernels read (its tables in device memory when
 * n > 1).  Enqueued on `stream` (the cuBLAS handle is bound to it).
 * Returns ATTN_OK, or the error of a launch (all problems failed); a
 * failed product fails its own problem only: errs[i] (may be NULL when
 * n == 1) gets ATTN_OK or its error.
 */
int mra_plan_group(const plan_item *items, const uint32_t *starts,
                   const plan_group &g, cublasHandle_t blas,
                   cudaStream_t stream, int *errs);
/* The plan of one problem (a group of one, no table). */
int mra_plan(const dev_problem &p, const mra_work &w, cublasHandle_t blas,
             cudaStream_t stream);
/* Fills starts [PH_COUNT][n + 1] for the items; false when a launch
 * would exceed GRID_MAX blocks. */
bool plan_starts(const plan_item *items, uint32_t n, uint32_t *starts);

/* Arguments of the fused attention kernels. */
struct attend_args {
    const void *q;
    kv_src kv;            /* keys, values and their mask */
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

/* A grouped launch of a fused kernel: n problems of one kind (below);
 * problem i owns thread blocks starts[i] .. starts[i + 1] - 1.  n == 1:
 * the problem is `one`; else many[n] and starts[n + 1] are in device
 * memory. */
struct attend_group {
    attend_args one;
    const attend_args *many;
    const uint32_t *starts;
    uint32_t n;
};

/* Which instantiation of the fused kernels a problem runs in: its dtype,
 * the head dimension padded to dp, and the query rows of a thread block
 * (32; 128 for exact f16/bf16 attention when the shared memory allows). */
struct attend_kind {
    int dtype;
    uint32_t dp, rows;
};

/* Dynamic shared memory of the fused kernels: the tensor-core kernel with
 * `rows` query rows (Q, two stages of K and V, rows of dp + 8 halves), and
 * the f32 kernel (Q, K, V, P). */
constexpr size_t attend_mma_smem(uint32_t dp, uint32_t rows)
{
    return (size_t)(rows + 4 * BLK) * (dp + 8) * 2;
}
constexpr size_t attend_f32_smem(uint32_t dp)
{
    return (size_t)(2 * BLK * (dp + 1) + BLK * dp + BLK * 33) * 4;
}

/* Head dimension padded to the tile widths the kernels are built for. */
static inline uint32_t pad_dim(uint32_t D)
{
    return D <= 32 ? 32 : D <= 64 ? 64 : D <= 128 ? 128 : 256;
}

/* The kind of a problem of head dimension D (exact attention, or MRA
 * with its lists) on a device whose blocks may opt in to `smem_optin`
 * bytes of shared memory; ATTN_ENOTSUP when none fits (D > 256, or f32
 * with D > 128 on GPUs with 99 KiB). */
static inline int attend_kind_of(uint32_t D, int dtype, bool exact,
                                 size_t smem_optin, attend_kind *k)
{
    if (D > 256)
        return ATTN_ENOTSUP;
    k->dtype = dtype;
    k->dp = pad_dim(D);
    k->rows = 32;
    if (dtype == ATTN_F32)
        return attend_f32_smem(k->dp) <= smem_optin ? ATTN_OK : ATTN_ENOTSUP;
    /* exact attention shares each K/V tile between 128 rows when the
     * shared memory allows (every block streams its head's K and V) */
    if (exact && attend_mma_smem(k->dp, 128) <= smem_optin)
        k->rows = 128;
    return attend_mma_smem(k->dp, k->rows) <= smem_optin ? ATTN_OK
                                                         : ATTN_ENOTSUP;
}

/* Query tiles of a problem with `rows` rows a block, and its thread
 * blocks: one per (head, query tile). */
__host__ __device__ inline uint32_t attend_qtiles(const attend_args &a,
                                                  uint32_t rows)
{
    return (uint32_t)(((uint64_t)a.Nq + rows - 1) / rows);
}
static inline uint64_t attend_blocks(const attend_args &a, uint32_t rows)
{
    return (uint64_t)attend_qtiles(a, rows) * a.B * a.H;
}

/* Launch the fused kernels of one kind over a group of `blocks` thread
 * blocks; return ATTN_OK or ATTN_EBACKEND (launch failure). */
int attend_f32(const attend_group &g, const attend_kind &k, uint32_t blocks,
               cudaStream_t stream);
int attend_f16(const attend_group &g, const attend_kind &k, uint32_t blocks,
               cudaStream_t stream);
int attend_bf16(const attend_group &g, const attend_kind &k, uint32_t blocks,
                cudaStream_t stream);
/* The launcher of a kind's dtype. */
static inline int attend_launch(const attend_group &g, const attend_kind &k,
                                uint32_t blocks, cudaStream_t stream)
{
    if (k.dtype == ATTN_F32)
        return attend_f32(g, k, blocks, stream);
    if (k.dtype == ATTN_F16)
        return attend_f16(g, k, blocks, stream);
    return attend_bf16(g, k, blocks, stream);
}

/* ---- stores of keys and values (kv.cu) --------------------------------- */

/* A store of the backend (attn_kv->impl): pages in device memory. */
struct kv_store;

/* Tokens to append.  attn.h declares struct attn_kv_tokens inside struct
 * attn_problem, which in C++ makes it attn_problem::attn_kv_tokens; the
 * later prototypes that name `struct attn_kv_tokens` (attn_kv_append(),
 * the vtable's kv_append) declare an incomplete namespace-scope type of
 * the same name and layout, which the backend casts to this one. */
using kv_tokens = attn_problem::attn_kv_tokens;

/* Pinned host and device buffers of `cap` bytes each for the uploads of
 * appends, and an event recorded after each upload leaves `host`. */
struct kv_stage {
    void *host, *dev;
    size_t cap;
    cudaEvent_t uploaded;
};

/* Creates an empty store of a checked shape (no device memory yet) in
 * the device context of generation `epoch` (backend.cu counts the
 * contexts of a device: a reset after a fault makes a new one).  Returns
 * ATTN_OK or ATTN_ENOMEM. */
int kv_store_new(const attn_kv_shape *shape, uint64_t epoch, kv_store **out);
/* The generation of the context the store's pages were allocated in. */
uint64_t kv_store_epoch(const kv_store *s);
/* Frees the store: its device memory too when `alive` (its context still
 * exists; on the device that is current, with nothing in flight that
 * uses it), else only what it holds in host memory, since the pages went
 * with their context and their addresses may belong to others now. */
void kv_store_free(kv_store *s, bool alive);
/* Staging bytes an append of n tokens needs to go up in one piece; with
 * less (but at least kv_stage_need(s, 1)) it goes up in several. */
size_t kv_stage_need(const kv_store *s, uint32_t n);
/* Appends t->n > 0 tokens after the store's first t0 on `st`: pages first
 * (ATTN_ENOMEM: the store is unchanged), then one upload of the tokens
 * through `stage` per piece that fits it and the kernels that place them
 * and update the block sums.  A device error after the pages were taken
 * leaves the store unusable (kv_store_ok() false). */
int kv_store_append(kv_store *s, uint64_t t0, const kv_tokens *t,
                    const kv_stage &stage, cudaStream_t st);
/* False after an append failed on the device part-way. */
bool kv_store_ok(const kv_store *s);
/* Where the kernels read the store. */
kv_src kv_store_src(const kv_store *s);
/* Copies the key mask of the first N tokens of a store into out [B, N]
 * (the query mask of self-attention), on `st`. */
int kv_gather_mask(const kv_src &kv, uint32_t B, uint32_t N, uint8_t *out,
                   cudaStream_t st);

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
