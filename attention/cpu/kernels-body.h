/*
 * kernels-body.h - the micro-kernels of the CPU backend, written once over
 * GCC/Clang vector extensions and instantiated per ISA by the file that
 * includes it (kernels.c for the portable SSE2 baseline).
 *
 * The includer defines KVEC (floats per vector: 4, 8 or 16) and KNAME (the
 * table's name) and KTABLE (the table's symbol).  Every reduction runs
 * "vertically": accumulators are indexed by lane and the sum over d or j
 * goes in program order, so a given KVEC always gives the same bits no
 * matter how work is split between threads.
 */
#include <string.h>

#include "attention/cpu/kernels.h"

typedef float vf __attribute__((vector_size(KVEC * 4)));
typedef int32_t vi __attribute__((vector_size(KVEC * 4)));
/* Unaligned access: the buffers are 64-byte aligned, but rows of a tile
 * only need 4-byte alignment at this level. */
typedef float vfu __attribute__((vector_size(KVEC * 4), aligned(4)));

#define NJ (CPU_TILE / KVEC) /* vectors per 32 keys */
#define ND (CPU_DPAD / KVEC) /* vectors per CPU_DPAD floats */

static inline vf ld(const float *p)
{
    return *(const vfu *)p;
}

static inline void st(float *p, vf x)
{
    *(vfu *)p = x;
}

static inline vf splat(float x)
{
    return (vf){0} + x;
}

