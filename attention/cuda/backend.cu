/*
 * backend.cu - the CUDA backend behind the vtable of attn-impl.h: device
 * selection, the life of the device context (created, lost to a fault,
 * rebuilt), memory kept between calls and given back by trim(), the
 * vtable's stores of keys and values (kv.cu keeps them), and the entry
 * points of attn-cuda.h.  The batch pipeline itself is batch.cu.
 *
 * One backend instance drives one GPU (cfg->device) with three streams:
 * compute, host-to-device and device-to-host.  Memory comes from arenas
 * that grow on demand and are given back by trim(), which the daemon calls
 * once it has been idle for --idle-release-ms; the pinned host memory of
 * the pipeline is bounded (four staging slots), whatever the requests.
 *
 * Faults.  A failure fails its problem only.  An error that leaves the
 * CUDA context unusable (illegal address, ...) is "sticky": every call on
 * the context fails from then on.  The backend then resets the device's
 * context (cudaDeviceReset: the primary context, shared by every backend
 * of the process on that device, which the fault has broken anyway) and
 * rebuilds its streams, events, cuBLAS handle and buffers, at the end of
 * the call that saw the fault, or at the next call, or when health() is
 * asked; health() reports ATTN_EBACKEND only while no rebuild succeeded.
 * Each device has a generation counter: a backend whose context was
 * reset by another rebuilds its state at its next call, and stores of
 * keys and values made in an older context fail with ATTN_EBACKEND (their
 * pages went with it).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention/cuda/attn-cuda.h"
#include "attention/cuda/backend.cuh"

namespace mrad_cuda
{

namespace
{

constexpr size_t BLAS_WORKSPACE = 32 << 20; /* fixed cuBLAS workspace */
constexpr double HEAL_RETRY_S = 1.0; /* a failed rebuild waits this long */

/* The generation of each device's context; a reset raises it under
 * reset_mu, so that two backends that see the same fault reset once. */
constexpr int MAX_DEVICES = 256;
uint64_t epochs[MAX_DEVICES];
pthread_mutex_t reset_mu = PTHREAD_MUTEX_INITIALIZER;

double now_s()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Every arena of a context, to give back or forget at once. */
template <typename F> void each_arena(cuda_ctx *c, F f)
{
    arena *all[] = {&c->work,       &c->din,          &c->tbl_host,
                    &c->tbl_dev,    &c->ring_up[0],   &c->ring_up[1],
                    &c->ring_down[0], &c->ring_down[1], &c->kv_host,
                    &c->kv_dev};
    for (arena *a : all)
        f(a);
}

/* Creates the streams, events and cuBLAS handle of a context that has
 * none (the device current).  On failure the caller destroys what was
 * made (handles_destroy). */
int handles_init(cuda_ctx *c)
{
    bool ok = cudaStreamCreateWithFlags(&c->comp, cudaStreamNonBlocking) ==
                  cudaSuccess &&
              cudaStreamCreateWithFlags(&c->up, cudaStreamNonBlocking) ==
                  cudaSuccess &&
              cudaStreamCreateWithFlags(&c->down, cudaStreamNonBlocking) ==
                  cudaSuccess;
    cudaEvent_t *evs[] = {&c->last,         &c->kv_up,        &c->up_slot[0],
                          &c->up_slot[1],   &c->down_slot[0], &c->down_slot[1]};
    for (cudaEvent_t *e : evs)
        ok = ok && cudaEventCreateWithFlags(e, cudaEventDisableTiming) ==
                       cudaSuccess;
    /* cuBLAS: plain f32 math (no TF32), a fixed workspace from us so it
     * never allocates on the request path, and the compute stream. */
    ok = ok && cublasCreate(&c->blas) == CUBLAS_STATUS_SUCCESS &&
         cublasSetMathMode(c->blas, CUBLAS_PEDANTIC_MATH) ==
             CUBLAS_STATUS_SUCCESS;
    if (!ok)
        return ATTN_EBACKEND;
    cudaError_t e = cudaMalloc(&c->blas_ws, BLAS_WORKSPACE);
    if (e != cudaSuccess) {
        c->blas_ws = nullptr;
        return cuda_err(e);
    }
    return bind_blas(c, c->comp);
}

