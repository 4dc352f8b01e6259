/*
 * plan.cu - the low-resolution half of MRA-2 on the GPU: block counts and
 * means (from the tokens, or from the sums a store keeps), low-resolution
 * logits (cuBLAS), the top-k block selection of every head, the CSR lists
 * of selected key blocks per block row, and in mra2 ("full") mode the
 * softmax state of the low-resolution terms of each block row, which the
 * fused kernel (attend-*.cu) starts from.
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

/* c_J for every (b, J): number of real tokens in the block, of a sequence
 * of N tokens with mask [B, N] (or NULL). */
__global__ void k_counts(const uint8_t *mask, uint32_t B, uint32_t N,
                         uint32_t nb, float *cnt)
{
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (size_t)B * nb)
        return;
    uint32_t b = (uint32_t)(x / nb), I = (uint32_t)(x % nb);
    uint32_t c = 0;
    for (uint32_t t = 0; t < BLK; t++) {
        uint32_t j = I * BLK + t;
        if (j < N && (!mask || mask[(size_t)b * N + j]))
            c++;
    }
    cnt[x] = (float)c;
}

/* Block means of one tensor [B*Hx, N, D] -> [B*Hx, nb, D]; one thread block
 * per (head, block), threads over d, tokens summed in order. */
template <typename T>
__global__ void k_means(const T *x, const uint8_t *mask, const float *cnt,
                        uint32_t Hx, uint32_t N, uint32_t D, uint32_t nb,
                        float *out)
{
    size_t hb = blockIdx.x / nb;
    uint32_t I = blockIdx.x % nb;
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

/* The key block counts c_J and the key (and in full mode value) block
 * means of a store, from the sums its pages keep: one thread block per
 * (unit, block), threads over d.  The sums were added in token order from
 * 0, as k_means adds, and divided the same way, so the means are bitwise
 * those k_counts and k_means compute from the tokens themselves. */
__global__ void k_kv_means(kv_pages pg, uint32_t Hkv, uint32_t D, uint32_t nb,
                           int full, float *cnt, float *kh, float *vh)
{
    size_t u = blockIdx.x / nb;
    uint32_t J = blockIdx.x % nb;
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

/* r_I over the pairs of the row that are not hidden (row_max() of
 * select-rule.cuh): one warp per block row. */
__global__ void k_rowmax(key_ctx kc, size_t rows, float *rmax)
{
    size_t row = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
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
        rmax[row] = row_max(seen ? l[0] : 0.0f, m, seen);
}

/* One radix pass: histogram of the byte at `shift` of the keys whose higher
 * bytes equal the prefix found so far.  Integer atomics: the counts do not
 * depend on the order the threads run in.  Eight blocks of 256 threads per
 * multiprocessor (32 registers a thread): the eight passes stream the whole
 * grid, so this kernel keeps full occupancy. */
constexpr int HIST_THREADS = 256;
__global__ void __launch_bounds__(HIST_THREADS, 8)
    k_hist(key_ctx kc, size_t chunks, const uint64_t *rstate, int shift,
           uint32_t *hist)
{
    __shared__ uint32_t sh[256];
    size_t head = blockIdx.x / chunks;
    size_t chunk = blockIdx.x % chunks;
    for (int i = threadIdx.x; i < 256; i += blockDim.x)
        sh[i] = 0;
    __syncthreads();
    uint64_t prefix = rstate[head * 2];
    size_t n = (size_t)kc.nbq * kc.nbk;
    size_t e0 = chunk * HIST_CHUNK;
    size_t e1 = e0 + HIST_CHUNK < n ? e0 + HIST_CHUNK : n;
    for (size_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
        /* nbq * nbk < 2^32 (checked by mra_plan): 32-bit division */
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

/* After a histogram: picks the byte that holds the remaining k-th largest
 * key, from the top bin down.  One thread per head. */
__global__ void k_radix_step(size_t heads, int shift, const uint32_t *hist,
                             uint64_t *rstate)
{
    size_t head = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (head >= heads)
        return;
    uint64_t prefix = rstate[head * 2], rem = rstate[head * 2 + 1];
    radix_pick(hist + head * 256, shift, &prefix, &rem);
    rstate[head * 2] = prefix;
    rstate[head * 2 + 1] = rem;
}

/* Per block row: pairs with a key above T and equal to T. */
__global__ void k_rowcount(key_ctx kc, size_t rows, const uint64_t *rstate,
                           uint32_t *row_gt, uint32_t *row_eq)
{
    size_t row = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    size_t head = row / kc.nbq;
    uint32_t I = (uint32_t)(row % kc.nbq);
    uint64_t T = rstate[head * 2];
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
        row_gt[row] = gt;
        row_eq[row] = eq;
    }
}

/* Exclusive prefix sum over a block of SCAN_THREADS threads: *ex gets the
 * sum of v over the threads before this one, *agg the block's total.
 * Warp shuffles, then one warp over the warp totals; fixed order. */
constexpr int SCAN_THREADS = 512;
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

/* Per head: equal pairs in the rows before each row (for the tie rule) and
 * the CSR offsets of the selected lists.  One block per head. */
__global__ void __launch_bounds__(SCAN_THREADS)
    k_rowscan(uint32_t nb, const uint64_t *rstate, const uint32_t *row_gt,
              const uint32_t *row_eq, uint32_t *eq_before, uint32_t *row_off)
{
    size_t head = blockIdx.x;
    uint64_t need = rstate[head * 2 + 1];
    const uint32_t *gt = row_gt + head * nb, *eq = row_eq + head * nb;
    uint32_t *eb = eq_before + head * nb;
    uint32_t *off = row_off + head * (nb + 1);
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

/* Per block row: writes the selected J in ascending order into the row's
 * slice of the list; in full mode also turns the row of logits into the
 * low-resolution weights (0 for selected, empty, partial and hidden pairs)
 * and stores (M_I, Z_I).  One warp per row. */
__global__ void k_rowwrite(key_ctx kc, size_t rows, const uint64_t *rstate,
                           const uint32_t *eq_before, const uint32_t *row_off,
                           uint64_t list_stride, uint32_t *list, int full,
                           float *Lw, float *low_m, float *low_z)
{
    size_t row = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows)
        return;
    size_t head = row / kc.nbq;
    uint32_t I = (uint32_t)(row % kc.nbq);
    uint64_t T = rstate[head * 2], need = rstate[head * 2 + 1];
    uint32_t *out =
        list + head * list_stride + row_off[head * (kc.nbq + 1) + I];
    uint32_t eqb = eq_before[row];
    size_t b = head / kc.H;
    const float *cnt = kc.cnt + b * kc.nbk;
    float cI = kc.cntq[b * kc.nbq + I];
    float *Lrow = Lw + row * kc.nbk;
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
        low_m[row] = mx;
        low_z[row] = z;
    }
}

/* rstate = (prefix 0, k) per head; (all ones, 0) selects nothing. */
__global__ void k_radix_init(size_t heads, uint64_t k, uint64_t *rstate)
{
    size_t h = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (h < heads) {
        rstate[h * 2] = k ? 0 : ~0ull;
        rstate[h * 2 + 1] = k;
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

unsigned grid_for(size_t threads, unsigned block)
{
    return (unsigned)((threads + block - 1) / block);
}

} // namespace

/* a * b * c into *out; false on overflow. */
static bool mul3(size_t a, size_t b, size_t c, size_t *out)
{
    size_t t;
    return !__builtin_mul_overflow(a, b, &t) &&
           !__builtin_mul_overflow(t, c, out);
}

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

/* Block means of a tensor [B*Hx, N, D] of N tokens with mask [B, N] (or
 * NULL) and block counts cnt [B, nb]. */
template <typename T>
static void launch_means(const dev_problem &p, const void *x, uint32_t Hx,
                         uint32_t N, uint32_t nb, const uint8_t *mask,
                         const float *cnt, float *out, cudaStream_t st)
{
    size_t blocks = (size_t)p.B * Hx * nb;
    unsigned threads = p.D >= 128 ? 128 : 64;
    MRAD_LAUNCH(k_means<T>, (unsigned)blocks, threads, st, (const T *)x, mask,
                cnt, Hx, N, p.D, nb, out);
}

static void means(const dev_problem &p, const void *x, uint32_t Hx, uint32_t N,
                  uint32_t nb, const uint8_t *mask, const float *cnt,
                  float *out, cudaStream_t st)
{
    if (p.dtype == ATTN_F32)
        launch_means<float>(p, x, Hx, N, nb, mask, cnt, out, st);
    else if (p.dtype == ATTN_F16)
        launch_means<__half>(p, x, Hx, N, nb, mask, cnt, out, st);
    else
        launch_means<__nv_bfloat16>(p, x, Hx, N, nb, mask, cnt, out, st);
}

int mra_plan(const dev_problem &p, const mra_work &w, cublasHandle_t blas,
             cudaStream_t st)
{
    size_t heads = (size_t)p.B * p.H, rows = heads * p.nbq;
    size_t nn = (size_t)p.nbq * p.nbk;
    uint32_t G = p.H / p.Hkv;
    int full = p.method == ATTN_MRA2;
    int rc;

    /* The grids below put a whole dimension into x. */
    if (rows > 0x7fffffffu || (size_t)p.B * p.Hkv * p.nbk > 0x7fffffffu ||
        heads * ((nn + HIST_CHUNK - 1) / HIST_CHUNK) > 0x7fffffffu ||
        nn > 0xffffffffu || heads > 0x7fffffffu)
        return ATTN_ENOTSUP;

    /* 1. counts and block means: keys over Nk with the key mask (a
     * store's from the sums it keeps, reading nbk rows of sums per unit
     * instead of every key), queries over Nq with the query mask */
    if (p.kv.pg.table) {
        MRAD_LAUNCH(k_kv_means, (unsigned)((size_t)p.B * p.Hkv * p.nbk),
                    p.D >= 128 ? 128 : 64, st, p.kv.pg, p.Hkv, p.D, p.nbk, full,
                    w.cnt, w.kh, w.vh);
    } else {
        MRAD_LAUNCH(k_counts, grid_for((size_t)p.B * p.nbk, 256), 256, st,
                    p.kv.mask, p.B, p.Nk, p.nbk, w.cnt);
        means(p, p.kv.k, p.Hkv, p.Nk, p.nbk, p.kv.mask, w.cnt, w.kh, st);
        if (full)
            means(p, p.kv.v, p.Hkv, p.Nk, p.nbk, p.kv.mask, w.cnt, w.vh, st);
    }
    MRAD_LAUNCH(k_counts, grid_for((size_t)p.B * p.nbq, 256), 256, st, p.qmask,
                p.B, p.Nq, p.nbq, w.cntq);
    means(p, p.q, p.H, p.Nq, p.nbq, p.qmask, w.cntq, w.qh, st);

    /* 2. L = s * qh kh^T.  The G query heads sharing one KV head are
     * contiguous in qh, so one GEMM per (b, KV head) covers them all: in
     * column-major terms L^T [nbk x G*nbq] = kh^T-op(kh) * qh. */
    const float one = 1.0f, zero = 0.0f, scale = p.scale;
    rc = blas_err(sgemm_strided(
        blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)p.nbk, (int)(G * p.nbq), (int)p.D,
        &scale, w.kh, (int)p.D, (long long)p.nbk * p.D, w.qh, (int)p.D,
        (long long)G * p.nbq * p.D, &zero, w.L, (int)p.nbk,
        (long long)G * p.nbq * p.nbk, (int)(p.B * p.Hkv)));
    if (rc)
        return rc;

    /* 3. r_I */
    key_ctx kc;
    kc.L = w.L;
    kc.rmax = w.rmax;
    kc.cnt = w.cnt;
    kc.cntq = w.cntq;
    kc.H = p.H;
    kc.nbq = p.nbq;
    kc.nbk = p.nbk;
    kc.pf = p.prior_first;
    kc.pd = p.prior_diagonal;
    kc.causal = p.causal;
    kc.off = p.off;
    kc.shift = attn_grid_diag_shift_inline(p.off);
    MRAD_LAUNCH(k_rowmax, grid_for(rows * 32, 256), 256, st, kc, rows, w.rmax);

    /* 4. radix select of the k-th largest key per head */
    MRAD_LAUNCH(k_radix_init, grid_for(heads, 128), 128, st, heads, p.budget,
                w.rstate);
    if (p.budget > 0) {
        size_t chunks = (nn + HIST_CHUNK - 1) / HIST_CHUNK;
        for (int shift = 56; shift >= 0; shift -= 8) {
            cudaError_t e =
                memset_async(w.hist, 0, heads * 256 * sizeof(uint32_t), st);
            if (e != cudaSuccess)
                return cuda_err(e);
            MRAD_LAUNCH(k_hist, (unsigned)(heads * chunks), HIST_THREADS, st,
                        kc, chunks, w.rstate, shift, w.hist);
            MRAD_LAUNCH(k_radix_step, grid_for(heads, 128), 128, st, heads,
                        shift, w.hist, w.rstate);
        }
    }

    /* 5. CSR lists with the tie rule; low-resolution weights */
    MRAD_LAUNCH(k_rowcount, grid_for(rows * 32, 256), 256, st, kc, rows,
                w.rstate, w.row_gt, w.row_eq);
    MRAD_LAUNCH(k_rowscan, (unsigned)heads, SCAN_THREADS, st, p.nbq, w.rstate,
                w.row_gt, w.row_eq, w.eq_before, w.row_off);
    MRAD_LAUNCH(k_rowwrite, grid_for(rows * 32, 256), 256, st, kc, rows,
                w.rstate, w.eq_before, w.row_off, p.budget, w.list, full, w.L,
                w.low_m, w.low_z);

    /* 6. low_num = P vh, again one GEMM per (b, KV head) */
    if (full) {
        rc = blas_err(sgemm_strided(
            blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)p.D, (int)(G * p.nbq),
            (int)p.nbk, &one, w.vh, (int)p.D, (long long)p.nbk * p.D, w.L,
            (int)p.nbk, (long long)G * p.nbq * p.nbk, &zero, w.low_num,
            (int)p.D, (long long)G * p.nbq * p.D, (int)(p.B * p.Hkv)));
        if (rc)
            return rc;
    }
    return cuda_err(launch_status());
}

} // namespace mrad_cuda
