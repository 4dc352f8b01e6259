/*
 * emu-runtime.h - a host emulation of the part of the CUDA runtime and of
 * cuBLAS that the backend calls (backend.cu, batch.cu, kv.cu and the
 * launchers), so that test-backend-emul.cpp runs the backend's own batch
 * pipeline, faults and memory management on a CPU.  Included by
 * emu-prims.h; the runtime's names are macros from here on, so a file
 * compiled after it calls these functions instead of libcudart's.
 *
 * - Device memory is host memory.  Allocations are tracked (device and
 *   pinned bytes, their peaks, a capacity that makes cudaMalloc fail);
 *   copies are checked against them: a copy that runs off an allocation,
 *   or a free of an unknown pointer, is counted as a bug.  New memory is
 *   filled with 0xCD, as uninitialised device memory holds garbage.
 * - A stream is a queue of operations (kernels, copies, event records,
 *   waits).  EAGER runs each operation as soon as what it waits for ran;
 *   LAZY runs nothing until the host must wait (a stream, event or device
 *   synchronisation, a copy into pageable memory, a free), and then only
 *   what that wait needs.  Under LAZY, a kernel that reads a buffer
 *   before the copy that fills it (a missing event wait), a host write
 *   into a staging buffer whose copy has not run, or a host read of an
 *   output not waited for, all give wrong bits.
 * - Faults: the k-th allocation from now fails (cudaErrorMemoryAllocation),
 *   the k-th kernel from now loses the context (cudaErrorIllegalAddress,
 *   sticky: every call fails, nothing runs, until cudaDeviceReset()), the
 *   k-th stream creation fails.  A reset drops the queues and every
 *   stream, event, cuBLAS handle and allocation of the old context; using
 *   one afterwards is counted (stale handles), and the old memory is kept
 *   aside so that its addresses are never handed out again (a free of
 *   one is then an unknown pointer).
 *
 * One host thread drives it; kernels run on std::threads (emu-prims.h).
 */
#ifndef MRAD_TESTS_CUDA_EMU_RUNTIME_H
#define MRAD_TESTS_CUDA_EMU_RUNTIME_H

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "attention/cuda/common.cuh"

struct CUstream_st;
struct CUevent_st;

namespace mrad_emu
{

enum policy { EAGER, LAZY };

/* An operation on a stream. */
struct op {
    enum { RUN, RECORD, WAIT } kind;
    std::function<void()> fn; /* RUN */
    CUevent_st *ev;           /* RECORD, WAIT */
    uint64_t seq;             /* the record a WAIT waits for, or makes */
    char tag;                 /* RUN: 'K'ernel, 'H'2D, 'D'2H, 'd'2d, ... */
    const void *dst, *src;    /* copies */
};

/* An operation that ran, when tracing. */
struct ran_rec {
    char tag;
    const void *dst, *src;
};

struct alloc {
    size_t n;
    bool pinned; /* pinned host memory, else device */
};

/* A copy the emulation made, for the tests to look at. */
struct copy_rec {
    cudaMemcpyKind kind;
    const void *dst, *src;
    size_t n;
};

struct state {
    policy pol = EAGER;
    int gen = 1; /* context generation: raised by cudaDeviceReset() */
    cudaError_t sticky = cudaSuccess, last = cudaSuccess;
    std::map<uintptr_t, alloc> allocs;
    std::vector<void *> graveyard; /* memory of reset contexts */
    size_t capacity = (size_t)8 << 30;
    size_t dev_used = 0, pinned_used = 0, dev_peak = 0, pinned_peak = 0;
    size_t smem_optin = 227 << 10; /* an H100 / H200 */
    int devices = 1;
    uint64_t seq = 0;
    std::vector<std::unique_ptr<CUstream_st>> streams;
    std::vector<std::unique_ptr<CUevent_st>> events;
    /* what happened */
    uint64_t launches = 0, resets = 0;
    uint64_t bad_frees = 0, bad_copies = 0, stale = 0, bad_launches = 0;
    std::vector<copy_rec> copies;
    bool tracing = false;
    std::vector<ran_rec> ran;
    /* faults: the k-th call from now (0: the next one), -1: none */
    long fail_malloc = -1, fail_kernel = -1, fail_stream = -1;

