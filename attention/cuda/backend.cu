/*
 * backend.cu - the CUDA backend behind the vtable of attn-impl.h: device
 * selection, the device memory pool and pinned staging buffers, the
 * per-batch pipeline, error containment, the vtable's stores of keys and
 * values (kv.cu keeps them), and the device-pointer entry point of
 * attn-cuda.h.
 *
 * One backend instance drives one GPU (cfg->device) with two streams: the
 * copy stream moves the inputs of the next problem host-to-device while the
 * compute stream runs the current one (double buffering: two input slots,
 * two pinned staging slots, events between them).  All memory comes from
 * grow-only arenas, so a steady stream of requests of similar shapes never
 * calls cudaMalloc.  A failure fails its problem only; an error that
 * leaves the CUDA context unusable (illegal address, ...) is remembered and
 * reported by health(), and every later batch fails fast.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attn-impl.h"
#include "attention/cuda/attn-cuda.h"
#include "attention/cuda/common.cuh"

using namespace mrad_cuda;

namespace
{

constexpr size_t ALIGN = 256;               /* sub-buffer alignment */
constexpr size_t BLAS_WORKSPACE = 32 << 20; /* fixed cuBLAS workspace */

/* A grow-only device or pinned host allocation. */
struct arena {
    void *base;
    size_t cap;
    bool host;
};

void arena_release(arena *a)
{
    if (a->base) {
        if (a->host)
            cudaFreeHost(a->base);
        else
            cudaFree(a->base);
    }
    a->base = nullptr;
    a->cap = 0;
}

/* Makes the arena hold at least `need` bytes, rounded up to 2 MiB.  A
 * device arena grows by half again so slowly growing shapes do not
 * reallocate every time; it falls back to the exact size when the larger
 * request fails.  The caller guarantees that
 * nothing in flight still uses the old memory. */
int arena_reserve(arena *a, size_t need)
{
    if (need <= a->cap)
        return ATTN_OK;
    arena_release(a);
    /* Device arenas get headroom; pinned host memory is scarcer (and is
     * resident), so staging buffers grow to what is asked only. */
    size_t want = a->host ? need : need + need / 2;
    if (want < need)
        want = need;
    want = (want + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    if (want < need)
        want = need;
    for (int attempt = 0; attempt < 2; attempt++) {
        size_t sz = attempt ? need : want;
        cudaError_t e =
            a->host ? cudaHostAlloc(&a->base, sz, 0) : cudaMalloc(&a->base, sz);
        if (e == cudaSuccess) {
            a->cap = sz;
            return ATTN_OK;
        }
        a->base = nullptr;
        cudaGetLastError(); /* out of memory is not sticky: clear it */
        if (e != cudaErrorMemoryAllocation)
            return ATTN_EBACKEND;
    }
    return ATTN_ENOMEM;
}

/* Offsets of n consecutive ALIGN-aligned slices; false on overflow. */
bool layout(const size_t *sizes, int n, size_t *off, size_t *total)
{
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        off[i] = at;
        size_t s = sizes[i] + (ALIGN - 1);
        if (s < sizes[i] || at + s < at)
            return false;
        at += s & ~(ALIGN - 1);
    }
    *total = at;
    return true;
}

/* The host tensors of a problem: q, k, v, mask, q_mask, out (the inputs
 * first, so that one copy moves them all); k, v and mask are empty for a
 * problem on a store. */
constexpr int NT = 6, T_OUT = NT - 1;
bool tensor_sizes(const attn_problem *p, size_t sz[NT])
{
    size_t es = attn_dtype_size(p->dtype), qn, kn;
    if (__builtin_mul_overflow((size_t)p->B * p->H, (size_t)p->Nq, &qn) ||
        __builtin_mul_overflow(qn, (size_t)p->D * es, &qn) ||
        __builtin_mul_overflow((size_t)p->B * p->Hkv, (size_t)p->Nk, &kn) ||
        __builtin_mul_overflow(kn, (size_t)p->D * es, &kn))
        return false;
    bool dense = !p->kv; /* a store's keys are on the device already */
    sz[0] = qn;
    sz[1] = dense ? kn : 0;
    sz[2] = dense ? kn : 0;
    sz[3] = dense && p->mask ? (size_t)p->B * p->Nk : 0;
    sz[4] = p->q_mask ? (size_t)p->B * p->Nq : 0;
    sz[T_OUT] = qn;
    return true;
}

