/*
 * plan.cu - the low-resolution half of MRA-2 on the GPU: block counts and
 * means (from the tokens, or from the sums a store keeps), low-resolution
 * logits (cuBLAS), the top-k block selection of every head, the CSR lists
 * of selected key blocks per block row, and in mra2 ("full") mode the
 * softmax state of the low-resolution terms of each block row, which the
 * fused kernel (attend-*.cu) starts from.
 *
 * Grouped launches.  A batch's MRA problems are planned together: every
 * kernel below runs once for all of them (a grid made of the problems'
 * grids, struct plan_group of common.cuh), so a batch of sixteen problems
 * costs the launches of one.  Only the two low-resolution products stay
 * one cuBLAS call per problem: their shapes differ from problem to
 * problem, and one call per shape keeps cuBLAS's choice of algorithm, and
 * so the bits, those of the problem alone.
 *
 * Selection.  The score S_IJ and its order-preserving 64-bit key come from
 * attention/select-rule.h, the functions the CPU backend uses too, so that
 * the CPU and the GPU pick the same pairs from the same logits.  A radix
 * select (8 passes of 8 bits, integer
 * histograms) finds the key T of the k-th largest score and how many pairs
 * equal to T still belong to the set.  The tie rule of the spec (smaller
 * flat index I*nb + J first) then falls out of a prefix count of the equal
 * pairs in row-major order, so no sort is needed.  Every step uses integer
 * counts or fixed-order reductions: the result is bitwise reproducible.
 *
 * Low-resolution terms.  Once a row is selected, its logits L_IJ are
 * rewritten in place into weights P_IJ = exp(L_IJ + ln c_J - M_I) for the
 * unselected non-empty pairs (0 elsewhere), with M_I their maximum and Z_I
 * their sum; one more batched GEMM gives sum_J P_IJ vh_J.  (M_I, Z_I, that
 * sum) is an online-softmax state the fused kernel simply continues.
 *
 * Cross-attention and causality.  The grid of a head is nbq x nbk (query
 * blocks x key blocks).  Under causal attention the pairs of a block row
 * past vis(I) (attention/select-rule.h) are not selectable: their key is
 * ATTN_SELECT_KEY_NONE, below every other, and the budget never exceeds
 * the visible pairs, so the passes over the grid skip them without
 * reading their logits.  r_I is taken over the pairs not hidden; partial
 * and hidden pairs give no low-resolution term.  The partial pairs are
 * computed at full resolution all the same: the fused kernel walks them
 * after the row's list.
 */
#include <math.h>
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

constexpr int HIST_CHUNK = 4096; /* grid elements per histogram block */
constexpr int HIST_THREADS = 256;
constexpr int SCAN_THREADS = 512;
/* Threads of a block in each phase (the order of PH_*). */
constexpr unsigned PH_THREADS[PH_COUNT] = {256, 128, 256, HIST_THREADS, 128,
                                           SCAN_THREADS};

/* The problem of this thread block in phase `ph` of a grouped plan, and
 * the block's index among the problem's blocks of that phase. */
__device__ __forceinline__ const plan_item &plan_at(const plan_group &g, int ph,
                                                    uint32_t *local)
{
    if (g.n == 1) {
        *local = blockIdx.x;
        return g.one;
    }
    const uint32_t *s = g.starts + (size_t)ph * (g.n + 1);
    uint32_t i = grp_find(s, g.n, blockIdx.x);
    *local = blockIdx.x - s[i];
    return g.many[i];
}

/* The first thread of this block in its problem's part of the grid. */
__device__ __forceinline__ size_t thread_at(uint32_t local)
{
    return (size_t)local * blockDim.x + threadIdx.x;
}

/* c_J of block x = b * nb + J: the number of real tokens of the block, in
 * a sequence of N tokens with mask [B, N] (or NULL). */
__device__ __forceinline__ void count_block(const uint8_t *mask, uint32_t N,
                                            uint32_t nb, size_t x, float *cnt)
{
    uint32_t b = (uint32_t)(x / nb), I = (uint32_t)(x % nb);
    uint32_t c = 0;
    for (uint32_t t = 0; t < BLK; t++) {
        uint32_t j = I * BLK + t;
        if (j < N && (!mask || mask[(size_t)b * N + j]))
            c++;
    }
    cnt[x] = (float)c;
}

