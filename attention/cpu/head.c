/*
 * head.c - the preparation phases of a head on the CPU (see head.h):
 * loading the f32 working copies and block means, the low-resolution pass
 * and the block selection.  The output phase is in block-row.c.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attention/internal.h"
#include "attention/cpu/accuracy.h"
#include "attention/cpu/head.h"
#include "attention/cpu/kv.h"

#define ALIGN 64

void cpu_head_init(struct cpu_head *hd, const struct attn_problem *p,
                   uint32_t b, uint32_t h, const struct cpu_kernels *kern)
{
    memset(hd, 0, sizeof *hd);
    hd->p = p;
    hd->b = b;
    hd->h = h;
    hd->Nq = p->Nq;
    hd->Nk = p->Nk;
    hd->D = p->D;
    hd->Dp = (p->D + CPU_DPAD - 1) / CPU_DPAD * CPU_DPAD;
    attn_grid_init(&hd->grid, p);
    hd->nbq = hd->grid.nbq;
    hd->nbk = hd->grid.nbk;
    hd->budget = attn_budget(p);
    hd->scale = attn_scale(p);
    hd->method = p->method;
    hd->kv_inplace = p->dtype == ATTN_F32 && !p->mask && !p->kv &&
                     p->Nk % CPU_TILE == 0 && p->D % CPU_DPAD == 0;
    hd->q_inplace = p->dtype == ATTN_F32 && cpu_queries_all_real(p) &&
                    p->Nq % CPU_TILE == 0 && p->D % CPU_DPAD == 0;
    hd->half = kern->half && (p->dtype == ATTN_BF16 ||
                              (p->dtype == ATTN_F16 && kern->half->f16));
    hd->split = hd->half && p->dtype == ATTN_F16;
    hd->kh_inplace = hd->half && p->dtype == ATTN_BF16 && !p->mask && !p->kv &&
                     p->Nk % CPU_TILE == 0 && p->D % CPU_DPAD == 0;
    hd->acc = p->method != ATTN_EXACT && attn_problem_accuracy(p);
    hd->nsmax = hd->acc ? attn_error_samples(p) : 0;
}

#define PIECES 30

/* The workspace pieces in carving order: element size and count. */
struct piece {
    size_t size, count;
    void **dst; /* the head's field that points at it */
};

/* a * b in size_t, or 0 when it overflows (no factor here is 0 unless
 * the piece is absent, and then the product is 0 either way). */
static size_t mul(size_t a, size_t b)
{
    return (b != 0 && a > SIZE_MAX / b) ? 0 : a * b;
}

