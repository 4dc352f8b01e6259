/*
 * kv.c - the CPU backend's stores of keys and values: pages of 32 tokens,
 * appends that never move what is held, block sums kept up to date (see
 * kv.h).
 */
#include "attention/cpu/kv.h"

#include <stdlib.h>
#include <string.h>

#include "attention/cpu/kernels.h"

#define ALIGN 64

int cpu_kv_new(void *ctx, struct attn_kv *kv)
{
    (void)ctx;
    const struct attn_kv_shape *sh = &kv->shape;
    struct cpu_kv *s = calloc(1, sizeof *s);
    if (!s)
        return ATTN_ENOMEM;
    s->units = sh->B * sh->Hkv;
    s->D = sh->D;
    s->es = attn_dtype_size(sh->dtype);
    s->rows = (size_t)s->units * ATTN_BLOCK * sh->D * s->es;
    s->ksum = 2 * s->rows;
    s->vsum = s->ksum + (size_t)s->units * sh->D * sizeof(float);
    s->mask = s->vsum + (size_t)s->units * sh->D * sizeof(float);
    s->cnt = s->mask + (size_t)sh->B * ATTN_BLOCK;
    s->page_bytes = s->cnt + (size_t)sh->B * sizeof(float);
    kv->impl = s;
    return ATTN_OK;
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
    free(s);
    kv->impl = NULL;
}

/* Room for `pages` pages, allocated zeroed (no mask, no sums).  Returns 0,
 * or -1 with the store unchanged. */
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

int cpu_kv_append(void *ctx, struct attn_kv *kv, const struct attn_kv_tokens *t)
{
    const struct cpu_kernels *kern = cpu_backend_kernels(ctx);
    struct cpu_kv *s = kv->impl;
    const struct attn_kv_shape *sh = &kv->shape;
    uint32_t t0 = kv->tokens, D = sh->D;
    uint64_t end = (uint64_t)t0 + t->n;
    if (reserve_pages(s, (uint32_t)((end + ATTN_BLOCK - 1) / ATTN_BLOCK)))
        return ATTN_ENOMEM;
    float row[ATTN_MAX_HEAD_DIM];
    for (uint32_t i = 0; i < t->n; i++) {
        uint32_t T = t0 + i, jj = T % ATTN_BLOCK;
        char *page = s->pages[T / ATTN_BLOCK];
        for (uint32_t b = 0; b < sh->B; b++) {
            int real = !t->mask || t->mask[(size_t)b * t->n + i];
            ((uint8_t *)page + s->mask)[(size_t)b * ATTN_BLOCK + jj] =
                (uint8_t)real;
            ((float *)(void *)(page + s->cnt))[b] += real ? 1.0f : 0.0f;
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
                float *ks = (float *)(void *)(page + s->ksum) + u * D;
                float *vs = (float *)(void *)(page + s->vsum) + u * D;
                kern->to_f32(sh->dtype, (const char *)t->k + src, row, D);
                for (uint32_t d = 0; d < D; d++)
                    ks[d] += row[d];
                kern->to_f32(sh->dtype, (const char *)t->v + src, row, D);
                for (uint32_t d = 0; d < D; d++)
                    vs[d] += row[d];
            }
        }
    }
    return ATTN_OK;
}

int cpu_kv_block_whole(const struct attn_problem *p, uint32_t b, uint32_t J)
{
    if ((uint64_t)(J + 1) * ATTN_BLOCK > p->Nk)
        return 0;
    if (!p->kv)
        return !p->mask;
    const struct cpu_kv *s = p->kv->impl;
    const float *cnt = (const float *)(const void *)(s->pages[J] + s->cnt);
    return cnt[b] == (float)ATTN_BLOCK;
}
