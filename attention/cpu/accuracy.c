/*
 * accuracy.c - the accuracy controls on the CPU (see accuracy.h and
 * attention/README.md, "Accuracy controls").
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attention/internal.h"
#include "attention/cpu/accuracy.h"
#include "attention/cpu/decode.h"
#include "attention/cpu/kv.h"

/* Row t of the head in a [B, H, Nq, D] tensor (q or out) in f32,
 * zero-padded to Dp. */
static void head_row(const struct cpu_head *hd, const void *base, uint32_t t,
                     const struct cpu_kernels *kern, float *dst)
{
    const struct attn_problem *p = hd->p;
    size_t es = attn_dtype_size(p->dtype);
    size_t idx = (((size_t)hd->b * p->H + hd->h) * hd->Nq + t) * hd->D;
    kern->to_f32(p->dtype, (const char *)base + idx * es, dst, hd->D);
    memset(dst + hd->D, 0, (hd->Dp - hd->D) * sizeof *dst);
}

/* The 32 keys (values: 1, the values) of block J in f32, rows of Dp,
 * masked and padded rows 0: the head's working copy where it has one
 * (the f32 path), else converted from the input into buf. */
static const float *kv_block(const struct cpu_head *hd, int values, uint32_t J,
                             const struct cpu_kernels *kern, float *buf)
{
    const float *base = values ? hd->v : hd->k;
    uint32_t Dp = hd->Dp;
    if (base)
        return base + (size_t)J * CPU_TILE * Dp;
    const struct attn_problem *p = hd->p;
    uint32_t kvh = hd->h / (p->H / p->Hkv);
    for (uint32_t j = 0; j < CPU_TILE; j++) {
        uint32_t t = J * CPU_TILE + j;
        float *row = buf + (size_t)j * Dp;
        if (t < hd->Nk && cpu_kv_real(p, hd->b, t)) {
            kern->to_f32(p->dtype, cpu_kv_row(p, values, hd->b, kvh, t), row,
                         hd->D);
            memset(row + hd->D, 0, (Dp - hd->D) * sizeof *row);
        } else {
            memset(row, 0, Dp * sizeof *row);
        }
    }
    return buf;
}

/* One online-softmax step of `rows` query rows q (rows of Dp) over key
 * block J, every key the rows see: the few-row kernels, then the causal
 * mask where some key of the block is past a row's last key lim[r]. */
static void attend_block(const struct cpu_head *hd, uint32_t J, const float *q,
                         uint32_t rows, const int64_t *lim,
                         const struct cpu_kernels *kern, float *m, float *l,
                         float *acc)
{
    uint32_t Dp = hd->Dp;
    _Alignas(64) float kb[CPU_TILE * ATTN_MAX_HEAD_DIM];
    _Alignas(64) float vb[CPU_TILE * ATTN_MAX_HEAD_DIM];
    _Alignas(64) float s[CPU_FEW_ROWS * CPU_TILE];
    float smax[CPU_FEW_ROWS], alpha[CPU_FEW_ROWS];
    const float *k = kv_block(hd, 0, J, kern, kb);
    const float *v = kv_block(hd, 1, J, kern, vb);
    kern->qk_rows(k, q, rows, Dp, hd->scale, hd->kbias + (size_t)J * CPU_TILE,
                  s, smax);
    if (hd->grid.causal) {
        int64_t least = lim[0];
        for (uint32_t r = 1; r < rows; r++)
            least = lim[r] < least ? lim[r] : least;
        if ((int64_t)J * CPU_TILE + CPU_TILE - 1 > least)
            cpu_causal_mask_rows(s, smax, lim, rows, J);
    }
    kern->softmax_rows(s, smax, rows, m, l, alpha);
    kern->pv_rows(s, v, rows, Dp, alpha, acc);
}

/* The last key query t sees: t + Nk - Nq under causality, else Nk - 1. */
static int64_t last_key(const struct cpu_head *hd, uint32_t t)
{
    return hd->grid.causal ? (int64_t)t + hd->grid.off : (int64_t)hd->Nk - 1;
}

