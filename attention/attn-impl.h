/*
 * attn-impl.h - the backend seam: what a backend implements.
 *
 * A backend is a table of function pointers (struct attn_backend_i) plus a
 * context pointer, as in ggml's ggml_backend_i.  attention/backend.c wraps
 * the table with the public attn_backend_* functions, validates problems
 * before they reach a backend, fills in statistics and handles fault
 * injection, so a backend only computes.  Optional entries may be NULL.
 *
 * Never included by public headers.
 */
#ifndef MRAD_ATTN_IMPL_H
#define MRAD_ATTN_IMPL_H

#include "attention/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

struct attn_backend_i {
    const char *name;
    /* Required.  Computes n problems already checked by attn_problem_check()
     * and writes errs[i].  Returns ATTN_OK or an error that failed the whole
     * batch.  Statistics are not a backend's business: backend.c derives
     * them from the problem. */
    int (*compute_batch)(void *ctx, const struct attn_problem *const *probs,
                         size_t n, int *errs);
    /* Optional: one-line device description. */
    const char *(*device)(void *ctx);
    /* Optional: ATTN_OK or a sticky error. */
    int (*health)(void *ctx);
    /* Optional: gives back the working memory kept between calls. */
    void (*trim)(void *ctx);
    /* Optional: device memory held / total, in bytes. */
    int (*memory)(void *ctx, uint64_t *used, uint64_t *total);
    /* Required: releases ctx. */
    void (*free)(void *ctx);
    /* Optional (all three or none): stores of keys and values.  kv_new
     * sets up kv->impl for kv->shape (checked); kv_append appends t->n > 0
     * tokens (backend.c counts kv->tokens after it succeeds: the backend
     * reads the count before); kv_free releases kv->impl. */
    int (*kv_new)(void *ctx, struct attn_kv *kv);
    int (*kv_append)(void *ctx, struct attn_kv *kv,
                     const struct attn_kv_tokens *t);
    void (*kv_free)(void *ctx, struct attn_kv *kv);
    /* Nonzero when the backend computes the accuracy controls
     * (attn_problem_accuracy()): for such a problem backend.c hands it
     * p->head_stats (its own array when the caller gave none) and the
     * backend writes every head's entry; other problems get ATTN_ENOTSUP.
     * Statistics of the other problems come from the problem alone. */
    int accuracy;
};

/* A store of keys and values (attn.h): the part every backend shares. */
struct attn_kv {
    struct attn_backend *be; /* the backend that holds it */
    struct attn_kv_shape shape;
    uint32_t tokens;
    void *impl; /* the backend's */
};

/* Bytes of one page of a store: 32 tokens of keys and values of every
 * (entry, KV head), their f32 sums, the tokens' mask bytes and counts, as
 * the CUDA backend keeps them (the CPU backend keeps its own layout). */
uint64_t attn_kv_page_bytes(const struct attn_kv_shape *shape);
/* What the CPU backend holds for a store of this shape with `tokens`
 * tokens (attention/cpu/kv.h): its pages and its arrays of block means. */
uint64_t attn_cpu_kv_bytes_for(const struct attn_kv_shape *shape,
                               uint64_t tokens);

struct attn_backend {
    const struct attn_backend_i *iface;
    void *ctx;
    int fault_count; /* accessed atomically */
};

/* Constructors of the built-in backends.  Each returns ATTN_OK and fills
 * *iface and *ctx, or an error (ATTN_ENODEV when not available). */
int attn_cpu_backend_new(const struct attn_config *cfg,
                         const struct attn_backend_i **iface, void **ctx);
/* Provided by attention/cuda when built with CUDA, else by a stub that
 * returns ATTN_ENODEV. */
int attn_cuda_backend_new(const struct attn_config *cfg,
                          const struct attn_backend_i **iface, void **ctx);

#ifdef __cplusplus
}
#endif
#endif /* MRAD_ATTN_IMPL_H */
