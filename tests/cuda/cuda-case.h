/*
 * cuda-case.h - the problems the GPU tests of tests/cuda/ compute: host
 * tensors filled with deterministic noise, masks, the distance of two
 * outputs, a backend by name.  Shared by test-cuda-backend.c and
 * test-cuda-kv.c (functions static inline: each test takes what it
 * needs).
 */
#ifndef MRAD_TESTS_CUDA_CASE_H
#define MRAD_TESTS_CUDA_CASE_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attention/attn.h"

/* Host tensors of one problem, filled with deterministic noise. */
struct case_data {
    struct attn_problem p;
    void *q, *k, *v, *out;
    uint8_t *mask, *q_mask;
    size_t nq, nk; /* elements of q/out and of k/v */
};

static uint64_t rng_state;

static inline float noise(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f -
           1.0f;
}

static inline void fill(enum attn_dtype dt, void *dst, size_t n, float amp)
{
    float *tmp = malloc(n * sizeof *tmp);
    assert_non_null(tmp);
    for (size_t i = 0; i < n; i++)
        tmp[i] = amp * noise();
    attn_from_f32(dt, tmp, dst, n);
    free(tmp);
}

/* A cross-attention problem of Nq queries and Nk keys; `masked` masks
 * keys (holes and trailing padding). */
static inline void case_init_cross(struct case_data *c, enum attn_method m,
                                   enum attn_dtype dt, uint32_t B, uint32_t H,
                                   uint32_t Hkv, uint32_t Nq, uint32_t Nk,
                                   uint32_t D, int masked, uint64_t seed)
{
    memset(c, 0, sizeof *c);
    rng_state = seed;
    size_t es = attn_dtype_size(dt);
    c->nq = (size_t)B * H * Nq * D;
    c->nk = (size_t)B * Hkv * Nk * D;
    c->q = malloc(c->nq * es);
    c->k = malloc(c->nk * es);
    c->v = malloc(c->nk * es);
    c->out = calloc(c->nq, es);
    assert_true(c->q && c->k && c->v && c->out);
    /* Larger query/key amplitude: peaked attention, so the selection
     * matters and a wrong block shows in the output. */
    fill(dt, c->q, c->nq, 2.0f);
    fill(dt, c->k, c->nk, 2.0f);
    fill(dt, c->v, c->nk, 1.0f);
    if (masked) {
        c->mask = malloc((size_t)B * Nk);
        assert_non_null(c->mask);
        for (size_t i = 0; i < (size_t)B * Nk; i++)
            c->mask[i] = (i % 7 != 3) && (i % Nk + 5 < Nk);
    }
    c->p.method = m;
    c->p.dtype = dt;
    c->p.B = B;
    c->p.H = H;
    c->p.Hkv = Hkv;
    c->p.Nq = Nq;
    c->p.Nk = Nk;
    c->p.D = D;
    c->p.q = c->q;
    c->p.k = c->k;
    c->p.v = c->v;
    c->p.mask = c->mask;
    c->p.out = c->out;
}

/* Self-attention: N queries and keys, the key mask masks queries too. */
static inline void case_init(struct case_data *c, enum attn_method m,
                             enum attn_dtype dt, uint32_t B, uint32_t H,
                             uint32_t Hkv, uint32_t N, uint32_t D, int masked,
                             uint64_t seed)
{
    case_init_cross(c, m, dt, B, H, Hkv, N, N, D, masked, seed);
}

/* Gives the problem a query mask of its own: holes, the first query
 * padding, and query block 1 wholly masked. */
static inline void case_add_q_mask(struct case_data *c)
{
    size_t n = (size_t)c->p.B * c->p.Nq;
    c->q_mask = malloc(n);
    assert_non_null(c->q_mask);
    for (size_t i = 0; i < n; i++) {
        size_t t = i % c->p.Nq;
        c->q_mask[i] = (i % 11 != 6) && t != 0 && !(t >= 32 && t < 64);
    }
    c->p.q_mask = c->q_mask;
}

static inline void case_free(struct case_data *c)
{
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->out);
    free(c->mask);
    free(c->q_mask);
}

/* Relative Frobenius distance of two outputs of n elements. */
static inline double rel_diff(enum attn_dtype dt, const void *a, const void *b,
                              size_t n)
{
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    assert_true(x && y);
    attn_to_f32(dt, a, x, n);
    attn_to_f32(dt, b, y, n);
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)y[i];
        num += d * d;
        den += (double)y[i] * y[i];
    }
    free(x);
    free(y);
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static inline struct attn_backend *new_backend(const char *name)
{
    struct attn_config cfg = {0};
    struct attn_backend *be = NULL;
    assert_int_equal(attn_backend_new(name, &cfg, &be), ATTN_OK);
    return be;
}

#endif /* MRAD_TESTS_CUDA_CASE_H */
