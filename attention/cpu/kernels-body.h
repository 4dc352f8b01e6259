/*
 * kernels-body.h - the micro-kernels of the CPU backend, written once over
 * GCC/Clang vector extensions and instantiated per ISA by the file that
 * includes it (kernels.c for the portable SSE2 baseline).
 *
 * The includer defines KVEC (floats per vector: 4, 8 or 16), the register
 * blocking QK_ROWS x QK_KEYS (query rows x keys of Q K^T held in
 * registers) and PV_ROWS x PV_COLS (rows x columns of P V), KNAME (the
 * table's name) and KTABLE (the table's symbol).  The blockings aim at
 * at least eight independent accumulators (two FMA pipes times four
 * cycles of latency) without spilling: 8 with the 16 registers of SSE2
 * and AVX2, 16 with the 32 of AVX-512, where the wider blocking also
 * halves the vector loads per multiply-add (measured: about 10% faster
 * tiles than 8 accumulators).  Every reduction runs
 * "vertically": accumulators are indexed by lane and the sum over d or j
 * goes in program order, so a given KVEC always gives the same bits no
 * matter how work is split between threads.
 */
#include <string.h>

#include "attention/attn.h"
#include "attention/cpu/kernels.h"
#include "attention/select-rule.h"

typedef float vf __attribute__((vector_size(KVEC * 4)));
typedef int32_t vi __attribute__((vector_size(KVEC * 4)));
/* Unaligned access: the buffers are 64-byte aligned, but rows of a tile
 * only need 4-byte alignment at this level. */
typedef float vfu __attribute__((vector_size(KVEC * 4), aligned(4)));
/* KVEC bytes, unaligned: a vector's worth of selection flags */
typedef uint8_t vbu __attribute__((vector_size(KVEC), aligned(1)));

#define NJ (CPU_TILE / KVEC) /* vectors per 32 keys */
/* Vectors of J per row in k_lowres_rows: CPU_LR_ROWS x LR_JV accumulators,
 * 16 of the 32 AVX-512 registers, 8 of the 16 elsewhere. */
#define LR_JV (KVEC == 16 ? 4 : 2)

static inline vf ld(const float *p)
{
    return *(const vfu *)p;
}

static inline void stv(float *p, vf x)
{
    *(vfu *)p = x;
}

static inline vf splat(float x)
{
    /* x - 0 is x for every x (+0 + x would turn -0 into +0), so the
     * compiler emits a bare broadcast */
    return x - (vf){0};
}