/* Block row I's share of low-resolution mass, exp(L_IJ + ln c_J) over
 * its visible pairs with real keys, that the selection leaves out. */
static double unselected_share(const struct cpu_head *hd, uint32_t I)
{
    uint32_t vis, seen, nbk = hd->nbk;
    const float *L = hd->L + (size_t)I * nbk;
    const uint8_t *sel = hd->sel + (size_t)I * nbk;
    attn_grid_row(&hd->grid, I, &vis, &seen);
    float mx = -INFINITY;
    double all = 0.0, left = 0.0;
    for (uint32_t J = 0; J < vis; J++)
        if (hd->cnt[J] > 0.0f && L[J] + hd->lnc[J] > mx)
            mx = L[J] + hd->lnc[J];
    for (uint32_t J = 0; J < vis; J++) {
        if (hd->cnt[J] == 0.0f)
            continue;
        float e = expf(L[J] + hd->lnc[J] - mx);
        all += e;
        left += sel[J] ? 0.0f : e;
    }
    return all > 0.0 ? left / all : 0.0;
}

void cpu_acc_select(struct cpu_head *hd)
{
    const struct attn_problem *p = hd->p;
    uint32_t nbq = hd->nbq, nbk = hd->nbk;
    hd->nreal = 0;
    for (uint32_t I = 0; I < nbq; I++)
        hd->nreal += (uint32_t)hd->cntq[I];
    /* the row minimum: the pairs of largest score in each block row with
     * real queries, among its visible pairs with real keys */
    hd->nforced = 0;
    if (hd->forced) {
        memset(hd->forced, 0, (size_t)nbq * nbk);
        for (uint32_t I = 0; I < nbq; I++) {
            uint32_t vis, seen;
            if (hd->cntq[I] == 0.0f)
                continue;
            attn_grid_row(&hd->grid, I, &vis, &seen);
            hd->nforced += attn_row_minimum(
                hd->key + (size_t)I * nbk, hd->cnt, vis, p->min_blocks_per_row,
                hd->forced + (size_t)I * nbk, hd->scratch);
        }
    }
    /* the budget, or target_error's first step */
    uint64_t k = attn_budget_max(p);
    if (p->target_error > 0.0f && (uint64_t)nbq < k)
        k = nbq;
    hd->budget = k;
    cpu_head_select_k(hd, k);
    /* U: the real rows of the block rows where a visible pair with real
     * keys is left to the low resolution (or left out); the samples are
     * spread evenly over it */
    hd->u = 0;
    for (uint32_t I = 0; I < nbq; I++) {
        uint32_t vis, seen, J = 0;
        const uint8_t *sel = hd->sel + (size_t)I * nbk;
        attn_grid_row(&hd->grid, I, &vis, &seen);
        if (hd->cntq[I] > 0.0f)
            while (J < vis && (sel[J] || hd->cnt[J] == 0.0f))
                J++;
        hd->loose[I] = hd->cntq[I] > 0.0f && J < vis;
        hd->u += hd->loose[I] ? (uint32_t)hd->cntq[I] : 0;
    }
    uint32_t m = hd->nsmax < hd->u ? hd->nsmax : hd->u;
    hd->ns = m;
    if (m == 0)
        return;
    /* Each row of U is drawn with a probability proportional to its
     * block row's share of low-resolution mass left unselected, plus a
     * floor of 5% of the mean: the rows where the error is are sampled
     * more, and the estimate weighs each sample by the inverse. */
    double wsum = 0.0;
    for (uint32_t I = 0; I < nbq; I++) {
        if (!hd->loose[I])
            continue;
        hd->wrow[I] = unselected_share(hd, I);
        for (uint32_t i = 0; i < CPU_TILE; i++)
            if (cpu_head_query_real(hd, I * CPU_TILE + i))
                wsum += hd->wrow[I];
    }
    double floor = 0.05 * wsum / hd->u;
    hd->wtot = wsum + floor * hd->u;
    /* systematic sampling: sample t is the first row of U where the
     * running sum of weights reaches (2t + 1) / 2m of the total */
    double run = 0.0, lastw = 0.0;
    uint32_t t = 0, last = 0;
    for (uint32_t I = 0; I < nbq && t < m; I++) {
        if (!hd->loose[I])
            continue;
        double w = hd->wrow[I] + floor;
        for (uint32_t i = 0; i < CPU_TILE && t < m; i++) {
            uint32_t row = I * CPU_TILE + i;
            if (!cpu_head_query_real(hd, row))
                continue;
            run += w;
            last = row, lastw = w;
            while (t < m && run >= (2.0 * t + 1.0) * hd->wtot / (2.0 * m)) {
                hd->srow[t] = row;
                hd->sw[t++] = w;
            }
        }
    }
    /* rounding can leave the last thresholds a hair above the sum: the
     * last row of U */
    for (; t < m; t++) {
        hd->srow[t] = last;
        hd->sw[t] = lastw;
    }
}