/* Fills pc[] and returns their number, or -1 if a count overflows. */
static int pieces(struct cpu_head *hd, struct piece *pc)
{
    size_t nbq = hd->nbq, nbk = hd->nbk, Dp = hd->Dp, D = hd->D;
    size_t Npk = mul(nbk, CPU_TILE);
    int mra = hd->method != ATTN_EXACT;
    size_t nn = mra ? mul(nbq, nbk) : 0;
    size_t npd = mul(Npk, Dp), nkd = mul(nbk, D);
    size_t nqdp = mul(nbq, Dp), nkdp = mul(nbk, Dp);
    /* the selection indexes the grid with 32-bit integers */
    if (mra && nn > UINT32_MAX)
        return -1;
    if (Npk == 0 || (mra && nn == 0) || npd == 0 || nkd == 0 || nqdp == 0 ||
        nkdp == 0)
        return -1;
    int n = 0;
    size_t kvc = hd->kv_inplace || hd->half ? 0 : npd;
    size_t planes = hd->split ? 2 : 1;
    size_t n16 = mul(planes, npd); /* 0 only when it overflows */
    if (hd->half && n16 == 0)
        return -1;
    size_t kc16 = hd->half && !hd->kh_inplace ? n16 : 0;
    size_t vt16 = hd->half ? n16 : 0;
    pc[n++] = (struct piece){sizeof(float), kvc, (void **)&hd->kcopy};
    pc[n++] = (struct piece){sizeof(float), kvc, (void **)&hd->vcopy};
    pc[n++] = (struct piece){sizeof(uint16_t), kc16, (void **)&hd->kcopy16};
    pc[n++] = (struct piece){sizeof(uint16_t), vt16, (void **)&hd->vt16};
    pc[n++] = (struct piece){sizeof(float), Npk, (void **)&hd->kbias};
    pc[n++] = (struct piece){sizeof(float), nbk, (void **)&hd->cnt};
    pc[n++] = (struct piece){sizeof(float), mra ? nbq : 0, (void **)&hd->cntq};
    pc[n++] = (struct piece){sizeof(float), mra ? nbk : 0, (void **)&hd->lnc};
    pc[n++] = (struct piece){sizeof(float), mra ? nqdp : 0, (void **)&hd->qh};
    pc[n++] = (struct piece){sizeof(float), mra ? nkdp : 0, (void **)&hd->vh};
    pc[n++] = (struct piece){sizeof(float), mra ? nkd : 0, (void **)&hd->khT};
    pc[n++] = (struct piece){sizeof(float), nn, (void **)&hd->L};
    pc[n++] = (struct piece){sizeof(uint64_t), nn, (void **)&hd->key};
    pc[n++] =
        (struct piece){sizeof(uint32_t), mra ? ATTN_SELECT_SCRATCH(nn) : 0,
                       (void **)&hd->scratch};
    pc[n++] = (struct piece){sizeof(uint8_t), nn, (void **)&hd->sel};
    pc[n++] = (struct piece){sizeof(float), mra ? nqdp : 0, (void **)&hd->vlow};
    pc[n++] = (struct piece){sizeof(float), mra ? nbq : 0, (void **)&hd->lm};
    pc[n++] = (struct piece){sizeof(float), mra ? nbq : 0, (void **)&hd->lsum};
    /* the accuracy controls */
    size_t ns = hd->nsmax, nsd = mul(ns, Dp), nsk = mul(ns, nbk);
    int target = hd->acc && hd->p->target_error > 0.0f;
    if (ns && (nsd == 0 || nsk == 0))
        return -1;
    pc[n++] = (struct piece){sizeof(uint8_t),
                             hd->acc && hd->p->min_blocks_per_row ? nn : 0,
                             (void **)&hd->forced};
    pc[n++] =
        (struct piece){sizeof(uint8_t), hd->acc ? nbq : 0, (void **)&hd->loose};
    pc[n++] = (struct piece){sizeof(uint32_t), ns, (void **)&hd->srow};
    pc[n++] = (struct piece){sizeof(double), ns ? nbq : 0, (void **)&hd->wrow};
    pc[n++] = (struct piece){sizeof(double), ns, (void **)&hd->sw};
    pc[n++] = (struct piece){sizeof(float), nsd, (void **)&hd->xs};
    pc[n++] = (struct piece){sizeof(float), target ? ns : 0, (void **)&hd->hm};
    pc[n++] = (struct piece){sizeof(float), target ? ns : 0, (void **)&hd->hl};
    pc[n++] =
        (struct piece){sizeof(float), target ? nsd : 0, (void **)&hd->hacc};
    pc[n++] =
        (struct piece){sizeof(uint8_t), target ? nsk : 0, (void **)&hd->merged};
    return n;
}

size_t cpu_head_bytes(const struct cpu_head *hd)
{
    struct piece pc[PIECES];
    struct cpu_head copy = *hd; /* pieces() records field addresses */
    int n = pieces(&copy, pc);
    size_t total = 0;
    if (n < 0)
        return 0;
    for (int i = 0; i < n; i++) {
        if (pc[i].count > (SIZE_MAX - ALIGN) / pc[i].size)
            return 0;
        size_t bytes = (pc[i].size * pc[i].count + ALIGN - 1) / ALIGN * ALIGN;
        if (total > SIZE_MAX - bytes)
            return 0;
        total += bytes;
    }
    return total;
}

