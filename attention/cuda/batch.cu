/*
 * batch.cu - the batch pipeline of the CUDA backend: a batch of problems
 * with host tensors goes up, is computed with one launch per kernel for
 * all its problems, and comes back.
 *
 * Waves.  The problems of a batch form waves: consecutive problems until
 * a wave's inputs reach g_tune.wave_bytes (16 MiB).  A wave runs as
 * grouped launches (common.cuh): the plan kernels of all its MRA problems
 * at once (plan.cu), then one launch of the fused kernel per kind of
 * problem (dtype, head dimension tile, rows a block), usually one.  Small
 * requests thus share one set of launches, and large ones get waves of
 * their own, so that the inputs of wave w + 1 go up (copy engine) while
 * wave w computes, and the outputs of wave w come back while wave w + 1
 * computes.
 *
 * Streams and memory.  Three streams: `up` carries the inputs, `comp` the
 * kernels, `down` the outputs; events order them (wave_up[w]: inputs of
 * wave w on the device; wave_done[w]: its outputs computed).  All inputs
 * of a batch and then all outputs sit in one device arena (`din`), so a
 * wave's inputs are one range of device memory.  Inputs in pinned host
 * memory are copied from where they are; the others go through two
 * pinned staging slots of g_tune.ring_slot bytes, chunk by chunk (the
 * host fills one slot while the other's copy runs).  Outputs go straight
 * into pinned host buffers, the others through two more slots.  The
 * tables of the grouped launches (struct plan_group, attend_group) go up
 * in one copy per batch.  When the arenas cannot hold a whole batch, it
 * is computed in halves, down to single problems: only a problem that
 * cannot fit alone fails with ATTN_ENOMEM.
 *
 * Bits.  A problem's output does not depend on the others of its wave or
 * batch: every kernel computes a problem from its own inputs in a fixed
 * order, and the cuBLAS products are one call per problem.
 */
#include <stdlib.h>
#include <string.h>

#include "attention/cuda/backend.cuh"