struct cuda_ctx {
    int device;
    char desc[320];
    cudaStream_t comp, copy;
    cudaEvent_t h2d[2], done[2];
    cublasHandle_t blas;
    void *blas_ws;
    arena work;     /* MRA work buffers of the running problem */
    arena din[2];   /* device copies of a problem's tensors, per slot */
    arena stage[2]; /* pinned host staging, per slot */
    /* Uploads of the appends to stores (kv.cu): pinned and device
     * buffers, and the event of the last upload out of the pinned one. */
    arena kv_host, kv_dev;
    cudaEvent_t kv_up;
    int sticky; /* a fault that left the context unusable */
    /* Recorded after the last work that used `work`, on whichever stream
     * it ran: later work on another stream waits for it, so callers'
     * streams and the compute stream never share the buffers at once. */
    cudaEvent_t last;
};

/* Orders work about to be enqueued on `st` after all earlier work. */
int order_after_last(cuda_ctx *c, cudaStream_t st)
{
    return cuda_err(cudaStreamWaitEvent(st, c->last, 0));
}

int mark_last(cuda_ctx *c, cudaStream_t st)
{
    return cuda_err(cudaEventRecord(c->last, st));
}

/* After a CUDA error: a non-sticky error is cleared by cudaGetLastError;
 * if the device still fails to synchronise, the context is lost. */
int contain(cuda_ctx *c, int rc)
{
    if (rc == ATTN_OK)
        return rc;
    cudaGetLastError();
    if (cudaDeviceSynchronize() != cudaSuccess) {
        c->sticky = 1;
        return ATTN_EBACKEND;
    }
    cudaGetLastError();
    return rc;
}

/* The dense keys, values and key mask of a problem at device addresses. */
kv_src dense_src(const void *k, const void *v, const uint8_t *mask)
{
    kv_src s;
    memset(&s, 0, sizeof s);
    s.k = k;
    s.v = v;
    s.mask = mask;
    return s;
}

/* Resolves a checked problem whose queries and output sit at the given
 * device addresses, and keys and values at `kv`, into the kernels'
 * description.  The query mask is q_mask, or in self-attention (Nq == Nk)
 * the key mask (a store's is gathered by run_problem()), or none. */