/* where mask (all-ones lanes) take a, else b */
static inline vf blend(vi mask, vf a, vf b)
{
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* Cephes-style exp polynomial on the reduced argument r in [-ln2/2,
 * ln2/2]: exp(r) to about 1 ulp. */
static inline vf vexp_poly(vf r)
{
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    return p * r * r + r + 1.0f;
}

/* exp's range reduction x = n ln2 + r: n = round(x * LOG2E) comes from
 * the ISA's rounding, r from here, with ln2 in two parts so that n times
 * the first is exact (Cody and Waite). */
#define VEXP_LOG2E 1.44269504088896341f
static inline vf vexp_reduce(vf x, vf fn)
{
    vf r = x - fn * 0.693359375f;
    return r - fn * -2.12194440e-4f;
}

/* 2^n for whole numbers n in [-126, 127] held as floats, built in the
 * exponent bits. */
static inline vf vexp_pow2(vf fn)
{
    vi e = __builtin_convertvector(fn, vi) + 127;
    return (vf)(e << 23);
}

/*
 * vmax(x, m): lane-wise x > m ? x : m (a NaN x keeps m), and vexp(x):
 * exp per lane by range reduction x = n ln2 + r and the polynomial above
 * (about 1 ulp); lanes below -87 (including -inf) give 0, NaN stays NaN.
 * Where the ISA has them, min/max/round/scale instructions replace the
 * compare-and-blend and integer exponent tricks of the generic version:
 * the same n and r, so the same polynomial values, in fewer instructions.
 */
#if KVEC == 16 && defined(__AVX512F__)
#include <immintrin.h>

static inline vf vmax(vf x, vf m)
{
    return (vf)_mm512_max_ps((__m512)x, (__m512)m);
}

static inline vf vexp(vf xv)
{
    __m512 x = (__m512)xv;
    /* No clamping: scalef turns a large n into +inf itself, and lanes
     * below -87 (where -inf gives NaN on the way) are zeroed at the end. */
    __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ);
    vf xx = (vf)x;
    vf fn =
        (vf)_mm512_roundscale_ps((__m512)(xx * VEXP_LOG2E),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = vexp_reduce(xx, fn);
    __m512 y = _mm512_scalef_ps((__m512)vexp_poly(r), (__m512)fn);
    return (vf)_mm512_maskz_mov_ps(keep, y);
}
#elif KVEC == 8 && defined(__AVX2__)
#include <immintrin.h>

static inline vf vmax(vf x, vf m)
{
    return (vf)_mm256_max_ps((__m256)x, (__m256)m);
}

static inline vf vexp(vf xv)
{
    __m256 x = (__m256)xv;
    __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_NLT_UQ);
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
    vf xx = (vf)x;
    vf fn = (vf)_mm256_round_ps((__m256)(xx * VEXP_LOG2E),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = vexp_reduce(xx, fn);
    vf y = vexp_poly(r) * vexp_pow2(fn);
    return (vf)_mm256_and_ps((__m256)y, keep);
}
#else
static inline vf vmax(vf x, vf m)
{
    return blend(x > m, x, m);
}

static inline vf vexp(vf x)
{
    vi under = x < splat(-87.0f);
    x = blend(under, splat(-87.0f), x);
    x = blend(x > splat(88.0f), splat(88.0f), x);
    vf t = x * VEXP_LOG2E + 12582912.0f; /* round to nearest */
    vf fn = t - 12582912.0f;
    vf r = vexp_reduce(x, fn);
    return (vf)((vi)(vexp_poly(r) * vexp_pow2(fn)) & ~under);
}
#endif

/* S^T = K Q^T for a tile, plus the key bias: st[j][i] = scale * sum_d
 * k[j][d] * qt[d][i] + kbias[j], keys j as rows and query rows i across
 * the vector lanes, so the softmax below works lane-wise with no
 * horizontal reductions.  QK_ROWS keys at a time against QK_KEYS query
 * lanes keep QK_ROWS * QK_KEYS / KVEC accumulators in registers; each qt
 * vector is loaded once per group.  The tile's maximum per query row,
 * tmax[i], comes out of the same registers, which saves the softmax a
 * pass over the tile. */
static void k_qk_tile(const float *k, const float *qt, uint32_t D, uint32_t Dp,
                      float scale, const float *kbias, float *st, float *tmax)
{
    enum { KV = QK_KEYS / KVEC };
    for (int h = 0; h < CPU_TILE; h += QK_KEYS) {
        vf mx[KV];
        for (int t = 0; t < KV; t++)
            mx[t] = splat(-__builtin_inff());
        for (int j = 0; j < CPU_TILE; j += QK_ROWS) {
            vf a[QK_ROWS][KV];
            for (int r = 0; r < QK_ROWS; r++)
                for (int t = 0; t < KV; t++)
                    a[r][t] = splat(0.0f);
            const float *q = qt + h;
            const float *kr = k + (size_t)j * Dp;
            for (uint32_t d = 0; d < D; d++, q += CPU_TILE) {
                vf qv[KV];
                for (int t = 0; t < KV; t++)
                    qv[t] = ld(q + t * KVEC);
                for (int r = 0; r < QK_ROWS; r++) {
                    vf x = splat(kr[(size_t)r * Dp + d]);
                    for (int t = 0; t < KV; t++)
                        a[r][t] += x * qv[t];
                }
            }
            for (int r = 0; r < QK_ROWS; r++) {
                vf b = splat(kbias[j + r]);
                for (int t = 0; t < KV; t++) {
                    vf x = a[r][t] * scale + b;
                    mx[t] = vmax(x, mx[t]);
                    stv(st + (j + r) * CPU_TILE + h + t * KVEC, x);
                }
            }
        }
        for (int t = 0; t < KV; t++)
            stv(tmax + h + t * KVEC, mx[t]);
    }
}

/* Online softmax over a transposed tile, NJ vectors of query rows at a
 * time: the new running maximum from the tile's (k_qk_tile), the rescale
 * factor, then exponentials and their sum in one pass, all vertical, keys
 * in order. */
static void k_softmax_tile(float *st, const float *tmax, float *m, float *l,
                           float *alpha)
{
    vf mx[NJ], sum[NJ];
    for (int t = 0; t < NJ; t++) {
        vf old = ld(m + t * KVEC);
        vf top = vmax(ld(tmax + t * KVEC), old);
        stv(m + t * KVEC, top);
        /* A row that has seen no key yet (a causal tile can hide every
         * key from some of its rows) keeps m = -inf and subtracts 0
         * instead, so that its exponentials are 0, not exp(-inf + inf);
         * any other row subtracts its maximum as always. */
        mx[t] = blend(top == splat(-__builtin_inff()), splat(0.0f), top);
        vf al = vexp(old - mx[t]); /* -inf - finite -> 0 */
        stv(alpha + t * KVEC, al);
        sum[t] = splat(0.0f);
    }
    for (int j = 0; j < CPU_TILE; j++) {
        for (int t = 0; t < NJ; t++) {
            float *row = st + j * CPU_TILE + t * KVEC;
            vf p = vexp(ld(row) - mx[t]);
            sum[t] += p;
            stv(row, p);
        }
    }
    for (int t = 0; t < NJ; t++)
        stv(l + t * KVEC, ld(l + t * KVEC) * ld(alpha + t * KVEC) + sum[t]);
}

/* P V from a transposed tile (p[j][i]): PV_ROWS query rows at a time
 * over PV_COLS columns of V, the accumulators in registers across the 32
 * keys. */
static void k_pv_tile(const float *p, const float *v, uint32_t Dp,
                      const float *alpha, float *acc)
{
    enum { CV = PV_COLS / KVEC };
    for (int i = 0; i < CPU_TILE; i += PV_ROWS) {
        for (uint32_t d0 = 0; d0 < Dp; d0 += PV_COLS) {
            vf a[PV_ROWS][CV];
            for (int r = 0; r < PV_ROWS; r++) {
                vf al = splat(alpha[i + r]);
                for (int t = 0; t < CV; t++)
                    a[r][t] =
                        ld(acc + (size_t)(i + r) * Dp + d0 + t * KVEC) * al;
            }
            const float *vr = v + d0;
            for (int j = 0; j < CPU_TILE; j++, vr += Dp) {
                vf vv[CV];
                for (int t = 0; t < CV; t++)
                    vv[t] = ld(vr + t * KVEC);
                for (int r = 0; r < PV_ROWS; r++) {
                    vf w = splat(p[j * CPU_TILE + i + r]);
                    for (int t = 0; t < CV; t++)
                        a[r][t] += w * vv[t];
                }
            }
            for (int r = 0; r < PV_ROWS; r++)
                for (int t = 0; t < CV; t++)
                    stv(acc + (size_t)(i + r) * Dp + d0 + t * KVEC, a[r][t]);
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
        stv(out + d0, a);
    }
}

/* CPU_LR_ROWS rows of low-resolution logits at a time, so that each
 * vector of khT loaded serves every row: L[r][J] = scale * sum_d qh[r][d]
 * * khT[d * ldk + J], and each row's maximum (NaN never raises it).  Rows past
 * `rows` are computed on a copy of the last row and not stored.  Every
 * L[r][J] is the same sum over d in the same order whichever part of the
 * loop computes it. */
static void k_lowres_rows(const float *qh, uint32_t Dp, uint32_t rows,
                          const float *khT, size_t ldk, uint32_t D, uint32_t nb,
                          float scale, float *L, float *rmax)
{
    enum { R = CPU_LR_ROWS, JV = LR_JV };
    const float *q[R];
    vf mx[R];
    for (int r = 0; r < R; r++)
        mx[r] = splat(-__builtin_inff());
    for (int r = 0; r < R; r++)
        q[r] = qh + (size_t)((uint32_t)r < rows ? (uint32_t)r : rows - 1) * Dp;
    uint32_t J = 0;
    for (; J + JV * KVEC <= nb; J += JV * KVEC) {
        vf a[R][JV];
        for (int r = 0; r < R; r++)
            for (int t = 0; t < JV; t++)
                a[r][t] = splat(0.0f);
        const float *k = khT + J;
        for (uint32_t d = 0; d < D; d++, k += ldk) {
            vf kv[JV];
            for (int t = 0; t < JV; t++)
                kv[t] = ld(k + t * KVEC);
            for (int r = 0; r < R; r++) {
                vf x = splat(q[r][d]);
                for (int t = 0; t < JV; t++)
                    a[r][t] += x * kv[t];
            }
        }
        for (int r = 0; r < R; r++)
            for (int t = 0; t < JV; t++) {
                vf x = a[r][t] * scale;
                mx[r] = vmax(x, mx[r]);
                if ((uint32_t)r < rows)
                    stv(L + (size_t)r * nb + J + t * KVEC, x);
            }
    }
    for (; J + KVEC <= nb; J += KVEC) {
        vf a[R];
        for (int r = 0; r < R; r++)
            a[r] = splat(0.0f);
        const float *k = khT + J;
        for (uint32_t d = 0; d < D; d++, k += ldk) {
            vf kv = ld(k);
            for (int r = 0; r < R; r++)
                a[r] += splat(q[r][d]) * kv;
        }
        for (int r = 0; r < R; r++) {
            vf x = a[r] * scale;
            mx[r] = vmax(x, mx[r]);
            if ((uint32_t)r < rows)
                stv(L + (size_t)r * nb + J, x);
        }
    }
    for (uint32_t r = 0; r < rows; r++) {
        float m = mx[r][0];
        for (int t = 1; t < KVEC; t++)
            m = mx[r][t] > m ? mx[r][t] : m;
        for (uint32_t j = J; j < nb; j++) {
            float a = 0.0f;
            for (uint32_t d = 0; d < D; d++)
                a += q[r][d] * khT[(size_t)d * ldk + j];
            a *= scale;
            L[(size_t)r * nb + j] = a;
            m = a > m ? a : m;
        }
        rmax[r] = m;
    }
}

/* One chunk of a row's low-resolution terms: the logits into w (-inf
 * where there is no term) and their maximum (a NaN logit never raises
 * it). */
static float fold_logits(const float *L, const float *lnc, const uint8_t *sel,
                         const float *cnt, uint32_t len, float *w)
{
    vf cmv = splat(-__builtin_inff());
    uint32_t j = 0;
    for (; j + KVEC <= len; j += KVEC) {
        vi none = __builtin_convertvector(*(const vbu *)(sel + j), vi) != 0;
        none |= ld(cnt + j) == 0.0f;
        vf lg = blend(none, splat(-__builtin_inff()), ld(L + j) + ld(lnc + j));
        stv(w + j, lg);
        cmv = vmax(lg, cmv);
    }
    float cm = cmv[0];
    for (int t = 1; t < KVEC; t++)
        cm = cmv[t] > cm ? cmv[t] : cm;
    for (; j < len; j++) {
        float lg =
            (sel[j] || cnt[j] == 0.0f) ? -__builtin_inff() : L[j] + lnc[j];
        w[j] = lg;
        cm = lg > cm ? lg : cm;
    }
    return cm;
}

/* The low-resolution terms of CPU_LR_ROWS block rows at a time, so that
 * each block mean loaded serves every row (see kernels.h).  A row's sums
 * are the same whatever rows share its call: it adds its own nonzero
 * terms, in increasing J, into its own accumulators. */
static void k_lowres_fold_rows(const float *L, const float *lnc,
                               const uint8_t *sel, const float *cnt,
                               const float *vh, uint32_t nb, uint32_t Dp,
                               uint32_t rows, float *vacc, float *m, float *sum)
{
    enum { R = CPU_LR_ROWS, FV = 2, FC = FV * KVEC };
    _Alignas(64) float w[R][CPU_FOLD_CHUNK];
    uint32_t nz[CPU_FOLD_CHUNK];
    uint8_t nzm[CPU_FOLD_CHUNK];
    float M[R], S[R];
    for (int r = 0; r < R; r++) {
        M[r] = -__builtin_inff();
        S[r] = 0.0f;
    }
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t d0 = 0; d0 < Dp; d0 += KVEC)
            stv(vacc + (size_t)r * Dp + d0, splat(0.0f));
    for (uint32_t J0 = 0; J0 < nb; J0 += CPU_FOLD_CHUNK) {
        uint32_t len = nb - J0 < CPU_FOLD_CHUNK ? nb - J0 : CPU_FOLD_CHUNK;
        uint32_t padded = (len + KVEC - 1) / KVEC * KVEC;
        for (int r = 0; r < R; r++) {
            float *wr = w[r];
            float cm = -__builtin_inff();
            if ((uint32_t)r < rows)
                cm = fold_logits(L + (size_t)r * nb + J0, lnc + J0,
                                 sel + (size_t)r * nb + J0, cnt + J0, len, wr);
            if (cm == -__builtin_inff()) { /* no term of this row here */
                for (uint32_t j = 0; j < padded; j++)
                    wr[j] = 0.0f;
                continue;
            }
            for (uint32_t j = len; j < padded; j++)
                wr[j] = -__builtin_inff();
            float *va = vacc + (size_t)r * Dp;
            if (cm > M[r]) { /* rescale what came before to the new maximum */
                float sc = vexp(splat(M[r] - cm))[0];
                vf scv = splat(sc);
                S[r] *= sc;
                for (uint32_t d0 = 0; d0 < Dp; d0 += KVEC)
                    stv(va + d0, ld(va + d0) * scv);
                M[r] = cm;
            }
            vf sv = splat(0.0f), mv = splat(M[r]);
            for (uint32_t j = 0; j < padded; j += KVEC) {
                vf p = vexp(ld(wr + j) - mv);
                sv += p;
                stv(wr + j, p);
            }
            float part = 0.0f;
            for (int t = 0; t < KVEC; t++)
                part += sv[t];
            S[r] += part;
        }
        /* the terms some row weighs, in order; a zero weight adds nothing
         * to its row, and skipping it keeps a non-finite mean of a
         * selected or underflowed block out of that row */
        _Alignas(64) int32_t rmask[CPU_FOLD_CHUNK]; /* bit r: row r weighs j */
        for (uint32_t j = 0; j < padded; j += KVEC) {
            vi rm = (vi){0};
            for (int r = 0; r < R; r++)
                rm |= (ld(w[r] + j) != 0.0f) & (1 << r);
            *(vi *)(void *)(rmask + j) = rm;
        }
        uint32_t n = 0;
        for (uint32_t j = 0; j < len; j++) {
            nz[n] = j;
            nzm[n] = (uint8_t)rmask[j];
            n += rmask[j] != 0;
        }
        /* FC columns at a time in registers: R rows x FV vectors */
        for (uint32_t d0 = 0; d0 < Dp; d0 += FC) {
            vf a[R][FV];
            for (int r = 0; r < R; r++)
                for (int t = 0; t < FV; t++)
                    a[r][t] = (uint32_t)r < rows
                                  ? ld(vacc + (size_t)r * Dp + d0 + t * KVEC)
                                  : splat(0.0f);
            const float *v = vh + (size_t)J0 * Dp + d0;
            for (uint32_t c = 0; c < n; c++) {
                uint32_t j = nz[c];
                const float *vr = v + (size_t)j * Dp;
                vf vv[FV];
                for (int t = 0; t < FV; t++)
                    vv[t] = ld(vr + t * KVEC);
                if (nzm[c] == (1u << R) - 1) { /* every row: no branches */
                    for (int r = 0; r < R; r++) {
                        vf xv = splat(w[r][j]);
                        for (int t = 0; t < FV; t++)
                            a[r][t] += xv * vv[t];
                    }
                    continue;
                }
                for (int r = 0; r < R; r++) {
                    if (!(nzm[c] >> r & 1))
                        continue;
                    vf xv = splat(w[r][j]);
                    for (int t = 0; t < FV; t++)
                        a[r][t] += xv * vv[t];
                }
            }
            for (uint32_t r = 0; r < rows; r++)
                for (int t = 0; t < FV; t++)
                    stv(vacc + (size_t)r * Dp + d0 + t * KVEC, a[r][t]);
        }
    }
    for (uint32_t r = 0; r < rows; r++) {
        m[r] = M[r];
        sum[r] = S[r];
    }
}

/* attn_select_keys_row_at(), compiled for this ISA. */
static void k_select_keys_row(const float *L_row, float r, const float *cnt,
                              float cI, uint32_t I, int64_t center,
                              uint32_t vis, uint32_t nb, uint32_t prior_first,
                              uint32_t prior_diagonal, uint64_t *key)
{
    attn_select_keys_row_at_inline(L_row, r, cnt, cI, I, center, vis, nb,
                                   prior_first, prior_diagonal, key);
}

/* f16 bits to f32, KVEC at a time: exact for every value (subnormals
 * included), without F16C, by the shift-and-rescale method: normal
 * numbers moved into f32's exponent range by a multiply with 2^-112,
 * subnormals through a float subtraction of a magic bias. */
typedef uint16_t vhu __attribute__((vector_size(KVEC * 2), aligned(2)));
typedef uint32_t vu __attribute__((vector_size(KVEC * 4)));

static inline vf f16_to_f32v(vhu h)
{
    vu w = __builtin_convertvector(h, vu) << 16;
    vu sign = w & 0x80000000u;
    vu two_w = w + w;
    vf normal = (vf)((two_w >> 4) + (0xE0u << 23)) * 0x1p-112f;
    vf denormal = (vf)((two_w >> 17) | (126u << 23)) - 0.5f;
    vi small = (vi)(two_w < (1u << 27));
    vu bits = ((vu)denormal & (vu)small) | ((vu)normal & ~(vu)small);
    return (vf)(sign | bits);
}

/* n elements of `dt` at src into f32 at dst (see kernels.h). */
static void k_to_f32(int dt, const void *src, float *dst, size_t n)
{
    size_t i = 0;
    if (dt == ATTN_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    const uint16_t *h = src;
    if (dt == ATTN_BF16) {
        for (; i + KVEC <= n; i += KVEC)
            stv(dst + i,
                (vf)(__builtin_convertvector(*(const vhu *)(h + i), vu) << 16));
    } else {
#if KVEC == 16 && defined(__AVX512F__)
        for (; i + KVEC <= n; i += KVEC)
            _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(
                                          (const __m256i *)(h + i))));
#else
        for (; i + KVEC <= n; i += KVEC)
            stv(dst + i, f16_to_f32v(*(const vhu *)(h + i)));
#endif
    }
    if (i < n)
        attn_to_f32((enum attn_dtype)dt, h + i, dst + i, n - i);
}