/* The block mean of block x = hb * nb + I of a tensor [B*Hx, N, D] ->
 * out [B*Hx, nb, D]: threads over d, tokens summed in order. */
template <typename T>
__device__ __forceinline__ void mean_block(const T *x, const uint8_t *mask,
                                           const float *cnt, uint32_t Hx,
                                           uint32_t N, uint32_t D, uint32_t nb,
                                           float *out, size_t blk)
{
    size_t hb = blk / nb;
    uint32_t I = (uint32_t)(blk % nb);
    uint32_t b = (uint32_t)(hb / Hx);
    float c = cnt[(size_t)b * nb + I];
    const T *src = x + hb * N * D;
    for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) {
        float s = 0.0f;
        for (uint32_t t = 0; t < BLK; t++) {
            uint32_t j = I * BLK + t;
            if (j < N && (!mask || mask[(size_t)b * N + j]))
                s += to_f32(src[(size_t)j * D + d]);
        }
        out[(hb * nb + I) * D + d] = c > 0.0f ? s / c : 0.0f;
    }
}

/* mean_block() of a tensor of dtype `dt`. */
__device__ __forceinline__ void mean_block_of(int dt, const void *x,
                                              const uint8_t *mask,
                                              const float *cnt, uint32_t Hx,
                                              uint32_t N, uint32_t D,
                                              uint32_t nb, float *out,
                                              size_t blk)
{
    if (dt == ATTN_F32)
        mean_block((const float *)x, mask, cnt, Hx, N, D, nb, out, blk);
    else if (dt == ATTN_F16)
        mean_block((const __half *)x, mask, cnt, Hx, N, D, nb, out, blk);
    else
        mean_block((const __nv_bfloat16 *)x, mask, cnt, Hx, N, D, nb, out,
                   blk);
}

/* The key block count c_J and the key (and in full mode value) block means
 * of block blk = u * nb + J of a store, from the sums its pages keep:
 * threads over d.  The sums were added in token order from 0, as
 * mean_block() adds, and divided the same way, so the means are bitwise
 * those count_block() and mean_block() compute from the tokens. */
__device__ __forceinline__ void kv_mean_block(const kv_pages &pg, uint32_t Hkv,
                                              uint32_t D, uint32_t nb, int full,
                                              float *cnt, float *kh, float *vh,
                                              size_t blk)
{
    size_t u = blk / nb;
    uint32_t J = (uint32_t)(blk % nb);
    uint32_t b = (uint32_t)(u / Hkv);
    const char *meta = pg.table[J].meta;
    float c = ((const float *)(meta + pg.cnt))[b];
    if (threadIdx.x == 0 && u % Hkv == 0)
        cnt[(size_t)b * nb + J] = c;
    const float *ks = (const float *)meta + u * D;
    const float *vs = (const float *)(meta + pg.vsum) + u * D;
    for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) {
        kh[(u * nb + J) * D + d] = c > 0.0f ? ks[d] / c : 0.0f;
        if (full)
            vh[(u * nb + J) * D + d] = c > 0.0f ? vs[d] / c : 0.0f;
    }
}

/* Phase PREP, a thread each: the key block counts (tensors only: a
 * store's come with its means), the query block counts, and per head
 * the radix state (prefix 0, k; all ones and 0 select nothing) and an
 * empty histogram. */
__global__ void k_prep(const __grid_constant__ plan_group g)
{
    uint32_t lb;
    const plan_item &it = plan_at(g, PH_PREP, &lb);
    const dev_problem &p = it.p;
    const mra_work &w = it.w;
    size_t x = thread_at(lb);
    size_t nk = p.kv.pg.table ? 0 : (size_t)p.B * p.nbk;
    size_t nq = (size_t)p.B * p.nbq, heads = (size_t)p.B * p.H;
    if (x < nk) {
        count_block(p.kv.mask, p.Nk, p.nbk, x, w.cnt);
        return;
    }
    x -= nk;
    if (x < nq) {
        count_block(p.qmask, p.Nq, p.nbq, x, w.cntq);
        return;
    }
    x -= nq;
    if (x < heads) {
        w.rstate[x * 2] = p.budget ? 0 : ~0ull;
        w.rstate[x * 2 + 1] = p.budget;
        for (int i = 0; i < 256; i++)
            w.hist[x * 256 + i] = 0;
    }
}

/* Phase MEANS, a block each: the key (and in full mode value) block
 * means, from the tokens or a store's sums, then the query block means. */