/* Destroys the handles and memory of a context that still exists. */
void handles_destroy(cuda_ctx *c)
{
    cudaStream_t sts[] = {c->comp, c->up, c->down};
    for (cudaStream_t st : sts)
        if (st)
            cudaStreamSynchronize(st);
    each_arena(c, [c](arena *a) { arena_release(c, a); });
    cudaEvent_t evs[] = {c->last,         c->kv_up,        c->up_slot[0],
                         c->up_slot[1],   c->down_slot[0], c->down_slot[1]};
    for (cudaEvent_t e : evs)
        if (e)
            cudaEventDestroy(e);
    for (uint32_t i = 0; i < c->nwave_ev; i++) {
        cudaEventDestroy(c->wave_up[i]);
        cudaEventDestroy(c->wave_done[i]);
    }
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->blas_ws)
        cudaFree(c->blas_ws);
    for (cudaStream_t st : sts)
        if (st)
            cudaStreamDestroy(st);
    cudaGetLastError();
}

/* Drops the handles and memory of a context that is gone: they died with
 * it, and their addresses may belong to the new context's allocations.
 * (The old cuBLAS handle's host part is left behind: its destruction
 * would talk to the context that no longer exists.) */
void handles_forget(cuda_ctx *c)
{
    c->comp = c->up = c->down = nullptr;
    c->last = c->kv_up = nullptr;
    c->up_slot[0] = c->up_slot[1] = c->down_slot[0] = c->down_slot[1] =
        nullptr;
    free(c->wave_up);
    free(c->wave_done);
    c->wave_up = c->wave_done = nullptr;
    c->nwave_ev = 0;
    c->blas = nullptr;
    c->blas_ws = nullptr;
    each_arena(c, [](arena *a) {
        a->base = nullptr;
        a->cap = 0;
    });
}

/* Rebuilds the context after a fault, or after another backend reset the
 * device: resets it when this backend's context is the broken one, then
 * makes its handles anew.  ATTN_OK, or ATTN_EBACKEND (then retried no
 * sooner than HEAL_RETRY_S later). */
int heal(cuda_ctx *c)
{
    double t = now_s();
    if (c->sticky && t < c->heal_retry)
        return ATTN_EBACKEND;
    pthread_mutex_lock(&reset_mu);
    if (c->sticky && device_epoch(c->device) == c->epoch) {
        /* our context is the broken one: nobody reset it yet */
        cudaSetDevice(c->device);
        cudaDeviceReset();
        __atomic_store_n(&epochs[c->device], c->epoch + 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&reset_mu);
    handles_forget(c);
    cudaGetLastError();
    c->epoch = device_epoch(c->device);
    int rc = cudaSetDevice(c->device) == cudaSuccess ? handles_init(c)
                                                     : ATTN_EBACKEND;
    if (rc) {
        handles_destroy(c);
        handles_forget(c);
        c->sticky = 1;
        c->heal_retry = t + HEAL_RETRY_S;
        return ATTN_EBACKEND;
    }
    c->sticky = 0;
    c->heals++;
    return ATTN_OK;
}

} // namespace

uint64_t device_epoch(int device)
{
    if (device < 0 || device >= MAX_DEVICES)
        return 0;
    return __atomic_load_n(&epochs[device], __ATOMIC_ACQUIRE);
}

int ctx_enter(cuda_ctx *c)
{
    if (c->sticky || c->epoch != device_epoch(c->device)) {
        int rc = heal(c);
        if (rc)
            return rc;
    }
    return cudaSetDevice(c->device) == cudaSuccess ? ATTN_OK : ATTN_EBACKEND;
}

