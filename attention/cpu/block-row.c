/*
 * block-row.c - the output phase of a head on the CPU: the 32 query rows of
 * one block row I (see head.h).
 *
 * High-resolution terms stream through an online (flash-style) softmax one
 * 32x32 tile at a time, key blocks in increasing J, so nothing N x N is
 * ever held.  exact is the case where every non-empty key block is a tile.
 * The low-resolution terms of MRA-2 ("full" mode) have a logit L_IJ +
 * ln c_J that is the same for every query row of the block, so they are
 * folded once per block row into a (max, weight sum, weighted value sum)
 * triple and merged into each row's softmax at the end.
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

void cpu_head_rows(const struct cpu_head *hd, uint32_t I,
                   const struct cpu_kernels *kern)
{
    const struct attn_problem *p = hd->p;
    uint32_t nb = hd->nb, D = hd->D, Dp = hd->Dp;
    size_t es = attn_dtype_size(p->dtype);
    char *out =
        (char *)p->out + (((size_t)hd->b * p->H + hd->h) * p->N) * D * es;
    uint32_t i0 = I * CPU_TILE;
    uint32_t rows = hd->N - i0 < CPU_TILE ? hd->N - i0 : CPU_TILE;

    _Alignas(64) float acc[CPU_TILE * ATTN_MAX_HEAD_DIM];
    _Alignas(64) float s[CPU_TILE * CPU_TILE];
    _Alignas(64) float qt[ATTN_MAX_HEAD_DIM * CPU_TILE];
    const float *vlow = NULL;
    _Alignas(64) float row[ATTN_MAX_HEAD_DIM];
    _Alignas(64) float m[CPU_TILE], l[CPU_TILE], alpha[CPU_TILE];
    _Alignas(64) float tmax[CPU_TILE];

    struct lowres_terms lt = {0, -INFINITY, 0.0f};
    if (hd->cnt[I] != 0.0f) {
        memset(acc, 0, (size_t)CPU_TILE * Dp * sizeof *acc);
        for (int i = 0; i < CPU_TILE; i++) {
            m[i] = -INFINITY;
            l[i] = 0.0f;
        }
        /* s holds the transposed tile, st[j][i] (see kernels.h) */
        cpu_head_q_block(hd, I, qt);
        const uint8_t *sel =
            hd->method == ATTN_EXACT ? NULL : hd->sel + (size_t)I * nb;
        for (uint32_t J = 0; J < nb; J++) {
            if ((sel && !sel[J]) || hd->cnt[J] == 0.0f)
                continue;
            kern->qk_tile(hd->k + (size_t)J * CPU_TILE * Dp, qt, D, Dp,
                          hd->scale, hd->kbias + (size_t)J * CPU_TILE, s, tmax);
            kern->softmax_tile(s, tmax, m, l, alpha);
            kern->pv_tile(s, hd->v + (size_t)J * CPU_TILE * Dp, Dp, alpha, acc);
        }
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
        /* a masked query row (kbias doubles as the token mask) or a row
         * with no terms at all is 0 */
        int real = hd->cnt[I] != 0.0f && hd->kbias[i0 + i] == 0.0f;
        if (!real || (l[i] == 0.0f && !lt.any)) {
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
            const float *ar = acc + (size_t)i * Dp;
            if (lt.any)
                for (uint32_t d = 0; d < D; d++)
                    dst[d] = ar[d] * ca + vlow[d] * cb;
            else
                for (uint32_t d = 0; d < D; d++)
                    dst[d] = ar[d] * ca;
        }
        if (dst == row)
            attn_from_f32(p->dtype, row, o, D);
    }
}
