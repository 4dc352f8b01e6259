/*
 * block-row.c - the output phase of a head on the CPU: the 32 query rows of
 * one block row I (see head.h).
 *
 * High-resolution terms stream through an online (flash-style) softmax one
 * 32x32 tile at a time, key blocks in increasing J, so nothing N x N is
 * ever held.  exact is the case where every non-empty key block is a tile.
 * Under causality, key blocks hidden from the whole block row are never
 * visited, and a partial one has its logits of keys beyond each query's
 * position set to -inf before the softmax.
 * The low-resolution terms of MRA-2 ("full" mode) have a logit L_IJ +
 * ln c_J that is the same for every query row of the block, so they are
 * folded once per block row into a (max, weight sum, weighted value sum)
 * triple and merged into each row's softmax at the end.
 * A head on the half path (head.h) runs the same loop on the tile kernels
 * of kern->half, from bf16 copies, into a transposed accumulator.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attention/cpu/head.h"

/* Low-resolution part of a block row's softmax. */
struct lowres_terms {
    int any;
    float m;   /* largest logit */
    float sum; /* sum of exp(logit - m) */
};

/* Hides the keys of a tile that come after each query's position: key j
 * of the tile is seen by query i when j <= i + d (d = 32*(I - J) + off).
 * The tile's row maxima are taken again over what is left. */
static void causal_mask(float *st, float *tmax, int64_t d)
{
    for (int i = 0; i < CPU_TILE; i++)
        tmax[i] = -INFINITY;
    for (int j = 0; j < CPU_TILE; j++) {
        float *row = st + j * CPU_TILE;
        for (int i = 0; i < CPU_TILE; i++) {
            if ((int64_t)j > (int64_t)i + d)
                row[i] = -INFINITY;
            tmax[i] = row[i] > tmax[i] ? row[i] : tmax[i];
        }
    }
}

/* The high-resolution tiles of block row I on the f32 kernels: every
 * selected (or, for exact, every non-empty) key block J in increasing
 * order, into acc[i][d] (rows of Dp), m and l.  qt: the block of Q,
 * transposed. */
static void rows_f32(const struct cpu_head *hd, uint32_t I,
                     const struct cpu_kernels *kern, const float *qt,
                     float *acc, float *m, float *l)
{
    uint32_t nbk = hd->nbk, D = hd->D, Dp = hd->Dp;
    /* s holds the transposed tile, st[j][i] (see kernels.h) */
    _Alignas(64) float s[CPU_TILE * CPU_TILE];
    _Alignas(64) float tmax[CPU_TILE], alpha[CPU_TILE];
    uint32_t vis, seen;
    attn_grid_row(&hd->grid, I, &vis, &seen);
    const uint8_t *sel =
        hd->method == ATTN_EXACT ? NULL : hd->sel + (size_t)I * nbk;
    for (uint32_t J = 0; J < seen; J++) {
        if ((sel && sel[J] != 1) || hd->cnt[J] == 0.0f)
            continue;
        kern->qk_tile(hd->k + (size_t)J * CPU_TILE * Dp, qt, D, Dp, hd->scale,
                      hd->kbias + (size_t)J * CPU_TILE, s, tmax);
        if (J >= vis)
            causal_mask(s, tmax,
                        (int64_t)CPU_TILE * ((int64_t)I - J) + hd->grid.off);
        kern->softmax_tile(s, tmax, m, l, alpha);
        kern->pv_tile(s, hd->v + (size_t)J * CPU_TILE * Dp, Dp, alpha, acc);
    }
}

/* The same on the half path's tile kernels (head.h), into acct[d][i] (32
 * query lanes per d); m is in natural log units on return. */