size_t cpu_acc_sample_items(const struct cpu_head *hd)
{
    return ((size_t)hd->ns + CPU_TILE - 1) / CPU_TILE;
}

/* Under causality: hides the keys of block J of a transposed tile st[j][i]
 * beyond each row's last key lim[i] and takes the rows' maxima again. */
static void mask_lanes(float *st, float *tmax, const int64_t *lim, uint32_t J)
{
    int64_t k0 = (int64_t)J * CPU_TILE;
    for (int i = 0; i < CPU_TILE; i++)
        tmax[i] = -INFINITY;
    for (int j = 0; j < CPU_TILE; j++) {
        float *row = st + j * CPU_TILE;
        for (int i = 0; i < CPU_TILE; i++) {
            if (k0 + j > lim[i])
                row[i] = -INFINITY;
            tmax[i] = row[i] > tmax[i] ? row[i] : tmax[i];
        }
    }
}

/* Up to 32 sampled rows at once on the tile kernels (the rows stand in
 * the lanes of a query block, as the rows phase computes one): their
 * exact attention from every key they see. */
void cpu_acc_sample(struct cpu_head *hd, uint32_t item,
                    const struct cpu_kernels *kern)
{
    uint32_t Dp = hd->Dp, D = hd->D, r0 = item * CPU_TILE;
    uint32_t rows = hd->ns - r0 < CPU_TILE ? hd->ns - r0 : CPU_TILE;
    _Alignas(64) float qt[ATTN_MAX_HEAD_DIM * CPU_TILE];
    _Alignas(64) float acc[CPU_TILE * ATTN_MAX_HEAD_DIM];
    _Alignas(64) float kb[CPU_TILE * ATTN_MAX_HEAD_DIM];
    _Alignas(64) float vb[CPU_TILE * ATTN_MAX_HEAD_DIM];
    _Alignas(64) float st[CPU_TILE * CPU_TILE];
    _Alignas(64) float tmax[CPU_TILE], alpha[CPU_TILE];
    _Alignas(64) float m[CPU_TILE], l[CPU_TILE];
    float q[ATTN_MAX_HEAD_DIM];
    int64_t lim[CPU_TILE], most = -1, least = INT64_MAX;
    memset(qt, 0, (size_t)D * CPU_TILE * sizeof *qt);
    for (uint32_t i = 0; i < rows; i++) {
        head_row(hd, hd->p->q, hd->srow[r0 + i], kern, q);
        for (uint32_t d = 0; d < D; d++)
            qt[(size_t)d * CPU_TILE + i] = q[d];
        lim[i] = last_key(hd, hd->srow[r0 + i]);
        most = lim[i] > most ? lim[i] : most;
        least = lim[i] < least ? lim[i] : least;
    }
    for (uint32_t i = rows; i < CPU_TILE; i++) /* empty lanes: no mask */
        lim[i] = most;
    for (int i = 0; i < CPU_TILE; i++)
        m[i] = -INFINITY, l[i] = 0.0f;
    memset(acc, 0, (size_t)CPU_TILE * Dp * sizeof *acc);
    /* every key block some row sees, in increasing J */
    for (uint32_t J = 0; J < hd->nbk && (int64_t)J * CPU_TILE <= most; J++) {
        if (hd->cnt[J] == 0.0f)
            continue;
        const float *k = kv_block(hd, 0, J, kern, kb);
        const float *v = kv_block(hd, 1, J, kern, vb);
        kern->qk_tile(k, qt, D, Dp, hd->scale, hd->kbias + (size_t)J * CPU_TILE,
                      st, tmax);
        if (hd->grid.causal && (int64_t)J * CPU_TILE + CPU_TILE - 1 > least)
            mask_lanes(st, tmax, lim, J);
        kern->softmax_tile(st, tmax, m, l, alpha);
        kern->pv_tile(st, v, Dp, alpha, acc);
    }
    for (uint32_t i = 0; i < rows; i++) {
        float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        float *x = hd->xs + (size_t)(r0 + i) * Dp;
        for (uint32_t d = 0; d < D; d++)
            x[d] = acc[(size_t)i * Dp + d] * inv;
    }
}

