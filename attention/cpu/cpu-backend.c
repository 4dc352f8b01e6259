/*
 * cpu-backend.c - the CPU backend: its vtable, its worker pool and the
 * scheduling of a batch of problems onto the pool.
 *
 * A batch is cut into groups of query heads (all heads of all problems, in
 * order) whose working memory fits a budget; each group runs the phases of
 * head.h as parallel loops over (head, block) items, so threads share the
 * work of one big head and of many small ones alike.  Grouping and thread
 * count only decide who computes an item, never how, so a problem's output
 * is bitwise the same alone, in any batch, and on any number of threads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attention/attn-impl.h"
#include "attention/cpu/accuracy.h"
#include "attention/cpu/decode.h"
#include "attention/cpu/head.h"
#include "attention/cpu/kv.h"
#include "attention/cpu/kernels.h"
#include "attention/cpu/pool.h"

/* Working memory of one group; a single head may exceed it on its own. */
#define GROUP_BYTES ((size_t)128 << 20)
#define GROUP_HEADS 64
/* Key blocks per load item: enough work to amortise the hand-out. */
#define LOAD_CHUNK 8

struct cpu_ctx {
    struct cpu_pool *pool;
    const struct cpu_kernels *kern;
    char device[320];
    void *arena; /* group workspace, grown on demand, 64-byte aligned */
    size_t arena_size;
};

/* Below this much arithmetic (FLOP as attn_flops() counts them, plus the
 * loading) a group runs on the calling thread alone: about 80 us of one
 * core, where waking a sleeping worker for each of the four phases costs
 * more than sharing the work saves (N = 128, H = 1 measured 60 us inline,
 * 66 us on two threads).  Who computes an item never changes its result,
 * so this only moves time. */
#define INLINE_FLOP 8e6

/* One group in flight: its heads and, per phase, the prefix sums that map
 * a flat item number to (head, block). */
struct group {
    struct cpu_ctx *ctx;
    struct cpu_head *heads;
    size_t n;
    size_t *first;   /* [n + 1] item offsets of the current phase */
    int inline_only; /* small group: no workers */
};

/* Nonzero when the head's problem was cancelled: its remaining items are
 * skipped (a block row or a few blocks is at most milliseconds of work),
 * and cpu_compute_batch() fails the problem with ATTN_ECANCELED. */
static int cancelled(const struct cpu_head *hd)
{
    return hd->p->cancel && *hd->p->cancel;
}

/* Finds the head owning flat item `item`; returns the item's index inside
 * that head. */
static size_t locate(const struct group *g, size_t item, size_t *head)
{
    size_t lo = 0, hi = g->n; /* first[lo] <= item < first[hi] */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (g->first[mid] <= item)
            lo = mid;
        else
            hi = mid;
    }
    *head = lo;
    return item - g->first[lo];
}

static void run_load(void *arg, size_t item, int worker)
{
    struct group *g = arg;
    size_t h, k = locate(g, item, &h);
    (void)worker;
    struct cpu_head *hd = &g->heads[h];
    if (cancelled(hd))
        return;
    uint32_t J0 = (uint32_t)(k * LOAD_CHUNK);
    uint32_t J1 = J0 + LOAD_CHUNK < hd->nbk ? J0 + LOAD_CHUNK : hd->nbk;
    cpu_head_load(hd, J0, J1, g->ctx->kern);
}

static void run_lowres(void *arg, size_t item, int worker)
{
    struct group *g = arg;
    size_t h, G = locate(g, item, &h);
    (void)worker;
    if (!cancelled(&g->heads[h]))
        cpu_head_lowres(&g->heads[h], (uint32_t)G, g->ctx->kern);
}

static void run_fold(void *arg, size_t item, int worker)
{
    struct group *g = arg;
    size_t h, G = locate(g, item, &h);
    (void)worker;
    if (!cancelled(&g->heads[h]))
        cpu_head_fold(&g->heads[h], (uint32_t)G, g->ctx->kern);
}

static void run_select(void *arg, size_t item, int worker)
{
    struct group *g = arg;
    size_t h;
    (void)worker;
    locate(g, item, &h);
    if (!cancelled(&g->heads[h]))
        cpu_head_select(&g->heads[h]);
}