/* f32 to bf16 bits, KVEC at a time: attn_f32_to_bf16() (rounding to
 * nearest even on the bit pattern, NaN made quiet), lane by lane. */
static inline vhu f32_to_bf16v(vf x)
{
    vu b = (vu)x;
    vu nan = (vu)((b & 0x7fffffffu) > 0x7f800000u);
    vu r = (b + 0x7fffu + (b >> 16 & 1u)) >> 16;
    r = (r & ~nan) | (((b >> 16) | 0x40u) & nan);
    return __builtin_convertvector(r, vhu);
}

/* n f32 values at src into `dt` at dst (see kernels.h). */
static void k_from_f32(int dt, const float *src, void *dst, size_t n)
{
    size_t i = 0;
    if (dt == ATTN_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    uint16_t *h = dst;
    if (dt == ATTN_BF16) {
        for (; i + KVEC <= n; i += KVEC)
            *(vhu *)(h + i) = f32_to_bf16v(ld(src + i));
    }
#if KVEC == 16 && defined(__AVX512F__)
    else { /* the conversion instruction rounds as attn_f32_to_f16() */
        for (; i + KVEC <= n; i += KVEC)
            _mm256_storeu_si256(
                (__m256i *)(h + i),
                _mm512_cvtps_ph(_mm512_loadu_ps(src + i),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
#endif
    if (i < n)
        attn_from_f32((enum attn_dtype)dt, src + i, h + i, n - i);
}

/* The sum of a vector's lanes, in a fixed order (a pairwise tree), so a
 * given KVEC always gives the same bits. */
static inline float hsum(vf x)
{
    float t[KVEC];
    for (int i = 0; i < KVEC; i++)
        t[i] = x[i];
    for (int w = KVEC / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++)
            t[i] += t[i + w];
    return t[0];
}

/* KVEC vectors in, one out: out[j] = sum of the lanes of v[j], by a
 * fixed tree of lane shuffles and adds (halving each vector's partial sums
 * level by level), so a given KVEC always gives the same bits and a dot
 * product costs a few operations of reduction instead of a whole
 * horizontal sum. */
#define SHUF __builtin_shufflevector
static inline vf reduce_lanes(vf *v)
{
#if KVEC == 16
    vf c[8], e[4], f[2];
    for (int i = 0; i < 8; i++)
        c[i] = SHUF(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18,
                    19, 20, 21, 22, 23) +
               SHUF(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24,
                    25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++)
        e[i] = SHUF(c[2 * i], c[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17,
                    18, 19, 24, 25, 26, 27) +
               SHUF(c[2 * i], c[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21,
                    22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++)
        f[i] = SHUF(e[2 * i], e[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17,
                    20, 21, 24, 25, 28, 29) +
               SHUF(e[2 * i], e[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19,
                    22, 23, 26, 27, 30, 31);
    return SHUF(f[0], f[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                28, 30) +
           SHUF(f[0], f[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                29, 31);
#elif KVEC == 8
    vf c[4], e[2];
    for (int i = 0; i < 4; i++)
        c[i] = SHUF(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
               SHUF(v[2 * i], v[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
    for (int i = 0; i < 2; i++)
        e[i] = SHUF(c[2 * i], c[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
               SHUF(c[2 * i], c[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15);
    return SHUF(e[0], e[1], 0, 2, 4, 6, 8, 10, 12, 14) +
           SHUF(e[0], e[1], 1, 3, 5, 7, 9, 11, 13, 15);
#elif KVEC == 4
    vf c[2];
    for (int i = 0; i < 2; i++)
        c[i] = SHUF(v[2 * i], v[2 * i + 1], 0, 1, 4, 5) +
               SHUF(v[2 * i], v[2 * i + 1], 2, 3, 6, 7);
    return SHUF(c[0], c[1], 0, 2, 4, 6) + SHUF(c[0], c[1], 1, 3, 5, 7);
#else
#error "reduce_lanes: KVEC must be 4, 8 or 16"
#endif
}
#undef SHUF

/* Few query rows against a block of 32 keys, lanes over the head
 * dimension (see kernels.h): s[r][j] = scale * q_r . k_j + kbias[j] and
 * smax[r] = max_j s[r][j].  For each row, KVEC keys at a time: one
 * accumulator per key summed in d order (the block of keys stays in L1
 * across rows), then reduce_lanes() turns the KVEC accumulators into the
 * KVEC dot products. */
static void k_qk_rows(const float *k, const float *q, uint32_t rows,
                      uint32_t Dp, float scale, const float *kbias, float *s,
                      float *smax)
{
    for (uint32_t r = 0; r < rows; r++) {
        const float *qr = q + (size_t)r * Dp;
        vf mx = splat(-__builtin_inff());
        for (int j0 = 0; j0 < CPU_TILE; j0 += KVEC) {
            vf a[KVEC];
            for (int jj = 0; jj < KVEC; jj++)
                a[jj] = splat(0.0f);
            for (uint32_t d0 = 0; d0 < Dp; d0 += KVEC) {
                vf qv = ld(qr + d0);
                for (int jj = 0; jj < KVEC; jj++)
                    a[jj] += ld(k + (size_t)(j0 + jj) * Dp + d0) * qv;
            }
            vf x = reduce_lanes(a) * scale + ld(kbias + j0);
            stv(s + (size_t)r * CPU_TILE + j0, x);
            mx = vmax(x, mx);
        }
        float m = mx[0];
        for (int t = 1; t < KVEC; t++)
            m = mx[t] > m ? mx[t] : m;
        smax[r] = m;
    }
}

/* The online-softmax step of few rows (see kernels.h). */
static void k_softmax_rows(float *s, const float *smax, uint32_t rows, float *m,
                           float *l, float *alpha)
{
    for (uint32_t r = 0; r < rows; r++) {
        float top = smax[r] > m[r] ? smax[r] : m[r];
        /* a row that has seen no key keeps -inf and subtracts 0 */
        float ms = top == -__builtin_inff() ? 0.0f : top;
        vf sum = splat(0.0f);
        float *row = s + (size_t)r * CPU_TILE;
        for (int j = 0; j < CPU_TILE; j += KVEC) {
            vf p = vexp(ld(row + j) - ms);
            sum += p;
            stv(row + j, p);
        }
        float al = vexp(splat(m[r] - ms))[0];
        alpha[r] = al;
        l[r] = l[r] * al + hsum(sum);
        m[r] = top;
    }
}

/* acc[r][:] = acc[r][:] * alpha[r] + sum_j p[r][j] * v[j][:] for few rows
 * (see kernels.h); two vectors of columns at a time, the rows'
 * accumulators in registers across the 32 keys. */
static void k_pv_rows(const float *p, const float *v, uint32_t rows,
                      uint32_t Dp, const float *alpha, float *acc)
{
    enum { R = CPU_FEW_ROWS };
    for (uint32_t d0 = 0; d0 < Dp; d0 += 2 * KVEC) {
        vf a[R][2];
        for (uint32_t r = 0; r < rows; r++)
            for (int t = 0; t < 2; t++)
                a[r][t] =
                    ld(acc + (size_t)r * Dp + d0 + t * KVEC) * splat(alpha[r]);
        const float *vr = v + d0;
        for (int j = 0; j < CPU_TILE; j++, vr += Dp) {
            vf v0 = ld(vr), v1 = ld(vr + KVEC);
            for (uint32_t r = 0; r < rows; r++) {
                vf w = splat(p[r * CPU_TILE + j]);
                a[r][0] += w * v0;
                a[r][1] += w * v1;
            }
        }
        for (uint32_t r = 0; r < rows; r++)
            for (int t = 0; t < 2; t++)
                stv(acc + (size_t)r * Dp + d0 + t * KVEC, a[r][t]);
    }
}

#define KERNEL_ENTRIES                                                         \
    .qk_tile = k_qk_tile, .softmax_tile = k_softmax_tile,                      \
    .pv_tile = k_pv_tile, .block_mean = k_block_mean,                          \
    .lowres_rows = k_lowres_rows, .lowres_fold_rows = k_lowres_fold_rows,      \
    .select_keys_row = k_select_keys_row, .to_f32 = k_to_f32,                  \
    .from_f32 = k_from_f32,                                                    \
    .qk_rows = k_qk_rows, .softmax_rows = k_softmax_rows, .pv_rows = k_pv_rows

const struct cpu_kernels KTABLE = {.name = KNAME, KERNEL_ENTRIES};

/* The same f32 kernels with half-precision tile kernels beside them: the
 * table of a path whose bf16 (and f16) problems go to a matrix engine. */
#ifdef KTABLE_HALF
const struct cpu_kernels KTABLE_HALF = {
    .name = KNAME_HALF, .half = &KHALF, KERNEL_ENTRIES};
#endif
#undef KERNEL_ENTRIES