/* Sampled row s under the head's current selection (target_error's
 * search): its high-resolution terms brought up to date with the blocks
 * selected since the last call, the low-resolution terms of its block row
 * folded anew (MRA-2), the two merged as the rows phase merges them.
 * Returns the squared error against its exact attention. */
static double sample_error(struct cpu_head *hd, uint32_t s,
                           const struct cpu_kernels *kern)
{
    uint32_t Dp = hd->Dp, D = hd->D, nbk = hd->nbk, t = hd->srow[s];
    uint32_t I = t / CPU_TILE, vis, seen;
    const uint8_t *sel = hd->sel + (size_t)I * nbk;
    uint8_t *merged = hd->merged + (size_t)s * nbk;
    float *acc = hd->hacc + (size_t)s * Dp;
    _Alignas(64) float q[ATTN_MAX_HEAD_DIM];
    _Alignas(64) float vlow[ATTN_MAX_HEAD_DIM];
    int64_t lim = last_key(hd, t);
    int loaded = 0;
    attn_grid_row(&hd->grid, I, &vis, &seen);
    for (uint32_t J = 0; J < seen; J++) {
        if (sel[J] != 1 || merged[J] || hd->cnt[J] == 0.0f)
            continue;
        if (!loaded)
            head_row(hd, hd->p->q, t, kern, q), loaded = 1;
        attend_block(hd, J, q, 1, &lim, kern, &hd->hm[s], &hd->hl[s], acc);
        merged[J] = 1;
    }
    float lm = -INFINITY, lsum = 0.0f;
    if (hd->method == ATTN_MRA2)
        kern->lowres_fold_rows(hd->L + (size_t)I * nbk, hd->lnc, sel, hd->cnt,
                               hd->vh, nbk, Dp, 1, vlow, &lm, &lsum);
    int lany = lm != -INFINITY;
    float m = hd->hm[s], l = hd->hl[s];
    const float *x = hd->xs + (size_t)s * Dp;
    double e = 0.0;
    if (l == 0.0f && !lany) {
        for (uint32_t d = 0; d < D; d++)
            e += (double)x[d] * x[d];
        return e;
    }
    float mx = lany && lm > m ? lm : m, a = 0.0f, bl = 0.0f;
    if (l != 0.0f)
        a = expf(m - mx);
    if (lany)
        bl = expf(lm - mx);
    float inv = 1.0f / (l * a + lsum * bl);
    float ca = a * inv, cb = bl * inv;
    for (uint32_t d = 0; d < D; d++) {
        float o = acc[d] * ca + (lany ? vlow[d] * cb : 0.0f);
        double diff = (double)o - x[d];
        e += diff * diff;
    }
    return e;
}