int contain(cuda_ctx *c, int rc)
{
    if (rc == ATTN_OK)
        return rc;
    cudaGetLastError();
    if (c->epoch != device_epoch(c->device) ||
        cudaDeviceSynchronize() != cudaSuccess) {
        c->sticky = 1;
        return ATTN_EBACKEND;
    }
    cudaGetLastError();
    return rc;
}

void arena_release(cuda_ctx *c, arena *a)
{
    /* a context that was reset took its memory with it */
    if (a->base && c->epoch == device_epoch(c->device)) {
        if (a->host)
            cudaFreeHost(a->base);
        else
            cudaFree(a->base);
    }
    a->base = nullptr;
    a->cap = 0;
}

/* A device arena grows by half again, rounded up to 2 MiB, so that
 * slowly growing shapes do not reallocate every time, and falls back to
 * the exact size when the larger request fails; pinned host memory is
 * scarcer (and resident), so it grows to what is asked only. */
int arena_reserve(cuda_ctx *c, arena *a, size_t need)
{
    if (need <= a->cap)
        return ATTN_OK;
    arena_release(c, a);
    size_t want = need;
    if (!a->host) {
        want = need + need / 2;
        if (want >= need)
            want = (want + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
        if (want < need)
            want = need;
    }
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

int ctx_quiesce(cuda_ctx *c)
{
    cudaError_t e = cudaStreamSynchronize(c->comp);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(c->up);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(c->down);
    if (e == cudaSuccess)
        e = cudaEventSynchronize(c->last);
    return cuda_err(e);
}

int order_after_last(cuda_ctx *c, cudaStream_t st)
{
    return cuda_err(cudaStreamWaitEvent(st, c->last, 0));
}

int mark_last(cuda_ctx *c, cudaStream_t st)
{
    return cuda_err(cudaEventRecord(c->last, st));
}

/* cublasSetStream() resets the workspace to cuBLAS's own pool (which
 * allocates per stream), so the workspace is set again after every change
 * of stream. */
int bind_blas(cuda_ctx *c, cudaStream_t st)
{
    if (cublasSetStream(c->blas, st) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(c->blas, c->blas_ws, BLAS_WORKSPACE) !=
            CUBLAS_STATUS_SUCCESS)
        return ATTN_EBACKEND;
    return ATTN_OK;
}

int wave_events(cuda_ctx *c, uint32_t n)
{
    if (n <= c->nwave_ev)
        return ATTN_OK;
    cudaEvent_t *u =
        (cudaEvent_t *)realloc(c->wave_up, n * sizeof(cudaEvent_t));
    if (u)
        c->wave_up = u;
    cudaEvent_t *d =
        (cudaEvent_t *)realloc(c->wave_done, n * sizeof(cudaEvent_t));
    if (d)
        c->wave_done = d;
    if (!u || !d)
        return ATTN_ENOMEM;
    for (; c->nwave_ev < n; c->nwave_ev++) {
        uint32_t i = c->nwave_ev;
        if (cudaEventCreateWithFlags(&c->wave_up[i], cudaEventDisableTiming) !=
            cudaSuccess)
            return ATTN_EBACKEND;
        if (cudaEventCreateWithFlags(&c->wave_done[i],
                                     cudaEventDisableTiming) != cudaSuccess) {
            cudaEventDestroy(c->wave_up[i]);
            return ATTN_EBACKEND;
        }
    }
    return ATTN_OK;
}

bool host_pinned(const void *p, size_t n)
{
    if (!p || !n)
        return false;
    const void *ends[2] = {p, (const char *)p + n - 1};
    for (const void *e : ends) {
        cudaPointerAttributes a;
        if (cudaPointerGetAttributes(&a, e) != cudaSuccess) {
            cudaGetLastError();
            return false;
        }
        if (a.type != cudaMemoryTypeHost)
            return false;
    }
    return true;
}

tunables g_tune = {16u << 20, 16u << 20};

namespace
{

int cuda_compute_batch(void *ctx, const attn_problem *const *probs, size_t n,
                       int *errs)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    int rc = ctx_enter(c);
    if (rc == ATTN_OK)
        rc = batch_compute(c, probs, n, errs);
    if (rc)
        for (size_t i = 0; i < n; i++)
            errs[i] = rc;
    /* the next call finds a working context, and health() says so */
    if (c->sticky)
        heal(c);
    return rc;
}

const char *cuda_device(void *ctx)
{
    return ((cuda_ctx *)ctx)->desc;
}

/* Rebuilds a lost context (no more often than HEAL_RETRY_S): the daemon
 * asks after every batch, on the worker that owns the backend. */
int cuda_health(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (c->sticky)
        heal(c);
    return c->sticky ? ATTN_EBACKEND : ATTN_OK;
}

/* Gives back every buffer kept for reuse: the batch arenas, the staging
 * slots, the append staging.  Streams, events, cuBLAS and its 32 MiB
 * workspace stay. */
void cuda_trim(void *ctx)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (ctx_enter(c) != ATTN_OK)
        return;
    if (contain(c, ctx_quiesce(c)) != ATTN_OK)
        return;
    each_arena(c, [c](arena *a) { arena_release(c, a); });
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
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (ctx_enter(c) != ATTN_OK)
        return ATTN_EBACKEND;
    kv_store *s = nullptr;
    int rc = kv_store_new(&kv->shape, c->epoch, &s);
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
    int rc = arena_reserve(c, &c->kv_host, want);
    return rc ? rc : arena_reserve(c, &c->kv_dev, want);
}

int cuda_kv_append(void *ctx, attn_kv *kv,
                   const struct ::attn_kv_tokens *tokens)
{
    const kv_tokens *t = reinterpret_cast<const kv_tokens *>(tokens);
    cuda_ctx *c = (cuda_ctx *)ctx;
    kv_store *s = (kv_store *)kv->impl;
    if (ctx_enter(c) != ATTN_OK || !kv_store_ok(s) ||
        kv_store_epoch(s) != c->epoch)
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
 * device back.  A store of a context that was reset has no device memory
 * left to free. */
void cuda_kv_free(void *ctx, attn_kv *kv)
{
    cuda_ctx *c = (cuda_ctx *)ctx;
    kv_store *s = (kv_store *)kv->impl;
    if (!s)
        return;
    int prev = -1;
    bool other = cudaGetDevice(&prev) == cudaSuccess && prev != c->device;
    cudaSetDevice(c->device);
    /* cudaFree waits for the work that used it */
    kv_store_free(s, kv_store_epoch(s) == device_epoch(c->device));
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
    if (c->epoch == device_epoch(c->device) &&
        cudaSetDevice(c->device) == cudaSuccess)
        handles_destroy(c);
    handles_forget(c);
    free(c);
}

/* Filled by name (C++17 has no designated initialisers): entries this
 * backend does not have stay NULL / 0. */
attn_backend_i make_iface()
{
    attn_backend_i i;
    memset(&i, 0, sizeof i);
    i.name = "cuda";
    i.compute_batch = cuda_compute_batch;
    i.device = cuda_device;
    i.health = cuda_health;
    i.trim = cuda_trim;
    i.memory = cuda_memory;
    i.free = cuda_free;
    i.kv_new = cuda_kv_new;
    i.kv_append = cuda_kv_append;
    i.kv_free = cuda_kv_free;
    return i;
}

const attn_backend_i cuda_iface = make_iface();

cuda_ctx *ctx_of(const attn_backend *be)
{
    return be && be->iface == &cuda_iface ? (cuda_ctx *)be->ctx : nullptr;
}

} // namespace

} // namespace mrad_cuda

