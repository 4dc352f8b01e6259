/*
 * kv.h - the CPU backend's stores of keys and values (attn.h, "Resident
 * keys and values"), and where the compute paths read keys and values
 * from: a problem's own tensors or its store.
 *
 * A store is a table of pages, one per block of 32 tokens; a page holds
 * that block for every unit (entry b, KV head h: unit b*Hkv + h):
 *   keys    [units][32][D]  in the store's dtype
 *   values  [units][32][D]
 *   mask    [B][32]         1 for a real token
 * An append fills the last page and adds pages; the table of page pointers
 * doubles when full.  So the tokens held are never copied again.
 *
 * Beside the pages, arrays of one entry per block keep what MRA reads of
 * the blocks, up to date after every append (only the blocks an append
 * touches change):
 *   ksum, vsum [units][capJ][D]   f32 sums of the real keys and values, in
 *                                 token order
 *   kmT        [units][D][capJ]   the key means, transposed (as the
 *                                 low-resolution kernel reads them)
 *   vmean      [units][capJ][Dp]  the value means, zero-padded to Dp
 *   cnt, lnc   [B][capJ]          real tokens per block (a float) and its
 *                                 log (0 for an empty block)
 * A mean is its sum divided by the count, as the tensor path computes it,
 * so a problem on a store has the bits of the same problem on tensors.
 * capJ (at least 16 blocks) doubles when the blocks outgrow it: the arrays
 * are copied then, O(1) amortised per token, never the keys and values.
 * So a decoding step's MRA reads ceil(Nk/32) means, not Nk keys.
 * attn_cpu_kv_bytes_for() counts all of it.
 */
#ifndef MRAD_ATTN_CPU_KV_H
#define MRAD_ATTN_CPU_KV_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attn-impl.h"

struct cpu_kv {
    uint32_t B, units, D, Dp;
    size_t es;         /* bytes per element */
    size_t rows;       /* bytes of the keys (or values) of a page */
    size_t mask;       /* offset of the mask in a page */
    size_t page_bytes;
    char **pages;
    uint32_t npages, cap;
    /* the block arrays, capJ blocks each */
    uint32_t capJ;
    float *ksum, *vsum, *kmT, *vmean, *cnt, *lnc;
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

/* MRA's arrays of a store for unit u (entry b = u / Hkv): the key means
 * transposed, of stride s->capJ; the value means [J][Dp]; the counts and
 * their logs [J]. */
static inline const float *cpu_kv_kmT(const struct cpu_kv *s, uint32_t u)
{
    return s->kmT + (size_t)u * s->D * s->capJ;
}

static inline const float *cpu_kv_vmean(const struct cpu_kv *s, uint32_t u)
{
    return s->vmean + (size_t)u * s->capJ * s->Dp;
}

static inline const float *cpu_kv_cnt(const struct cpu_kv *s, uint32_t b)
{
    return s->cnt + (size_t)b * s->capJ;
}

static inline const float *cpu_kv_lnc(const struct cpu_kv *s, uint32_t b)
{
    return s->lnc + (size_t)b * s->capJ;
}

#endif /* MRAD_ATTN_CPU_KV_H */