__global__ void k_means(const __grid_constant__ plan_group g)
{
    uint32_t lb;
    const plan_item &it = plan_at(g, PH_MEANS, &lb);
    const dev_problem &p = it.p;
    const mra_work &w = it.w;
    size_t blk = lb, kb = (size_t)p.B * p.Hkv * p.nbk;
    int full = p.method == ATTN_MRA2;
    if (p.kv.pg.table) {
        if (blk < kb) {
            kv_mean_block(p.kv.pg, p.Hkv, p.D, p.nbk, full, w.cnt, w.kh, w.vh,
                          blk);
            return;
        }
        blk -= kb;
    } else {
        if (blk < kb) {
            mean_block_of(p.dtype, p.kv.k, p.kv.mask, w.cnt, p.Hkv, p.Nk, p.D,
                          p.nbk, w.kh, blk);
            return;
        }
        blk -= kb;
        if (full) {
            if (blk < kb) {
                mean_block_of(p.dtype, p.kv.v, p.kv.mask, w.cnt, p.Hkv, p.Nk,
                              p.D, p.nbk, w.vh, blk);
                return;
            }
            blk -= kb;
        }
    }
    mean_block_of(p.dtype, p.q, p.qmask, w.cntq, p.H, p.Nq, p.D, p.nbq, w.qh,
                  blk);
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the warp, every lane getting it; a fixed order of additions
 * (float: bitwise reproducible). */
template <typename T> __device__ __forceinline__ T warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The shape of a head's grid, and what every selection kernel needs to
 * compute a key. */
struct key_ctx {
    const float *L, *rmax, *cnt, *cntq;
    uint32_t H, nbq, nbk, pf, pd;
    int causal;
    int64_t off, shift; /* Nk - Nq; the diagonal's shift */

    __device__ __forceinline__ void row(uint32_t I, uint32_t *vis,
                                        uint32_t *seen) const
    {
        attn_grid_row_inline(I, off, causal, nbk, vis, seen);
    }

    /* The key of pair (I, J) of a head, for J < vis(I) (the others have
     * ATTN_SELECT_KEY_NONE and are never looked at). */
    __device__ __forceinline__ uint64_t key(size_t head, uint32_t I,
                                            uint32_t J) const
    {
        size_t b = head / H;
        float cI = cntq[b * nbq + I], cJ = cnt[b * nbk + J];
        return pair_key_at(L[(head * nbq + I) * nbk + J], rmax[head * nbq + I],
                           cI == 0.0f || cJ == 0.0f, I, (int64_t)I + shift, J,
                           pf, pd);
    }
};

__device__ __forceinline__ key_ctx key_ctx_of(const plan_item &it)
{
    key_ctx kc;
    kc.L = it.w.L;
    kc.rmax = it.w.rmax;
    kc.cnt = it.w.cnt;
    kc.cntq = it.w.cntq;
    kc.H = it.p.H;
    kc.nbq = it.p.nbq;
    kc.nbk = it.p.nbk;
    kc.pf = it.p.prior_first;
    kc.pd = it.p.prior_diagonal;
    kc.causal = it.p.causal;
    kc.off = it.p.off;
    kc.shift = it.shift;
    return kc;
}

/* Phase ROWS (one warp per block row): r_I over the pairs of the row
 * that are not hidden (row_max() of select-rule.cuh). */
__global__ void k_rowmax(const __grid_constant__ plan_group g)
{
    uint32_t lb;
    const plan_item &it = plan_at(g, PH_ROWS, &lb);
    const key_ctx kc = key_ctx_of(it);
    size_t row = thread_at(lb) / 32, rows = (size_t)it.p.B * it.p.H * kc.nbq;
    int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    uint32_t vis, seen;
    kc.row((uint32_t)(row % kc.nbq), &vis, &seen);
    const float *l = kc.L + row * kc.nbk;
    float m = -INFINITY;
    for (uint32_t J = lane; J < seen; J += 32)
        m = fmaxf(m, l[J]);
    m = warp_max(m);
    if (lane == 0)
        it.w.rmax[row] = row_max(seen ? l[0] : 0.0f, m, seen);
}

/* Histogram chunks of a head's grid. */
__host__ __device__ inline size_t hist_chunks(const dev_problem &p)
{
    return ((size_t)p.nbq * p.nbk + HIST_CHUNK - 1) / HIST_CHUNK;
}

/* One radix pass over a head's chunk of the grid: histogram of the byte
 * at `shift` of the keys whose higher bytes equal the prefix found so far
 * (rstate), added to hist.  Integer atomics: the counts do not depend on
 * the order the threads run in. */
__device__ __forceinline__ void hist_chunk(const key_ctx &kc, size_t head,
                                           size_t chunk, const uint64_t *rstate,
                                           uint32_t *hist, int shift,
                                           uint32_t *sh)
{
    for (int i = threadIdx.x; i < 256; i += blockDim.x)
        sh[i] = 0;
    __syncthreads();
    uint64_t prefix = rstate[head * 2];
    size_t n = (size_t)kc.nbq * kc.nbk;
    size_t e0 = chunk * HIST_CHUNK;
    size_t e1 = e0 + HIST_CHUNK < n ? e0 + HIST_CHUNK : n;
    for (size_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
        /* nbq * nbk < 2^32 (plan_check()): 32-bit division */
        uint32_t I = (uint32_t)e / kc.nbk, J = (uint32_t)e % kc.nbk;
        uint32_t vis, seen;
        kc.row(I, &vis, &seen);
        if (J >= vis) /* not selectable: below the k-th largest key */
            continue;
        uint64_t k = kc.key(head, I, J);
        if (radix_in_prefix(k, prefix, shift))
            atomicAdd(&sh[(k >> shift) & 255], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += blockDim.x)
        if (sh[i])
            atomicAdd(&hist[head * 256 + i], sh[i]);
}

/* Phase HIST: one radix pass.  Eight blocks of 256 threads per
 * multiprocessor (32 registers a thread): the eight passes stream the
 * whole grid, so this kernel keeps full occupancy.  A problem alone is
 * read from the launch's parameters, where the compiler finds its fields
 * without holding them in registers; in a group the first thread copies
 * the block's problem into shared memory. */
__global__ void __launch_bounds__(HIST_THREADS, 8)
    k_hist(const __grid_constant__ plan_group g, int shift)
{
    __shared__ uint32_t sh[256];
    if (g.n == 1) {
        const plan_item &it = g.one;
        hist_chunk(key_ctx_of(it), blockIdx.x / it.chunks,
                   blockIdx.x % it.chunks, it.w.rstate, it.w.hist, shift, sh);
        return;
    }
    __shared__ key_ctx kc;
    __shared__ size_t head, chunk;
    __shared__ const uint64_t *rstate;
    __shared__ uint32_t *hist;
    if (threadIdx.x == 0) {
        uint32_t lb;
        const plan_item &it = plan_at(g, PH_HIST, &lb);
        kc = key_ctx_of(it);
        head = lb / it.chunks;
        chunk = lb % it.chunks;
        rstate = it.w.rstate;
        hist = it.w.hist;
    }
    __syncthreads();
    hist_chunk(kc, head, chunk, rstate, hist, shift, sh);
}

/* Phase STEP, after a histogram, a thread per head: picks the byte that
 * holds the remaining k-th largest key, from the top bin down, and empties
 * the histogram for the next pass. */
__global__ void k_radix_step(const __grid_constant__ plan_group g, int shift)
{
    uint32_t lb;
    const plan_item &it = plan_at(g, PH_STEP, &lb);
    size_t head = thread_at(lb);
    if (head >= (size_t)it.p.B * it.p.H)
        return;
    uint64_t *rs = it.w.rstate + head * 2;
    uint32_t *hist = it.w.hist + head * 256;
    uint64_t prefix = rs[0], rem = rs[1];
    radix_pick(hist, shift, &prefix, &rem);
    rs[0] = prefix;
    rs[1] = rem;
    for (int i = 0; i < 256; i++)
        hist[i] = 0;
}

/* Phase ROWS: per block row, the pairs with a key above T and equal to
 * T. */
__global__ void k_rowcount(const __grid_constant__ plan_group g)
{
    uint32_t lb;
    const plan_item &it = plan_at(g, PH_ROWS, &lb);
    const key_ctx kc = key_ctx_of(it);
    size_t row = thread_at(lb) / 32, rows = (size_t)it.p.B * it.p.H * kc.nbq;
    int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    size_t head = row / kc.nbq;
    uint32_t I = (uint32_t)(row % kc.nbq);
    uint64_t T = it.w.rstate[head * 2];
    uint32_t gt = 0, eq = 0, vis, seen;
    kc.row(I, &vis, &seen);
    for (uint32_t J = lane; J < vis; J += 32) {
        uint64_t k = kc.key(head, I, J);
        gt += k > T;
        eq += k == T;
    }
    gt = warp_sum(gt);
    eq = warp_sum(eq);
    if (lane == 0) {
        it.w.row_gt[row] = gt;
        it.w.row_eq[row] = eq;
    }
}

/* Exclusive prefix sum over a block of SCAN_THREADS threads: *ex gets the
 * sum of v over the threads before this one, *agg the block's total.
 * Warp shuffles, then one warp over the warp totals; fixed order. */
__device__ __forceinline__ void block_exclusive_sum(uint32_t v, uint32_t *ex,
                                                    uint32_t *agg)
{
    __shared__ uint32_t tot[SCAN_THREADS / 32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    uint32_t x = v;
    for (int o = 1; o < 32; o <<= 1) {
        uint32_t y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o)
            x += y;
    }
    if (lane == 31)
        tot[warp] = x;
    __syncthreads();
    if (warp == 0) {
        uint32_t t = lane < SCAN_THREADS / 32 ? tot[lane] : 0;
        for (int o = 1; o < 32; o <<= 1) {
            uint32_t y = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o)
                t += y;
        }
        if (lane < SCAN_THREADS / 32)
            tot[lane] = t;
    }
    __syncthreads();
    *ex = (warp > 0 ? tot[warp - 1] : 0) + x - v;
    *agg = tot[SCAN_THREADS / 32 - 1];
    __syncthreads(); /* tot is reused by the next call */
}

/* Phase SCAN, a block per head: the equal pairs in the rows before each
 * row (for the tie rule) and the CSR offsets of the selected lists. */
__global__ void __launch_bounds__(SCAN_THREADS)
    k_rowscan(const __grid_constant__ plan_group g)
{
    uint32_t lb;
    const plan_item &it = plan_at(g, PH_SCAN, &lb);
    size_t head = lb;
    uint32_t nb = it.p.nbq;
    const mra_work &w = it.w;
    uint64_t need = w.rstate[head * 2 + 1];
    const uint32_t *gt = w.row_gt + head * nb, *eq = w.row_eq + head * nb;
    uint32_t *eb = w.eq_before + head * nb;
    uint32_t *off = w.row_off + head * (nb + 1);
    uint32_t carry_eq = 0, carry_sel = 0;
    for (uint32_t base = 0; base < nb; base += SCAN_THREADS) {
        uint32_t I = base + threadIdx.x;
        uint32_t e = I < nb ? eq[I] : 0, ex_e, agg_e;
        block_exclusive_sum(e, &ex_e, &agg_e);
        uint64_t before = (uint64_t)carry_eq + ex_e;
        uint32_t s = I < nb ? gt[I] + row_take(need, before, e) : 0;
        uint32_t ex_s, agg_s;
        block_exclusive_sum(s, &ex_s, &agg_s);
        if (I < nb) {
            eb[I] = (uint32_t)before;
            off[I] = carry_sel + ex_s;
        }
        carry_eq += agg_e;
        carry_sel += agg_s;
    }
    if (threadIdx.x == 0)
        off[nb] = carry_sel;
}

/* Phase ROWS: per block row, writes the selected J in ascending order
 * into the row's slice of the list; in full mode also turns the row of
 * logits into the low-resolution weights (0 for selected, empty, partial
 * and hidden pairs) and stores (M_I, Z_I). */
__global__ void k_rowwrite(const __grid_constant__ plan_group g)
{
    uint32_t lb;
    const plan_item &it = plan_at(g, PH_ROWS, &lb);
    const key_ctx kc = key_ctx_of(it);
    const mra_work &w = it.w;
    size_t row = thread_at(lb) / 32, rows = (size_t)it.p.B * it.p.H * kc.nbq;
    int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    int full = it.p.method == ATTN_MRA2;
    size_t head = row / kc.nbq;
    uint32_t I = (uint32_t)(row % kc.nbq);
    uint64_t T = w.rstate[head * 2], need = w.rstate[head * 2 + 1];
    uint32_t *out = w.list + head * it.p.budget +
                    w.row_off[head * (kc.nbq + 1) + I];
    uint32_t eqb = w.eq_before[row];
    size_t b = head / kc.H;
    const float *cnt = kc.cnt + b * kc.nbk;
    float cI = kc.cntq[b * kc.nbq + I];
    float *Lrow = w.L + row * kc.nbk;
    uint32_t lt_mask = (1u << lane) - 1u;
    uint32_t nsel = 0, neq = 0, vis, seen;
    kc.row(I, &vis, &seen);
    float mx = -INFINITY;
    for (uint32_t J0 = 0; J0 < vis; J0 += 32) {
        uint32_t J = J0 + lane;
        bool valid = J < vis;
        uint64_t k = valid ? kc.key(head, I, J) : 0;
        bool eq = valid && k == T;
        uint32_t beq = __ballot_sync(0xffffffffu, eq);
        uint64_t rank = (uint64_t)eqb + neq + __popc(beq & lt_mask);
        bool sel = valid && is_selected(k, T, need, rank);
        uint32_t bsel = __ballot_sync(0xffffffffu, sel);
        if (sel)
            out[nsel + __popc(bsel & lt_mask)] = J;
        nsel += __popc(bsel);
        neq += __popc(beq);
        if (full && valid) {
            float cJ = cnt[J];
            if (sel)
                Lrow[J] = -INFINITY;
            else if (cI > 0.0f && cJ > 0.0f)
                mx = fmaxf(mx, Lrow[J] + logf(cJ));
        }
    }
    if (!full)
        return;
    mx = warp_max(mx);
    float z = 0.0f;
    for (uint32_t J = lane; J < kc.nbk; J += 32) {
        float l = Lrow[J], cJ = cnt[J], p = 0.0f;
        if (J < vis && l != -INFINITY && cI > 0.0f && cJ > 0.0f)
            p = expf(l + logf(cJ) - mx);
        Lrow[J] = p;
        z += p;
    }
    z = warp_sum(z);
    if (lane == 0) {
        w.low_m[row] = mx;
        w.low_z[row] = z;
    }
}

int blas_err(cublasStatus_t s)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return ATTN_OK;
    if (s == CUBLAS_STATUS_ALLOC_FAILED)
        return ATTN_ENOMEM;
    return ATTN_EBACKEND;
}

