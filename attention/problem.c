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

#include "attention/attn-impl.h"
#include "attention/select-rule.h"

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
    if (p->Nq < 1)
        return fail(msg, msglen, "Nq (query tokens) must be >= 1");
    if (p->Nk < 1)
        return fail(msg, msglen, "Nk (key tokens) must be >= 1");
    if (p->D < 1)
        return fail(msg, msglen, "D (head dimension) must be >= 1");
    if (p->D > ATTN_MAX_HEAD_DIM)
        return fail(msg, msglen, "D (head dimension) %u exceeds %d",
                    (unsigned)p->D, ATTN_MAX_HEAD_DIM);
    if (p->H % p->Hkv != 0)
        return fail(msg, msglen, "H (%u) is not a multiple of Hkv (%u)",
                    (unsigned)p->H, (unsigned)p->Hkv);
    size_t nq, nkv, nm;
    if (!mul_ok(&nq, p->B, p->H, p->Nq, p->D, es))
        return fail(msg, msglen, "q/out size B*H*Nq*D overflows");
    if (!mul_ok(&nkv, p->B, p->Hkv, p->Nk, p->D, es))
        return fail(msg, msglen, "k/v size B*Hkv*Nk*D overflows");
    if (!mul_ok(&nm, p->B, p->Nq > p->Nk ? p->Nq : p->Nk, 1, 1, 1))
        return fail(msg, msglen, "mask size B*N overflows");
    (void)nq, (void)nkv, (void)nm;
    if (!p->q)
        return fail(msg, msglen, "q is NULL");
    if (p->kv) {
        const struct attn_kv_shape *sh = &p->kv->shape;
        if (sh->dtype != p->dtype || sh->B != p->B || sh->Hkv != p->Hkv ||
            sh->D != p->D)
            return fail(msg, msglen,
                        "kv: the store is %s [B=%u, Hkv=%u, D=%u], the "
                        "problem %s [B=%u, Hkv=%u, D=%u]",
                        attn_dtype_name(sh->dtype), (unsigned)sh->B,
                        (unsigned)sh->Hkv, (unsigned)sh->D,
                        attn_dtype_name(p->dtype), (unsigned)p->B,
                        (unsigned)p->Hkv, (unsigned)p->D);
        if (p->append.n && (!p->append.k || !p->append.v))
            return fail(msg, msglen, "append: k or v is NULL");
        if (p->append.n &&
            (!aligned(p->append.k, es) || !aligned(p->append.v, es)))
            return fail(msg, msglen,
                        "append: k and v must be aligned to the %zu-byte "
                        "element",
                        es);
    } else if (p->append.n) {
        return fail(msg, msglen, "append without kv");
    }
    if (!p->kv && !p->k)
        return fail(msg, msglen, "k is NULL");
    if (!p->kv && !p->v)
        return fail(msg, msglen, "v is NULL");
    if (!p->out)
        return fail(msg, msglen, "out is NULL");
    if (!aligned(p->q, es) || !aligned(p->out, es) ||
        (!p->kv && (!aligned(p->k, es) || !aligned(p->v, es))))
        return fail(msg, msglen,
                    "q, k, v and out must be aligned to the %zu-byte element",
                    es);
    if (!isfinite(p->scale) || p->scale < 0.0f)
        return fail(msg, msglen, "scale must be finite and >= 0 (0 = default)");
    if (p->error_samples > ATTN_MAX_ERROR_SAMPLES)
        return fail(msg, msglen, "error_samples %u exceeds %d",
                    (unsigned)p->error_samples, ATTN_MAX_ERROR_SAMPLES);
    if (!isfinite(p->target_error) || p->target_error < 0.0f)
        return fail(msg, msglen,
                    "target_error must be finite and >= 0 (0 = none)");
    /* The budget: block_per_row * nbq and num_blocks are capped at the
     * visible pairs, so any value is meaningful; what must hold is that
     * nbq*nbk fits the 64-bit counters (nb < 2^27 always does) and that a
     * per-row budget times nbq does not wrap (2^32 * 2^27 < 2^64). */
    return ATTN_OK;
}

uint32_t attn_num_blocks(uint32_t N)
{
    return (uint32_t)(((uint64_t)N + ATTN_BLOCK - 1) / ATTN_BLOCK);
}

void attn_grid_row(const struct attn_grid *g, uint32_t I, uint32_t *vis,
                   uint32_t *seen)
{
    attn_grid_row_inline(I, g->off, g->causal, g->nbk, vis, seen);
}

void attn_grid_init(struct attn_grid *g, const struct attn_problem *p)
{
    g->nbq = attn_num_blocks(p->Nq);
    g->nbk = attn_num_blocks(p->Nk);
    g->off = (int64_t)p->Nk - (int64_t)p->Nq;
    g->causal = p->causal != 0;
    g->visible = g->partial = 0;
    for (uint32_t I = 0; I < g->nbq; I++) {
        uint32_t vis, seen;
        attn_grid_row(g, I, &vis, &seen);
        g->visible += vis;
        g->partial += seen - vis;
    }
}

