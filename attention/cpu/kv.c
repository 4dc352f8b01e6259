/*
 * kv.c - the CPU backend's stores of keys and values: pages of 32 tokens,
 * appends that never move what is held, block sums and means kept up to
 * date (see kv.h).
 */
#include "attention/cpu/kv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/cpu/kernels.h"

#define ALIGN 64
#define MIN_CAPJ 16

static uint32_t padded(uint32_t D)
{
    return (D + CPU_DPAD - 1) / CPU_DPAD * CPU_DPAD;
}

/* Blocks the arrays hold for `blocks` blocks: at least MIN_CAPJ, doubled
 * until they fit. */
static uint64_t capacity(uint64_t blocks)
{
    uint64_t cap = MIN_CAPJ;
    while (cap < blocks)
        cap *= 2;
    return cap;
}

/* Bytes of the block arrays per block. */
static uint64_t array_bytes(const struct attn_kv_shape *sh)
{
    uint64_t units = (uint64_t)sh->B * sh->Hkv;
    /* ksum, vsum, kmT: D floats each; vmean: Dp; cnt and lnc per entry */
    return units * (3 * (uint64_t)sh->D + padded(sh->D)) * sizeof(float) +
           (uint64_t)sh->B * 2 * sizeof(float);
}

/* Bytes of one page: keys, values and the mask of 32 tokens. */
static uint64_t page_bytes(const struct attn_kv_shape *sh)
{
    uint64_t units = (uint64_t)sh->B * sh->Hkv;
    return 2 * units * ATTN_BLOCK * sh->D * attn_dtype_size(sh->dtype) +
           (uint64_t)sh->B * ATTN_BLOCK;
}

uint64_t attn_cpu_kv_bytes_for(const struct attn_kv_shape *sh, uint64_t tokens)
{
    uint64_t blocks = (tokens + ATTN_BLOCK - 1) / ATTN_BLOCK;
    if (!blocks)
        return 0;
    return blocks * page_bytes(sh) + capacity(blocks) * array_bytes(sh);
}

int cpu_kv_new(void *ctx, struct attn_kv *kv)
{
    (void)ctx;
    const struct attn_kv_shape *sh = &kv->shape;
    struct cpu_kv *s = calloc(1, sizeof *s);
    if (!s)
        return ATTN_ENOMEM;
    s->B = sh->B;
    s->units = sh->B * sh->Hkv;
    s->D = sh->D;
    s->Dp = padded(sh->D);
    s->es = attn_dtype_size(sh->dtype);
    s->rows = (size_t)s->units * ATTN_BLOCK * sh->D * s->es;
    s->mask = 2 * s->rows;
    s->page_bytes = (size_t)page_bytes(sh);
    kv->impl = s;
    return ATTN_OK;
}

static void free_arrays(struct cpu_kv *s)
{
    free(s->ksum), free(s->vsum), free(s->kmT), free(s->vmean);
    free(s->cnt), free(s->lnc);
}

void cpu_kv_free(void *ctx, struct attn_kv *kv)
{
    (void)ctx;
    struct cpu_kv *s = kv->impl;
    if (!s)
        return;
    for (uint32_t i = 0; i < s->npages; i++)
        free(s->pages[i]);
    free(s->pages);
    free_arrays(s);
    free(s);
    kv->impl = NULL;
}

static float *zeroed(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, ALIGN, n ? n * sizeof(float) : ALIGN))
        return NULL;
    memset(p, 0, n * sizeof(float));
    return p;
}

/* Copies `rows` rows of `cols` floats from stride `from` to stride `to`. */
static void copy_rows(float *dst, size_t to, const float *src, size_t from,
                      size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++)
        memcpy(dst + r * to, src + r * from, cols * sizeof(float));
}

/* Block arrays for `blocks` blocks: grown (copied into arrays of the new
 * capacity) when they do not fit.  Returns 0, or -1 with the store
 * unchanged. */
static int reserve_blocks(struct cpu_kv *s, uint32_t blocks)
{
    if (blocks <= s->capJ)
        return 0;
    size_t cap = (size_t)capacity(blocks), old = s->capJ;
    size_t U = s->units, D = s->D, Dp = s->Dp, B = s->B;
    float *ksum = zeroed(U * cap * D), *vsum = zeroed(U * cap * D);
    float *kmT = zeroed(U * D * cap), *vmean = zeroed(U * cap * Dp);
    float *cnt = zeroed(B * cap), *lnc = zeroed(B * cap);
    if (!ksum || !vsum || !kmT || !vmean || !cnt || !lnc) {
        free(ksum), free(vsum), free(kmT), free(vmean), free(cnt), free(lnc);
        return -1;
    }
    if (old) {
        copy_rows(ksum, cap * D, s->ksum, old * D, U, old * D);
        copy_rows(vsum, cap * D, s->vsum, old * D, U, old * D);
        copy_rows(kmT, cap, s->kmT, old, U * D, old);
        copy_rows(vmean, cap * Dp, s->vmean, old * Dp, U, old * Dp);
        copy_rows(cnt, cap, s->cnt, old, B, old);
        copy_rows(lnc, cap, s->lnc, old, B, old);
    }
    free_arrays(s);
    s->ksum = ksum, s->vsum = vsum, s->kmT = kmT, s->vmean = vmean;
    s->cnt = cnt, s->lnc = lnc;
    s->capJ = (uint32_t)cap;
    return 0;
}