dev_problem make_dev(const attn_problem *p, const void *q, const kv_src &kv,
                     const uint8_t *q_mask, void *out)
{
    dev_problem d;
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

/* Points cuBLAS at `st` and at our workspace.  cublasSetStream() resets
 * the workspace to cuBLAS's own pool (which allocates per stream), so the
 * workspace is set again after every change of stream. */
int bind_blas(cuda_ctx *c, cudaStream_t st)
{
    if (cublasSetStream(c->blas, st) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(c->blas, c->blas_ws, BLAS_WORKSPACE) !=
            CUBLAS_STATUS_SUCCESS)
        return ATTN_EBACKEND;
    return ATTN_OK;
}

/* Enqueues one problem (tensors in device memory) on `st`. */
int run_problem(cuda_ctx *c, dev_problem p, cudaStream_t st)
{
    if (p.D > ATTN_MAX_HEAD_DIM || p.nbq > 65535 || p.nbk > 65535)
        return ATTN_ENOTSUP;
    /* The work buffers: the query mask gathered from a store (self-
     * attention on a store), then the MRA buffers. */
    size_t sz[1 + MRA_NBUF], off[1 + MRA_NBUF], total;
    memset(sz, 0, sizeof sz);
    if (p.qmask_of_store)
        sz[0] = (size_t)p.B * p.Nq;
    if (p.method != ATTN_EXACT && !mra_work_sizes(p, sz + 1))
        return ATTN_ENOMEM;
    if (!layout(sz, 1 + MRA_NBUF, off, &total))
        return ATTN_ENOMEM;
    if (total > c->work.cap) {
        /* Growing frees the old arena: let queued work finish. */
        cudaError_t e = cudaStreamSynchronize(st);
        if (e != cudaSuccess)
            return cuda_err(e);
    }
    int rc = arena_reserve(&c->work, total);
    if (rc)
        return rc;
    void *bufs[1 + MRA_NBUF];
    for (int i = 0; i < 1 + MRA_NBUF; i++)
        bufs[i] = (char *)c->work.base + off[i];
    if (p.qmask_of_store) {
        rc = kv_gather_mask(p.kv, p.B, p.Nq, (uint8_t *)bufs[0], st);
        if (rc)
            return rc;
        p.qmask = (const uint8_t *)bufs[0];
    }

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

    if (p.method != ATTN_EXACT) {
        mra_work w;
        mra_work_bind(&w, bufs + 1);
        rc = bind_blas(c, st);
        if (rc)
            return rc;
        rc = mra_plan(p, w, c->blas, st);
        if (rc)
            return rc;
        a.list = w.list;
        a.row_off = w.row_off;
        a.list_stride = p.budget;
        if (p.method == ATTN_MRA2) {
            a.low_m = w.low_m;
            a.low_z = w.low_z;
            a.low_num = w.low_num;
        }
    }
    switch (p.dtype) {
    case ATTN_F32:
        return attend_f32(a, st);
    case ATTN_F16:
        return attend_f16(a, st);
    case ATTN_BF16:
        return attend_bf16(a, st);
    }
    return ATTN_ENOTSUP;
}

/* One problem of a batch on its way through the pipeline. */
struct job {
    const attn_problem *p;
    size_t off[NT], sz[NT];
    int err;
};

/* Stages the inputs of job j into slot s and starts their copy. */
int job_upload(cuda_ctx *c, job *j, int s)
{
    size_t total;
    if (!tensor_sizes(j->p, j->sz) || !layout(j->sz, NT, j->off, &total))
        return ATTN_ENOMEM;
    int rc = arena_reserve(&c->din[s], total);
    if (!rc)
        rc = arena_reserve(&c->stage[s], total);
    if (rc)
        return rc;
    char *h = (char *)c->stage[s].base;
    const void *src[T_OUT] = {j->p->q, j->p->k, j->p->v, j->p->mask,
                              j->p->q_mask};
    for (int i = 0; i < T_OUT; i++)
        if (j->sz[i])
            memcpy(h + j->off[i], src[i], j->sz[i]);
    /* q, k, v and the masks are contiguous: one copy. */
    cudaError_t e = cudaMemcpyAsync(c->din[s].base, h, j->off[T_OUT],
                                    cudaMemcpyHostToDevice, c->copy);
    if (e == cudaSuccess)
        e = cudaEventRecord(c->h2d[s], c->copy);
    return cuda_err(e);
}

/* Runs job j from slot s and queues the copy of its output back. */
int job_launch(cuda_ctx *c, job *j, int s)
{
    char *d = (char *)c->din[s].base;
    cudaError_t e = cudaStreamWaitEvent(c->comp, c->h2d[s], 0);
    if (e != cudaSuccess)
        return cuda_err(e);
    kv_src kv = dense_src(d + j->off[1], d + j->off[2],
                          j->p->mask ? (uint8_t *)d + j->off[3] : nullptr);
    if (j->p->kv) {
        const kv_store *ks = (const kv_store *)j->p->kv->impl;
        if (!kv_store_ok(ks))
            return ATTN_EBACKEND;
        kv = kv_store_src(ks);
    }
    dev_problem p = make_dev(j->p, d + j->off[0], kv,
                             j->p->q_mask ? (uint8_t *)d + j->off[4] : nullptr,
                             d + j->off[T_OUT]);
    int rc = run_problem(c, p, c->comp);
    if (rc)
        return rc;
    e = cudaMemcpyAsync((char *)c->stage[s].base + j->off[T_OUT],
                        d + j->off[T_OUT], j->sz[T_OUT], cudaMemcpyDeviceToHost,
                        c->comp);
    return cuda_err(e);
}

/* Waits for job j and copies its output to the caller. */
int job_finish(cuda_ctx *c, job *j, int s)
{
    cudaError_t e = cudaEventSynchronize(c->done[s]);
    if (e != cudaSuccess)
        return cuda_err(e);
    memcpy(j->p->out, (char *)c->stage[s].base + j->off[T_OUT], j->sz[T_OUT]);
    return ATTN_OK;
}

int cuda_compute_batch(void *ctx, const attn_problem *const *probs, size_t n,
                       int *errs)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (c->sticky || cudaSetDevice(c->device) != cudaSuccess) {
        for (size_t i = 0; i < n; i++)
            errs[i] = ATTN_EBACKEND;
        return ATTN_EBACKEND;
    }
    int rc0 = contain(c, order_after_last(c, c->comp));
    if (rc0) {
        for (size_t i = 0; i < n; i++)
            errs[i] = rc0;
        return rc0;
    }
    job jobs[2];
    memset(jobs, 0, sizeof jobs);
    if (n > 0) {
        jobs[0].p = probs[0];
        jobs[0].err = contain(c, job_upload(c, &jobs[0], 0));
    }
    for (size_t i = 0; i < n; i++) {
        int s = (int)(i & 1);
        job *j = &jobs[s];
        /* A cancelled problem is not launched (the GPU computes a problem
         * in milliseconds: the check between problems is enough). */
        if (!j->err && j->p->cancel && *j->p->cancel)
            j->err = ATTN_ECANCELED;
        if (!j->err && !c->sticky)
            j->err = contain(c, job_launch(c, j, s));
        /* Every slot event is recorded so job_finish never waits on a
         * stale one, whatever failed before. */
        cudaEventRecord(c->done[s], c->comp);
        if (i + 1 < n) {
            /* The other slot's previous job finished last iteration. */
            job *nx = &jobs[s ^ 1];
            memset(nx, 0, sizeof *nx);
            nx->p = probs[i + 1];
            nx->err = c->sticky ? ATTN_EBACKEND
                                : contain(c, job_upload(c, nx, s ^ 1));
        }
        if (!j->err)
            j->err = contain(c, job_finish(c, j, s));
        if (c->sticky && !j->err)
            j->err = ATTN_EBACKEND;
        errs[i] = j->err;
    }
    mark_last(c, c->comp);
    return ATTN_OK;
}