/* a * b * c into *out; false on overflow. */
bool mul3(size_t a, size_t b, size_t c, size_t *out)
{
    size_t t;
    return !__builtin_mul_overflow(a, b, &t) &&
           !__builtin_mul_overflow(t, c, out);
}

uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return (a + b - 1) / b;
}

/* L = s * qh kh^T of one problem.  The G query heads sharing one KV head
 * are contiguous in qh, so one GEMM per (b, KV head) covers them all: in
 * column-major terms L^T [nbk x G*nbq] = kh^T-op(kh) * qh. */
int gemm_logits(const plan_item &it, cublasHandle_t blas)
{
    const dev_problem &p = it.p;
    uint32_t G = p.H / p.Hkv;
    const float zero = 0.0f, scale = p.scale;
    return blas_err(sgemm_strided(
        blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)p.nbk, (int)(G * p.nbq), (int)p.D,
        &scale, it.w.kh, (int)p.D, (long long)p.nbk * p.D, it.w.qh, (int)p.D,
        (long long)G * p.nbq * p.D, &zero, it.w.L, (int)p.nbk,
        (long long)G * p.nbq * p.nbk, (int)(p.B * p.Hkv)));
}

/* low_num = P vh of one problem, again one GEMM per (b, KV head). */
int gemm_low_num(const plan_item &it, cublasHandle_t blas)
{
    const dev_problem &p = it.p;
    uint32_t G = p.H / p.Hkv;
    const float one = 1.0f, zero = 0.0f;
    return blas_err(sgemm_strided(
        blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)p.D, (int)(G * p.nbq), (int)p.nbk,
        &one, it.w.vh, (int)p.D, (long long)p.nbk * p.D, it.w.L, (int)p.nbk,
        (long long)G * p.nbq * p.nbk, &zero, it.w.low_num, (int)p.D,
        (long long)G * p.nbq * p.D, (int)(p.B * p.Hkv)));
}

} // namespace

