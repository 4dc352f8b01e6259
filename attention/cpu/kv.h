/*
 * kv.h - the CPU backend's stores of keys and values (attn.h, "Resident
 * keys and values"), and where the compute paths read keys and values
 * from: a problem's own tensors or its store.
 *
 * A store is a table of pages, one per block of 32 tokens; a page holds
 * that block for every unit (entry b, KV head h: unit b*Hkv + h):
 *   keys    [units][32][D]  in the store's dtype
 *   values  [units][32][D]
 *   ksum    [units][D]      f32 sums of the block's real keys, in token order
 *   vsum    [units][D]      and of its real values
 *   mask    [B][32]         1 for a real token
 *   cnt     [B]             real tokens of the block, as a float
 * (attn_kv_page_bytes() counts exactly this).  An append fills the last
 * page and adds pages; the table of page pointers doubles when full.  So
 * the tokens held are never copied again, and MRA reads a block's mean from
 * its sums.
 */
#ifndef MRAD_ATTN_CPU_KV_H
#define MRAD_ATTN_CPU_KV_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attn-impl.h"

struct cpu_kv {
    uint32_t units, D;
    size_t es;                    /* bytes per element */
    size_t rows;                  /* bytes of the keys (or values) of a page */
    size_t ksum, vsum, mask, cnt; /* offsets in a page */
    size_t page_bytes;
    char **pages;
    uint32_t npages, cap;
};

struct cpu_kernels;
/* The kernel table of a CPU backend context (cpu-backend.c). */
const struct cpu_kernels *cpu_backend_kernels(void *ctx);

int cpu_kv_new(void *ctx, struct attn_kv *kv);
int cpu_kv_append(void *ctx, struct attn_kv *kv,
                  const struct attn_kv_tokens *t);
void cpu_kv_free(void *ctx, struct attn_kv *kv);

/* ---- reading keys and values ------------------------------------------- */

/* Key (or value: `values` set) row t of KV head h of entry b of problem p:
 * from its store when it has one, else from its k or v tensor. */
static inline const char *cpu_kv_row(const struct attn_problem *p, int values,
                                     uint32_t b, uint32_t h, uint32_t t)
{
    if (p->kv) {
        const struct cpu_kv *s = p->kv->impl;
        const char *page = s->pages[t / ATTN_BLOCK];
        size_t u = (size_t)b * p->Hkv + h;
        return page + (values ? s->rows : 0) +
               (u * ATTN_BLOCK + t % ATTN_BLOCK) * s->D * s->es;
    }
    size_t es = attn_dtype_size(p->dtype);
    return (const char *)(values ? p->v : p->k) +
           ((((size_t)b * p->Hkv + h) * p->Nk + t) * p->D) * es;
}

/* Whether key t of entry b of problem p is real (t < Nk). */
static inline int cpu_kv_real(const struct attn_problem *p, uint32_t b,
                              uint32_t t)
{
    if (p->kv) {
        const struct cpu_kv *s = p->kv->impl;
        const uint8_t *m = (const uint8_t *)s->pages[t / ATTN_BLOCK] + s->mask;
        return m[(size_t)b * ATTN_BLOCK + t % ATTN_BLOCK] != 0;
    }
    return !p->mask || p->mask[(size_t)b * p->Nk + t];
}

/* Whether query t (< Nq) of entry b is real: q_mask, else in
 * self-attention (Nq == Nk) the key mask, store or tensor, else real. */
static inline int cpu_query_real(const struct attn_problem *p, uint32_t b,
                                 uint32_t t)
{
    if (p->q_mask)
        return p->q_mask[(size_t)b * p->Nq + t] != 0;
    return p->Nq != p->Nk || cpu_kv_real(p, b, t);
}

/* Whether every query of a problem is real (no mask applies to them). */
static inline int cpu_queries_all_real(const struct attn_problem *p)
{
    return !p->q_mask && (p->Nq != p->Nk || (!p->mask && !p->kv));
}

/* Whether every key of a problem's block J is real and held whole, so its
 * rows can be read in place (with f32 and D a multiple of CPU_DPAD). */
int cpu_kv_block_whole(const struct attn_problem *p, uint32_t b, uint32_t J);

/* The count, key sums and value sums of block J of unit u of a store. */
static inline float cpu_kv_block_sums(const struct attn_problem *p, uint32_t u,
                                      uint32_t J, const float **ksum,
                                      const float **vsum)
{
    const struct cpu_kv *s = p->kv->impl;
    const char *page = s->pages[J];
    *ksum = (const float *)(const void *)(page + s->ksum) + (size_t)u * s->D;
    *vsum = (const float *)(const void *)(page + s->vsum) + (size_t)u * s->D;
    return ((const float *)(const void *)(page + s->cnt))[u / p->Hkv];
}

#endif /* MRAD_ATTN_CPU_KV_H */