const char *cuda_device(void *ctx)
{
    return ((cuda_ctx *)ctx)->desc;
}

int cuda_health(void *ctx)
{
    return ((cuda_ctx *)ctx)->sticky ? ATTN_EBACKEND : ATTN_OK;
}

int cuda_memory(void *ctx, uint64_t *used, uint64_t *total)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    size_t fr = 0, tot = 0;
    if (c->sticky || cudaSetDevice(c->device) != cudaSuccess ||
        cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        cudaGetLastError();
        return ATTN_EBACKEND;
    }
    *used = tot - fr;
    *total = tot;
    return ATTN_OK;
}

/* ---- stores of keys and values (kv.cu) --------------------------------- */

/* Uploads of appends use at most this much staging at a time: a larger
 * append goes up in pieces. */
constexpr size_t KV_STAGE_MAX = 64 << 20;

int cuda_kv_new(void *ctx, attn_kv *kv)
{
    (void)ctx;
    kv_store *s = nullptr;
    int rc = kv_store_new(&kv->shape, &s);
    if (rc == ATTN_OK)
        kv->impl = s;
    return rc;
}

/* Makes the append staging hold `want` bytes (pinned and device). */
int kv_stage_reserve(cuda_ctx *c, size_t want)
{
    if (want > c->kv_host.cap || want > c->kv_dev.cap) {
        /* Growing frees the buffers: the last upload and the kernels
         * reading it must be done. */
        cudaError_t e = cudaStreamSynchronize(c->comp);
        if (e != cudaSuccess)
            return cuda_err(e);
    }
    int rc = arena_reserve(&c->kv_host, want);
    return rc ? rc : arena_reserve(&c->kv_dev, want);
}