static void run_sample(void *arg, size_t item, int worker)
{
    struct group *g = arg;
    size_t h, c = locate(g, item, &h);
    (void)worker;
    if (!cancelled(&g->heads[h]))
        cpu_acc_sample(&g->heads[h], (uint32_t)c, g->ctx->kern);
}

static void run_choose(void *arg, size_t item, int worker)
{
    struct group *g = arg;
    size_t h;
    (void)worker;
    locate(g, item, &h);
    if (!cancelled(&g->heads[h]))
        cpu_acc_choose(&g->heads[h], g->ctx->kern);
}

static void run_stats(void *arg, size_t item, int worker)
{
    struct group *g = arg;
    size_t h;
    (void)worker;
    locate(g, item, &h);
    if (!cancelled(&g->heads[h]))
        cpu_acc_stats(&g->heads[h], g->ctx->kern);
}

static void run_rows(void *arg, size_t item, int worker)
{
    struct group *g = arg;
    size_t h, I = locate(g, item, &h);
    (void)worker;
    if (!cancelled(&g->heads[h]))
        cpu_head_rows(&g->heads[h], (uint32_t)I, g->ctx->kern);
}

/* Sets g->first for a phase with `per(head)` items per head (0 for heads
 * that skip it) and returns the total. */
static size_t plan(struct group *g, size_t (*per)(const struct cpu_head *))
{
    g->first[0] = 0;
    for (size_t i = 0; i < g->n; i++)
        g->first[i + 1] = g->first[i] + per(&g->heads[i]);
    return g->first[g->n];
}

static size_t items_load(const struct cpu_head *hd)
{
    return (hd->nbk + LOAD_CHUNK - 1) / LOAD_CHUNK;
}

static size_t items_rows(const struct cpu_head *hd)
{
    return hd->nbq;
}

static size_t items_lowres(const struct cpu_head *hd)
{
    return hd->method == ATTN_EXACT ? 0 : cpu_head_row_groups(hd);
}

static size_t items_fold(const struct cpu_head *hd)
{
    return hd->method == ATTN_MRA2 ? cpu_head_row_groups(hd) : 0;
}

static size_t items_select(const struct cpu_head *hd)
{
    return hd->method == ATTN_EXACT ? 0 : 1;
}

static size_t items_sample(const struct cpu_head *hd)
{
    return hd->acc ? cpu_acc_sample_items(hd) : 0;
}

static size_t items_choose(const struct cpu_head *hd)
{
    return hd->acc && hd->p->target_error > 0.0f ? 1 : 0;
}

static size_t items_stats(const struct cpu_head *hd)
{
    return attn_problem_accuracy(hd->p) ? 1 : 0;
}

static int arena_reserve(struct cpu_ctx *ctx, size_t bytes)
{
    if (bytes <= ctx->arena_size)
        return ATTN_OK;
    free(ctx->arena);
    ctx->arena = NULL;
    ctx->arena_size = 0;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded < bytes || posix_memalign(&ctx->arena, 64, rounded) != 0)
        return ATTN_ENOMEM;
    ctx->arena_size = rounded;
    return ATTN_OK;
}

/* Arithmetic of one head for the inline decision: the spec's FLOP count
 * plus a few operations per loaded element. */
static double head_flop(const struct cpu_head *hd)
{
    double nd = (double)hd->nbk * CPU_TILE * hd->D;
    double pairs = (double)hd->nbq * hd->nbk;
    double seen = (double)(hd->grid.visible + hd->grid.partial);
    double blocks = hd->method == ATTN_EXACT
                        ? seen
                        : (double)hd->budget + (double)hd->grid.partial;
    return 4.0 * blocks * CPU_TILE * CPU_TILE * hd->D + 2.0 * pairs * hd->D +
           8.0 * nd + 4.0 * (double)hd->nsmax * hd->Nk * hd->D;
}

