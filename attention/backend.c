/*
 * backend.c - the public attn_backend_* API around the backend vtable.
 *
 * Everything that does not depend on the device happens here, once:
 * choosing a backend by name, validating each problem before a backend sees
 * it (a bad problem fails alone with ATTN_EINVAL), the per-problem
 * statistics, and test-only fault injection.  Backends only compute.
 */
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

/* The statistics of the spec, from the problem alone: every head computes
 * its k = attn_budget() blocks plus the causal partial pairs (every pair
 * not hidden for exact), out of the pairs not hidden. */
static void fill_stats(const struct attn_problem *p, struct attn_stats *st)
{
    struct attn_grid g;
    attn_grid_init(&g, p);
    uint64_t heads = (uint64_t)p->B * p->H;
    st->blocks_total = heads * (g.visible + g.partial);
    st->blocks_selected = p->method == ATTN_EXACT
                              ? st->blocks_total
                              : heads * (attn_budget(p) + g.partial);
    st->density = st->blocks_total
                      ? (double)st->blocks_selected / (double)st->blocks_total
                      : 0.0;
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
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (attn_problem_check(probs[i], NULL, 0) != ATTN_OK) {
            errs[i] = ATTN_EINVAL;
            continue;
        }
        ok[m] = probs[i];
        where[m++] = i;
    }
    int rc = ATTN_OK;
    if (m > 0) {
        rc = be->iface->compute_batch(be->ctx, ok, m, berr);
        for (size_t j = 0; j < m; j++) {
            size_t i = where[j];
            errs[i] = rc != ATTN_OK ? rc : berr[j];
            if (stats && errs[i] == ATTN_OK)
                fill_stats(probs[i], &stats[i]);
        }
    }
    free(ok), free(where), free(berr);
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