    ~state()
    {
        for (void *p : graveyard)
            free(p);
        for (auto &a : allocs)
            free((void *)a.first);
    }
};

inline state &S()
{
    static state s;
    return s;
}

} // namespace mrad_emu

struct CUstream_st {
    std::deque<mrad_emu::op> q;
    int gen;
    bool dead;
};

struct CUevent_st {
    uint64_t recorded = 0; /* the last record enqueued */
    uint64_t done = 0;     /* the last record that ran */
    int gen;
    bool dead = false;
};

struct cublasContext {
    cudaStream_t st;
    int gen;
    bool dead;
};

namespace mrad_emu
{

inline bool live(const CUstream_st *s)
{
    return s && !s->dead && s->gen == S().gen;
}

inline bool live(const CUevent_st *e)
{
    return e && !e->dead && e->gen == S().gen;
}

/* Runs the first operation of s; false when it cannot (a lost context,
 * or a wait that nothing can satisfy). */
inline bool force_event(CUevent_st *ev, uint64_t seq);
inline bool exec_one(CUstream_st *s)
{
    state &g = S();
    if (g.sticky != cudaSuccess || s->q.empty())
        return false;
    op &head = s->q.front();
    if (head.kind == op::WAIT && head.ev->done < head.seq &&
        !force_event(head.ev, head.seq))
        return false;
    if (g.sticky != cudaSuccess)
        return false;
    op o = std::move(s->q.front());
    s->q.pop_front();
    if (o.kind == op::RUN) {
        if (g.tracing)
            g.ran.push_back({o.tag, o.dst, o.src});
        o.fn();
    } else if (o.kind == op::RECORD)
        o.ev->done = std::max(o.ev->done, o.seq);
    return true;
}

/* Runs the stream that holds record `seq` of ev up to it. */
inline bool force_event(CUevent_st *ev, uint64_t seq)
{
    while (ev->done < seq) {
        CUstream_st *holder = nullptr;
        for (auto &s : S().streams)
            for (const op &o : s->q)
                if (o.kind == op::RECORD && o.ev == ev && o.seq == seq)
                    holder = s.get();
        if (!holder || !exec_one(holder))
            return false;
    }
    return true;
}

inline bool drain(CUstream_st *s)
{
    while (!s->q.empty())
        if (!exec_one(s))
            return false;
    return true;
}

inline bool drain_all()
{
    for (auto &s : S().streams)
        if (live(s.get()) && !drain(s.get()))
            return false;
    return true;
}

/* EAGER: runs whatever can run. */
inline void pump()
{
    if (S().pol != EAGER)
        return;
    for (bool more = true; more;) {
        more = false;
        for (auto &s : S().streams) {
            while (live(s.get()) && !s->q.empty() &&
                   S().sticky == cudaSuccess) {
                const op &h = s->q.front();
                if (h.kind == op::WAIT && h.ev->done < h.seq)
                    break;
                exec_one(s.get());
                more = true;
            }
        }
    }
}

inline cudaError_t fail(cudaError_t e)
{
    if (S().sticky == cudaSuccess)
        S().last = e;
    return e;
}

/* The allocation that holds [p, p + n), or NULL. */
inline const alloc *find(const void *p, size_t n, uintptr_t *base = nullptr)
{
    auto &m = S().allocs;
    auto it = m.upper_bound((uintptr_t)p);
    if (it == m.begin())
        return nullptr;
    --it;
    if ((uintptr_t)p + n > it->first + it->second.n)
        return nullptr;
    if (base)
        *base = it->first;
    return &it->second;
}

inline cudaError_t enqueue(cudaStream_t st, op o)
{
    if (!live(st)) {
        S().stale++;
        return fail(cudaErrorInvalidResourceHandle);
    }
    st->q.push_back(std::move(o));
    pump();
    return cudaSuccess;
}

/* ---- memory ------------------------------------------------------------ */

inline cudaError_t rt_alloc(void **p, size_t n, bool pinned)
{
    state &g = S();
    *p = nullptr;
    if (g.sticky != cudaSuccess)
        return g.sticky;
    if (g.fail_malloc >= 0 && g.fail_malloc-- == 0)
        return fail(cudaErrorMemoryAllocation);
    if (!pinned && (n > g.capacity || g.dev_used > g.capacity - n))
        return fail(cudaErrorMemoryAllocation);
    if (n == 0)
        return cudaSuccess;
    void *m = aligned_alloc(256, (n + 255) / 256 * 256);
    if (!m)
        return fail(cudaErrorMemoryAllocation);
    memset(m, 0xcd, n);
    g.allocs[(uintptr_t)m] = {n, pinned};
    size_t &used = pinned ? g.pinned_used : g.dev_used;
    size_t &peak = pinned ? g.pinned_peak : g.dev_peak;
    used += n;
    peak = std::max(peak, used);
    *p = m;
    return cudaSuccess;
}

inline cudaError_t rt_free(void *p, bool pinned)
{
    state &g = S();
    if (!p)
        return cudaSuccess;
    drain_all(); /* a free waits for the device */
    auto it = g.allocs.find((uintptr_t)p);
    if (it == g.allocs.end() || it->second.pinned != pinned) {
        g.bad_frees++;
        return fail(cudaErrorInvalidValue);
    }
    (pinned ? g.pinned_used : g.dev_used) -= it->second.n;
    g.allocs.erase(it);
    free(p);
    return g.sticky;
}

inline cudaError_t rt_memcpy(void *dst, const void *src, size_t n,
                             cudaMemcpyKind kind, cudaStream_t st)
{
    state &g = S();
    if (g.sticky != cudaSuccess)
        return g.sticky;
    if (!st) { /* the tests' own immediate copies */
        memcpy(dst, src, n);
        return cudaSuccess;
    }
    bool to_dev =
        kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool from_dev =
        kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    const alloc *d = find(dst, n), *s = find(src, n);
    bool ok = (to_dev ? d && !d->pinned : !d || d->pinned) &&
              (from_dev ? s && !s->pinned : !s || s->pinned);
    if (!ok) {
        g.bad_copies++;
        fprintf(stderr,
                "emu: copy of %zu bytes %p <- %p (kind %d) off its "
                "allocations\n",
                n, dst, src, (int)kind);
        return fail(cudaErrorInvalidValue);
    }
    g.copies.push_back({kind, dst, src, n});
    if (kind == cudaMemcpyHostToDevice && !s) {
        /* from pageable memory: read now, as the driver stages it */
        auto snap = std::make_shared<std::vector<char>>((const char *)src,
                                                        (const char *)src + n);
        return enqueue(
            st,
            {op::RUN, [dst, snap] { memcpy(dst, snap->data(), snap->size()); },
             nullptr, 0, 'H', dst, src});
    }
    char tag = kind == cudaMemcpyHostToDevice   ? 'H'
               : kind == cudaMemcpyDeviceToHost ? 'D'
                                                : 'd';
    cudaError_t e =
        enqueue(st, {op::RUN, [dst, src, n] { memcpy(dst, src, n); }, nullptr,
                     0, tag, dst, src});
    if (e == cudaSuccess && kind == cudaMemcpyDeviceToHost && !d) {
        /* into pageable memory: the host waits for it */
        drain(st);
        return g.sticky;
    }
    return e;
}

inline cudaError_t rt_memset(void *p, int v, size_t n, cudaStream_t st)
{
    if (S().sticky != cudaSuccess)
        return S().sticky;
    if (!st) {
        memset(p, v, n);
        return cudaSuccess;
    }
    const alloc *a = find(p, n);
    if (!a || a->pinned) {
        S().bad_copies++;
        return fail(cudaErrorInvalidValue);
    }
    return enqueue(st, {op::RUN, [p, v, n] { memset(p, v, n); }, nullptr, 0,
                        'M', p, nullptr});
}

inline cudaError_t rt_mem_info(size_t *fr, size_t *total)
{
    if (S().sticky != cudaSuccess)
        return S().sticky;
    *total = S().capacity;
    *fr = S().capacity - S().dev_used;
    return cudaSuccess;
}

inline cudaError_t rt_pointer_attrs(cudaPointerAttributes *a, const void *p)
{
    memset(a, 0, sizeof *a);
    if (S().sticky != cudaSuccess)
        return S().sticky;
    const alloc *x = find(p, 1);
    a->type = !x          ? cudaMemoryTypeUnregistered
              : x->pinned ? cudaMemoryTypeHost
                          : cudaMemoryTypeDevice;
    if (x && x->pinned)
        a->hostPointer = (void *)p;
    return cudaSuccess;
}

/* ---- streams and events ---------------------------------------------------
 */

inline cudaError_t rt_stream_create(cudaStream_t *s)
{
    state &g = S();
    if (g.sticky != cudaSuccess)
        return g.sticky;
    if (g.fail_stream >= 0 && g.fail_stream-- == 0)
        return fail(cudaErrorLaunchOutOfResources);
    g.streams.push_back(std::make_unique<CUstream_st>());
    g.streams.back()->gen = g.gen;
    g.streams.back()->dead = false;
    *s = g.streams.back().get();
    return cudaSuccess;
}

inline cudaError_t rt_stream_destroy(cudaStream_t s)
{
    if (!live(s)) {
        S().stale++;
        return fail(cudaErrorInvalidResourceHandle);
    }
    drain(s);
    s->dead = true;
    return S().sticky;
}

inline cudaError_t rt_stream_sync(cudaStream_t s)
{
    if (S().sticky != cudaSuccess)
        return S().sticky;
    if (!s)
        return cudaSuccess;
    if (!live(s)) {
        S().stale++;
        return fail(cudaErrorInvalidResourceHandle);
    }
    drain(s);
    return S().sticky;
}

inline cudaError_t rt_event_create(cudaEvent_t *e)
{
    state &g = S();
    if (g.sticky != cudaSuccess)
        return g.sticky;
    g.events.push_back(std::make_unique<CUevent_st>());
    g.events.back()->gen = g.gen;
    *e = g.events.back().get();
    return cudaSuccess;
}

inline cudaError_t rt_event_destroy(cudaEvent_t e)
{
    if (!live(e)) {
        S().stale++;
        return fail(cudaErrorInvalidResourceHandle);
    }
    e->dead = true;
    return cudaSuccess;
}

inline cudaError_t rt_event_record(cudaEvent_t e, cudaStream_t s)
{
    if (S().sticky != cudaSuccess)
        return S().sticky;
    if (!e)
        return cudaSuccess;
    if (!live(e)) {
        S().stale++;
        return fail(cudaErrorInvalidResourceHandle);
    }
    uint64_t seq = ++S().seq;
    e->recorded = seq;
    if (!s) { /* the tests' immediate stream */
        e->done = seq;
        return cudaSuccess;
    }
    return enqueue(s, {op::RECORD, nullptr, e, seq, 0, nullptr, nullptr});
}

inline cudaError_t rt_stream_wait(cudaStream_t s, cudaEvent_t e)
{
    if (S().sticky != cudaSuccess)
        return S().sticky;
    if (!live(e)) {
        S().stale++;
        return fail(cudaErrorInvalidResourceHandle);
    }
    if (e->recorded == 0) /* never recorded: nothing to wait for */
        return live(s) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
    return enqueue(s, {op::WAIT, nullptr, e, e->recorded, 0, nullptr, nullptr});
}

inline cudaError_t rt_event_sync(cudaEvent_t e)
{
    if (S().sticky != cudaSuccess)
        return S().sticky;
    if (!e)
        return cudaSuccess;
    if (!live(e)) {
        S().stale++;
        return fail(cudaErrorInvalidResourceHandle);
    }
    force_event(e, e->recorded);
    return S().sticky;
}

inline cudaError_t rt_device_sync()
{
    drain_all();
    return S().sticky;
}

/* Drops the context: its queues, handles and memory. */
inline cudaError_t rt_device_reset()
{
    state &g = S();
    for (auto &s : g.streams)
        s->q.clear();
    for (auto &a : g.allocs)
        g.graveyard.push_back((void *)a.first);
    g.allocs.clear();
    g.dev_used = g.pinned_used = 0;
    g.sticky = g.last = cudaSuccess;
    g.gen++;
    g.resets++;
    return cudaSuccess;
}

inline cudaError_t rt_last_error()
{
    state &g = S();
    if (g.sticky != cudaSuccess)
        return g.sticky;
    cudaError_t e = g.last;
    g.last = cudaSuccess;
    return e;
}

/* ---- kernels ----------------------------------------------------------------
 */

/* Runs `body` as a kernel on st (at once when st is NULL); the launch's
 * arguments were copied by the caller. */
inline void submit_kernel(cudaStream_t st, unsigned grid, unsigned block,
                          size_t smem, std::function<void()> body);

/* ---- devices ----------------------------------------------------------- */

inline cudaError_t rt_device_count(int *n)
{
    *n = S().devices;
    return S().devices ? cudaSuccess : fail(cudaErrorNoDevice);
}

inline cudaError_t rt_props(cudaDeviceProp *p, int d)
{
    memset(p, 0, sizeof *p);
    if (d < 0 || d >= S().devices)
        return fail(cudaErrorInvalidDevice);
    snprintf(p->name, sizeof p->name, "Emulated GPU");
    p->major = 9;
    p->minor = 0;
    p->totalGlobalMem = S().capacity;
    return cudaSuccess;
}

inline cudaError_t rt_set_device(int d)
{
    return d >= 0 && d < S().devices ? cudaSuccess
                                     : fail(cudaErrorInvalidDevice);
}

inline cudaError_t rt_get_device(int *d)
{
    *d = 0;
    return cudaSuccess;
}

inline cudaError_t rt_attr(int *v, cudaDeviceAttr a, int d)
{
    (void)d;
    *v = a == cudaDevAttrMaxSharedMemoryPerBlockOptin ? (int)S().smem_optin : 0;
    return cudaSuccess;
}

inline cudaError_t rt_func_attr(int v)
{
    return (size_t)v <= S().smem_optin ? cudaSuccess
                                       : fail(cudaErrorInvalidValue);
}

/* ---- cuBLAS ----------------------------------------------------------------
 */

inline std::vector<std::unique_ptr<cublasContext>> &blas_handles()
{
    static std::vector<std::unique_ptr<cublasContext>> h;
    return h;
}

inline cublasStatus_t rt_blas_create(cublasHandle_t *h)
{
    if (S().sticky != cudaSuccess)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    blas_handles().push_back(std::make_unique<cublasContext>());
    blas_handles().back()->gen = S().gen;
    blas_handles().back()->st = nullptr;
    blas_handles().back()->dead = false;
    *h = blas_handles().back().get();
    return CUBLAS_STATUS_SUCCESS;
}

inline bool blas_live(cublasHandle_t h)
{
    if (h && !h->dead && h->gen == S().gen)
        return true;
    S().stale++;
    return false;
}

inline cublasStatus_t rt_blas_destroy(cublasHandle_t h)
{
    if (!blas_live(h))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->dead = true;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t rt_blas_set_stream(cublasHandle_t h, cudaStream_t st)
{
    if (!blas_live(h))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->st = st;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t rt_blas_ok(cublasHandle_t h)
{
    return blas_live(h) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

/* Resets the emulation between tests (the backends made before must be
 * freed). */
inline void reset_state()
{
    state &g = S();
    rt_device_reset();
    g.resets = 0;
    g.pol = EAGER;
    g.capacity = (size_t)8 << 30;
    g.smem_optin = 227 << 10;
    g.dev_peak = g.pinned_peak = 0;
    g.launches = 0;
    g.bad_frees = g.bad_copies = g.stale = g.bad_launches = 0;
    g.copies.clear();
    g.tracing = false;
    g.ran.clear();
    g.fail_malloc = g.fail_kernel = g.fail_stream = -1;
}

} // namespace mrad_emu

/* The runtime and cuBLAS calls of the backend. */
#define cudaGetDeviceCount(n) ::mrad_emu::rt_device_count(n)
#define cudaGetDeviceProperties(p, d) ::mrad_emu::rt_props(p, d)
#define cudaSetDevice(d) ::mrad_emu::rt_set_device(d)
#define cudaGetDevice(d) ::mrad_emu::rt_get_device(d)
#define cudaDeviceGetAttribute(v, a, d) ::mrad_emu::rt_attr(v, a, d)
#define cudaFuncSetAttribute(f, a, v)                                          \
    ((void)(f), (void)(a), ::mrad_emu::rt_func_attr(v))
#define cudaDriverGetVersion(v) (*(v) = 13000, cudaSuccess)
#define cudaRuntimeGetVersion(v) (*(v) = 13000, cudaSuccess)
#define cudaMalloc(p, n) ::mrad_emu::rt_alloc((void **)(p), (n), false)
#define cudaHostAlloc(p, n, f)                                                 \
    ((void)(f), ::mrad_emu::rt_alloc((void **)(p), (n), true))
#define cudaFree(p) ::mrad_emu::rt_free((p), false)
#define cudaFreeHost(p) ::mrad_emu::rt_free((p), true)
#define cudaMemcpyAsync(d, s, n, k, st) ::mrad_emu::rt_memcpy(d, s, n, k, st)
#define cudaMemsetAsync(p, v, n, st) ::mrad_emu::rt_memset(p, v, n, st)
#define cudaMemGetInfo(f, t) ::mrad_emu::rt_mem_info(f, t)
#define cudaPointerGetAttributes(a, p) ::mrad_emu::rt_pointer_attrs(a, p)
#define cudaStreamCreateWithFlags(s, f)                                        \
    ((void)(f), ::mrad_emu::rt_stream_create(s))
#define cudaStreamDestroy(s) ::mrad_emu::rt_stream_destroy(s)
#define cudaStreamSynchronize(s) ::mrad_emu::rt_stream_sync(s)
#define cudaStreamWaitEvent(s, e, f)                                           \
    ((void)(f), ::mrad_emu::rt_stream_wait(s, e))
#define cudaEventCreateWithFlags(e, f)                                         \
    ((void)(f), ::mrad_emu::rt_event_create(e))
#define cudaEventDestroy(e) ::mrad_emu::rt_event_destroy(e)
#define cudaEventRecord(e, s) ::mrad_emu::rt_event_record(e, s)
#define cudaEventSynchronize(e) ::mrad_emu::rt_event_sync(e)
#define cudaDeviceSynchronize() ::mrad_emu::rt_device_sync()
#define cudaDeviceReset() ::mrad_emu::rt_device_reset()
#define cudaGetLastError() ::mrad_emu::rt_last_error()
#undef cublasCreate
#undef cublasDestroy
#undef cublasSetStream
#undef cublasSetWorkspace
#undef cublasSetMathMode
#define cublasCreate(h) ::mrad_emu::rt_blas_create(h)
#define cublasDestroy(h) ::mrad_emu::rt_blas_destroy(h)
#define cublasSetStream(h, s) ::mrad_emu::rt_blas_set_stream(h, s)
#define cublasSetWorkspace(h, w, n)                                            \
    ((void)(w), (void)(n), ::mrad_emu::rt_blas_ok(h))
#define cublasSetMathMode(h, m) ((void)(m), ::mrad_emu::rt_blas_ok(h))

#endif /* MRAD_TESTS_CUDA_EMU_RUNTIME_H */