/* One phase: on the pool, or on this thread for a small group. */
static void run_phase(struct group *g, size_t n, cpu_pool_fn fn)
{
    if (!g->inline_only) {
        cpu_pool_run(g->ctx->pool, n, fn, g);
        return;
    }
    for (size_t i = 0; i < n; i++)
        fn(g, i, 0);
}

static void run_group(struct group *g)
{
    double flop = 0.0;
    for (size_t i = 0; i < g->n; i++)
        flop += head_flop(&g->heads[i]);
    g->inline_only = flop < INLINE_FLOP;
    run_phase(g, plan(g, items_load), run_load);
    /* MRA heads only; exact heads have no items in these three phases */
    run_phase(g, plan(g, items_lowres), run_lowres);
    run_phase(g, plan(g, items_select), run_select);
    /* heads with the accuracy controls only (accuracy.h) */
    run_phase(g, plan(g, items_sample), run_sample);
    run_phase(g, plan(g, items_choose), run_choose);
    run_phase(g, plan(g, items_fold), run_fold);
    run_phase(g, plan(g, items_rows), run_rows);
    run_phase(g, plan(g, items_stats), run_stats);
}

static int cpu_compute_batch(void *vctx,
                             const struct attn_problem *const *probs, size_t n,
                             int *errs)
{
    struct cpu_ctx *ctx = vctx;
    /* heads of every problem, in order, with their owner */
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        errs[i] = ATTN_OK;
        size_t hh = (size_t)probs[i]->B * probs[i]->H;
        if (total > SIZE_MAX - hh)
            return ATTN_ENOMEM;
        total += hh;
    }
    size_t cap = total < GROUP_HEADS ? total : GROUP_HEADS;
    struct cpu_head *heads = calloc(cap, sizeof *heads);
    size_t *owner = calloc(cap, sizeof *owner);
    size_t *sizes = calloc(cap, sizeof *sizes);
    size_t *first = calloc(cap + 1, sizeof *first);
    if (!heads || !owner || !sizes || !first) {
        free(heads), free(owner), free(sizes), free(first);
        return ATTN_ENOMEM;
    }

    /* Problems with few queries take the decode path, one at a time. */
    int threads = cpu_pool_threads(ctx->pool);
    for (size_t i = 0; i < n; i++) {
        const struct attn_problem *p = probs[i];
        if (!cpu_decode_fits(p))
            continue;
        if (p->cancel && *p->cancel) {
            errs[i] = ATTN_ECANCELED;
            continue;
        }
        size_t bytes = cpu_decode_bytes(p, threads);
        if (bytes == 0 || arena_reserve(ctx, bytes) != ATTN_OK) {
            errs[i] = ATTN_ENOMEM;
            continue;
        }
        errs[i] = cpu_decode_run(p, ctx->pool, ctx->kern, ctx->arena);
    }

    size_t pi = 0;           /* problem of the next head */
    uint32_t pb = 0, ph = 0; /* its batch entry and head */
    while (pi < n && cpu_decode_fits(probs[pi]))
        pi++;
    while (pi < n) {
        /* form a group */
        size_t gn = 0, bytes = 0;
        while (pi < n && gn < cap) {
            const struct attn_problem *p = probs[pi];
            if (errs[pi] == ATTN_OK && p->cancel && *p->cancel)
                errs[pi] = ATTN_ECANCELED;
            struct cpu_head hd;
            cpu_head_init(&hd, p, pb, ph, ctx->kern);
            size_t sz = cpu_head_bytes(&hd);
            if (errs[pi] == ATTN_OK && sz == 0)
                errs[pi] = ATTN_ENOMEM;
            if (errs[pi] == ATTN_OK) {
                if (gn > 0 && (bytes > GROUP_BYTES || sz > GROUP_BYTES - bytes))
                    break;
                heads[gn] = hd;
                owner[gn] = pi;
                sizes[gn] = sz;
                bytes += sz;
                gn++;
            }
            if (++ph == p->H) {
                ph = 0;
                if (++pb == p->B) {
                    pb = 0;
                    pi++;
                    while (pi < n && cpu_decode_fits(probs[pi]))
                        pi++;
                }
            }
        }
        if (gn == 0)
            continue;
        if (arena_reserve(ctx, bytes) != ATTN_OK) {
            for (size_t i = 0; i < gn; i++)
                errs[owner[i]] = ATTN_ENOMEM;
            continue;
        }
        char *at = ctx->arena;
        for (size_t i = 0; i < gn; i++) {
            cpu_head_carve(&heads[i], at);
            at += sizes[i];
        }
        struct group g = {ctx, heads, gn, first, 0};
        run_group(&g);
        for (size_t i = 0; i < gn; i++)
            if (errs[owner[i]] == ATTN_OK && cancelled(&heads[i]))
                errs[owner[i]] = ATTN_ECANCELED;
    }
    /* A problem that failed part-way has a partial output; that is allowed
     * (out is unspecified on error). */
    free(heads), free(owner), free(sizes), free(first);
    /* Keep a normal-sized arena for the next call, but do not hold on to
     * the memory of one giant head between calls. */
    if (ctx->arena_size > GROUP_BYTES) {
        free(ctx->arena);
        ctx->arena = NULL;
        ctx->arena_size = 0;
    }
    return ATTN_OK;
}

