/*
 * attend-simt.cuh - the fused attention kernel for float32 inputs:
 * plain FMA arithmetic, no tensor cores, so f32 results stay within 1e-4 of
 * the float64 reference.
 *
 * One launch runs a group of problems (attend_group of common.cuh); a
 * thread block of 128 threads finds its problem and owns one query block
 * (32 rows) of one of its heads.  It walks the key blocks of its row (the CSR list from plan.cu and
 * the causally partial blocks, or for exact attention every block its rows
 * see) with an online softmax and writes each output row once.  Thread t
 * owns row t/4 and every fourth column of the score tile and of the
 * output, so the four threads of a row sit in one warp and reduce with
 * shuffles.  Every sum runs in a fixed order: the output is bitwise
 * reproducible.
 *
 * Launched by attend-simt.cu; also compiled against host emulations of the
 * primitives by tests/cuda/test-attend-emul.cpp (MRAD_CUDA_PRIMS).  What it
 * does like the tensor-core kernel is in attend-common.cuh.
 */
#ifndef MRAD_CUDA_ATTEND_SIMT_CUH
#define MRAD_CUDA_ATTEND_SIMT_CUH

#include <math.h>

#include "attention/cuda/attend-common.cuh"

namespace mrad_cuda
{

namespace
{

constexpr int SIMT_THREADS = 128;

template <int DP>
__global__ void __launch_bounds__(SIMT_THREADS)
    k_attend_f32(const __grid_constant__ attend_group g)
{
    constexpr int LQ = DP + 1; /* padded strides: no bank conflicts */
    constexpr int NU = DP / 4; /* output columns per thread */
    float *sm = dyn_smem<float>();
    float *Qs = sm;            /* [32][LQ] */
    float *Ks = Qs + BLK * LQ; /* [32][LQ] */
    float *Vs = Ks + BLK * LQ; /* [32][DP] */
    float *Ps = Vs + BLK * DP; /* [32][33] */
    __shared__ uint32_t mword; /* the real keys of the tile */
    __shared__ attend_args sa; /* this block's problem */
    __shared__ uint32_t local; /* this block among the problem's */
    attend_problem(g, &sa, &local);
    const attend_args &a = sa;
    const uint32_t qtiles = a.nbq;

    const int tid = threadIdx.x, r = tid / 4, q4 = tid % 4;
    const uint32_t I = attend_qtile(a, qtiles, local);
    const size_t hb = local / qtiles;
    const head_tensors<float> ht = attend_head<float>(a, hb);
    const float *q = ht.q;
    const size_t Nq = a.Nq, Nk = a.Nk, D = a.D;
    const uint32_t row0 = I * BLK;

    for (int x = tid; x < BLK * DP; x += SIMT_THREADS) {
        uint32_t rr = x / DP, d = x % DP, i = row0 + rr;
        Qs[rr * LQ + d] = (i < Nq && d < D) ? q[i * D + d] : 0.0f;
    }

    float m = -INFINITY, l = 0.0f, acc[NU];
    for (int u = 0; u < NU; u++)
        acc[u] = 0.0f;
    const tile_walk tw = attend_tiles(a, hb, row0, BLK);
    const uint32_t ntiles = tw.n;
    if (a.low_m) {
        /* mra2: continue the softmax of the row's low-resolution terms */
        size_t row = hb * a.nbq + I;
        float z = a.low_z[row];
        if (z > 0.0f) {
            m = a.low_m[row];
            l = q4 == 0 ? z : 0.0f; /* partial sums: counted once */
            for (int u = 0; u < NU; u++) {
                uint32_t d = q4 + 4 * u;
                acc[u] = d < D ? a.low_num[row * D + d] : 0.0f;
            }
        }
    }

    for (uint32_t it = 0; it < ntiles; it++) {
        const uint32_t J = tw.at(it), key0 = J * BLK;
        const float *k = ht.rows(a, false, J), *v = ht.rows(a, true, J);
        __syncthreads(); /* the previous tile is no longer read */
        for (int x = tid; x < BLK * DP; x += SIMT_THREADS) {
            uint32_t c = x / DP, d = x % DP, j = key0 + c;
            bool in = j < Nk && d < D;
            Ks[c * LQ + d] = in ? k[c * D + d] : 0.0f;
            Vs[c * DP + d] = in ? v[c * D + d] : 0.0f;
        }
        if (tid < 32) {
            uint32_t w =
                key_tile_mask(ht.mask(a, J), (uint32_t)(Nk - key0), tid);
            if (tid == 0)
                mword = w;
        }
        __syncthreads();

        float s[8];
        for (int u = 0; u < 8; u++)
            s[u] = 0.0f;
        for (int d = 0; d < DP; d++) {
            float qv = Qs[r * LQ + d];
            for (int u = 0; u < 8; u++)
                s[u] = fmaf(qv, Ks[(q4 + 4 * u) * LQ + d], s[u]);
        }
        /* masked and padded keys, and under causality the keys past the
         * row's position, are -inf; a row that has seen no key yet
         * subtracts 0 (muse), so its exponentials are 0, not NaN */
        uint32_t mw = mword & causal_cols(a, row0 + r, key0);
        float mx = -INFINITY;
        for (int u = 0; u < 8; u++) {
            int c = q4 + 4 * u;
            s[u] = ((mw >> c) & 1u) ? s[u] * a.scale : -INFINITY;
            mx = fmaxf(mx, s[u]);
        }
        float mnew = fmaxf(m, quad_max(mx));
        float muse = mnew == -INFINITY ? 0.0f : mnew;
        float alpha = expf(m - muse);
        float psum = 0.0f;
        for (int u = 0; u < 8; u++) {
            float p = expf(s[u] - muse);
            Ps[r * 33 + q4 + 4 * u] = p;
            psum += p;
        }
        l = l * alpha + psum;
        m = mnew;
        __syncwarp(); /* the row's four threads share one warp */
        for (int u = 0; u < NU; u++)
            acc[u] *= alpha;
        for (int c = 0; c < BLK; c++) {
            float p = Ps[r * 33 + c];
            const float *vr = Vs + c * DP + q4;
            for (int u = 0; u < NU; u++)
                acc[u] = fmaf(p, vr[4 * u], acc[u]);
        }
    }

    uint32_t i = row0 + r;
    bool real = query_real(ht.qmask, i, (uint32_t)Nq);
    float inv = row_norm(l, real);
    if (i >= Nq)
        return;
    float *out = (float *)a.out + (hb * Nq + i) * D;
    for (int u = 0; u < NU; u++) {
        uint32_t d = q4 + 4 * u;
        if (d < D)
            out[d] = real ? acc[u] * inv : 0.0f;
    }
}

} // namespace

} // namespace mrad_cuda

#endif /* MRAD_CUDA_ATTEND_SIMT_CUH */
