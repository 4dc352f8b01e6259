/*
 * head.c - the preparation phases of a head on the CPU (see head.h):
 * loading the f32 working copies and block means, the low-resolution pass
 * and the block selection.  The output phase is in block-row.c.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attention/internal.h"
#include "attention/cpu/head.h"

#define ALIGN 64

void cpu_head_init(struct cpu_head *hd, const struct attn_problem *p,
                   uint32_t b, uint32_t h)
{
    memset(hd, 0, sizeof *hd);
    hd->p = p;
    hd->b = b;
    hd->h = h;
    hd->N = p->N;
    hd->D = p->D;
    hd->Dp = (p->D + CPU_DPAD - 1) / CPU_DPAD * CPU_DPAD;
    hd->nb = attn_num_blocks(p->N);
    hd->budget = attn_budget(p);
    hd->scale = attn_scale(p);
    hd->method = p->method;
    hd->kv_inplace = p->dtype == ATTN_F32 && !p->mask && p->N % CPU_TILE == 0 &&
                     p->D % CPU_DPAD == 0;
}

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
    size_t nb = hd->nb, Dp = hd->Dp, D = hd->D;
    size_t Np = mul(nb, CPU_TILE);
    int mra = hd->method != ATTN_EXACT;
    size_t nn = mra ? mul(nb, nb) : 0;
    size_t npd = mul(Np, Dp), nbd = mul(nb, D), nbdp = mul(nb, Dp);
    /* the selection indexes the grid with 32-bit integers */
    if (mra && nn > UINT32_MAX)
        return -1;
    if (Np == 0 || (mra && nn == 0) || npd == 0 || nbd == 0 || nbdp == 0)
        return -1;
    int n = 0;
    size_t kvc = hd->kv_inplace ? 0 : npd;
    pc[n++] = (struct piece){sizeof(float), kvc, (void **)&hd->kcopy};
    pc[n++] = (struct piece){sizeof(float), kvc, (void **)&hd->vcopy};
    pc[n++] =
        (struct piece){sizeof(float), Np, (void **)&hd->kbias};     /* kbias */
    pc[n++] = (struct piece){sizeof(float), nb, (void **)&hd->cnt}; /* cnt */
    pc[n++] = (struct piece){sizeof(float), mra ? nb : 0,
                             (void **)&hd->lnc}; /* lnc */
    pc[n++] = (struct piece){sizeof(float), mra ? nbdp : 0,
                             (void **)&hd->qh}; /* qh */
    pc[n++] = (struct piece){sizeof(float), mra ? nbdp : 0,
                             (void **)&hd->vh}; /* vh */
    pc[n++] = (struct piece){sizeof(float), mra ? nbd : 0,
                             (void **)&hd->khT};                   /* khT */
    pc[n++] = (struct piece){sizeof(float), nn, (void **)&hd->L};  /* L */
    pc[n++] = (struct piece){sizeof(uint64_t), nn, (void **)&hd->key};
    pc[n++] = (struct piece){sizeof(uint32_t), mra ? ATTN_SELECT_SCRATCH(nn) : 0,
                             (void **)&hd->scratch}; /* scratch */
    pc[n++] = (struct piece){sizeof(uint8_t), nn, (void **)&hd->sel}; /* sel */
    pc[n++] = (struct piece){sizeof(float), mra ? nbdp : 0,
                             (void **)&hd->vlow}; /* vlow */
    pc[n++] = (struct piece){sizeof(float), mra ? nb : 0,
                             (void **)&hd->lm}; /* lm */
    pc[n++] = (struct piece){sizeof(float), mra ? nb : 0,
                             (void **)&hd->lsum}; /* lsum */
    return n;
}

