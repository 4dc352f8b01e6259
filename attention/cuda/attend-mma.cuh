/*
 * attend-mma.cuh - the fused attention kernels for f16 and bf16 inputs on
 * tensor cores (mma.sync m16n8k16, f32 accumulation; sm_80 and later).
 *
 * One launch runs a group of problems of one kind (attend_group of
 * common.cuh): a thread block finds its problem, and owns 16*W query rows
 * of one of its heads (W warps, 16 rows each) and walks 32-key tiles: for MRA-2 (W = 2) the key blocks of its block row
 * listed by plan.cu and then its causally partial ones, starting from the
 * row's low-resolution softmax state in mra2 mode; for exact attention
 * (W = 8) every key block its rows see (causally hidden blocks are never
 * loaded).  Per tile a warp computes S = Q K^T (ldmatrix + mma), masks
 * padded and masked keys and, under causality, the keys past each row's
 * position, updates its running max / sum (online softmax, base 2),
 * rescales its output accumulators and adds P V with P rounded to the
 * input type, as flash attention does.  K/V tiles are double-buffered in
 * shared memory with cp.async, so the loads of the next tile overlap the
 * math of this one.  No N x N buffer, no atomics: each output row is
 * written once, by one warp, with every sum in a fixed order (bitwise
 * reproducible).
 *
 * The head dimension is padded with zeros to DP in {32, 64, 128, 256}; rows
 * past Nq (queries) or Nk (keys) read as zeros.  For DP <= 128 the Q
 * fragments stay in registers.
 *
 * The primitives (mma, ldmatrix, cp.async) come from prims.cuh, or
 * from the file MRAD_CUDA_PRIMS names (the host emulation test), through
 * attend-common.cuh, which also holds what this kernel does like the f32
 * one; the launchers are in attend-launch.cuh.
 */
#ifndef MRAD_CUDA_ATTEND_MMA_CUH
#define MRAD_CUDA_ATTEND_MMA_CUH

#include <math.h>
#include <stdint.h>

#include "attention/cuda/attend-common.cuh"