/* Room for `pages` pages, allocated zeroed (no mask), and their block
 * arrays.  Returns 0, or -1 with the store unchanged. */
static int reserve_pages(struct cpu_kv *s, uint32_t pages)
{
    if (pages > s->cap) {
        uint32_t cap = s->cap ? s->cap : 16;
        while (cap < pages)
            cap *= 2;
        char **t = realloc(s->pages, cap * sizeof *t);
        if (!t)
            return -1;
        s->pages = t;
        s->cap = cap;
    }
    if (reserve_blocks(s, pages))
        return -1;
    uint32_t had = s->npages;
    for (uint32_t i = had; i < pages; i++) {
        void *p = NULL;
        if (posix_memalign(&p, ALIGN, s->page_bytes)) {
            while (s->npages > had)
                free(s->pages[--s->npages]);
            return -1;
        }
        memset(p, 0, s->page_bytes);
        s->pages[s->npages++] = p;
    }
    return 0;
}

/* The means of block J from its sums, for every unit. */
static void update_means(struct cpu_kv *s, uint32_t Hkv, uint32_t J)
{
    size_t cap = s->capJ, D = s->D, Dp = s->Dp;
    for (uint32_t b = 0; b < s->B; b++) {
        float n = s->cnt[(size_t)b * cap + J];
        s->lnc[(size_t)b * cap + J] = n > 0.0f ? logf(n) : 0.0f;
        for (uint32_t h = 0; h < Hkv; h++) {
            size_t u = (size_t)b * Hkv + h;
            const float *ks = s->ksum + (u * cap + J) * D;
            const float *vs = s->vsum + (u * cap + J) * D;
            float *km = s->kmT + u * D * cap + J;
            float *vm = s->vmean + (u * cap + J) * Dp;
            for (size_t x = 0; x < D; x++) {
                km[x * cap] = n != 0.0f ? ks[x] / n : 0.0f;
                vm[x] = n != 0.0f ? vs[x] / n : 0.0f;
            }
        }
    }
}

int cpu_kv_append(void *ctx, struct attn_kv *kv, const struct attn_kv_tokens *t)
{
    const struct cpu_kernels *kern = cpu_backend_kernels(ctx);
    struct cpu_kv *s = kv->impl;
    const struct attn_kv_shape *sh = &kv->shape;
    uint32_t t0 = kv->tokens, D = sh->D;
    uint64_t end = (uint64_t)t0 + t->n;
    if (reserve_pages(s, (uint32_t)((end + ATTN_BLOCK - 1) / ATTN_BLOCK)))
        return ATTN_ENOMEM;
    size_t cap = s->capJ;
    float row[ATTN_MAX_HEAD_DIM];
    for (uint32_t i = 0; i < t->n; i++) {
        uint32_t T = t0 + i, J = T / ATTN_BLOCK, jj = T % ATTN_BLOCK;
        char *page = s->pages[J];
        for (uint32_t b = 0; b < sh->B; b++) {
            int real = !t->mask || t->mask[(size_t)b * t->n + i];
            ((uint8_t *)page + s->mask)[(size_t)b * ATTN_BLOCK + jj] =
                (uint8_t)real;
            s->cnt[(size_t)b * cap + J] += real ? 1.0f : 0.0f;
            for (uint32_t h = 0; h < sh->Hkv; h++) {
                size_t u = (size_t)b * sh->Hkv + h;
                size_t src = (((size_t)b * sh->Hkv + h) * t->n + i) * D * s->es;
                size_t dst = (u * ATTN_BLOCK + jj) * D * s->es;
                memcpy(page + dst, (const char *)t->k + src, D * s->es);
                memcpy(page + s->rows + dst, (const char *)t->v + src,
                       D * s->es);
                if (!real)
                    continue;
                /* the block sums, in token order */
                float *ks = s->ksum + (u * cap + J) * D;
                float *vs = s->vsum + (u * cap + J) * D;
                kern->to_f32(sh->dtype, (const char *)t->k + src, row, D);
                for (uint32_t d = 0; d < D; d++)
                    ks[d] += row[d];
                kern->to_f32(sh->dtype, (const char *)t->v + src, row, D);
                for (uint32_t d = 0; d < D; d++)
                    vs[d] += row[d];
            }
        }
    }
    if (t->n)
        for (uint32_t J = t0 / ATTN_BLOCK; J <= (end - 1) / ATTN_BLOCK; J++)
            update_means(s, sh->Hkv, J);
    return ATTN_OK;
}

int cpu_kv_block_whole(const struct attn_problem *p, uint32_t b, uint32_t J)
{
    if ((uint64_t)(J + 1) * ATTN_BLOCK > p->Nk)
        return 0;
    if (!p->kv)
        return !p->mask;
    const struct cpu_kv *s = p->kv->impl;
    return cpu_kv_cnt(s, b)[J] == (float)ATTN_BLOCK;
}
