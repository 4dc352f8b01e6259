/*
 * kernels-amx.c - the half-precision tile kernels of the CPU backend
 * (struct cpu_half_kernels, kernels.h): the two products of each 32 x 32
 * tile, Q K^T and P V, on the AMX-BF16 matrix engine with f32
 * accumulation, and the online softmax between them in f32 on AVX-512.
 *
 * Tiles.  Every tile register is configured 16 rows x 64 bytes: a bf16
 * operand of 16 rows x 32 values, or an f32 accumulator of 16 x 16.  One
 * TDPBF16PS adds A (16 x 32 bf16) times B (32 x 16, stored as 16 rows of
 * 16 pairs) into C.  The logits are computed transposed, S^T = K Q^T (A =
 * 16 keys of K as they are, B = Q in pairs), so that query rows run across
 * the lanes of an AVX-512 vector as in the f32 kernels, and the output too,
 * O^T = V^T P^T (A = 16 rows of the transposed block of V, B = P in pairs
 * of keys, which is two rows of P^T interleaved).  The accumulators of
 * O^T live in memory (8 tiles of 16 x 16 at D = 64 would take every
 * register); each pass of them through the tiles (a 1 KiB store and load
 * per tile, the dearest operations here) adds the products of a step of
 * up to four key blocks.
 *
 * The softmax.  Logits are in base 2, so p = 2^(s - m) is a rounding, a
 * polynomial and a scale by a power of two.  The running maximum m of a
 * row only moves when a step's maximum exceeds it by more than
 * CPU_HALF_SLACK: weights stay below 2^8, far inside f32 and bf16, and the
 * accumulators are rescaled a few times per row instead of at almost
 * every step.  Each weight is rounded to bf16 (to nearest even) for P V;
 * its row sum l is taken in f32 before that rounding.
 *
 * Every sum runs in a fixed order (the engine's own within a product, key
 * blocks in increasing order), so a given input gives the same bits on
 * any thread.  Compiled for AVX-512F/BW/DQ/VL, AVX512-BF16 and AMX-BF16
 * by the pragma below (no flag in the Makefile), and called only where
 * cpu_amx_usable() said so.
 */
#include <stddef.h>
#include <stdint.h>

#include "attention/cpu/kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target(                                                            \
    "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma,amx-tile,amx-bf16")
#define CPU_AMX_BUILD 1
#elif defined(__x86_64__) && defined(__clang__)
#pragma clang attribute push(                                                     \
    __attribute__((target(                                                        \
        "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma,amx-tile,amx-bf16"))), \
    apply_to = function)
#define CPU_AMX_BUILD 1
#endif

#ifdef CPU_AMX_BUILD
#include <immintrin.h>

#define T CPU_TILE

/* The tile configuration: palette 1, tiles 0-7 of 16 rows x 64 bytes. */
struct tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* A constant in memory: GCC does not count the load of a configuration
 * as a read, so one built on the stack just before it may be left unbuilt. */
static const _Alignas(64) struct tilecfg amx_cfg = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

/* 2^x for x <= 2^8 or so: x = n + f with n whole and |f| <= 1/2 (the
 * reduction instruction gives f, and 0 for an infinite x), 2^f by a
 * polynomial fitted for the least relative error on [-1/2, 1/2], scaled
 * by 2^n.  Degree 5 (2.3e-7) where the weights are kept to 16 bits (f16,
 * split), degree 3 (1.0e-4) where they are rounded to bf16's 8 bits.
 * -inf gives 0 (2^-inf), and so does x below -150 (it underflows); NaN
 * stays NaN. */
#define EXP2_C3 5.51716648e-2f
#define EXP2_C2 2.42611125e-1f
#define EXP2_C1 6.93260968e-1f
#define EXP2_C0 9.99928057e-1f
static inline __m512 exp2v(__m512 x, int fine)
{
#define RND (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
    __m512 n = _mm512_roundscale_ps(x, RND);
    __m512 f = _mm512_reduce_ps(x, RND);
#undef RND
    __m512 p;
    if (fine) {
        p = _mm512_set1_ps(1.32764713e-3f);
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.67554096e-3f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.55071309e-2f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.40221202e-1f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.93146944e-1f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.00000012f));
    } else {
        p = _mm512_set1_ps(EXP2_C3);
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C2));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C1));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C0));
    }
    return _mm512_scalef_ps(p, n);
}