using namespace mrad_cuda;

extern "C" int attn_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
        cudaGetLastError();
        return ATTN_ENODEV;
    }
    return n;
}

extern "C" int attn_cuda_describe(char *buf, size_t len)
{
    int drv = 0, rt = 0;
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    char vers[96];
    if (drv)
        snprintf(vers, sizeof vers, "driver for CUDA %d.%d, runtime %d.%d",
                 drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    else
        snprintf(vers, sizeof vers, "no CUDA driver, runtime %d.%d", rt / 1000,
                 rt % 1000 / 10);
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        snprintf(buf, len, "no usable CUDA device: %s (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "none found",
                 vers);
        cudaGetLastError();
        return ATTN_ENODEV;
    }
    int usable = 0;
    size_t at = (size_t)snprintf(buf, len, "%d device(s) (%s):", n, vers);
    for (int d = 0; d < n; d++) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, d) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        usable += prop.major >= 8;
        if (at < len)
            at += (size_t)snprintf(buf + at, len - at, " %d: %.80s sm_%d%d%s;",
                                   d, prop.name, prop.major, prop.minor,
                                   prop.major >= 8 ? "" : " (too old)");
    }
    if (!usable) {
        if (at < len)
            snprintf(buf + at, len - at,
                     " none is sm_80 or later, which the kernels need "
                     "(cp.async, bf16 mma)");
        return ATTN_ENOTSUP;
    }
    return usable;
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
    c->tbl_host.host = c->ring_up[0].host = c->ring_up[1].host =
        c->ring_down[0].host = c->ring_down[1].host = c->kv_host.host = true;
    snprintf(c->desc, sizeof c->desc, "%.200s (sm_%d%d, %.0f GiB)", prop.name,
             prop.major, prop.minor,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    int optin = 0;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                               dev) != cudaSuccess) {
        cudaGetLastError();
        optin = 48 << 10;
    }
    c->smem_optin = (size_t)optin;
    int rc = ATTN_EBACKEND;
    if (cudaSetDevice(dev) == cudaSuccess) {
        c->epoch = device_epoch(dev);
        rc = handles_init(c);
    }
    if (rc) {
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
    cuda_ctx *c = ctx_of(be);
    if (!c)
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
    if (ctx_enter(c) != ATTN_OK)
        return ATTN_EBACKEND;
    cudaStream_t st = stream ? (cudaStream_t)stream : c->comp;
    kv_src kv;
    memset(&kv, 0, sizeof kv);
    kv.k = p->k;
    kv.v = p->v;
    kv.mask = p->mask;
    if (p->kv) {
        /* the tokens to append are host memory; they go up on the
         * backend's stream, which `st` then waits for */
        int rc = attn_kv_append(
            p->kv,
            reinterpret_cast<const struct ::attn_kv_tokens *>(&p->append));
        if (rc)
            return rc;
        const kv_store *s = (const kv_store *)p->kv->impl;
        if (!kv_store_ok(s) || kv_store_epoch(s) != c->epoch)
            return ATTN_EBACKEND;
        kv = kv_store_src(s);
    }
    int rc = order_after_last(c, st);
    if (!rc)
        rc = device_compute(c, p, kv, st);
    if (!rc)
        rc = mark_last(c, st);
    if (!rc && !stream)
        rc = cuda_err(cudaStreamSynchronize(st));
    return contain(c, rc);
}

extern "C" int attn_cuda_test_fault(struct attn_backend *be, int wait)
{
    cuda_ctx *c = ctx_of(be);
    if (!c)
        return ATTN_ENOTSUP;
    if (ctx_enter(c) != ATTN_OK)
        return ATTN_EBACKEND;
    int rc = cuda_err(launch_fault(c->comp));
    if (!rc && wait)
        rc = cuda_err(cudaStreamSynchronize(c->comp));
    return contain(c, rc);
}

extern "C" uint64_t attn_cuda_heals(const struct attn_backend *be)
{
    const cuda_ctx *c = ctx_of(be);
    return c ? c->heals : 0;
}