bool mra_work_sizes(const dev_problem &p, size_t sz[MRA_NBUF])
{
    size_t heads = (size_t)p.B * p.H, kvh = (size_t)p.B * p.Hkv;
    size_t nbq = p.nbq, nbk = p.nbk, D = p.D, nn, hq, hk;
    if (__builtin_mul_overflow(nbq, nbk, &nn) || p.budget > nn ||
        __builtin_mul_overflow(heads, nbq, &hq) ||
        __builtin_mul_overflow(kvh, nbk, &hk))
        return false;
    bool ok = mul3(p.B, nbk, 4, &sz[0]) &&        /* cnt */
              mul3(p.B, nbq, 4, &sz[1]) &&        /* cntq */
              mul3(hq, D, 4, &sz[2]) &&           /* qh */
              mul3(hk, D, 4, &sz[3]) &&           /* kh */
              mul3(hk, D, 4, &sz[4]) &&           /* vh */
              mul3(heads, nn, 4, &sz[5]) &&       /* L */
              mul3(hq, 1, 4, &sz[6]) &&           /* rmax */
              mul3(hq, 1, 4, &sz[7]) &&           /* low_m */
              mul3(hq, 1, 4, &sz[8]) &&           /* low_z */
              mul3(hq, D, 4, &sz[9]) &&           /* low_num */
              mul3(heads, 256, 4, &sz[10]) &&     /* hist */
              mul3(heads, 2, 8, &sz[11]) &&       /* rstate */
              mul3(hq, 1, 4, &sz[12]) &&          /* row_gt */
              mul3(hq, 1, 4, &sz[13]) &&          /* row_eq */
              mul3(hq, 1, 4, &sz[14]) &&          /* eq_before */
              mul3(heads, nbq + 1, 4, &sz[15]) && /* row_off */
              mul3(heads, p.budget, 4, &sz[16]);  /* list */
    return ok;
}