static void cpu_trim(void *vctx)
{
    struct cpu_ctx *ctx = vctx;
    free(ctx->arena);
    ctx->arena = NULL;
    ctx->arena_size = 0;
}

const struct cpu_kernels *cpu_backend_kernels(void *vctx)
{
    return ((struct cpu_ctx *)vctx)->kern;
}

static const char *cpu_device(void *vctx)
{
    return ((struct cpu_ctx *)vctx)->device;
}

static void cpu_free(void *vctx)
{
    struct cpu_ctx *ctx = vctx;
    if (!ctx)
        return;
    cpu_pool_free(ctx->pool);
    free(ctx->arena);
    free(ctx);
}

static const struct attn_backend_i cpu_iface = {
    .name = "cpu",
    .compute_batch = cpu_compute_batch,
    .device = cpu_device,
    .health = NULL,
    .memory = NULL,
    .trim = cpu_trim,
    .free = cpu_free,
    .kv_new = cpu_kv_new,
    .kv_append = cpu_kv_append,
    .kv_free = cpu_kv_free,
    .accuracy = 1,
};

/* "model name" of the first processor in /proc/cpuinfo, or "cpu". */
static void cpu_model(char *buf, size_t len)
{
    snprintf(buf, len, "cpu");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0)
            continue;
        char *v = strchr(line, ':');
        if (!v)
            break;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        v[strcspn(v, "\n")] = '\0';
        if (*v)
            snprintf(buf, len, "%s", v);
        break;
    }
    fclose(f);
}

int attn_cpu_backend_new(const struct attn_config *cfg,
                         const struct attn_backend_i **iface, void **out)
{
    /* The environment names the kernels when the configuration leaves
     * the choice to the backend, so a test or an operator can force a
     * path without a flag; an unknown name or one the CPU cannot run
     * fails the same way as in attn_config.isa. */
    const char *isa = cfg->isa;
    if (!isa || strcmp(isa, "auto") == 0) {
        const char *env = getenv(CPU_ISA_ENV);
        if (env && *env)
            isa = env;
    }
    const struct cpu_kernels *kern = cpu_kernels_pick(isa);
    if (!kern)
        return ATTN_ENOTSUP;
    int threads = cfg->threads;
    if (threads <= 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        threads = online > 0 ? (int)online : 1;
    }
    if (threads > 1024)
        threads = 1024;
    struct cpu_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return ATTN_ENOMEM;
    ctx->kern = kern;
    int rc = cpu_pool_new(threads, &ctx->pool);
    if (rc != ATTN_OK) {
        free(ctx);
        return rc;
    }
    char model[128];
    cpu_model(model, sizeof model);
    /* the path, and on a path with tile kernels what runs where */
    snprintf(ctx->device, sizeof ctx->device,
             "%s, %d threads, %s kernels%s%s%s", model, threads, kern->name,
             kern->half ? " (" : "", kern->half ? kern->half->what : "",
             kern->half ? ")" : "");
    *iface = &cpu_iface;
    *out = ctx;
    return ATTN_OK;
}
