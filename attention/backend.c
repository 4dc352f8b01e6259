/*
 * backend.c - the public attn_backend_* API around the backend vtable.
 *
 * Everything that does not depend on the device happens here, once:
 * choosing a backend by name, validating each problem before a backend sees
 * it (a bad problem fails alone with ATTN_EINVAL), the per-problem
 * statistics, and test-only fault injection.  Backends only compute.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attn-impl.h"
#include "attention/attn-test.h"

const char *attn_strerror(int err)
{
    switch (err) {
    case ATTN_OK:
        return "success";
    case ATTN_EINVAL:
        return "invalid attention problem or argument";
    case ATTN_ENOMEM:
        return "out of memory";
    case ATTN_ENOTSUP:
        return "not supported by this backend";
    case ATTN_EBACKEND:
        return "the compute device failed";
    case ATTN_ENODEV:
        return "backend not built or no device present";
    case ATTN_EFAULT:
        return "injected fault";
    case ATTN_ECANCELED:
        return "canceled";
    }
    return "unknown attention error";
}

static int wrap(const struct attn_backend_i *iface, void *ctx,
                struct attn_backend **out)
{
    struct attn_backend *be = calloc(1, sizeof *be);
    if (!be) {
        iface->free(ctx);
        return ATTN_ENOMEM;
    }
    be->iface = iface;
    be->ctx = ctx;
    __atomic_store_n(&be->fault_count, 0, __ATOMIC_SEQ_CST);
    *out = be;
    return ATTN_OK;
}

int attn_backend_new(const char *name, const struct attn_config *cfg,
                     struct attn_backend **out)
{
    static const struct attn_config defaults;
    const struct attn_backend_i *iface = NULL;
    void *ctx = NULL;
    int rc;

    if (!out)
        return ATTN_EINVAL;
    *out = NULL;
    if (!cfg)
        cfg = &defaults;
    if (!name || strcmp(name, "auto") == 0) {
        rc = attn_cuda_backend_new(cfg, &iface, &ctx);
        if (rc != ATTN_OK)
            rc = attn_cpu_backend_new(cfg, &iface, &ctx);
    } else if (strcmp(name, "cpu") == 0) {
        rc = attn_cpu_backend_new(cfg, &iface, &ctx);
    } else if (strcmp(name, "cuda") == 0) {
        rc = attn_cuda_backend_new(cfg, &iface, &ctx);
    } else {
        return ATTN_EINVAL;
    }
    if (rc != ATTN_OK)
        return rc;
    return wrap(iface, ctx, out);
}

void attn_backend_free(struct attn_backend *be)
{
    if (!be)
        return;
    be->iface->free(be->ctx);
    free(be);
}

const char *attn_backend_name(const struct attn_backend *be)
{
    return be ? be->iface->name : NULL;
}

const char *attn_backend_device(const struct attn_backend *be)
{
    if (!be)
        return NULL;
    if (be->iface->device)
        return be->iface->device(be->ctx);
    return be->iface->name;
}

int attn_backend_health(const struct attn_backend *be)
{
    if (!be)
        return ATTN_EINVAL;
    if (be->iface->health)
        return be->iface->health(be->ctx);
    return ATTN_OK;
}

int attn_backend_memory(const struct attn_backend *be, uint64_t *used,
                        uint64_t *total)
{
    if (!be || !used || !total)
        return ATTN_EINVAL;
    if (!be->iface->memory)
        return ATTN_ENOTSUP;
    return be->iface->memory(be->ctx, used, total);
}

void attn_backend_trim(struct attn_backend *be)
{
    if (be && be->iface->trim)
        be->iface->trim(be->ctx);
}

void attn_backend_inject_fault(struct attn_backend *be, int count)
{
    if (be)
        __atomic_store_n(&be->fault_count, count < 0 ? 0 : count,
                         __ATOMIC_SEQ_CST);
}

/* Consumes one injected fault if any is pending. */
static int take_fault(struct attn_backend *be)
{
    int cur = __atomic_load_n(&be->fault_count, __ATOMIC_SEQ_CST);
    while (cur > 0) {
        if (__atomic_compare_exchange_n(&be->fault_count, &cur, cur - 1, 1,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return 1;
    }
    return 0;
}

int attn_problem_accuracy(const struct attn_problem *p)
{
    if (p->error_samples || p->target_error > 0.0f)
        return 1;
    return p->method != ATTN_EXACT && p->min_blocks_per_row > 0;
}

int attn_backend_accuracy(const char *backend)
{
    return backend && !strcmp(backend, "cpu");
}

/* The statistics of the spec, from the problem alone: every head computes
 * its k = attn_budget() blocks plus the causal partial pairs (every pair
 * not hidden for exact), out of the pairs not hidden.  Per head too, when
 * the caller asked. */
static void fill_stats(const struct attn_problem *p, struct attn_stats *st)
{
    struct attn_grid g;
    attn_grid_init(&g, p);
    uint64_t heads = (uint64_t)p->B * p->H;
    uint64_t total = g.visible + g.partial;
    uint64_t k = p->method == ATTN_EXACT ? g.visible : attn_budget(p);
    st->blocks_total = heads * total;
    st->blocks_selected = heads * (k + g.partial);
    st->density = st->blocks_total
                      ? (double)st->blocks_selected / (double)st->blocks_total
                      : 0.0;
    st->est_rel_err = -1.0;
    for (uint64_t h = 0; p->head_stats && h < heads; h++)
        p->head_stats[h] = (struct attn_head_stats){
            .budget = k,
            .blocks_selected = k + g.partial,
            .blocks_total = total,
            .density = total ? (double)(k + g.partial) / (double)total : 0.0,
            .est_rel_err = -1.0,
        };
}

/* The statistics of a problem whose backend wrote its heads'. */
static void sum_heads(const struct attn_problem *p, struct attn_stats *st)
{
    uint64_t heads = (uint64_t)p->B * p->H;
    double num = 0.0, den = 0.0;
    int estimated = 0;
    *st = (struct attn_stats){0};
    for (uint64_t h = 0; h < heads; h++) {
        const struct attn_head_stats *hs = &p->head_stats[h];
        st->blocks_selected += hs->blocks_selected;
        st->blocks_total += hs->blocks_total;
        num += hs->err_num;
        den += hs->err_den;
        estimated |= hs->est_rel_err >= 0.0;
    }
    st->density = st->blocks_total
                      ? (double)st->blocks_selected / (double)st->blocks_total
                      : 0.0;
    st->est_rel_err = !estimated ? -1.0 : den > 0.0 ? sqrt(num / den) : 0.0;
}

/* Computes the m problems ok[] (indices where[] of the batch) as one call
 * of the backend and records their results. */
static int run(struct attn_backend *be, const struct attn_problem **ok,
               const size_t *where, int *berr, size_t m,
               struct attn_stats *stats, int *errs)
{
    if (m == 0)
        return ATTN_OK;
    int rc = be->iface->compute_batch(be->ctx, ok, m, berr);
    for (size_t j = 0; j < m; j++) {
        size_t i = where[j];
        errs[i] = rc != ATTN_OK ? rc : berr[j];
        if (errs[i] != ATTN_OK)
            continue;
        struct attn_stats st;
        if (attn_problem_accuracy(ok[j]))
            sum_heads(ok[j], &st);
        else
            fill_stats(ok[j], &st);
        if (stats)
            stats[i] = st;
    }
    return rc;
}

int attn_backend_compute_batch(struct attn_backend *be,
                               const struct attn_problem *const *probs,
                               size_t n, struct attn_stats *stats, int *errs)
{
    if (!be || !errs || (n > 0 && !probs))
        return ATTN_EINVAL;
    if (stats)
        memset(stats, 0, n * sizeof *stats);
    if (n == 0)
        return ATTN_OK;
    if (take_fault(be)) {
        for (size_t i = 0; i < n; i++)
            errs[i] = ATTN_EFAULT;
        return ATTN_EFAULT;
    }

    /* Only valid problems reach the backend; map results back by index. */
    if (n > SIZE_MAX / (sizeof(void *) + sizeof(size_t) + sizeof(int)))
        return ATTN_ENOMEM;
    const struct attn_problem **ok = malloc(n * sizeof *ok);
    size_t *where = malloc(n * sizeof *where);
    int *berr = calloc(n, sizeof *berr);
    if (!ok || !where || !berr) {
        free(ok), free(where), free(berr);
        for (size_t i = 0; i < n; i++)
            errs[i] = ATTN_ENOMEM;
        return ATTN_ENOMEM;
    }
    /* Problems go to the backend in runs.  A problem that appends to a
     * store first ends the run when the run reads that store, so every
     * problem sees exactly the appends of the problems before it and its
     * own. */
    size_t m = 0;
    int rc = ATTN_OK;
    /* Problems on a store with Nk = 0, as computed: with the store's count
     * after their append (allocated at the first). */
    struct attn_problem *sized = NULL;
    /* Problems with accuracy controls and no head_stats of the caller's:
     * a copy pointing at an array of ours. */
    struct copy {
        struct attn_problem p;
        struct attn_head_stats *heads;
    } *copies = NULL;
    for (size_t i = 0; i < n && rc == ATTN_OK; i++) {
        const struct attn_problem *p = probs[i];
        if (p && p->kv && p->Nk == 0) {
            if (!sized && !(sized = malloc(n * sizeof *sized))) {
                errs[i] = ATTN_ENOMEM;
                continue;
            }
            uint64_t nk = (uint64_t)p->kv->tokens + p->append.n;
            sized[i] = *p;
            sized[i].Nk = nk <= UINT32_MAX ? (uint32_t)nk : 0;
            p = &sized[i];
        }
        if (attn_problem_check(p, NULL, 0) != ATTN_OK ||
            (p->kv && p->kv->be != be)) {
            errs[i] = ATTN_EINVAL;
            continue;
        }
        if (attn_problem_accuracy(p)) {
            if (!be->iface->accuracy) {
                errs[i] = ATTN_ENOTSUP;
                continue;
            }
            if (!p->head_stats) {
                /* the backend writes every head's statistics somewhere */
                if (!copies && !(copies = calloc(n, sizeof *copies))) {
                    errs[i] = ATTN_ENOMEM;
                    continue;
                }
                copies[i].p = *p;
                copies[i].heads =
                    calloc((size_t)p->B * p->H, sizeof *copies[i].heads);
                if (!copies[i].heads) {
                    errs[i] = ATTN_ENOMEM;
                    continue;
                }
                copies[i].p.head_stats = copies[i].heads;
                p = &copies[i].p;
            }
        }
        if (p->kv && p->append.n) {
            int reads = 0;
            for (size_t j = 0; j < m; j++)
                reads |= ok[j]->kv == p->kv;
            if (reads) {
                rc = run(be, ok, where, berr, m, stats, errs);
                m = 0;
            }
            if (rc != ATTN_OK)
                break;
            if ((uint64_t)p->kv->tokens + p->append.n != p->Nk) {
                errs[i] = ATTN_EINVAL;
                continue;
            }
            int err = attn_kv_append(p->kv, &p->append);
            if (err != ATTN_OK) {
                errs[i] = err;
                continue;
            }
        } else if (p->kv && p->kv->tokens != p->Nk) {
            errs[i] = ATTN_EINVAL;
            continue;
        }
        ok[m] = p;
        where[m++] = i;
    }
    if (rc == ATTN_OK)
        rc = run(be, ok, where, berr, m, stats, errs);
    for (size_t i = 0; copies && i < n; i++)
        free(copies[i].heads);
    free(ok), free(where), free(berr), free(sized), free(copies);
    /* A batch where nothing was valid still "ran": errs says why. */
    return rc;
}

int attn_backend_compute(struct attn_backend *be, const struct attn_problem *p,
                         struct attn_stats *stats)
{
    int err = ATTN_OK;
    if (!p)
        return ATTN_EINVAL;
    int rc = attn_backend_compute_batch(be, &p, 1, stats, &err);
    return rc != ATTN_OK ? rc : err;
}

/* ---- stores of keys and values ------------------------------------------ */

uint64_t attn_kv_page_bytes(const struct attn_kv_shape *sh)
{
    uint64_t units = (uint64_t)sh->B * sh->Hkv;
    uint64_t rows = units * ATTN_BLOCK * sh->D * attn_dtype_size(sh->dtype);
    /* keys and values, their f32 sums per unit, the mask and counts */
    return 2 * rows + units * 2 * sh->D * sizeof(float) +
           (uint64_t)sh->B * (ATTN_BLOCK + sizeof(float));
}

uint64_t attn_kv_bytes_for(const char *backend,
                           const struct attn_kv_shape *shape, uint64_t tokens)
{
    if (backend && strcmp(backend, "cpu") == 0)
        return attn_cpu_kv_bytes_for(shape, tokens);
    uint64_t pages = (tokens + ATTN_BLOCK - 1) / ATTN_BLOCK;
    return pages * attn_kv_page_bytes(shape);
}

static int shape_ok(const struct attn_kv_shape *sh)
{
    return sh && attn_dtype_size(sh->dtype) && sh->B >= 1 && sh->Hkv >= 1 &&
           sh->D >= 1 && sh->D <= ATTN_MAX_HEAD_DIM &&
           attn_kv_page_bytes(sh) < ((uint64_t)1 << 40);
}

int attn_kv_new(struct attn_backend *be, const struct attn_kv_shape *shape,
                struct attn_kv **out)
{
    if (!be || !out || !shape_ok(shape))
        return ATTN_EINVAL;
    *out = NULL;
    if (!be->iface->kv_new)
        return ATTN_ENOTSUP;
    struct attn_kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return ATTN_ENOMEM;
    kv->be = be;
    kv->shape = *shape;
    int rc = be->iface->kv_new(be->ctx, kv);
    if (rc != ATTN_OK) {
        free(kv);
        return rc;
    }
    *out = kv;
    return ATTN_OK;
}

int attn_kv_append(struct attn_kv *kv, const struct attn_kv_tokens *t)
{
    if (!kv || !t || (t->n && (!t->k || !t->v)))
        return ATTN_EINVAL;
    if (t->n == 0)
        return ATTN_OK;
    if ((uint64_t)kv->tokens + t->n > UINT32_MAX)
        return ATTN_EINVAL;
    int rc = kv->be->iface->kv_append(kv->be->ctx, kv, t);
    if (rc == ATTN_OK)
        kv->tokens += t->n;
    return rc;
}

void attn_kv_free(struct attn_kv *kv)
{
    if (!kv)
        return;
    kv->be->iface->kv_free(kv->be->ctx, kv);
    free(kv);
}

uint32_t attn_kv_tokens(const struct attn_kv *kv)
{
    return kv ? kv->tokens : 0;
}

const struct attn_kv_shape *attn_kv_shape_of(const struct attn_kv *kv)
{
    return kv ? &kv->shape : NULL;
}

uint64_t attn_kv_bytes(const struct attn_kv *kv)
{
    return kv ? attn_kv_bytes_for(attn_backend_name(kv->be), &kv->shape,
                                  kv->tokens)
              : 0;
}