int cuda_kv_append(void *ctx, attn_kv *kv,
                   const struct ::attn_kv_tokens *tokens)
{
    const kv_tokens *t = reinterpret_cast<const kv_tokens *>(tokens);
    cuda_ctx *c = (cuda_ctx *)ctx;
    kv_store *s = (kv_store *)kv->impl;
    if (c->sticky || !kv_store_ok(s) || cudaSetDevice(c->device) != cudaSuccess)
        return ATTN_EBACKEND;
    /* on the compute stream, after whatever ran before (a caller's stream
     * of attn_cuda_compute_device() included) */
    int rc = order_after_last(c, c->comp);
    size_t want = kv_stage_need(s, t->n), least = kv_stage_need(s, 1);
    if (want > KV_STAGE_MAX)
        want = KV_STAGE_MAX > least ? KV_STAGE_MAX : least;
    if (!rc)
        rc = kv_stage_reserve(c, want);
    if (!rc) {
        kv_stage stage;
        stage.host = c->kv_host.base;
        stage.dev = c->kv_dev.base;
        stage.cap =
            c->kv_host.cap < c->kv_dev.cap ? c->kv_host.cap : c->kv_dev.cap;
        stage.uploaded = c->kv_up;
        rc = kv_store_append(s, kv->tokens, t, stage, c->comp);
    }
    if (!rc)
        rc = mark_last(c, c->comp);
    return contain(c, rc);
}

/* May run on any thread, concurrently with the backend's: it touches the
 * store's memory only, on the backend's device, and puts the thread's
 * device back. */
void cuda_kv_free(void *ctx, attn_kv *kv)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    kv_store *s = (kv_store *)kv->impl;
    if (!s)
        return;
    int prev = -1;
    bool other = cudaGetDevice(&prev) == cudaSuccess && prev != c->device;
    cudaSetDevice(c->device);
    kv_store_free(s); /* cudaFree waits for the work that used it */
    if (other)
        cudaSetDevice(prev);
    cudaGetLastError();
    kv->impl = nullptr;
}

void cuda_free(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!c)
        return;
    cudaSetDevice(c->device);
    if (c->comp)
        cudaStreamSynchronize(c->comp);
    if (c->copy)
        cudaStreamSynchronize(c->copy);
    arena_release(&c->work);
    arena_release(&c->kv_host);
    arena_release(&c->kv_dev);
    if (c->kv_up)
        cudaEventDestroy(c->kv_up);
    for (int s = 0; s < 2; s++) {
        arena_release(&c->din[s]);
        arena_release(&c->stage[s]);
        if (c->h2d[s])
            cudaEventDestroy(c->h2d[s]);
        if (c->done[s])
            cudaEventDestroy(c->done[s]);
    }
    if (c->last)
        cudaEventDestroy(c->last);
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->blas_ws)
        cudaFree(c->blas_ws);
    if (c->comp)
        cudaStreamDestroy(c->comp);
    if (c->copy)
        cudaStreamDestroy(c->copy);
    cudaGetLastError();
    free(c);
}

/* In the order of struct attn_backend_i (C++ has no designated
 * initialisers before C++20). */
const attn_backend_i cuda_iface = {
    "cuda",      cuda_compute_batch, cuda_device, cuda_health,    nullptr,
    cuda_memory, cuda_free,          cuda_kv_new, cuda_kv_append, cuda_kv_free,
};

} // namespace

extern "C" int attn_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
        cudaGetLastError();
        return ATTN_ENODEV;
    }
    return n;
}