void mra_work_bind(mra_work *w, void *const b[MRA_NBUF])
{
    w->cnt = (float *)b[0];
    w->cntq = (float *)b[1];
    w->qh = (float *)b[2];
    w->kh = (float *)b[3];
    w->vh = (float *)b[4];
    w->L = (float *)b[5];
    w->rmax = (float *)b[6];
    w->low_m = (float *)b[7];
    w->low_z = (float *)b[8];
    w->low_num = (float *)b[9];
    w->hist = (uint32_t *)b[10];
    w->rstate = (uint64_t *)b[11];
    w->row_gt = (uint32_t *)b[12];
    w->row_eq = (uint32_t *)b[13];
    w->eq_before = (uint32_t *)b[14];
    w->row_off = (uint32_t *)b[15];
    w->list = (uint32_t *)b[16];
}

void plan_blocks(const dev_problem &p, uint64_t bl[PH_COUNT])
{
    uint64_t heads = (uint64_t)p.B * p.H, rows = heads * p.nbq;
    uint64_t kb = (uint64_t)p.B * p.Hkv * p.nbk;
    bool store = p.kv.pg.table != nullptr;
    uint64_t nk = store ? 0 : (uint64_t)p.B * p.nbk;
    bl[PH_PREP] = ceil_div(nk + (uint64_t)p.B * p.nbq + heads, 256);
    bl[PH_MEANS] = kb + (!store && p.method == ATTN_MRA2 ? kb : 0) +
                   heads * p.nbq;
    bl[PH_ROWS] = ceil_div(rows * 32, 256);
    bl[PH_HIST] = p.budget ? heads * hist_chunks(p) : 0;
    bl[PH_STEP] = p.budget ? ceil_div(heads, 128) : 0;
    bl[PH_SCAN] = heads;
}