namespace mrad_cuda
{

namespace
{

constexpr float LOG2E = 1.4426950408889634f;

/* Copies `rows` rows starting at token r0 of a [N, D] tensor into shared
 * memory [rows][LD], zero-filling rows >= N and columns >= D.  16-byte
 * chunks go through cp.async when the rows are 16-byte aligned. */
template <int DP, int LD, int NT>
__device__ __forceinline__ void load_rows(uint16_t *dst, const uint16_t *src,
                                          uint32_t r0, int rows, uint32_t N,
                                          uint32_t D, bool vec, int tid)
{
    constexpr int CPR = DP / 8;
    for (int c = tid; c < rows * CPR; c += NT) {
        int r = c / CPR;
        uint32_t d = (uint32_t)(c % CPR) * 8, j = r0 + r;
        uint16_t *s = dst + r * LD + d;
        const uint16_t *g = src + (size_t)j * D + d;
        if (j < N && vec && d < D) {
            cp_async16(s, g);
        } else {
#pragma unroll
            for (uint32_t e = 0; e < 8; e++)
                s[e] = (j < N && d + e < D) ? g[e] : (uint16_t)0;
        }
    }
}

/* Starts the loads of key block J of a head into one stage of shared
 * memory (keys, values, and the word of its real keys, which the first
 * warp computes). */
template <int DP, int LD, int NT>
__device__ __forceinline__ void
load_tile(const attend_args &a, const head_tensors<uint16_t> &ht, uint32_t J,
          uint16_t *ks, uint16_t *vs, uint32_t *mword, bool vec, int tid)
{
    uint32_t n = a.Nk - J * BLK; /* keys of the block below Nk */
    load_rows<DP, LD, NT>(ks, ht.rows(a, false, J), 0, BLK, n, a.D, vec, tid);
    load_rows<DP, LD, NT>(vs, ht.rows(a, true, J), 0, BLK, n, a.D, vec, tid);
    if (tid < 32) {
        uint32_t w = key_tile_mask(ht.mask(a, J), n, tid);
        if (tid == 0)
            *mword = w;
    }
}

/* For DP <= 64, at most 128 registers a thread, so that two 256-thread
 * blocks of exact attention share a multiprocessor. */
template <typename T, int DP, int W>
__global__ void __launch_bounds__(W * 32, DP <= 64 ? 2 : 1)
    k_attend_mma(const __grid_constant__ attend_group g)
{
    constexpr int NT = W * 32;  /* threads */
    constexpr int R = 16 * W;   /* query rows per block */
    constexpr int LD = DP + 8;  /* row stride: conflict-free ldmatrix */
    constexpr int KS = DP / 16; /* k-steps over the head dimension */
    constexpr bool QREG = DP <= 128;
    uint16_t *smem = dyn_smem<uint16_t>();
    uint16_t *Qs = smem;              /* [R][LD] */
    uint16_t *Ks = Qs + R * LD;       /* [2][32][LD] */
    uint16_t *Vs = Ks + 2 * BLK * LD; /* [2][32][LD] */
    __shared__ uint32_t mword[2];
    __shared__ attend_args sa; /* this block's problem */
    __shared__ uint32_t local; /* this block among the problem's */
    attend_problem(g, &sa, &local);
    const attend_args &a = sa;
    const uint32_t qtiles = attend_qtiles(a, R);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int gid = lane / 4, t = lane % 4;
    const uint32_t tile = attend_qtile(a, qtiles, local);
    const size_t hb = local / qtiles;
    const head_tensors<uint16_t> ht = attend_head<uint16_t>(a, hb);
    const uint16_t *q = ht.q;
    const uint32_t Nq = a.Nq, D = a.D;
    const uint32_t row0 = tile * R;
    const bool vec = a.vec_ok != 0;
    /* this thread's two rows: gid and gid + 8 of its warp's 16 */
    const uint32_t my_row = row0 + warp * 16 + gid;

    /* The key tiles of this block: a CSR row and its partial blocks, or
     * every block its rows see. */
    const tile_walk tw = attend_tiles(a, hb, row0, R);
    const uint32_t ntiles = tw.n;

    float o_acc[DP / 8][4];
#pragma unroll
    for (int n = 0; n < DP / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            o_acc[n][e] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    if (a.low_m) {
        /* mra2: continue the softmax of the row's low-resolution terms,
         * kept in base 2 like the rest of the kernel. */
        size_t row = hb * a.nbq + tile;
        float z = a.low_z[row];
        if (z > 0.0f) {
            float m2 = a.low_m[row] * LOG2E;
            mrow[0] = mrow[1] = m2;
            lrow[0] = lrow[1] = t == 0 ? z : 0.0f;
            const float *num = a.low_num + row * D;
#pragma unroll
            for (int n = 0; n < DP / 8; n++) {
                uint32_t d = n * 8 + 2 * t;
                float x0 = d < D ? num[d] : 0.0f;
                float x1 = d + 1 < D ? num[d + 1] : 0.0f;
                o_acc[n][0] = o_acc[n][2] = x0;
                o_acc[n][1] = o_acc[n][3] = x1;
            }
        }
    }

    if (ntiles > 0) {
        load_rows<DP, LD, NT>(Qs, q, row0, R, Nq, D, vec, tid);
        load_tile<DP, LD, NT>(a, ht, tw.at(0), Ks, Vs, &mword[0], vec, tid);
        cp_commit();
    }

    const float sl2 = a.scale * LOG2E;
    uint32_t qf[QREG ? KS : 1][4];
    const uint16_t *qw = Qs + (warp * 16 + (lane % 16)) * LD + (lane / 16) * 8;

    for (uint32_t it = 0; it < ntiles; it++) {
        const int st = it & 1;
        if (it + 1 < ntiles) {
            load_tile<DP, LD, NT>(
                a, ht, tw.at(it + 1), Ks + (st ^ 1) * BLK * LD,
                Vs + (st ^ 1) * BLK * LD, &mword[st ^ 1], vec, tid);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        if (QREG && it == 0) {
#pragma unroll
            for (int ks = 0; ks < (QREG ? KS : 0); ks++)
                ldsm_x4(qf[ks], qw + ks * 16);
        }

        /* S = Q K^T for this warp's 16 rows x 32 keys. */
        const uint16_t *kt = Ks + st * BLK * LD;
        const uint16_t *vt = Vs + st * BLK * LD;
        float s[4][4];
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[n][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            uint32_t af[4];
            if (QREG) {
#pragma unroll
                for (int e = 0; e < 4; e++)
                    af[e] = qf[QREG ? ks : 0][e];
            } else {
                ldsm_x4(af, qw + ks * 16);
            }
#pragma unroll
            for (int np = 0; np < 2; np++) {
                uint32_t bf[4];
                ldsm_x4(bf, kt + (np * 16 + (lane % 8) + (lane / 16) * 8) * LD +
                                ks * 16 + ((lane / 8) % 2) * 8);
                mma_t<T>::run(s[2 * np], af, bf[0], bf[1]);
                mma_t<T>::run(s[2 * np + 1], af, bf[2], bf[3]);
            }
        }

        /* Mask, scale to base 2, online softmax.  Thread holds rows gid
         * and gid+8, columns n*8 + 2t + {0,1}; mw[r] has the columns its row
         * sees (real keys, and under causality not past its position).  A
         * row that has seen no key yet keeps a running max of -inf and
         * subtracts 0 instead (muse), so its exponentials are 0, not NaN. */
        const uint32_t key0 = tw.at(it) * BLK;
        const uint32_t mw[2] = {mword[st] & causal_cols(a, my_row, key0),
                                mword[st] & causal_cols(a, my_row + 8, key0)};
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int c = n * 8 + 2 * t + (e & 1);
                s[n][e] = ((mw[e / 2] >> c) & 1u) ? s[n][e] * sl2 : -INFINITY;
                mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
            }
        float muse[2], alpha[2], psum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mnew = fmaxf(mrow[r], quad_max(mx[r]));
            muse[r] = mnew == -INFINITY ? 0.0f : mnew;
            alpha[r] = exp2f(mrow[r] - muse[r]);
            mrow[r] = mnew;
        }
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[n][e] = exp2f(s[n][e] - muse[e / 2]);
                psum[e / 2] += s[n][e];
            }
#pragma unroll
        for (int r = 0; r < 2; r++)
            lrow[r] = lrow[r] * alpha[r] + psum[r];
#pragma unroll
        for (int n = 0; n < DP / 8; n++) {
            o_acc[n][0] *= alpha[0];
            o_acc[n][1] *= alpha[0];
            o_acc[n][2] *= alpha[1];
            o_acc[n][3] *= alpha[1];
        }

/* O += P V: the S accumulators are already laid out as the A
 * fragments of the second product. */
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            uint32_t pf[4];
            pf[0] = mma_t<T>::pack(s[2 * ks][0], s[2 * ks][1]);
            pf[1] = mma_t<T>::pack(s[2 * ks][2], s[2 * ks][3]);
            pf[2] = mma_t<T>::pack(s[2 * ks + 1][0], s[2 * ks + 1][1]);
            pf[3] = mma_t<T>::pack(s[2 * ks + 1][2], s[2 * ks + 1][3]);
            const uint16_t *vrow =
                vt + (ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD +
                (lane / 16) * 8;
#pragma unroll
            for (int dp = 0; dp < DP / 16; dp++) {
                uint32_t bf[4];
                ldsm_x4_t(bf, vrow + dp * 16);
                mma_t<T>::run(o_acc[2 * dp], pf, bf[0], bf[1]);
                mma_t<T>::run(o_acc[2 * dp + 1], pf, bf[2], bf[3]);
            }
        }
        __syncthreads(); /* this stage may now be refilled */
    }

    /* The four threads of a row hold partial sums of its denominator. */
    T *out = (T *)a.out;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        uint32_t i = my_row + r * 8;
        bool real = query_real(ht.qmask, i, Nq);
        float inv = row_norm(lrow[r], real);
        if (i >= Nq)
            continue;
        T *o = out + (hb * Nq + i) * D;
#pragma unroll
        for (int n = 0; n < DP / 8; n++) {
            uint32_t d = n * 8 + 2 * t;
            if (d < D)
                mma_t<T>::store(o + d, real ? o_acc[n][2 * r] * inv : 0.0f);
            if (d + 1 < D)
                mma_t<T>::store(o + d + 1,
                                real ? o_acc[n][2 * r + 1] * inv : 0.0f);
        }
    }
}

} // namespace

} // namespace mrad_cuda

#endif /* MRAD_CUDA_ATTEND_MMA_CUH */