/* where mask (all-ones lanes) take a, else b */
static inline vf blend(vi mask, vf a, vf b)
{
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* exp(x) per lane: Cephes-style range reduction and polynomial (about 1
 * ulp); lanes below -87 (including -inf) give 0. */
static inline vf vexp(vf x)
{
    vi under = x < splat(-87.0f);
    x = blend(under, splat(-87.0f), x);
    x = blend(x > splat(88.0f), splat(88.0f), x);
    vf t = x * 1.44269504088896341f + 12582912.0f; /* round to nearest */
    vf fn = t - 12582912.0f;
    vf r = x - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi e = __builtin_convertvector(fn, vi) + 127;
    vf scale = (vf)(e << 23);
    return (vf)((vi)(p * scale) & ~under);
}

static inline float hmax(vf x)
{
    float m = x[0];
    for (int t = 1; t < KVEC; t++)
        m = x[t] > m ? x[t] : m;
    return m;
}

static inline float hsum(vf x)
{
    float s = 0.0f;
    for (int t = 0; t < KVEC; t++)
        s += x[t];
    return s;
}

/* Q K^T: two query rows at a time against half a tile (16 keys), so the
 * accumulators stay in registers and each key vector is loaded once per
 * pair of rows. */
static void k_qk_tile(const float *q, const float *kt, uint32_t D, uint32_t Dp,
                      float scale, float *s)
{
    enum { HJ = NJ / 2 };
    for (int i = 0; i < CPU_TILE; i += 2) {
        const float *q0 = q + (size_t)i * Dp, *q1 = q0 + Dp;
        for (int h = 0; h < 2; h++) {
            vf a0[HJ], a1[HJ];
            for (int t = 0; t < HJ; t++)
                a0[t] = a1[t] = splat(0.0f);
            const float *k = kt + h * (CPU_TILE / 2);
            for (uint32_t d = 0; d < D; d++, k += CPU_TILE) {
                vf x0 = splat(q0[d]), x1 = splat(q1[d]);
                for (int t = 0; t < HJ; t++) {
                    vf kv = ld(k + t * KVEC);
                    a0[t] += x0 * kv;
                    a1[t] += x1 * kv;
                }
            }
            float *s0 = s + i * CPU_TILE + h * (CPU_TILE / 2);
            for (int t = 0; t < HJ; t++) {
                st(s0 + t * KVEC, a0[t] * scale);
                st(s0 + CPU_TILE + t * KVEC, a1[t] * scale);
            }
        }
    }
}

static void k_softmax_tile(float *s, const float *kbias, float *m, float *l,
                           float *alpha)
{
    vf bias[NJ];
    for (int t = 0; t < NJ; t++)
        bias[t] = ld(kbias + t * KVEC);
    for (int i = 0; i < CPU_TILE; i++) {
        float *row = s + i * CPU_TILE;
        vf x[NJ], mx = splat(m[i]);
        for (int t = 0; t < NJ; t++) {
            x[t] = ld(row + t * KVEC) + bias[t];
            mx = blend(x[t] > mx, x[t], mx);
        }
        float mnew = hmax(mx);
        /* alpha = exp(m_old - m_new); -inf - finite = -inf -> 0 */
        alpha[i] = vexp(splat(m[i] - mnew))[0];
        vf sum = splat(0.0f), mv = splat(mnew);
        for (int t = 0; t < NJ; t++) {
            vf p = vexp(x[t] - mv);
            sum += p;
            st(row + t * KVEC, p);
        }
        l[i] = l[i] * alpha[i] + hsum(sum);
        m[i] = mnew;
    }
}

/* P V: two rows at a time over CPU_DPAD columns of V, the accumulators in
 * registers across the 32 keys. */
static void k_pv_tile(const float *p, const float *v, uint32_t Dp,
                      const float *alpha, float *acc)
{
    for (int i = 0; i < CPU_TILE; i += 2) {
        const float *p0 = p + i * CPU_TILE, *p1 = p0 + CPU_TILE;
        float *c0 = acc + (size_t)i * Dp, *c1 = c0 + Dp;
        vf al0 = splat(alpha[i]), al1 = splat(alpha[i + 1]);
        for (uint32_t d0 = 0; d0 < Dp; d0 += CPU_DPAD) {
            vf a0[ND], a1[ND];
            for (int t = 0; t < ND; t++) {
                a0[t] = ld(c0 + d0 + t * KVEC) * al0;
                a1[t] = ld(c1 + d0 + t * KVEC) * al1;
            }
            const float *vr = v + d0;
            for (int j = 0; j < CPU_TILE; j++, vr += Dp) {
                vf w0 = splat(p0[j]), w1 = splat(p1[j]);
                for (int t = 0; t < ND; t++) {
                    vf vv = ld(vr + t * KVEC);
                    a0[t] += w0 * vv;
                    a1[t] += w1 * vv;
                }
            }
            for (int t = 0; t < ND; t++) {
                st(c0 + d0 + t * KVEC, a0[t]);
                st(c1 + d0 + t * KVEC, a1[t]);
            }
        }
    }
}

static void k_block_mean(const float *x, uint32_t Dp, float cnt, float *out)
{
    for (uint32_t d0 = 0; d0 < Dp; d0 += KVEC) {
        vf a = splat(0.0f);
        if (cnt != 0.0f) {
            for (int i = 0; i < CPU_TILE; i++)
                a += ld(x + (size_t)i * Dp + d0);
            a = a / cnt;
        }
        st(out + d0, a);
    }
}

static void k_lowres_row(const float *qh, const float *khT, uint32_t D,
                         uint32_t nb, float scale, float *L)
{
    uint32_t J = 0;
    /* four vectors of J at a time, then single vectors, then a scalar tail;
     * each L[J] is the same sum over d in the same order either way */
    for (; J + 4 * KVEC <= nb; J += 4 * KVEC) {
        vf a[4] = {splat(0.0f), splat(0.0f), splat(0.0f), splat(0.0f)};
        for (uint32_t d = 0; d < D; d++) {
            vf x = splat(qh[d]);
            const float *k = khT + (size_t)d * nb + J;
            for (int t = 0; t < 4; t++)
                a[t] += x * ld(k + t * KVEC);
        }
        for (int t = 0; t < 4; t++)
            st(L + J + t * KVEC, a[t] * scale);
    }
    for (; J < nb; J++) {
        float a = 0.0f;
        for (uint32_t d = 0; d < D; d++)
            a += qh[d] * khT[(size_t)d * nb + J];
        L[J] = a * scale;
    }
}

const struct cpu_kernels KTABLE = {
    .name = KNAME,
    .qk_tile = k_qk_tile,
    .softmax_tile = k_softmax_tile,
    .pv_tile = k_pv_tile,
    .block_mean = k_block_mean,
    .lowres_row = k_lowres_row,
};