void cpu_head_carve(struct cpu_head *hd, void *mem)
{
    struct piece pc[PIECES];
    int n = pieces(hd, pc); /* >= 0: cpu_head_bytes() succeeded */
    char *at = mem;
    for (int i = 0; i < n; i++) {
        size_t bytes = (pc[i].size * pc[i].count + ALIGN - 1) / ALIGN * ALIGN;
        *pc[i].dst = bytes ? at : NULL;
        at += bytes;
    }
    const struct attn_problem *p = hd->p;
    if (hd->half) {
        size_t plane = (size_t)hd->nbk * CPU_TILE * hd->Dp;
        if (hd->kh_inplace) {
            size_t off = ((size_t)hd->b * p->Hkv + hd->h / (p->H / p->Hkv)) *
                         p->Nk * p->D;
            hd->kh = (const uint16_t *)p->k + off;
        } else {
            hd->kh = hd->kcopy16;
            hd->kl = hd->split ? hd->kcopy16 + plane : NULL;
        }
        hd->k = hd->v = NULL;
    } else if (hd->kv_inplace) {
        /* rows of KV head h / (H / Hkv) of batch entry b, stride D = Dp */
        size_t off =
            ((size_t)hd->b * p->Hkv + hd->h / (p->H / p->Hkv)) * p->Nk * p->D;
        hd->k = (const float *)p->k + off;
        hd->v = (const float *)p->v + off;
    } else {
        hd->k = hd->kcopy;
        hd->v = hd->vcopy;
    }
}

/* Address of token t of head `head` (of `heads`) in a [B, heads, n, D]
 * tensor. */
static const char *row_addr(const struct cpu_head *hd, const void *base,
                            uint32_t heads, uint32_t head, uint32_t n,
                            uint32_t t)
{
    const struct attn_problem *p = hd->p;
    size_t es = attn_dtype_size(p->dtype);
    size_t idx = (((size_t)hd->b * heads + head) * n + t) * p->D;
    return (const char *)base + idx * es;
}

/* Whether key t is a real key: inside Nk and not masked out. */
static int key_real(const struct cpu_head *hd, uint32_t t)
{
    return t < hd->Nk && cpu_kv_real(hd->p, hd->b, t);
}

int cpu_head_query_real(const struct cpu_head *hd, uint32_t t)
{
    return t < hd->Nq && cpu_query_real(hd->p, hd->b, t);
}

void cpu_head_q_block(const struct cpu_head *hd, uint32_t I,
                      const struct cpu_kernels *kern, float *qt)
{
    const struct attn_problem *p = hd->p;
    uint32_t D = hd->D;
    float qrow[ATTN_MAX_HEAD_DIM];
    for (uint32_t i = 0; i < CPU_TILE; i++) {
        uint32_t t = I * CPU_TILE + i;
        if (!cpu_head_query_real(hd, t)) {
            for (uint32_t d = 0; d < D; d++)
                qt[(size_t)d * CPU_TILE + i] = 0.0f;
            continue;
        }
        const float *src = qrow;
        const char *at = row_addr(hd, p->q, p->H, hd->h, hd->Nq, t);
        if (p->dtype == ATTN_F32 && ((uintptr_t)at & 3) == 0)
            src = (const float *)(const void *)at;
        else
            kern->to_f32(p->dtype, at, qrow, D);
        for (uint32_t d = 0; d < D; d++)
            qt[(size_t)d * CPU_TILE + i] = src[d];
    }
}

/* Phase 1 on the half path, one key block: the rows in f32 (as the f32
 * path converts them) for the block means, then packed into the bf16
 * layouts of the tile kernels. */
