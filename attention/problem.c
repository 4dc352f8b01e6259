/*
 * problem.c - validation of attention problems and the derived quantities
 * every backend shares: block count, budget, scale and FLOP count.
 *
 * attn_problem_check() is the single gate in front of the backends
 * (backend.c calls it for every problem), so a backend may assume every
 * field is in range and every tensor size fits in size_t.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include "attention/attn.h"

static int fail(char *msg, size_t msglen, const char *fmt, ...)
{
    if (msg && msglen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
    }
    return ATTN_EINVAL;
}

/* a*b*c*d*e in size_t; returns 0 on overflow (no factor is 0 here). */
static int mul_ok(size_t *out, size_t a, size_t b, size_t c, size_t d, size_t e)
{
    size_t f[5] = {a, b, c, d, e}, r = 1;
    for (int i = 0; i < 5; i++) {
        if (f[i] != 0 && r > SIZE_MAX / f[i])
            return 0;
        r *= f[i];
    }
    *out = r;
    return 1;
}

static int aligned(const void *ptr, size_t align)
{
    return ((uintptr_t)ptr % align) == 0;
}

int attn_problem_check(const struct attn_problem *p, char *msg, size_t msglen)
{
    if (!p)
        return fail(msg, msglen, "problem is NULL");
    if (!attn_method_name(p->method))
        return fail(msg, msglen, "method %d is not exact, mra2 or mra2_sparse",
                    (int)p->method);
    size_t es = attn_dtype_size(p->dtype);
    if (es == 0)
        return fail(msg, msglen, "dtype %d is not f32, f16 or bf16",
                    (int)p->dtype);
    if (p->B < 1)
        return fail(msg, msglen, "B (batch size) must be >= 1");
    if (p->H < 1)
        return fail(msg, msglen, "H (query heads) must be >= 1");
    if (p->Hkv < 1)
        return fail(msg, msglen, "Hkv (key/value heads) must be >= 1");
    if (p->N < 1)
        return fail(msg, msglen, "N (tokens) must be >= 1");
    if (p->D < 1)
        return fail(msg, msglen, "D (head dimension) must be >= 1");
    if (p->D > ATTN_MAX_HEAD_DIM)
        return fail(msg, msglen, "D (head dimension) %u exceeds %d",
                    (unsigned)p->D, ATTN_MAX_HEAD_DIM);
    if (p->H % p->Hkv != 0)
        return fail(msg, msglen, "H (%u) is not a multiple of Hkv (%u)",
                    (unsigned)p->H, (unsigned)p->Hkv);
    size_t nq, nkv, nm;
    if (!mul_ok(&nq, p->B, p->H, p->N, p->D, es))
        return fail(msg, msglen, "q/out size B*H*N*D overflows");
    if (!mul_ok(&nkv, p->B, p->Hkv, p->N, p->D, es))
        return fail(msg, msglen, "k/v size B*Hkv*N*D overflows");
    if (!mul_ok(&nm, p->B, p->N, 1, 1, 1))
        return fail(msg, msglen, "mask size B*N overflows");
    (void)nq, (void)nkv, (void)nm;
    if (!p->q)
        return fail(msg, msglen, "q is NULL");
    if (!p->k)
        return fail(msg, msglen, "k is NULL");
    if (!p->v)
        return fail(msg, msglen, "v is NULL");
    if (!p->out)
        return fail(msg, msglen, "out is NULL");
    if (!aligned(p->q, es) || !aligned(p->k, es) || !aligned(p->v, es) ||
        !aligned(p->out, es))
        return fail(msg, msglen,
                    "q, k, v and out must be aligned to the %zu-byte element",
                    es);
    if (!isfinite(p->scale) || p->scale < 0.0f)
        return fail(msg, msglen, "scale must be finite and >= 0 (0 = default)");
    /* The budget: block_per_row * nb and num_blocks are capped at nb*nb,
     * so any value is meaningful; what must hold is that nb*nb fits the
     * 64-bit counters (nb < 2^27 always does) and that a per-row budget
     * times nb does not wrap (2^32 * 2^27 < 2^64). */
    return ATTN_OK;
}

uint32_t attn_num_blocks(uint32_t N)
{
    return (uint32_t)(((uint64_t)N + ATTN_BLOCK - 1) / ATTN_BLOCK);
}

uint64_t attn_budget(const struct attn_problem *p)
{
    uint64_t nb = attn_num_blocks(p->N);
    uint64_t all = nb * nb;
    uint64_t bpr =
        p->block_per_row ? p->block_per_row : ATTN_DEFAULT_BLOCK_PER_ROW;
    uint64_t k = p->num_blocks ? p->num_blocks : bpr * nb;
    return k < all ? k : all;
}

float attn_scale(const struct attn_problem *p)
{
    if (p->scale != 0.0f)
        return p->scale;
    return (float)(1.0 / sqrt((double)p->D));
}

double attn_flops(const struct attn_problem *p)
{
    double heads = (double)p->B * (double)p->H;
    double D = p->D, N = p->N, nb = attn_num_blocks(p->N);
    double b2 = (double)ATTN_BLOCK * ATTN_BLOCK;
    if (p->method == ATTN_EXACT)
        return heads * 4.0 * N * N * D;
    return heads * (4.0 * (double)attn_budget(p) * b2 * D + 2.0 * nb * nb * D);
}

double attn_cost(const struct attn_problem *p)
{
    double heads = (double)p->B * (double)p->H;
    double D = p->D, N = p->N, nb = attn_num_blocks(p->N);
    double b2 = (double)ATTN_BLOCK * ATTN_BLOCK;
    double per_logit = 4.0 * D + ATTN_COST_PER_LOGIT;
    if (p->method == ATTN_EXACT)
        return heads * N * N * per_logit;
    return heads * ((double)attn_budget(p) * b2 * per_logit +
                    nb * nb * (3.0 * D + 16.0));
}