namespace mrad_cuda
{

namespace
{

constexpr size_t ALIGN = 256;
/* The host tensors of a problem: q, k, v, mask, q_mask (inputs), out. */
constexpr int NIN = 5, T_OUT = 5, NT = 6;

/* x rounded up to ALIGN; SIZE_MAX when that overflows. */
size_t aligned(size_t x)
{
    return x > SIZE_MAX - (ALIGN - 1) ? SIZE_MAX
                                      : (x + ALIGN - 1) & ~(ALIGN - 1);
}

/* a + b, stuck at SIZE_MAX (which no arena can hold: ATTN_ENOMEM). */
size_t add_sat(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

/* One problem of a batch on its way through the pipeline. */
struct job {
    const attn_problem *p;
    int err;
    size_t sz[NT];     /* bytes of each tensor; 0: none, or a store's */
    size_t in_bytes;   /* its inputs, each from an aligned offset */
    size_t in_off;     /* in din: its inputs, contiguous */
    size_t out_off;    /* in din: its output */
    size_t work_bytes; /* its work buffers: a gathered query mask, then
                          the MRA buffers */
    size_t work_off;   /* in `work`, within its wave's */
    bool pinned[NT];   /* a host tensor in pinned memory: copied from or
                          to where it is */
    dev_problem d;     /* resolved once its addresses are known */
    attend_args a;     /* what the fused kernel reads */
    attend_kind kind;  /* which fused kernel */
    mra_work w;        /* its MRA buffers */
    uint64_t plan_bl[PH_COUNT];
    uint64_t attend_bl;
    void *gather; /* its query mask gathered from a store, or NULL */
};

/* The checked problem p with its tensors at the given device addresses.
 * The query mask is q_mask, or in self-attention (Nq == Nk) the key mask
 * (a store's is gathered first: qmask_of_store), or none. */
dev_problem make_dev(const attn_problem *p, const void *q, const kv_src &kv,
                     const uint8_t *q_mask, void *out)
{
    dev_problem d;
    memset(&d, 0, sizeof d);
    d.method = p->method;
    d.dtype = p->dtype;
    d.B = p->B;
    d.H = p->H;
    d.Hkv = p->Hkv;
    d.Nq = p->Nq;
    d.Nk = p->Nk;
    d.D = p->D;
    d.nbq = attn_num_blocks(p->Nq);
    d.nbk = attn_num_blocks(p->Nk);
    d.q = q;
    d.kv = kv;
    bool self = !p->q_mask && p->Nq == p->Nk;
    d.qmask = p->q_mask ? q_mask : self ? kv.mask : nullptr;
    d.qmask_of_store = self && kv.pg.table;
    d.out = out;
    d.scale = attn_scale(p);
    d.causal = p->causal != 0;
    d.off = (int64_t)p->Nk - (int64_t)p->Nq;
    d.budget = p->method == ATTN_EXACT ? 0 : attn_budget(p);
    d.prior_first = p->prior_first;
    d.prior_diagonal = p->prior_diagonal;
    return d;
}

/* What the fused kernel reads of a problem (without its MRA lists). */
attend_args args_of(const dev_problem &p)
{
    attend_args a;
    memset(&a, 0, sizeof a);
    a.q = p.q;
    a.kv = p.kv;
    a.qmask = p.qmask;
    a.out = p.out;
    a.B = p.B;
    a.H = p.H;
    a.Hkv = p.Hkv;
    a.Nq = p.Nq;
    a.Nk = p.Nk;
    a.D = p.D;
    a.nbq = p.nbq;
    a.nbk = p.nbk;
    a.scale = p.scale;
    a.causal = p.causal;
    a.off = p.off;
    /* 16-byte rows: a store's pages are (kv.cu), dense tensors must be */
    a.vec_ok =
        p.D % 8 == 0 && (uintptr_t)p.q % 16 == 0 &&
        (p.kv.pg.table || ((uintptr_t)p.kv.k | (uintptr_t)p.kv.v) % 16 == 0);
    return a;
}

/* Sizes and checks of a problem whose tensors are in host memory (or,
 * !host, in device memory already); j->err set when it cannot run. */
void job_init(cuda_ctx *c, job *j, const attn_problem *p, bool host)
{
    memset(j, 0, sizeof *j);
    j->p = p;
    if (p->cancel && *p->cancel) {
        j->err = ATTN_ECANCELED;
        return;
    }
    size_t es = attn_dtype_size(p->dtype), qn, kn;
    if (__builtin_mul_overflow((size_t)p->B * p->H, (size_t)p->Nq, &qn) ||
        __builtin_mul_overflow(qn, (size_t)p->D * es, &qn) ||
        __builtin_mul_overflow((size_t)p->B * p->Hkv, (size_t)p->Nk, &kn) ||
        __builtin_mul_overflow(kn, (size_t)p->D * es, &kn)) {
        j->err = ATTN_ENOMEM;
        return;
    }
    kv_src kv;
    memset(&kv, 0, sizeof kv);
    if (p->kv) {
        /* a store's keys are on the device already */
        const kv_store *s = (const kv_store *)p->kv->impl;
        if (!kv_store_ok(s) || kv_store_epoch(s) != c->epoch) {
            j->err = ATTN_EBACKEND;
            return;
        }
        kv = kv_store_src(s);
    }
    bool dense = !p->kv;
    j->sz[0] = qn;
    j->sz[1] = dense ? kn : 0;
    j->sz[2] = dense ? kn : 0;
    j->sz[3] = dense && p->mask ? (size_t)p->B * p->Nk : 0;
    j->sz[4] = p->q_mask ? (size_t)p->B * p->Nq : 0;
    j->sz[T_OUT] = qn;
    for (int i = 0; i < NIN; i++)
        j->in_bytes = add_sat(j->in_bytes, aligned(j->sz[i]));
    j->d = make_dev(p, nullptr, kv, nullptr, nullptr);
    const dev_problem &d = j->d;
    bool exact = p->method == ATTN_EXACT;
    if (p->D > ATTN_MAX_HEAD_DIM || d.nbq > 65535 || d.nbk > 65535 ||
        (!exact && plan_check(d) != ATTN_OK) ||
        attend_kind_of(p->D, p->dtype, exact, c->smem_optin, &j->kind) !=
            ATTN_OK) {
        j->err = ATTN_ENOTSUP;
        return;
    }
    j->a = args_of(d);
    j->attend_bl = attend_blocks(j->a, j->kind.rows);
    if (j->attend_bl > GRID_MAX) {
        j->err = ATTN_ENOTSUP;
        return;
    }
    if (!exact)
        plan_blocks(d, j->plan_bl);
    /* work: the query mask gathered from a store, the MRA buffers */
    size_t sz[MRA_NBUF];
    j->work_bytes = d.qmask_of_store ? aligned((size_t)p->B * p->Nq) : 0;
    if (!exact) {
        if (!mra_work_sizes(d, sz)) {
            j->err = ATTN_ENOMEM;
            return;
        }
        for (int i = 0; i < MRA_NBUF; i++)
            j->work_bytes = add_sat(j->work_bytes, aligned(sz[i]));
    }
    const void *t[NT] = {p->q, p->k, p->v, p->mask, p->q_mask, p->out};
    for (int i = 0; i < NT && host; i++)
        j->pinned[i] = host_pinned(t[i], j->sz[i]);
}

/* Gives the job its device addresses: q, keys and values, masks and out
 * (device memory already), its work buffers at `work`. */
void job_resolve(job *j, const void *q, const kv_src &kv, const uint8_t *q_mask,
                 void *out, char *work)
{
    j->d = make_dev(j->p, q, kv, q_mask, out);
    dev_problem &d = j->d;
    j->gather = nullptr;
    if (d.qmask_of_store) {
        j->gather = work;
        d.qmask = (const uint8_t *)work;
        work += aligned((size_t)d.B * d.Nq);
    }
    j->a = args_of(d);
    if (d.method == ATTN_EXACT)
        return;
    size_t sz[MRA_NBUF];
    void *bufs[MRA_NBUF];
    mra_work_sizes(d, sz);
    for (int i = 0; i < MRA_NBUF; i++) {
        bufs[i] = work;
        work += aligned(sz[i]);
    }
    mra_work w;
    mra_work_bind(&w, bufs);
    j->a.list = w.list;
    j->a.row_off = w.row_off;
    j->a.list_stride = d.budget;
    if (d.method == ATTN_MRA2) {
        j->a.low_m = w.low_m;
        j->a.low_z = w.low_z;
        j->a.low_num = w.low_num;
    }
    j->w = w;
}

/* ---- waves ---------------------------------------------------------- */

/* A kind of fused kernel in a wave and its group. */
struct kind_group {
    attend_kind k;
    uint32_t n;      /* problems */
    uint64_t blocks; /* their thread blocks */
    attend_group g;
};

/* The problems of one wave and its grouped launches. */
struct wave {
    job **jobs; /* its problems, in batch order */
    uint32_t n;
    size_t in_begin, in_end; /* its inputs in din */
    size_t work_bytes;
    /* the plan of its MRA problems */
    uint32_t nplan;
    plan_group pg;
    plan_item *items; /* host copies: pg.one, or the pinned table */
    uint32_t *starts; /* host copies: one_starts, or the pinned table */
    uint32_t one_starts[PH_COUNT * 2];
    job **plan_jobs; /* the job of each item */
    int *plan_errs;
    uint64_t plan_bl[PH_COUNT];
    /* the fused kernels */
    kind_group *kinds;
    uint32_t nkinds;
    uint64_t attend_bl;
    size_t tbl_off, tbl_bytes; /* its tables in tbl_host / tbl_dev */
};

bool same_kind(const attend_kind &a, const attend_kind &b)
{
    return a.dtype == b.dtype && a.dp == b.dp && a.rows == b.rows;
}

/* Whether job j still fits the grouped launches of wave w. */
bool wave_fits(const wave *w, const job *j)
{
    if (w->attend_bl + j->attend_bl > GRID_MAX)
        return false;
    for (int ph = 0; ph < PH_COUNT; ph++)
        if (w->plan_bl[ph] + j->plan_bl[ph] > GRID_MAX)
            return false;
    return true;
}

/* Adds job j to wave w: its kind, its plan, its work buffers and the
 * bytes of the wave's tables. */
void wave_add(wave *w, job *j)
{
    w->jobs[w->n++] = j;
    w->attend_bl += j->attend_bl;
    uint32_t k = 0;
    while (k < w->nkinds && !same_kind(w->kinds[k].k, j->kind))
        k++;
    if (k == w->nkinds) {
        memset(&w->kinds[k], 0, sizeof w->kinds[k]);
        w->kinds[k].k = j->kind;
        w->nkinds++;
    }
    w->kinds[k].n++;
    w->kinds[k].blocks += j->attend_bl;
    if (j->d.method != ATTN_EXACT) {
        w->plan_jobs[w->nplan++] = j;
        for (int ph = 0; ph < PH_COUNT; ph++)
            w->plan_bl[ph] += j->plan_bl[ph];
    }
    j->work_off = w->work_bytes;
    w->work_bytes = add_sat(w->work_bytes, j->work_bytes);
}

/* Bytes of a wave's tables: those of its groups of more than one. */
size_t wave_tables(const wave *w)
{
    size_t b = 0;
    if (w->nplan > 1)
        b += aligned(w->nplan * sizeof(plan_item)) +
             aligned(PH_COUNT * (w->nplan + 1) * sizeof(uint32_t));
    for (uint32_t k = 0; k < w->nkinds; k++)
        if (w->kinds[k].n > 1)
            b += aligned(w->kinds[k].n * sizeof(attend_args)) +
                 aligned((w->kinds[k].n + 1) * sizeof(uint32_t));
    return b;
}

/* Fills the wave's groups: the plan items and the fused kernels' args,
 * in tables at tbl_host + off (copied to tbl_dev + off) for groups of
 * more than one problem, in the launch parameters for a group of one.
 * The jobs are resolved. */
void wave_build(wave *w, char *tbl_host, char *tbl_dev)
{
    size_t off = w->tbl_off;
    auto take = [&](size_t bytes, char **dev) {
        char *h = tbl_host + off;
        *dev = tbl_dev + off;
        off += aligned(bytes);
        return h;
    };
    memset(&w->pg, 0, sizeof w->pg);
    w->pg.n = w->nplan;
    if (w->nplan == 1) {
        w->items = &w->pg.one;
        w->starts = w->one_starts;
    } else if (w->nplan > 1) {
        char *d;
        w->items = (plan_item *)take(w->nplan * sizeof(plan_item), &d);
        w->pg.many = (const plan_item *)d;
        w->starts = (uint32_t *)take(PH_COUNT * (w->nplan + 1) * 4, &d);
        w->pg.starts = (const uint32_t *)d;
    }
    for (uint32_t i = 0; i < w->nplan; i++)
        w->items[i] = plan_item_of(w->plan_jobs[i]->d, w->plan_jobs[i]->w);
    if (w->nplan)
        plan_starts(w->items, w->nplan, w->starts);
    for (uint32_t k = 0; k < w->nkinds; k++) {
        kind_group *kg = &w->kinds[k];
        attend_args *args = nullptr;
        uint32_t *starts = nullptr;
        memset(&kg->g, 0, sizeof kg->g);
        kg->g.n = kg->n;
        if (kg->n > 1) {
            char *d;
            args = (attend_args *)take(kg->n * sizeof(attend_args), &d);
            kg->g.many = (const attend_args *)d;
            starts = (uint32_t *)take((kg->n + 1) * sizeof(uint32_t), &d);
            kg->g.starts = (const uint32_t *)d;
        }
        uint32_t i = 0;
        uint64_t at = 0;
        for (uint32_t x = 0; x < w->n; x++) {
            const job *j = w->jobs[x];
            if (!same_kind(j->kind, kg->k))
                continue;
            if (kg->n == 1) {
                kg->g.one = j->a;
            } else {
                args[i] = j->a;
                starts[i] = (uint32_t)at;
            }
            at += j->attend_bl;
            i++;
        }
        if (kg->n > 1)
            starts[kg->n] = (uint32_t)at;
    }
}

/* Enqueues a built wave on `st`: the query masks gathered from stores,
 * the plan of its MRA problems, the fused kernels.  A failed product
 * fails its problem (j->err); a failed launch fails the wave (returned). */
int wave_launch(cuda_ctx *c, wave *w, cudaStream_t st)
{
    int rc = ATTN_OK;
    for (uint32_t x = 0; x < w->n && !rc; x++) {
        const job *j = w->jobs[x];
        if (j->gather)
            rc = kv_gather_mask(j->d.kv, j->d.B, j->d.Nq, (uint8_t *)j->gather,
                                st);
    }
    if (!rc && w->nplan) {
        rc = bind_blas(c, st);
        if (!rc)
            rc = mra_plan_group(w->items, w->starts, w->pg, c->blas, st,
                                w->plan_errs);
        for (uint32_t i = 0; i < w->nplan && !rc; i++)
            if (w->plan_errs[i] && !w->plan_jobs[i]->err)
                w->plan_jobs[i]->err = w->plan_errs[i];
    }
    for (uint32_t k = 0; k < w->nkinds && !rc; k++)
        rc = attend_launch(w->kinds[k].g, w->kinds[k].k,
                           (uint32_t)w->kinds[k].blocks, st);
    return rc;
}

/* ---- staging --------------------------------------------------------- */

/* Host bytes on their way up, chunk by chunk through the two pinned
 * slots of ring_up, on the up stream: a chunk is a range of device memory
 * [dev0, dev0 + used) whose pieces the host copied into a slot (the
 * padding between them goes up too, harmlessly). */
struct uploader {
    cuda_ctx *c;
    int slot;
    char *dev0; /* the open chunk, NULL: none */
    size_t used;
    int rc;
};

void up_flush(uploader *u)
{
    if (u->dev0 && !u->rc) {
        cuda_ctx *c = u->c;
        cudaError_t e = cudaMemcpyAsync(u->dev0, c->ring_up[u->slot].base,
                                        u->used, cudaMemcpyHostToDevice, c->up);
        if (e == cudaSuccess)
            e = cudaEventRecord(c->up_slot[u->slot], c->up);
        u->rc = cuda_err(e);
        u->slot ^= 1;
    }
    u->dev0 = nullptr;
    u->used = 0;
}

/* n bytes from host src (pinned or not) to device dst, after those put
 * before. */
void up_put(uploader *u, void *dst, const void *src, size_t n, bool pinned)
{
    if (u->rc || !n)
        return;
    cuda_ctx *c = u->c;
    if (pinned) {
        up_flush(u);
        if (!u->rc)
            u->rc = cuda_err(
                cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->up));
        return;
    }
    size_t cap = c->ring_up[0].cap < c->ring_up[1].cap ? c->ring_up[0].cap
                                                       : c->ring_up[1].cap;
    char *d = (char *)dst;
    const char *s = (const char *)src;
    while (n > 0 && !u->rc) {
        if (u->dev0 && (d < u->dev0 + u->used || (size_t)(d - u->dev0) >= cap))
            up_flush(u);
        if (u->rc)
            return;
        if (!u->dev0) {
            /* the slot's last copy must have left it */
            u->rc = cuda_err(cudaEventSynchronize(c->up_slot[u->slot]));
            if (u->rc)
                return;
            u->dev0 = d;
            u->used = 0;
        }
        size_t at = (size_t)(d - u->dev0);
        size_t take = n < cap - at ? n : cap - at;
        memcpy((char *)c->ring_up[u->slot].base + at, s, take);
        u->used = at + take;
        d += take;
        s += take;
        n -= take;
    }
}

/* Device bytes on their way down through the two pinned slots of
 * ring_down: a chunk is a range of device memory, copied into a slot on
 * the down stream once the wave that computed it is done, then copied by
 * the host into the buffers its pieces belong to, while the other slot's
 * copy runs. */
struct down_piece {
    char *host;
    size_t at, n;
};
struct downloader {
    cuda_ctx *c;
    int slot;
    const char *dev0; /* the open chunk, NULL: none */
    size_t used;
    uint32_t wave; /* the last wave whose outputs the open chunk holds */
    bool issued[2];
    down_piece *pieces[2];
    size_t npieces[2], cap[2];
    int rc;
};

/* Waits for the chunk of slot s and hands its pieces to their buffers. */
void down_drain(downloader *d, int s)
{
    if (!d->issued[s])
        return;
    d->issued[s] = false;
    cuda_ctx *c = d->c;
    if (!d->rc)
        d->rc = cuda_err(cudaEventSynchronize(c->down_slot[s]));
    for (size_t i = 0; i < d->npieces[s] && !d->rc; i++) {
        const down_piece &p = d->pieces[s][i];
        memcpy(p.host, (const char *)c->ring_down[s].base + p.at, p.n);
    }
    d->npieces[s] = 0;
}

void down_issue(downloader *d)
{
    if (!d->dev0)
        return;
    cuda_ctx *c = d->c;
    int s = d->slot;
    if (!d->rc) {
        cudaError_t e = cudaStreamWaitEvent(c->down, c->wave_done[d->wave], 0);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(c->ring_down[s].base, d->dev0, d->used,
                                cudaMemcpyDeviceToHost, c->down);
        if (e == cudaSuccess)
            e = cudaEventRecord(c->down_slot[s], c->down);
        d->rc = cuda_err(e);
    }
    d->issued[s] = true;
    d->slot ^= 1;
    d->dev0 = nullptr;
    d->used = 0;
}

/* n bytes of wave w's outputs from device src to host dst. */
void down_put(downloader *d, char *dst, const char *src, size_t n, uint32_t w)
{
    cuda_ctx *c = d->c;
    size_t cap = c->ring_down[0].cap < c->ring_down[1].cap
                     ? c->ring_down[0].cap
                     : c->ring_down[1].cap;
    while (n > 0 && !d->rc) {
        if (d->dev0 &&
            (src < d->dev0 + d->used || (size_t)(src - d->dev0) >= cap))
            down_issue(d);
        int s = d->slot;
        if (!d->dev0) {
            down_drain(d, s); /* the slot's last chunk first */
            d->dev0 = src;
            d->used = 0;
        }
        if (d->npieces[s] == d->cap[s]) {
            size_t nc = d->cap[s] ? 2 * d->cap[s] : 16;
            down_piece *np =
                (down_piece *)realloc(d->pieces[s], nc * sizeof(down_piece));
            if (!np) {
                d->rc = ATTN_ENOMEM;
                return;
            }
            d->pieces[s] = np;
            d->cap[s] = nc;
        }
        size_t at = (size_t)(src - d->dev0);
        size_t take = n < cap - at ? n : cap - at;
        d->pieces[s][d->npieces[s]++] = {dst, at, take};
        d->used = at + take;
        d->wave = w;
        dst += take;
        src += take;
        n -= take;
    }
}

void down_finish(downloader *d)
{
    down_issue(d);
    down_drain(d, d->slot);
    down_drain(d, d->slot ^ 1);
    free(d->pieces[0]);
    free(d->pieces[1]);
}

/* ---- a span of a batch ------------------------------------------------ */

/* What run_span() needs for the jobs it runs, allocated per batch. */
struct batch {
    cuda_ctx *c;
    job *jobs;
    size_t n;
    /* scratch for the waves of a span: as many as the batch has jobs */
    wave *waves;
    job **wave_jobs, **plan_jobs;
    int *plan_errs;
    kind_group *kinds;
};

int reserve_all(cuda_ctx *c, size_t din, size_t work, size_t tbl, size_t up,
                size_t down)
{
    struct {
        arena *a;
        size_t need;
    } want[] = {{&c->din, din},           {&c->work, work},
                {&c->tbl_host, tbl},      {&c->tbl_dev, tbl},
                {&c->ring_up[0], up},     {&c->ring_up[1], up},
                {&c->ring_down[0], down}, {&c->ring_down[1], down}};
    bool grow = false;
    for (auto &x : want)
        grow |= x.need > x.a->cap;
    if (grow) {
        /* growing frees memory that work in flight may still use */
        int rc = ctx_quiesce(c);
        if (rc)
            return rc;
    }
    for (auto &x : want) {
        int rc = arena_reserve(c, x.a, x.need);
        if (rc)
            return rc;
    }
    return ATTN_OK;
}

/* Computes the jobs of [lo, hi) that can run, in waves. */
void run_span(batch *b, size_t lo, size_t hi)
{
    cuda_ctx *c = b->c;
    size_t live = 0;
    for (size_t i = lo; i < hi; i++)
        live += !b->jobs[i].err;
    if (live == 0 || c->sticky)
        return;

    /* waves, and the layout of din: inputs, then outputs */
    uint32_t nw = 0;
    size_t in_at = 0, work = 0, tbl = 0, up = 0, down = 0;
    job **wj = b->wave_jobs, **pj = b->plan_jobs;
    kind_group *kg = b->kinds;
    int *pe = b->plan_errs;
    for (size_t i = lo; i < hi; i++) {
        job *j = &b->jobs[i];
        if (j->err)
            continue;
        wave *w = nw ? &b->waves[nw - 1] : nullptr;
        if (!w || w->in_end - w->in_begin >= g_tune.wave_bytes ||
            !wave_fits(w, j)) {
            if (w) {
                wj += w->n, pj += w->nplan, pe += w->nplan, kg += w->nkinds;
                w->tbl_off = tbl;
                w->tbl_bytes = wave_tables(w);
                tbl = add_sat(tbl, w->tbl_bytes);
                work = w->work_bytes > work ? w->work_bytes : work;
            }
            w = &b->waves[nw++];
            memset(w, 0, sizeof *w);
            w->jobs = wj;
            w->plan_jobs = pj;
            w->plan_errs = pe;
            w->kinds = kg;
            w->in_begin = w->in_end = in_at;
        }
        j->in_off = in_at;
        in_at = add_sat(in_at, j->in_bytes);
        w->in_end = in_at;
        /* a staging chunk spans the padding between tensors too: a
         * slot that holds the aligned sizes takes them in one chunk */
        for (int t = 0; t < NIN; t++)
            if (!j->pinned[t])
                up = add_sat(up, aligned(j->sz[t]));
        if (!j->pinned[T_OUT])
            down = add_sat(down, aligned(j->sz[T_OUT]));
        wave_add(w, j);
    }
    {
        wave *w = &b->waves[nw - 1];
        w->tbl_off = tbl;
        w->tbl_bytes = wave_tables(w);
        tbl = add_sat(tbl, w->tbl_bytes);
        work = w->work_bytes > work ? w->work_bytes : work;
    }
    size_t out_at = in_at;
    for (size_t i = lo; i < hi; i++) {
        job *j = &b->jobs[i];
        if (j->err)
            continue;
        j->out_off = out_at;
        out_at = add_sat(out_at, aligned(j->sz[T_OUT]));
    }
    up = up < g_tune.ring_slot ? up : g_tune.ring_slot;
    down = down < g_tune.ring_slot ? down : g_tune.ring_slot;

    int rc = wave_events(c, nw);
    if (!rc)
        rc = reserve_all(c, out_at, work, tbl, up, down);
    if (rc == ATTN_ENOMEM && live > 1) {
        /* halves, down to single problems: only what cannot fit alone
         * fails */
        size_t mid = lo, seen = 0;
        while (seen < live / 2)
            seen += !b->jobs[mid++].err;
        run_span(b, lo, mid);
        run_span(b, mid, hi);
        return;
    }
    if (!rc && out_at == SIZE_MAX)
        rc = ATTN_ENOMEM;
    if (rc) {
        rc = contain(c, rc);
        for (size_t i = lo; i < hi; i++)
            if (!b->jobs[i].err)
                b->jobs[i].err = rc;
        return;
    }

    /* addresses and tables */
    char *din = (char *)c->din.base, *wk = (char *)c->work.base;
    for (uint32_t x = 0; x < nw; x++) {
        wave *w = &b->waves[x];
        for (uint32_t y = 0; y < w->n; y++) {
            job *j = w->jobs[y];
            const attn_problem *p = j->p;
            size_t at = j->in_off, off[NIN];
            for (int t = 0; t < NIN; t++) {
                off[t] = at;
                at += aligned(j->sz[t]);
            }
            kv_src kv = j->d.kv;
            if (!p->kv) {
                kv.k = din + off[1];
                kv.v = din + off[2];
                kv.mask = p->mask ? (const uint8_t *)din + off[3] : nullptr;
            }
            job_resolve(j, din + off[0], kv,
                        p->q_mask ? (const uint8_t *)din + off[4] : nullptr,
                        din + j->out_off, wk + j->work_off);
        }
        wave_build(w, (char *)c->tbl_host.base, (char *)c->tbl_dev.base);
    }

    /* the tables go up first, on the compute stream */
    if (tbl)
        rc = cuda_err(cudaMemcpyAsync(c->tbl_dev.base, c->tbl_host.base, tbl,
                                      cudaMemcpyHostToDevice, c->comp));
    uploader u = {c, 0, nullptr, 0, rc};
    for (uint32_t x = 0; x < nw && !rc; x++) {
        wave *w = &b->waves[x];
        /* inputs of the wave; a problem cancelled by now is not sent (the
         * grouped kernels still compute it, on whatever din holds) */
        for (uint32_t y = 0; y < w->n; y++) {
            job *j = w->jobs[y];
            if (j->p->cancel && *j->p->cancel) {
                j->err = ATTN_ECANCELED;
                continue;
            }
            const void *src[NIN] = {j->p->q, j->p->k, j->p->v, j->p->mask,
                                    j->p->q_mask};
            size_t at = j->in_off;
            for (int t = 0; t < NIN; t++) {
                up_put(&u, din + at, src[t], j->sz[t], j->pinned[t]);
                at += aligned(j->sz[t]);
            }
        }
        up_flush(&u);
        rc = u.rc;
        cudaError_t e = cudaSuccess;
        if (!rc)
            e = cudaEventRecord(c->wave_up[x], c->up);
        if (e == cudaSuccess)
            e = cudaStreamWaitEvent(c->comp, c->wave_up[x], 0);
        rc = rc ? rc : cuda_err(e);
        /* the wave's kernels, and its outputs into pinned buffers */
        if (!rc)
            rc = wave_launch(c, w, c->comp);
        if (!rc)
            rc = cuda_err(cudaEventRecord(c->wave_done[x], c->comp));
        bool waited = false;
        for (uint32_t y = 0; y < w->n && !rc; y++) {
            job *j = w->jobs[y];
            if (j->err || !j->pinned[T_OUT])
                continue;
            if (!waited)
                rc = cuda_err(cudaStreamWaitEvent(c->down, c->wave_done[x], 0));
            waited = true;
            if (!rc)
                rc = cuda_err(cudaMemcpyAsync(j->p->out, din + j->out_off,
                                              j->sz[T_OUT],
                                              cudaMemcpyDeviceToHost, c->down));
        }
    }
    /* the other outputs, wave by wave, through the staging slots */
    downloader dl;
    memset(&dl, 0, sizeof dl);
    dl.c = c;
    dl.rc = rc;
    for (uint32_t x = 0; x < nw && !dl.rc; x++) {
        wave *w = &b->waves[x];
        for (uint32_t y = 0; y < w->n; y++) {
            job *j = w->jobs[y];
            if (!j->err && !j->pinned[T_OUT])
                down_put(&dl, (char *)j->p->out, din + j->out_off, j->sz[T_OUT],
                         x);
        }
    }
    down_finish(&dl);
    rc = dl.rc;
    if (!rc)
        rc = cuda_err(cudaStreamSynchronize(c->down));
    if (!rc)
        rc = cuda_err(cudaStreamSynchronize(c->comp));
    if (rc) {
        rc = contain(c, rc);
        for (size_t i = lo; i < hi; i++)
            if (!b->jobs[i].err)
                b->jobs[i].err = rc;
    }
}

} // namespace

int batch_compute(cuda_ctx *c, const attn_problem *const *probs, size_t n,
                  int *errs)
{
    if (n == 0)
        return ATTN_OK;
    batch b;
    memset(&b, 0, sizeof b);
    b.c = c;
    b.n = n;
    b.jobs = (job *)calloc(n, sizeof(job));
    b.waves = (wave *)calloc(n, sizeof(wave));
    b.wave_jobs = (job **)calloc(n, sizeof(job *));
    b.plan_jobs = (job **)calloc(n, sizeof(job *));
    b.plan_errs = (int *)calloc(n, sizeof(int));
    b.kinds = (kind_group *)calloc(n, sizeof(kind_group));
    int rc = ATTN_OK;
    if (!b.jobs || !b.waves || !b.wave_jobs || !b.plan_jobs || !b.plan_errs ||
        !b.kinds)
        rc = ATTN_ENOMEM;
    if (!rc)
        rc = contain(c, order_after_last(c, c->comp));
    if (!rc) {
        for (size_t i = 0; i < n; i++)
            job_init(c, &b.jobs[i], probs[i], true);
        run_span(&b, 0, n);
        mark_last(c, c->comp);
        for (size_t i = 0; i < n; i++)
            errs[i] =
                c->sticky && !b.jobs[i].err ? ATTN_EBACKEND : b.jobs[i].err;
    }
    free(b.jobs);
    free(b.waves);
    free(b.wave_jobs);
    free(b.plan_jobs);
    free(b.plan_errs);
    free(b.kinds);
    return rc;
}

int device_compute(cuda_ctx *c, const attn_problem *p, const kv_src &kv,
                   cudaStream_t st)
{
    job j;
    job_init(c, &j, p, false);
    if (j.err)
        return j.err;
    if (j.work_bytes > c->work.cap) {
        int rc = ctx_quiesce(c);
        if (!rc)
            rc = arena_reserve(c, &c->work, j.work_bytes);
        if (rc)
            return rc;
    }
    job_resolve(&j, p->q, kv, p->q_mask, p->out, (char *)c->work.base);
    job *one[1] = {&j};
    job *pj[1];
    int pe[1];
    kind_group kg[1];
    wave w;
    memset(&w, 0, sizeof w);
    w.jobs = one;
    w.plan_jobs = pj;
    w.plan_errs = pe;
    w.kinds = kg;
    wave_add(&w, &j);
    wave_build(&w, nullptr, nullptr);
    int rc = wave_launch(c, &w, st);
    return rc ? rc : j.err;
}

} // namespace mrad_cuda