int64_t attn_grid_diag_shift(const struct attn_grid *g)
{
    return attn_grid_diag_shift_inline(g->off);
}

uint64_t attn_budget(const struct attn_problem *p)
{
    struct attn_grid g;
    attn_grid_init(&g, p);
    uint64_t bpr =
        p->block_per_row ? p->block_per_row : ATTN_DEFAULT_BLOCK_PER_ROW;
    uint64_t k = p->num_blocks ? p->num_blocks : bpr * g.nbq;
    return k < g.visible ? k : g.visible;
}

uint64_t attn_budget_max(const struct attn_problem *p)
{
    if (p->target_error > 0.0f && !p->num_blocks && !p->block_per_row) {
        struct attn_grid g;
        attn_grid_init(&g, p);
        return g.visible;
    }
    return attn_budget(p);
}

/* The most pairs a head selects by score: the budget, or the row minimum
 * when that is more (at most min_blocks_per_row per block row). */
static double max_selected(const struct attn_problem *p,
                           const struct attn_grid *g)
{
    double k = (double)attn_budget_max(p);
    double rows = (double)p->min_blocks_per_row * (double)g->nbq;
    if (rows > (double)g->visible)
        rows = (double)g->visible;
    return rows > k ? rows : k;
}

uint32_t attn_error_samples(const struct attn_problem *p)
{
    if (p->method == ATTN_EXACT)
        return 0;
    if (p->error_samples)
        return p->error_samples;
    return p->target_error > 0.0f ? ATTN_DEFAULT_ERROR_SAMPLES : 0;
}

uint64_t attn_ladder_next(uint64_t b)
{
    return b + (b / 4 > 1 ? b / 4 : 1);
}

float attn_scale(const struct attn_problem *p)
{
    if (p->scale != 0.0f)
        return p->scale;
    return (float)(1.0 / sqrt((double)p->D));
}

/* Query-key pairs an exact head computes: Nq * Nk, or under causality
 * the sum over queries i of the keys j <= i + off (0 to Nk each). */
static double exact_pairs(const struct attn_problem *p)
{
    double Nq = p->Nq, Nk = p->Nk;
    if (!p->causal)
        return Nq * Nk;
    /* c(i) = clamp(i + a, 0, Nk) with a = off + 1, summed over i < Nq */
    double a = (double)p->Nk - (double)p->Nq + 1.0, sum = 0.0;
    double lo = -a < 0 ? 0 : -a; /* first i with c > 0 */
    double hi = Nk - a < Nq ? (Nk - a < 0 ? 0 : Nk - a) : Nq; /* c = Nk on */
    if (hi > lo) /* i in [lo, hi): c = i + a */
        sum += (hi - lo) * (lo + hi - 1.0) / 2.0 + (hi - lo) * a;
    if (Nq > hi)
        sum += (Nq - (hi > lo ? hi : lo)) * Nk;
    return sum;
}

double attn_flops(const struct attn_problem *p)
{
    struct attn_grid g;
    attn_grid_init(&g, p);
    double heads = (double)p->B * (double)p->H, D = p->D;
    double b2 = (double)ATTN_BLOCK * ATTN_BLOCK;
    if (p->method == ATTN_EXACT)
        return heads * 4.0 * exact_pairs(p) * D;
    double hi = max_selected(p, &g) + (double)g.partial;
    /* the sampled rows against every key */
    double rows = (double)attn_error_samples(p) * (double)p->Nk;
    return heads * (4.0 * hi * b2 * D +
                    2.0 * (double)g.nbq * (double)g.nbk * D + 4.0 * rows * D);
}

double attn_cost(const struct attn_problem *p)
{
    struct attn_grid g;
    attn_grid_init(&g, p);
    double heads = (double)p->B * (double)p->H;
    double b2 = (double)ATTN_BLOCK * ATTN_BLOCK;
    double per_logit = 4.0 * p->D + ATTN_COST_PER_LOGIT;
    if (p->method == ATTN_EXACT)
        return heads * exact_pairs(p) * per_logit;
    double hi = max_selected(p, &g) + (double)g.partial;
    double n = (double)attn_error_samples(p);
    /* target_error: each step of the ladder selects over the whole grid
     * and merges the sampled rows' block terms once (about
     * 2*log(nbk)/log(1.25) + 8 steps) */
    double steps = p->target_error > 0.0f
                       ? 8.0 + 2.0 * log((double)g.nbk + 1.0) / log(1.25)
                       : 0.0;
    return heads * (hi * b2 * per_logit +
                    (double)g.nbq * (double)g.nbk * (3.0 * p->D + 16.0) +
                    n * (double)p->Nk * per_logit +
                    steps * n * (double)g.nbk * (2.0 * p->D + 16.0) +
                    steps * (double)g.nbq * (double)g.nbk * 8.0);
}