int plan_check(const dev_problem &p)
{
    /* grids of one problem, and the 32-bit arithmetic of the kernels */
    uint64_t bl[PH_COUNT];
    if (p.nbq > 65535 || p.nbk > 65535 ||
        (uint64_t)p.nbq * p.nbk > 0xffffffffu ||
        (uint64_t)p.B * p.H * p.nbq > 0x7fffffffu ||
        (uint64_t)p.B * p.Hkv * p.nbk > 0x7fffffffu)
        return ATTN_ENOTSUP;
    plan_blocks(p, bl);
    for (int ph = 0; ph < PH_COUNT; ph++)
        if (bl[ph] > GRID_MAX)
            return ATTN_ENOTSUP;
    return ATTN_OK;
}

bool plan_starts(const plan_item *items, uint32_t n, uint32_t *starts)
{
    uint64_t at[PH_COUNT] = {0};
    for (uint32_t i = 0; i <= n; i++) {
        uint64_t bl[PH_COUNT] = {0};
        if (i < n)
            plan_blocks(items[i].p, bl);
        for (int ph = 0; ph < PH_COUNT; ph++) {
            if (at[ph] > GRID_MAX)
                return false;
            starts[(size_t)ph * (n + 1) + i] = (uint32_t)at[ph];
            at[ph] += bl[ph];
        }
    }
    return true;
}