static void load_half(struct cpu_head *hd, uint32_t J,
                      const struct cpu_kernels *kern)
{
    const struct attn_problem *p = hd->p;
    const struct cpu_half_kernels *hk = kern->half;
    uint32_t D = hd->D, Dp = hd->Dp;
    uint32_t kvh = hd->h / (p->H / p->Hkv);
    _Alignas(64) float kf[CPU_TILE * ATTN_MAX_HEAD_DIM];
    _Alignas(64) float vf[CPU_TILE * ATTN_MAX_HEAD_DIM];
    _Alignas(64) float mean[ATTN_MAX_HEAD_DIM];
    int mra = hd->method != ATTN_EXACT;
    /* exact on keys read in place needs no f32 keys */
    int kwant = mra || !hd->kh_inplace;
    float c = 0.0f;
    for (uint32_t jj = 0; jj < CPU_TILE; jj++) {
        uint32_t t = J * CPU_TILE + jj;
        int real = key_real(hd, t);
        float *k = kf + (size_t)jj * Dp, *v = vf + (size_t)jj * Dp;
        c += real ? 1.0f : 0.0f;
        hd->kbias[t] = real ? 0.0f : -INFINITY;
        if (!real) {
            memset(k, 0, Dp * sizeof *k);
            memset(v, 0, Dp * sizeof *v);
            continue;
        }
        if (kwant)
            kern->to_f32(p->dtype, cpu_kv_row(p, 0, hd->b, kvh, t), k, D);
        kern->to_f32(p->dtype, cpu_kv_row(p, 1, hd->b, kvh, t), v, D);
        memset(k + D, 0, (Dp - D) * sizeof *k);
        memset(v + D, 0, (Dp - D) * sizeof *v);
    }
    hd->cnt[J] = c;
    size_t plane = (size_t)hd->nbk * CPU_TILE * Dp;
    size_t at = (size_t)J * CPU_TILE * Dp;
    if (!hd->kh_inplace)
        hk->pack_rows(kf, (size_t)CPU_TILE * Dp, hd->kcopy16 + at,
                      hd->split ? hd->kcopy16 + plane + at : NULL);
    hk->pack_block_t(vf, Dp, hd->vt16 + at,
                     hd->split ? hd->vt16 + plane + at : NULL);
    if (!mra)
        return;
    hd->lnc[J] = c > 0.0f ? logf(c) : 0.0f;
    /* both means here: there are no f32 copies for the lowres phase */
    kern->block_mean(kf, Dp, c, mean);
    for (uint32_t d = 0; d < D; d++)
        hd->khT[(size_t)d * hd->nbk + J] = mean[d];
    kern->block_mean(vf, Dp, c, hd->vh + (size_t)J * Dp);
}

void cpu_head_load(struct cpu_head *hd, uint32_t J0, uint32_t J1,
                   const struct cpu_kernels *kern)
{
    if (hd->half) {
        for (uint32_t J = J0; J < J1; J++)
            load_half(hd, J, kern);
        return;
    }
    const struct attn_problem *p = hd->p;
    uint32_t D = hd->D, Dp = hd->Dp;
    uint32_t kvh = hd->h / (p->H / p->Hkv);
    _Alignas(64) float kmean[ATTN_MAX_HEAD_DIM];
    int mra = hd->method != ATTN_EXACT;
    for (uint32_t J = J0; J < J1; J++) {
        float c = 0.0f;
        for (uint32_t jj = 0; jj < CPU_TILE; jj++) {
            uint32_t t = J * CPU_TILE + jj;
            int real = key_real(hd, t);
            c += real ? 1.0f : 0.0f;
            if (!hd->kv_inplace) {
                float *k = hd->kcopy + (size_t)t * Dp;
                float *v = hd->vcopy + (size_t)t * Dp;
                if (real) {
                    kern->to_f32(p->dtype, cpu_kv_row(p, 0, hd->b, kvh, t), k,
                                 D);
                    kern->to_f32(p->dtype, cpu_kv_row(p, 1, hd->b, kvh, t), v,
                                 D);
                    /* only the padding columns need zeroing */
                    memset(k + D, 0, (Dp - D) * sizeof *k);
                    memset(v + D, 0, (Dp - D) * sizeof *v);
                } else {
                    memset(k, 0, Dp * sizeof *k);
                    memset(v, 0, Dp * sizeof *v);
                }
            }
            hd->kbias[t] = real ? 0.0f : -INFINITY;
        }
        hd->cnt[J] = c;
        if (!mra)
            continue;
        hd->lnc[J] = c > 0.0f ? logf(c) : 0.0f;
        /* K's block means, which every block row's logits need; the means
         * of Q and V wait for the lowres phase (cpu_head_means()) */
        kern->block_mean(hd->k + (size_t)J * CPU_TILE * Dp, Dp, c, kmean);
        for (uint32_t d = 0; d < D; d++)
            hd->khT[(size_t)d * hd->nbk + J] = kmean[d];
    }
}