/* The bf16 values of the low 16 words of x as f32. */
static inline __m512 bf16_lo_to_f32(__m512i x)
{
    __m512i w = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(x));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

static inline __m512 bf16_hi_to_f32(__m512i x)
{
    __m512i w = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(x, 1));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

/* a and b (16 lanes each) rounded to bf16 and interleaved into 16 pairs
 * (a[i], b[i]): the pair layout of two rows.  With lo, also the pairs of
 * what the rounding left, rounded again. */
static inline void pair_store(__m512 a, __m512 b, uint32_t *hi, uint32_t *lo)
{
    const __m512i ilv = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11,
                                         26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                         5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a); /* a low, b high */
    _mm512_storeu_si512(hi, _mm512_permutexvar_epi16(ilv, h));
    if (lo) {
        __m512 ra = _mm512_sub_ps(a, bf16_lo_to_f32(h));
        __m512 rb = _mm512_sub_ps(b, bf16_hi_to_f32(h));
        __m512i l = (__m512i)_mm512_cvtne2ps_pbh(rb, ra);
        _mm512_storeu_si512(lo, _mm512_permutexvar_epi16(ilv, l));
    }
}

static void amx_pack_rows(const float *x, size_t n, uint16_t *hi, uint16_t *lo)
{
    for (size_t i = 0; i < n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a);
        _mm512_storeu_si512(hi + i, h);
        if (lo) {
            __m512 ra = _mm512_sub_ps(a, bf16_lo_to_f32(h));
            __m512 rb = _mm512_sub_ps(b, bf16_hi_to_f32(h));
            _mm512_storeu_si512(lo + i, (__m512i)_mm512_cvtne2ps_pbh(rb, ra));
        }
    }
}

static void amx_pack_block_t(const float *x, uint32_t Dp, uint16_t *hi,
                             uint16_t *lo)
{
    /* column d of the 32 rows, 16 rows per gather */
    const __m512i rows = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32((int)Dp));
    for (uint32_t d = 0; d < Dp; d++) {
        __m512 a = _mm512_i32gather_ps(rows, x + d, 4);
        __m512 b = _mm512_i32gather_ps(rows, x + (size_t)16 * Dp + d, 4);
        __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a);
        _mm512_storeu_si512(hi + (size_t)d * T, h);
        if (lo) {
            __m512 ra = _mm512_sub_ps(a, bf16_lo_to_f32(h));
            __m512 rb = _mm512_sub_ps(b, bf16_hi_to_f32(h));
            _mm512_storeu_si512(lo + (size_t)d * T,
                                (__m512i)_mm512_cvtne2ps_pbh(rb, ra));
        }
    }
}

static void amx_pack_pairs(const float *qt, uint32_t D, uint32_t Dp,
                           uint32_t *hi, uint32_t *lo)
{
    const __m512 zero = _mm512_setzero_ps();
    for (uint32_t d = 0; d < Dp; d += 2) {
        for (int h = 0; h < 2; h++) {
            __m512 a =
                d < D ? _mm512_loadu_ps(qt + (size_t)d * T + 16 * h) : zero;
            __m512 b = d + 1 < D
                           ? _mm512_loadu_ps(qt + (size_t)(d + 1) * T + 16 * h)
                           : zero;
            size_t at = (size_t)d / 2 * T + 16 * h;
            pair_store(a, b, hi + at, lo ? lo + at : NULL);
        }
    }
}

/* The products of a 32 x 32 tile go through tiles 0-3 (the four 16 x 16
 * accumulators), its operands through 4-5 (A) and 6-7 (B). */

/* Q K^T of key block kh (rows of stride Dp) into tiles 0-3: S^T[j][i],
 * keys 0-15 in tiles 0-1 and 16-31 in 2-3, queries 0-15 in the even ones.
 * Not stored, so the engine works on it while the caller does other
 * things. */