size_t cpu_head_bytes(const struct cpu_head *hd)
{
    struct piece pc[16];
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
    struct piece pc[16];
    int n = pieces(hd, pc); /* >= 0: cpu_head_bytes() succeeded */
    char *at = mem;
    for (int i = 0; i < n; i++) {
        size_t bytes = (pc[i].size * pc[i].count + ALIGN - 1) / ALIGN * ALIGN;
        *pc[i].dst = bytes ? at : NULL;
        at += bytes;
    }
    const struct attn_problem *p = hd->p;
    if (hd->kv_inplace) {
        /* rows of KV head h / (H / Hkv) of batch entry b, stride D = Dp */
        size_t off =
            ((size_t)hd->b * p->Hkv + hd->h / (p->H / p->Hkv)) * p->N * p->D;
        hd->k = (const float *)p->k + off;
        hd->v = (const float *)p->v + off;
    } else {
        hd->k = hd->kcopy;
        hd->v = hd->vcopy;
    }
}

/* Address of token t of head `head` (of `heads`) in a [B, heads, N, D]
 * tensor. */
static const char *row_addr(const struct cpu_head *hd, const void *base,
                            uint32_t heads, uint32_t head, uint32_t t)
{
    const struct attn_problem *p = hd->p;
    size_t es = attn_dtype_size(p->dtype);
    size_t idx = (((size_t)hd->b * heads + head) * p->N + t) * p->D;
    return (const char *)base + idx * es;
}

/* Whether token t is a real token: inside N and not masked out. */
static int token_real(const struct cpu_head *hd, uint32_t t)
{
    const struct attn_problem *p = hd->p;
    return t < hd->N && (!p->mask || p->mask[(size_t)hd->b * p->N + t]);
}

void cpu_head_q_block(const struct cpu_head *hd, uint32_t I, float *qt)
{
    const struct attn_problem *p = hd->p;
    uint32_t D = hd->D;
    float qrow[ATTN_MAX_HEAD_DIM];
    for (uint32_t i = 0; i < CPU_TILE; i++) {
        uint32_t t = I * CPU_TILE + i;
        if (!token_real(hd, t)) {
            for (uint32_t d = 0; d < D; d++)
                qt[(size_t)d * CPU_TILE + i] = 0.0f;
            continue;
        }
        const float *src = qrow;
        const char *at = row_addr(hd, p->q, p->H, hd->h, t);
        if (p->dtype == ATTN_F32 && ((uintptr_t)at & 3) == 0)
            src = (const float *)(const void *)at;
        else
            attn_to_f32(p->dtype, at, qrow, D);
        for (uint32_t d = 0; d < D; d++)
            qt[(size_t)d * CPU_TILE + i] = src[d];
    }
}