static void rows_half(const struct cpu_head *hd, uint32_t I,
                      const struct cpu_kernels *kern, const float *qt,
                      float *acct, float *m, float *l)
{
    const struct cpu_half_kernels *hk = kern->half;
    uint32_t nbk = hd->nbk, D = hd->D, Dp = hd->Dp;
    size_t plane = (size_t)nbk * CPU_TILE * Dp;
    /* Q in pairs, hi then lo */
    _Alignas(64) uint32_t qb[2 * ATTN_MAX_HEAD_DIM / 2 * CPU_TILE];
    uint32_t *ql = hd->split ? qb + (size_t)Dp / 2 * CPU_TILE : NULL;
    uint32_t vis, seen;
    attn_grid_row(&hd->grid, I, &vis, &seen);
    hk->pack_pairs(qt, D, Dp, qb, ql);
    struct cpu_half_row r = {
        .kh = hd->kh,
        .kl = hd->kl,
        .vh = hd->vt16,
        .vl = hd->split ? hd->vt16 + plane : NULL,
        .qh = qb,
        .ql = ql,
        .Dp = Dp,
        .scale2 = hd->scale * (float)M_LOG2E,
        .kbias = hd->kbias,
        .cnt = hd->cnt,
        .sel = hd->method == ATTN_EXACT ? NULL : hd->sel + (size_t)I * nbk,
        .seen = seen,
        .vis = vis,
        .diag = (int64_t)CPU_TILE * I + hd->grid.off,
        .acct = acct,
        .m = m,
        .l = l,
    };
    hk->row(&r);
    for (int i = 0; i < CPU_TILE; i++)
        m[i] *= (float)M_LN2;
}

void cpu_head_rows(const struct cpu_head *hd, uint32_t I,
                   const struct cpu_kernels *kern)
{
    const struct attn_problem *p = hd->p;
    uint32_t D = hd->D, Dp = hd->Dp;
    size_t es = attn_dtype_size(p->dtype);
    char *out =
        (char *)p->out + (((size_t)hd->b * p->H + hd->h) * hd->Nq) * D * es;
    uint32_t i0 = I * CPU_TILE;
    uint32_t rows = hd->Nq - i0 < CPU_TILE ? hd->Nq - i0 : CPU_TILE;

    _Alignas(64) float acc[CPU_TILE * ATTN_MAX_HEAD_DIM];
    _Alignas(64) float qt[ATTN_MAX_HEAD_DIM * CPU_TILE];
    const float *vlow = NULL;
    _Alignas(64) float row[ATTN_MAX_HEAD_DIM];
    _Alignas(64) float m[CPU_TILE], l[CPU_TILE];
    int real[CPU_TILE], any = 0;
    for (uint32_t i = 0; i < CPU_TILE; i++)
        any |= real[i] = cpu_head_query_real(hd, i0 + i);

    struct lowres_terms lt = {0, -INFINITY, 0.0f};
    /* row i of the accumulator is acc[i * rs + d * cs]: rows of Dp on the
     * f32 path, transposed on the half path */
    size_t rs = hd->half ? 1 : Dp, cs = hd->half ? CPU_TILE : 1;
    if (any) {
        memset(acc, 0, (size_t)CPU_TILE * Dp * sizeof *acc);
        for (int i = 0; i < CPU_TILE; i++) {
            m[i] = -INFINITY;
            l[i] = 0.0f;
        }
        cpu_head_q_block(hd, I, kern, qt);
        if (hd->half)
            rows_half(hd, I, kern, qt, acc, m, l);
        else
            rows_f32(hd, I, kern, qt, acc, m, l);
        if (hd->method == ATTN_MRA2) { /* folded in the fold phase */
            vlow = hd->vlow + (size_t)I * Dp;
            lt.m = hd->lm[I];
            lt.sum = hd->lsum[I];
            lt.any = lt.m != -INFINITY;
        }
    }

    for (uint32_t i = 0; i < rows; i++) {
        /* aligned f32 rows are written in place, others through `row` */
        char *o = out + (size_t)(i0 + i) * D * es;
        float *dst = p->dtype == ATTN_F32 && ((uintptr_t)o & 3) == 0
                         ? (float *)(void *)o
                         : row;
        /* a masked query row or a row with no terms at all (under
         * causality: one that sees no real key) is 0 */
        if (!real[i] || (l[i] == 0.0f && !lt.any)) {
            memset(dst, 0, D * sizeof *dst);
        } else {
            float a = 0.0f, bl = 0.0f;
            float mx = lt.any && lt.m > m[i] ? lt.m : m[i];
            if (l[i] != 0.0f)
                a = expf(m[i] - mx);
            if (lt.any)
                bl = expf(lt.m - mx);
            /* one division per row; the D outputs are products */
            float inv = 1.0f / (l[i] * a + lt.sum * bl);
            float ca = a * inv, cb = bl * inv;
            const float *ar = acc + (size_t)i * rs;
            if (lt.any)
                for (uint32_t d = 0; d < D; d++)
                    dst[d] = ar[d * cs] * ca + vlow[d] * cb;
            else
                for (uint32_t d = 0; d < D; d++)
                    dst[d] = ar[d * cs] * ca;
        }
        if (dst == row)
            kern->from_f32(p->dtype, row, o, D);
    }
}