static inline void qk_issue(const uint16_t *kh, const uint16_t *kl,
                            const uint32_t *qh, const uint32_t *ql, uint32_t Dp)
{
    size_t ks = (size_t)Dp * sizeof(uint16_t), k16 = (size_t)16 * Dp;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (uint32_t c = 0; c < Dp; c += 32) {
        const uint32_t *q = qh + (size_t)c / 2 * T;
        _tile_loadd(4, kh + c, ks);
        _tile_loadd(5, kh + k16 + c, ks);
        _tile_loadd(6, q, T * 4);
        _tile_loadd(7, q + 16, T * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
        if (!kl)
            continue;
        const uint32_t *qlo = ql + (size_t)c / 2 * T;
        _tile_loadd(6, qlo, T * 4); /* k hi x q lo */
        _tile_loadd(7, qlo + 16, T * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
        _tile_loadd(4, kl + c, ks); /* k lo x q hi */
        _tile_loadd(5, kl + k16 + c, ks);
        _tile_loadd(6, q, T * 4);
        _tile_loadd(7, q + 16, T * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
}

static inline void qk_store(float *st)
{
    _tile_stored(0, st, T * 4);
    _tile_stored(1, st + 16, T * 4);
    _tile_stored(2, st + 16 * T, T * 4);
    _tile_stored(3, st + 16 * T + 16, T * 4);
}

/* The logits of a stored tile st (dot products), and their maxima per
 * query raised into tmax.  A whole block of real keys seen by every query
 * (plain) leaves st as it is and returns the factor the softmax applies,
 * scale2; any other block gets scale2 * dot + kbias[j] written back, with
 * -inf for the keys hidden by causality, and returns 1. */
static inline float logits(const struct cpu_half_row *r, uint32_t J, float *st,
                           float *tmax)
{
    const __m512 s2 = _mm512_set1_ps(r->scale2);
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    __m512 m0 = _mm512_loadu_ps(tmax), m1 = _mm512_loadu_ps(tmax + 16);
    int plain = r->cnt[J] == (float)T && J < r->vis;
    if (plain) {
        /* scale2 > 0 and rounding is monotonic: the largest scaled dot
         * product is the largest dot product scaled */
        __m512 d0 = ninf, d1 = ninf;
        for (int j = 0; j < T; j++) {
            d0 = _mm512_max_ps(_mm512_loadu_ps(st + j * T), d0); /* NaN: d */
            d1 = _mm512_max_ps(_mm512_loadu_ps(st + j * T + 16), d1);
        }
        m0 = _mm512_max_ps(_mm512_mul_ps(d0, s2), m0);
        m1 = _mm512_max_ps(_mm512_mul_ps(d1, s2), m1);
    } else {
        const float *kb = r->kbias + (size_t)J * T;
        int64_t c0 = (int64_t)J * T - r->diag; /* key j hides lanes < c0 + j */
        for (int j = 0; j < T; j++) {
            float *row = st + j * T;
            __m512 b = _mm512_set1_ps(kb[j]);
            __m512 x0 = _mm512_fmadd_ps(_mm512_loadu_ps(row), s2, b);
            __m512 x1 = _mm512_fmadd_ps(_mm512_loadu_ps(row + 16), s2, b);
            if (J >= r->vis) {
                int64_t c = c0 + j;
                int n0 = c <= 0 ? 0 : c >= 16 ? 16 : (int)c;
                int n1 = c <= 16 ? 0 : c >= 32 ? 16 : (int)c - 16;
                x0 = _mm512_mask_mov_ps(x0, (__mmask16)((1u << n0) - 1), ninf);
                x1 = _mm512_mask_mov_ps(x1, (__mmask16)((1u << n1) - 1), ninf);
            }
            _mm512_storeu_ps(row, x0);
            _mm512_storeu_ps(row + 16, x1);
            m0 = _mm512_max_ps(x0, m0);
            m1 = _mm512_max_ps(x1, m1);
        }
    }
    _mm512_storeu_ps(tmax, m0);
    _mm512_storeu_ps(tmax + 16, m1);
    return plain ? r->scale2 : 1.0f;
}

/* The running maxima of a step: m raised to tmax where that runs ahead by
 * more than the slack, alpha = 2^(m_old - m_new) (1 where m stays), and
 * nm = -m (0 for a row that has seen no key yet, whose weights are then
 * 2^-inf = 0).  Returns the lanes that moved. */
static inline __mmask32 step_max(const float *tmax, float *m, __m512 *alpha,
                                 __m512 *nm, int fine)
{
    const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
    __mmask32 moved = 0;
    for (int h = 0; h < 2; h++) {
        __m512 mo = _mm512_loadu_ps(m + 16 * h);
        __m512 tm = _mm512_loadu_ps(tmax + 16 * h);
        /* -inf + slack is -inf: a row's first key always moves it */
        __mmask16 up = _mm512_cmp_ps_mask(
            tm, _mm512_add_ps(mo, _mm512_set1_ps(CPU_HALF_SLACK)), _CMP_GT_OQ);
        __m512 mn = _mm512_mask_mov_ps(mo, up, tm);
        alpha[h] = _mm512_mask_mov_ps(_mm512_set1_ps(1.0f), up,
                                      exp2v(_mm512_sub_ps(mo, mn), fine));
        moved |= (__mmask32)up << (16 * h);
        _mm512_storeu_ps(m + 16 * h, mn);
        nm[h] = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_setzero_ps(), mn),
                                   _mm512_cmp_ps_mask(mn, ninf, _CMP_EQ_OQ),
                                   _mm512_setzero_ps());
    }
    return moved;
}

/* The weights p = 2^(a * st + nm) of a tile, added into sum (keys in
 * order, lane-wise) and stored in pairs of keys into ph (and pl). */
static inline void weights(const float *st, float a, const __m512 *nm,
                           __m512 *sum, uint32_t *ph, uint32_t *pl, int fine)
{
    const __m512 av = _mm512_set1_ps(a);
    for (int h = 0; h < 2; h++) {
        __m512 acc = sum[h];
        for (int j = 0; j < T; j += 2) {
            __m512 x0 = _mm512_loadu_ps(st + j * T + 16 * h);
            __m512 x1 = _mm512_loadu_ps(st + (j + 1) * T + 16 * h);
            __m512 p0 = exp2v(_mm512_fmadd_ps(x0, av, nm[h]), fine);
            __m512 p1 = exp2v(_mm512_fmadd_ps(x1, av, nm[h]), fine);
            acc = _mm512_add_ps(acc, p0);
            acc = _mm512_add_ps(acc, p1);
            size_t at = (size_t)j / 2 * T + 16 * h;
            pair_store(p0, p1, ph + at, pl ? pl + at : NULL);
        }
        sum[h] = acc;
    }
}

/* Key blocks per step: their P V share one pass of the accumulators
 * through the tiles (a store and a load of 1 KiB each, the dearest
 * operations here), and one rescaling decision. */
#define STEP 4
#define PW (T / 2 * T) /* 32-bit words of a tile's weights in pairs */

/* acct += V^T P^T over the g blocks of a step (the V^T blocks at vb[b],
 * their weights at ph + b * PW), 32 rows of d at a time through tiles
 * 0-3, the blocks in order. */
static inline void pv_step(float *acct, const uint16_t *const *vb,
                           const uint16_t *const *vlb, int g,
                           const uint32_t *ph, const uint32_t *pl, uint32_t Dp)
{
    for (uint32_t d = 0; d < Dp; d += 32) {
        float *o = acct + (size_t)d * T;
        _tile_loadd(0, o, T * 4);
        _tile_loadd(1, o + 16, T * 4);
        _tile_loadd(2, o + 16 * T, T * 4);
        _tile_loadd(3, o + 16 * T + 16, T * 4);
        for (int b = 0; b < g; b++) {
            const uint16_t *v = vb[b] + (size_t)d * T;
            const uint32_t *p = ph + (size_t)b * PW;
            _tile_loadd(4, v, T * 2);
            _tile_loadd(5, v + 16 * T, T * 2);
            _tile_loadd(6, p, T * 4);
            _tile_loadd(7, p + 16, T * 4);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
            if (!vlb)
                continue;
            const uint16_t *w = vlb[b] + (size_t)d * T;
            _tile_loadd(4, w, T * 2); /* v lo x p hi */
            _tile_loadd(5, w + 16 * T, T * 2);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
            const uint32_t *q = pl + (size_t)b * PW;
            _tile_loadd(4, v, T * 2); /* v hi x p lo */
            _tile_loadd(5, v + 16 * T, T * 2);
            _tile_loadd(6, q, T * 4);
            _tile_loadd(7, q + 16, T * 4);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, o, T * 4);
        _tile_stored(1, o + 16, T * 4);
        _tile_stored(2, o + 16 * T, T * 4);
        _tile_stored(3, o + 16 * T + 16, T * 4);
    }
}

/* The next key blocks to compute from *J on, up to STEP of them, into
 * js; returns how many and advances *J past them. */
static inline int next_step(const struct cpu_half_row *r, uint32_t *J,
                            uint32_t *js)
{
    int g = 0;
    uint32_t j = *J;
    for (; j < r->seen && g < STEP; j++)
        if ((!r->sel || r->sel[j] == 1) && r->cnt[j] != 0.0f)
            js[g++] = j;
    *J = j;
    return g;
}

/*
 * The block row in steps of up to STEP key blocks, software-pipelined:
 * the engine computes the logits of the next step's blocks while the
 * vector units take the weights of this one's, and the vector units find
 * the next step's maxima while the engine adds this step's P V.  Two sets
 * of buffers alternate.
 */
static inline void row_body(const struct cpu_half_row *r, int split)
{
    _Alignas(64) float st[2][STEP][T * T];
    _Alignas(64) float tmax[2][T];
    _Alignas(64) uint32_t ph[STEP * PW], pl[STEP * PW];
    uint32_t Dp = r->Dp, js[2][STEP], J = 0;
    size_t bs = (size_t)T * Dp;
    float a[2][STEP];
    int g[2], cur = 0;
    g[0] = next_step(r, &J, js[0]);
    if (g[0] == 0)
        return;
    _tile_loadconfig(&amx_cfg);
    for (int h = 0; h < T; h++)
        tmax[0][h] = -__builtin_inff();
    for (int b = 0; b < g[0]; b++) {
        size_t at = js[0][b] * bs;
        qk_issue(r->kh + at, split ? r->kl + at : NULL, r->qh, r->ql, Dp);
        qk_store(st[0][b]);
        a[0][b] = logits(r, js[0][b], st[0][b], tmax[0]);
    }
    while (g[cur] > 0) {
        int nx = cur ^ 1;
        g[nx] = next_step(r, &J, js[nx]);
        __m512 alpha[2], nm[2];
        __m512 sum[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        __mmask32 moved = step_max(tmax[cur], r->m, alpha, nm, split);
        int n = g[cur] > g[nx] ? g[cur] : g[nx];
        for (int b = 0; b < n; b++) {
            if (b < g[nx]) {
                size_t at = js[nx][b] * bs;
                qk_issue(r->kh + at, split ? r->kl + at : NULL, r->qh, r->ql,
                         Dp);
            }
            if (b < g[cur])
                weights(st[cur][b], a[cur][b], nm, sum, ph + (size_t)b * PW,
                        split ? pl + (size_t)b * PW : NULL, split);
            if (b < g[nx])
                qk_store(st[nx][b]);
        }
        for (int h = 0; h < 2; h++) {
            __m512 lv = _mm512_loadu_ps(r->l + 16 * h);
            _mm512_storeu_ps(r->l + 16 * h,
                             _mm512_fmadd_ps(lv, alpha[h], sum[h]));
        }
        if (moved)
            for (uint32_t d = 0; d < Dp; d++) {
                float *o = r->acct + (size_t)d * T;
                _mm512_storeu_ps(o,
                                 _mm512_mul_ps(_mm512_loadu_ps(o), alpha[0]));
                _mm512_storeu_ps(
                    o + 16, _mm512_mul_ps(_mm512_loadu_ps(o + 16), alpha[1]));
            }
        const uint16_t *vb[STEP], *vlb[STEP];
        for (int b = 0; b < g[cur]; b++) {
            vb[b] = r->vh + js[cur][b] * bs;
            vlb[b] = split ? r->vl + js[cur][b] * bs : NULL;
        }
        pv_step(r->acct, vb, split ? vlb : NULL, g[cur], ph, pl, Dp);
        for (int h = 0; h < T; h++)
            tmax[nx][h] = -__builtin_inff();
        for (int b = 0; b < g[nx]; b++)
            a[nx][b] = logits(r, js[nx][b], st[nx][b], tmax[nx]);
        cur = nx;
    }
    _tile_release();
}

static void amx_row(const struct cpu_half_row *r)
{
    if (r->kl)
        row_body(r, 1);
    else
        row_body(r, 0);
}

const struct cpu_half_kernels cpu_half_amx = {
    .name = "amx",
    .what = "bf16 and f16 on AMX-BF16 tiles, f32 on AVX-512",
    .f16 = 1,
    .pack_rows = amx_pack_rows,
    .pack_block_t = amx_pack_block_t,
    .pack_pairs = amx_pack_pairs,
    .row = amx_row,
};

#ifdef __clang__
#pragma clang attribute pop
#endif
#endif /* CPU_AMX_BUILD */