int mra_plan_group(const plan_item *items, const uint32_t *starts,
                   const plan_group &g, cublasHandle_t blas, cudaStream_t st,
                   int *errs)
{
    uint32_t n = g.n;
    uint32_t total[PH_COUNT];
    bool any_budget = false;
    for (int ph = 0; ph < PH_COUNT; ph++)
        total[ph] = starts[(size_t)ph * (n + 1) + n];
    for (uint32_t i = 0; i < n; i++) {
        any_budget |= items[i].p.budget > 0;
        if (errs)
            errs[i] = ATTN_OK;
    }
    /* a problem whose product fails fails alone; the grouped kernels run
     * for it all the same, on what its buffers hold */
    auto gemms = [&](bool low) -> int {
        for (uint32_t i = 0; i < n; i++) {
            if (low && items[i].p.method != ATTN_MRA2)
                continue;
            int rc = low ? gemm_low_num(items[i], blas)
                         : gemm_logits(items[i], blas);
            if (rc && errs && !errs[i])
                errs[i] = rc;
            else if (rc && !errs)
                return rc;
        }
        return ATTN_OK;
    };

    /* 1. counts, radix init, block means: keys over Nk with the key mask
     * (a store's from the sums it keeps, reading nbk rows of sums per unit
     * instead of every key), queries over Nq with the query mask */
    if (total[PH_PREP])
        MRAD_LAUNCH(k_prep, total[PH_PREP], PH_THREADS[PH_PREP], st, g);
    if (total[PH_MEANS])
        MRAD_LAUNCH(k_means, total[PH_MEANS], PH_THREADS[PH_MEANS], st, g);
    /* 2. L = s * qh kh^T */
    int rc = gemms(false);
    if (rc)
        return rc;
    /* 3. r_I */
    if (total[PH_ROWS])
        MRAD_LAUNCH(k_rowmax, total[PH_ROWS], PH_THREADS[PH_ROWS], st, g);
    /* 4. radix select of the k-th largest key per head */
    if (any_budget && total[PH_HIST]) {
        for (int shift = 56; shift >= 0; shift -= 8) {
            MRAD_LAUNCH(k_hist, total[PH_HIST], PH_THREADS[PH_HIST], st, g,
                        shift);
            MRAD_LAUNCH(k_radix_step, total[PH_STEP], PH_THREADS[PH_STEP], st,
                        g, shift);
        }
    }
    /* 5. CSR lists with the tie rule; low-resolution weights */
    if (total[PH_ROWS])
        MRAD_LAUNCH(k_rowcount, total[PH_ROWS], PH_THREADS[PH_ROWS], st, g);
    if (total[PH_SCAN])
        MRAD_LAUNCH(k_rowscan, total[PH_SCAN], PH_THREADS[PH_SCAN], st, g);
    if (total[PH_ROWS])
        MRAD_LAUNCH(k_rowwrite, total[PH_ROWS], PH_THREADS[PH_ROWS], st, g);
    /* 6. low_num = P vh */
    rc = gemms(true);
    if (rc)
        return rc;
    return cuda_err(launch_status());
}

plan_item plan_item_of(const dev_problem &p, const mra_work &w)
{
    plan_item it;
    memset(&it, 0, sizeof it);
    it.p = p;
    it.w = w;
    it.shift = attn_grid_diag_shift_inline(p.off);
    it.chunks = hist_chunks(p);
    return it;
}

int mra_plan(const dev_problem &p, const mra_work &w, cublasHandle_t blas,
             cudaStream_t st)
{
    int rc = plan_check(p);
    if (rc)
        return rc;
    plan_group g;
    memset(&g, 0, sizeof g);
    g.one = plan_item_of(p, w);
    g.n = 1;
    uint32_t starts[PH_COUNT * 2];
    if (!plan_starts(&g.one, 1, starts))
        return ATTN_ENOTSUP;
    int err = ATTN_OK;
    rc = mra_plan_group(&g.one, starts, g, blas, st, &err);
    return rc ? rc : err;
}

} // namespace mrad_cuda