/* The block mean of Q of query block I (MRA): its real rows summed in
 * token order (a masked or padded row would add zeros); also c_I. */
static void cpu_head_q_mean(struct cpu_head *hd, uint32_t I,
                            const struct cpu_kernels *kern)
{
    const struct attn_problem *p = hd->p;
    uint32_t D = hd->D, Dp = hd->Dp;
    float qrow[ATTN_MAX_HEAD_DIM];
    _Alignas(64) float qsum[ATTN_MAX_HEAD_DIM];
    float c = hd->cntq[I];
    float *qh = hd->qh + (size_t)I * Dp;
    if (hd->q_inplace && ((uintptr_t)p->q & 3) == 0) {
        /* Q has the working layout (f32 rows of Dp, every query real):
         * the kernel sums its rows in place, in the same order as the
         * loop below */
        kern->block_mean((const float *)(const void *)row_addr(
                             hd, p->q, p->H, hd->h, hd->Nq, I * CPU_TILE),
                         Dp, c, qh);
        return;
    }
    memset(qsum, 0, D * sizeof *qsum);
    for (uint32_t i = 0; i < CPU_TILE; i++) {
        uint32_t t = I * CPU_TILE + i;
        if (!cpu_head_query_real(hd, t))
            continue;
        kern->to_f32(p->dtype, row_addr(hd, p->q, p->H, hd->h, hd->Nq, t), qrow,
                     D);
        for (uint32_t d = 0; d < D; d++)
            qsum[d] += qrow[d];
    }
    memset(qh, 0, Dp * sizeof *qh);
    if (c != 0.0f)
        for (uint32_t d = 0; d < D; d++)
            qh[d] = qsum[d] / c;
}

uint32_t cpu_head_row_groups(const struct cpu_head *hd)
{
    return (hd->nbq + CPU_LR_ROWS - 1) / CPU_LR_ROWS;
}

/* The query counts c_I of block rows [I0, I1) (MRA). */
static void count_queries(struct cpu_head *hd, uint32_t I0, uint32_t I1)
{
    for (uint32_t I = I0; I < I1; I++) {
        float c = 0.0f;
        for (uint32_t i = 0; i < CPU_TILE; i++)
            c += cpu_head_query_real(hd, I * CPU_TILE + i) ? 1.0f : 0.0f;
        hd->cntq[I] = c;
    }
}