extern "C" int attn_cuda_backend_new(const struct attn_config *cfg,
                                     const struct attn_backend_i **iface,
                                     void **ctx)
{
    int n = attn_cuda_device_count();
    int dev = cfg ? cfg->device : 0;
    if (n < 0 || dev < 0 || dev >= n)
        return ATTN_ENODEV;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        cudaGetLastError();
        return ATTN_ENODEV;
    }
    if (prop.major < 8) /* mma.sync for bf16 and cp.async need sm_80 */
        return ATTN_ENODEV;
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    if (!c)
        return ATTN_ENOMEM;
    c->device = dev;
    c->stage[0].host = c->stage[1].host = c->kv_host.host = true;
    snprintf(c->desc, sizeof c->desc, "%.200s (sm_%d%d, %.0f GiB)", prop.name,
             prop.major, prop.minor,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    int rc = ATTN_EBACKEND;
    bool ok = cudaSetDevice(dev) == cudaSuccess &&
              cudaStreamCreateWithFlags(&c->comp, cudaStreamNonBlocking) ==
                  cudaSuccess &&
              cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking) ==
                  cudaSuccess;
    ok = ok &&
         cudaEventCreateWithFlags(&c->last, cudaEventDisableTiming) ==
             cudaSuccess &&
         cudaEventCreateWithFlags(&c->kv_up, cudaEventDisableTiming) ==
             cudaSuccess;
    for (int s = 0; ok && s < 2; s++)
        ok = cudaEventCreateWithFlags(&c->h2d[s], cudaEventDisableTiming) ==
                 cudaSuccess &&
             cudaEventCreateWithFlags(&c->done[s], cudaEventDisableTiming) ==
                 cudaSuccess;
    /* cuBLAS: plain f32 math (no TF32), a fixed workspace from us so it
     * never allocates on the request path, and the compute stream. */
    ok = ok && cublasCreate(&c->blas) == CUBLAS_STATUS_SUCCESS &&
         cublasSetMathMode(c->blas, CUBLAS_PEDANTIC_MATH) ==
             CUBLAS_STATUS_SUCCESS;
    if (ok && cudaMalloc(&c->blas_ws, BLAS_WORKSPACE) != cudaSuccess) {
        rc = ATTN_ENOMEM;
        ok = false;
    }
    ok = ok && bind_blas(c, c->comp) == ATTN_OK;
    if (!ok) {
        cuda_free(c);
        return rc;
    }
    *iface = &cuda_iface;
    *ctx = c;
    return ATTN_OK;
}

extern "C" int attn_cuda_compute_device(struct attn_backend *be,
                                        const struct attn_problem *p,
                                        void *stream)
{
    if (!be || !p)
        return ATTN_EINVAL;
    if (be->iface != &cuda_iface)
        return ATTN_ENOTSUP;
    /* On a store: Nk 0 reads what it holds once `append` is applied, as
     * attn_backend_compute_batch() has it. */
    attn_problem sized;
    if (p->kv && p->Nk == 0) {
        uint64_t nk = (uint64_t)p->kv->tokens + p->append.n;
        sized = *p;
        sized.Nk = nk <= UINT32_MAX ? (uint32_t)nk : 0;
        p = &sized;
    }
    if (attn_problem_check(p, NULL, 0) != ATTN_OK || (p->kv && p->kv->be != be))
        return ATTN_EINVAL;
    if (p->kv && (uint64_t)p->kv->tokens + p->append.n != p->Nk)
        return ATTN_EINVAL;
    cuda_ctx *c = (cuda_ctx *)be->ctx;
    if (c->sticky || cudaSetDevice(c->device) != cudaSuccess)
        return ATTN_EBACKEND;
    cudaStream_t st = stream ? (cudaStream_t)stream : c->comp;
    kv_src kv = dense_src(p->k, p->v, p->mask);
    if (p->kv) {
        /* the tokens to append are host memory; they go up on the
         * backend's stream, which `st` then waits for */
        int rc = attn_kv_append(
            p->kv,
            reinterpret_cast<const struct ::attn_kv_tokens *>(&p->append));
        if (rc)
            return rc;
        const kv_store *s = (const kv_store *)p->kv->impl;
        if (!kv_store_ok(s))
            return ATTN_EBACKEND;
        kv = kv_store_src(s);
    }
    dev_problem d = make_dev(p, p->q, kv, p->q_mask, p->out);
    int rc = order_after_last(c, st);
    if (!rc)
        rc = run_problem(c, d, st);
    if (!rc)
        rc = mark_last(c, st);
    if (!rc && !stream)
        rc = cuda_err(cudaStreamSynchronize(st));
    return contain(c, rc);
}