void cpu_acc_choose(struct cpu_head *hd, const struct cpu_kernels *kern)
{
    const struct attn_problem *p = hd->p;
    if (!(p->target_error > 0.0f))
        return;
    uint32_t Dp = hd->Dp, D = hd->D;
    /* est^2: the squared errors of U estimated from the samples (each
     * weighed by the inverse of its probability) over nreal times the
     * samples' mean squared norm */
    double xx = 0.0;
    for (uint32_t s = 0; s < hd->ns; s++) {
        const float *x = hd->xs + (size_t)s * Dp;
        for (uint32_t d = 0; d < D; d++)
            xx += (double)x[d] * x[d];
        hd->hm[s] = -INFINITY;
        hd->hl[s] = 0.0f;
    }
    memset(hd->hacc, 0, (size_t)hd->ns * Dp * sizeof *hd->hacc);
    memset(hd->merged, 0, (size_t)hd->ns * hd->nbk);
    double goal = ATTN_TARGET_MARGIN * (double)p->target_error;
    double bound = goal * goal * (double)hd->nreal * xx;
    uint64_t kmax = attn_budget_max(p), nbq = hd->nbq, prev = 0;
    for (uint64_t b = 1;; b = attn_ladder_next(b)) {
        uint64_t k = b * nbq < kmax ? b * nbq : kmax;
        if (k != prev) {
            if (prev) /* the first step is the selection cpu_acc_select() made
                       */
                cpu_head_select_k(hd, k);
            /* sum_s err_s^2 * wtot / sw_s: m times the estimated sum of
             * squared errors over U */
            double e = 0.0;
            for (uint32_t s = 0; s < hd->ns; s++)
                e += sample_error(hd, s, kern) * (hd->wtot / hd->sw[s]);
            prev = hd->budget = k;
            if (e <= bound)
                return;
        }
        if (k >= kmax)
            return;
    }
}

static double sq_norm(const float *x, uint32_t D)
{
    double e = 0.0;
    for (uint32_t d = 0; d < D; d++)
        e += (double)x[d] * x[d];
    return e;
}

void cpu_acc_stats(struct cpu_head *hd, const struct cpu_kernels *kern)
{
    const struct attn_problem *p = hd->p;
    struct attn_head_stats *hs = &p->head_stats[(size_t)hd->b * p->H + hd->h];
    uint64_t partial = hd->grid.partial, total = hd->grid.visible + partial;
    if (!hd->acc) { /* exact: every pair, no error */
        *hs = (struct attn_head_stats){
            .budget = hd->grid.visible,
            .blocks_selected = total,
            .blocks_total = total,
            .density = total ? 1.0 : 0.0,
            .est_rel_err = 0.0,
        };
        return;
    }
    uint64_t picked = hd->budget > hd->nforced ? hd->budget : hd->nforced;
    *hs = (struct attn_head_stats){
        .budget = picked,
        .blocks_selected = picked + partial,
        .blocks_total = total,
        .density = total ? (double)(picked + partial) / (double)total : 0.0,
        .est_rel_err = -1.0,
    };
    if (!hd->nsmax)
        return;
    /* each sampled row stands for wtot / (ns sw) rows of U; the rows
     * outside U are exact as computed */
    _Alignas(64) float o[ATTN_MAX_HEAD_DIM];
    uint32_t D = hd->D;
    double num = 0.0, den = 0.0;
    for (uint32_t s = 0; s < hd->ns; s++) {
        const float *x = hd->xs + (size_t)s * hd->Dp;
        double w = hd->wtot / ((double)hd->ns * hd->sw[s]), e = 0.0;
        head_row(hd, hd->p->out, hd->srow[s], kern, o);
        for (uint32_t d = 0; d < D; d++) {
            double diff = (double)o[d] - x[d];
            e += diff * diff;
        }
        num += w * e;
        den += w * sq_norm(x, D);
    }
    for (uint32_t t = 0; t < hd->Nq; t++) {
        if (hd->loose[t / CPU_TILE] || !cpu_head_query_real(hd, t))
            continue;
        head_row(hd, hd->p->out, t, kern, o);
        den += sq_norm(o, D);
    }
    hs->err_num = num;
    hs->err_den = den;
    hs->est_rel_err = den > 0.0 ? sqrt(num / den) : 0.0;
}