void cpu_head_lowres(struct cpu_head *hd, uint32_t G,
                     const struct cpu_kernels *kern)
{
    const struct attn_problem *p = hd->p;
    uint32_t nbq = hd->nbq, nbk = hd->nbk, I0 = G * CPU_LR_ROWS;
    uint32_t rows = nbq - I0 < CPU_LR_ROWS ? nbq - I0 : CPU_LR_ROWS;
    float *L = hd->L + (size_t)I0 * nbk, rmax[CPU_LR_ROWS];
    /* The group's own Q means and a share of V's (the fold needs them
     * all): reading them here, among the arithmetic, keeps the
     * memory-bound load phase short.  In self-attention the share is the
     * group's own blocks. */
    uint32_t groups = cpu_head_row_groups(hd);
    uint32_t J0 = (uint32_t)((uint64_t)G * nbk / groups);
    uint32_t J1 = (uint32_t)((uint64_t)(G + 1) * nbk / groups);
    if (hd->half) /* the load phase computed them */
        J1 = J0;
    for (uint32_t J = J0; J < J1; J++)
        kern->block_mean(hd->v + (size_t)J * CPU_TILE * hd->Dp, hd->Dp,
                         hd->cnt[J], hd->vh + (size_t)J * hd->Dp);
    count_queries(hd, I0, I0 + rows);
    for (uint32_t I = I0; I < I0 + rows; I++)
        cpu_head_q_mean(hd, I, kern);
    kern->lowres_rows(hd->qh + (size_t)I0 * hd->Dp, hd->Dp, rows, hd->khT, nbk,
                      hd->D, nbk, hd->scale, L, rmax);
    int64_t shift = attn_grid_diag_shift(&hd->grid);
    for (uint32_t I = I0; I < I0 + rows; I++, L += nbk) {
        uint32_t vis, seen;
        attn_grid_row(&hd->grid, I, &vis, &seen);
        /* r_I: L[0], raised by every larger L[J] (so a NaN L[0] gives a
         * NaN r_I, and a later NaN is passed over), over the pairs that
         * are not hidden (0 when every pair is) */
        float r = L[0] != L[0] ? L[0] : rmax[I - I0];
        if (seen < nbk) {
            r = 0.0f;
            if (seen > 0) {
                r = L[0];
                for (uint32_t J = 1; J < seen; J++)
                    r = L[J] > r ? L[J] : r;
            }
        }
        kern->select_keys_row(L, r, hd->cnt, hd->cntq[I], I, (int64_t)I + shift,
                              vis, nbk, p->prior_first, p->prior_diagonal,
                              hd->key + (size_t)I * nbk);
    }
}

void cpu_head_select(struct cpu_head *hd)
{
    if (hd->acc) {
        cpu_acc_select(hd);
        return;
    }
    cpu_head_select_k(hd, hd->budget);
}

void cpu_head_select_k(struct cpu_head *hd, uint64_t k)
{
    size_t n = (size_t)hd->nbq * hd->nbk;
    attn_select_with_minimum(hd->key, hd->forced, n, hd->nforced, k, hd->sel,
                             hd->scratch);
    if (!hd->grid.causal)
        return;
    /* Partial pairs are always computed (their keys masked query by
     * query); hidden ones never. */
    for (uint32_t I = 0; I < hd->nbq; I++) {
        uint32_t vis, seen;
        attn_grid_row(&hd->grid, I, &vis, &seen);
        uint8_t *row = hd->sel + (size_t)I * hd->nbk;
        memset(row + vis, 1, seen - vis);
        memset(row + seen, 2, hd->nbk - seen);
    }
}

void cpu_head_fold(struct cpu_head *hd, uint32_t G,
                   const struct cpu_kernels *kern)
{
    uint32_t nbq = hd->nbq, nbk = hd->nbk, I0 = G * CPU_LR_ROWS;
    uint32_t rows = nbq - I0 < CPU_LR_ROWS ? nbq - I0 : CPU_LR_ROWS;
    kern->lowres_fold_rows(hd->L + (size_t)I0 * nbk, hd->lnc,
                           hd->sel + (size_t)I0 * nbk, hd->cnt, hd->vh, nbk,
                           hd->Dp, rows, hd->vlow + (size_t)I0 * hd->Dp,
                           hd->lm + I0, hd->lsum + I0);
}