void cpu_head_load(struct cpu_head *hd, uint32_t J0, uint32_t J1,
                   const struct cpu_kernels *kern)
{
    const struct attn_problem *p = hd->p;
    uint32_t D = hd->D, Dp = hd->Dp;
    uint32_t kvh = hd->h / (p->H / p->Hkv);
    _Alignas(64) float kmean[ATTN_MAX_HEAD_DIM];
    int mra = hd->method != ATTN_EXACT;
    for (uint32_t J = J0; J < J1; J++) {
        float c = 0.0f;
        for (uint32_t jj = 0; jj < CPU_TILE; jj++) {
            uint32_t t = J * CPU_TILE + jj;
            int real = token_real(hd, t);
            c += real ? 1.0f : 0.0f;
            if (!hd->kv_inplace) {
                float *k = hd->kcopy + (size_t)t * Dp;
                float *v = hd->vcopy + (size_t)t * Dp;
                if (real) {
                    attn_to_f32(p->dtype, row_addr(hd, p->k, p->Hkv, kvh, t), k,
                                D);
                    attn_to_f32(p->dtype, row_addr(hd, p->v, p->Hkv, kvh, t), v,
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
            hd->khT[(size_t)d * hd->nb + J] = kmean[d];
    }
}

/* The block means of Q and V of block I (MRA): Q's from its real rows
 * summed in token order (a masked or padded row would add zeros), V's
 * through the kernel.  Needs block I loaded (cnt, and V's copy if any). */
static void cpu_head_means(struct cpu_head *hd, uint32_t I,
                           const struct cpu_kernels *kern)
{
    const struct attn_problem *p = hd->p;
    uint32_t D = hd->D, Dp = hd->Dp;
    float qrow[ATTN_MAX_HEAD_DIM];
    _Alignas(64) float qsum[ATTN_MAX_HEAD_DIM];
    float c = hd->cnt[I];
    float *qh = hd->qh + (size_t)I * Dp;
    kern->block_mean(hd->v + (size_t)I * CPU_TILE * Dp, Dp, c,
                     hd->vh + (size_t)I * Dp);
    if (hd->kv_inplace && ((uintptr_t)p->q & 3) == 0) {
        /* Q has the working layout too (f32 rows of Dp, every token
         * real): the kernel sums its rows in place, in the same order as
         * the loop below */
        kern->block_mean((const float *)(const void *)row_addr(
                             hd, p->q, p->H, hd->h, I * CPU_TILE),
                         Dp, c, qh);
        return;
    }
    memset(qsum, 0, D * sizeof *qsum);
    for (uint32_t i = 0; i < CPU_TILE; i++) {
        uint32_t t = I * CPU_TILE + i;
        if (!token_real(hd, t))
            continue;
        attn_to_f32(p->dtype, row_addr(hd, p->q, p->H, hd->h, t), qrow, D);
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
    return (hd->nb + CPU_LR_ROWS - 1) / CPU_LR_ROWS;
}

void cpu_head_lowres(struct cpu_head *hd, uint32_t G,
                     const struct cpu_kernels *kern)
{
    const struct attn_problem *p = hd->p;
    uint32_t nb = hd->nb, I0 = G * CPU_LR_ROWS;
    uint32_t rows = nb - I0 < CPU_LR_ROWS ? nb - I0 : CPU_LR_ROWS;
    float *L = hd->L + (size_t)I0 * nb, rmax[CPU_LR_ROWS];
    /* the group's own Q and V means: reading them here, among the
     * arithmetic, keeps the memory-bound load phase short */
    for (uint32_t I = I0; I < I0 + rows; I++)
        cpu_head_means(hd, I, kern);
    kern->lowres_rows(hd->qh + (size_t)I0 * hd->Dp, hd->Dp, rows, hd->khT,
                      hd->D, nb, hd->scale, L, rmax);
    for (uint32_t I = I0; I < I0 + rows; I++, L += nb) {
        /* r_I: L[0], raised by every larger L[J] (so a NaN L[0] gives a
         * NaN r_I, and a later NaN is passed over) */
        float r = L[0] != L[0] ? L[0] : rmax[I - I0];
        kern->select_keys_row(L, r, hd->cnt, hd->cnt[I], I, nb,
                              p->prior_first, p->prior_diagonal,
                              hd->key + (size_t)I * nb);
    }
}

void cpu_head_select(struct cpu_head *hd)
{
    size_t n = (size_t)hd->nb * hd->nb;
    attn_select_topk(hd->key, n, (size_t)hd->budget, hd->sel, hd->scratch);
}

void cpu_head_fold(struct cpu_head *hd, uint32_t G,
                   const struct cpu_kernels *kern)
{
    uint32_t nb = hd->nb, I0 = G * CPU_LR_ROWS;
    uint32_t rows = nb - I0 < CPU_LR_ROWS ? nb - I0 : CPU_LR_ROWS;
    kern->lowres_fold_rows(hd->L + (size_t)I0 * nb, hd->lnc,
                           hd->sel + (size_t)I0 * nb, hd->cnt, hd->vh, nb,
                           hd->Dp, rows, hd->vlow + (size_t)I0 * hd->Dp,
                           hd->lm + I0, hd->lsum + I0);
}
