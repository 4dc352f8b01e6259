/*
 * emu-prims.h - host emulation of the device primitives the tensor-core
 * attention kernel uses (attention/cuda/prims.cuh), so that the very
 * kernel source of attend-mma.cuh runs on a CPU: every GPU thread of a
 * block is a std::thread, __syncthreads and the warp-collective operations
 * (shuffle, ballot, ldmatrix, mma.sync) exchange values through shared
 * arrays between barriers.  The fragment layouts follow the PTX ISA
 * ("Matrix fragments for mma.m16n8k16", "ldmatrix"), written from the
 * definitions there rather than from the kernel's addressing, so that the
 * kernel's index arithmetic is checked against them.
 *
 * Used by test-attend-emul.cpp through MRAD_CUDA_PRIMS; never by the
 * library.  One block runs at a time.
 */
#ifndef MRAD_TESTS_CUDA_EMU_PRIMS_H
#define MRAD_TESTS_CUDA_EMU_PRIMS_H

#include <atomic>
#include <barrier>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <thread>
#include <type_traits>
#include <vector>

#include "attention/cuda/common.cuh"

/* Plain host C++ from here on. */
#undef __host__
#define __host__
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ static /* one block at a time: block-wide statics */
#undef __grid_constant__
#define __grid_constant__

namespace mrad_emu
{

struct dim {
    unsigned x, y, z;
};
inline thread_local dim t_tid, t_bid, t_bdim;

constexpr int MAX_WARPS = 16;
struct block_state {
    std::unique_ptr<std::barrier<>> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    uint32_t x[MAX_WARPS][32][6];
    const void *addr[MAX_WARPS][32];
};
inline block_state *blk;
alignas(16) inline unsigned char smem_bytes[256 * 1024];

inline int lane()
{
    return (int)(t_tid.x % 32);
}
inline int warp()
{
    return (int)(t_tid.x / 32);
}
inline void warp_sync()
{
    blk->warps[warp()]->arrive_and_wait();
}
inline void block_sync()
{
    blk->all->arrive_and_wait();
}

template <class T> T shfl_xor(T v, int o)
{
    static_assert(sizeof(T) <= 8, "two exchange words");
    memcpy(&blk->x[warp()][lane()][0], &v, sizeof v);
    warp_sync();
    T r;
    memcpy(&r, &blk->x[warp()][lane() ^ o][0], sizeof r);
    warp_sync();
    return r;
}

/* __shfl_up_sync: lanes below `o` keep their own value. */
template <class T> T shfl_up(T v, int o)
{
    static_assert(sizeof(T) <= 8, "two exchange words");
    memcpy(&blk->x[warp()][lane()][0], &v, sizeof v);
    warp_sync();
    T r = v;
    if (lane() >= o)
        memcpy(&r, &blk->x[warp()][lane() - o][0], sizeof r);
    warp_sync();
    return r;
}

inline uint32_t atomic_add(uint32_t *p, uint32_t v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

inline uint32_t ballot(bool p)
{
    blk->x[warp()][lane()][0] = p;
    warp_sync();
    uint32_t m = 0;
    for (int l = 0; l < 32; l++)
        m |= (blk->x[warp()][l][0] ? 1u : 0u) << l;
    warp_sync();
    return m;
}

/* cp.async copies issued and not yet completed by a wait (per thread). */
struct async_copy {
    void *dst;
    const void *src;
};
inline thread_local std::vector<async_copy> pending_open;
inline thread_local std::vector<std::vector<async_copy>> pending_groups;
/* Blocks that ended with copies still pending: a kernel bug. */
inline std::atomic<unsigned> unwaited_copies{0};

inline void cp_drop()
{
    if (!pending_open.empty() || !pending_groups.empty())
        unwaited_copies++;
    pending_open.clear();
    pending_groups.clear();
}

/* The threads that play GPU threads: made once and kept, since a launch
 * that made its own would spend most of its time creating them.  A
 * launch hands its job to the first `active` of them and waits until all
 * of those are through. */
struct thread_pool {
    std::mutex mu;
    std::condition_variable wake, done;
    std::vector<std::thread> th;
    uint64_t gen = 0;
    unsigned active = 0, remaining = 0;
    std::function<void(unsigned)> job;

    void worker(unsigned id)
    {
        uint64_t seen = 0;
        for (;;) {
            std::function<void(unsigned)> f;
            {
                std::unique_lock<std::mutex> l(mu);
                wake.wait(l, [&] { return gen != seen; });
                seen = gen;
                if (id >= active)
                    continue;
                f = job;
            }
            f(id);
            std::lock_guard<std::mutex> l(mu);
            if (--remaining == 0)
                done.notify_one();
        }
    }

    void run(unsigned threads, std::function<void(unsigned)> f)
    {
        std::unique_lock<std::mutex> l(mu);
        while (th.size() < threads) {
            unsigned id = (unsigned)th.size();
            th.emplace_back([this, id] { worker(id); });
            th.back().detach();
        }
        job = std::move(f);
        active = remaining = threads;
        gen++;
        wake.notify_all();
        done.wait(l, [&] { return remaining == 0; });
        job = nullptr;
    }
};

inline thread_pool &pool()
{
    static thread_pool *p = new thread_pool; /* its threads outlive main */
    return *p;
}

/* Runs `grid` blocks of `threads` threads of kernel call f(), one block
 * after the other, on one set of threads (a barrier between blocks keeps
 * the block-wide statics of one block away from the next). */
template <class F> void launch(unsigned grid, unsigned threads, F f)
{
    block_state bs;
    bs.all = std::make_unique<std::barrier<>>(threads);
    for (unsigned w = 0; w < (threads + 31) / 32; w++)
        bs.warps.push_back(std::make_unique<std::barrier<>>(32));
    blk = &bs;
    pool().run(threads, [&f, &bs, grid, threads](unsigned t) {
        t_tid = {t, 0, 0};
        t_bdim = {threads, 1, 1};
        for (unsigned b = 0; b < grid; b++) {
            t_bid = {b, 0, 0};
            f();
            cp_drop();
            bs.all->arrive_and_wait();
        }
    });
    blk = nullptr;
}

} // namespace mrad_emu

#include "tests/cuda/emu-runtime.h"

namespace mrad_emu
{

inline void submit_kernel(cudaStream_t st, unsigned grid, unsigned block,
                          size_t smem, std::function<void()> body)
{
    state &g = S();
    if (grid == 0 || block == 0 || block > 1024 || smem > g.smem_optin ||
        smem > sizeof smem_bytes) {
        g.bad_launches++;
        fprintf(stderr, "emu: bad launch <<<%u, %u, %zu>>>\n", grid, block,
                smem);
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    if (!st) {
        launch(grid, block, body);
        return;
    }
    if (g.sticky != cudaSuccess)
        return;
    g.launches++;
    enqueue(st, {op::RUN,
                 [grid, block, body] {
                     state &x = S();
                     if (x.fail_kernel >= 0 && x.fail_kernel-- == 0) {
                         x.sticky = cudaErrorIllegalAddress;
                         return;
                     }
                     launch(grid, block, body);
                 },
                 nullptr, 0, 'K', nullptr, nullptr});
}

} // namespace mrad_emu

#define threadIdx (::mrad_emu::t_tid)
#define blockIdx (::mrad_emu::t_bid)
#define blockDim (::mrad_emu::t_bdim)
#define atomicAdd(p, v) ::mrad_emu::atomic_add(p, v)
#define __popc(x) __builtin_popcount(x)
#define __shfl_up_sync(m, v, o) ::mrad_emu::shfl_up(v, o)
#define __syncthreads() ::mrad_emu::block_sync()
#define __syncwarp() ::mrad_emu::warp_sync()
#define __ballot_sync(m, p) ::mrad_emu::ballot(p)
#define __shfl_xor_sync(m, v, o) ::mrad_emu::shfl_xor(v, o)

namespace mrad_cuda
{

namespace
{

/* mma.sync.m16n8k16.row.col.f32.{f16,bf16}: D = A B + C per warp. */
template <typename T> struct mma_t {
    static float cvt(uint32_t h)
    {
        if (std::is_same<T, __half>::value)
            return attn_f16_to_f32((uint16_t)h);
        return attn_bf16_to_f32((uint16_t)h);
    }
    static uint16_t back(float x)
    {
        if (std::is_same<T, __half>::value)
            return attn_f32_to_f16(x);
        return attn_f32_to_bf16(x);
    }
    static void run(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
    {
        using namespace mrad_emu;
        uint32_t(*x)[6] = blk->x[warp()];
        for (int i = 0; i < 4; i++)
            x[lane()][i] = a[i];
        x[lane()][4] = b0;
        x[lane()][5] = b1;
        warp_sync();
        /* Fragment layouts of the PTX ISA: lane = 4 * groupID + tig. */
        float A[16][16], B[16][8];
        for (int L = 0; L < 32; L++) {
            int g = L / 4, t = L % 4;
            const uint32_t *r = x[L];
            for (int h = 0; h < 2; h++) {
                A[g][2 * t + h] = cvt(r[0] >> (16 * h) & 0xffff);
                A[g + 8][2 * t + h] = cvt(r[1] >> (16 * h) & 0xffff);
                A[g][2 * t + 8 + h] = cvt(r[2] >> (16 * h) & 0xffff);
                A[g + 8][2 * t + 8 + h] = cvt(r[3] >> (16 * h) & 0xffff);
                B[2 * t + h][g] = cvt(r[4] >> (16 * h) & 0xffff);
                B[2 * t + 8 + h][g] = cvt(r[5] >> (16 * h) & 0xffff);
            }
        }
        int g = lane() / 4, t = lane() % 4;
        for (int k = 0; k < 16; k++) {
            c[0] += A[g][k] * B[k][2 * t];
            c[1] += A[g][k] * B[k][2 * t + 1];
            c[2] += A[g + 8][k] * B[k][2 * t];
            c[3] += A[g + 8][k] * B[k][2 * t + 1];
        }
        warp_sync();
    }
    static uint32_t pack(float lo, float hi)
    {
        return (uint32_t)back(lo) | (uint32_t)back(hi) << 16;
    }
    static void store(T *p, float v)
    {
        uint16_t h = back(v);
        memcpy(static_cast<void *>(p), &h, 2);
    }
};

/* ldmatrix.x4: lanes 8i..8i+7 give the row addresses of matrix i; lane l
 * receives of each matrix row l/4, elements 2(l%4) and 2(l%4)+1 (with
 * .trans: row 2(l%4) and 2(l%4)+1 of column l/4). */
inline void ldsm_common(uint32_t r[4], const void *p, bool trans)
{
    using namespace mrad_emu;
    blk->addr[warp()][lane()] = p;
    warp_sync();
    int l = lane();
    for (int i = 0; i < 4; i++) {
        const uint16_t *const *rows = reinterpret_cast<const uint16_t *const *>(
            &blk->addr[warp()][8 * i]);
        uint32_t lo, hi;
        if (!trans) {
            lo = rows[l / 4][2 * (l % 4)];
            hi = rows[l / 4][2 * (l % 4) + 1];
        } else {
            lo = rows[2 * (l % 4)][l / 4];
            hi = rows[2 * (l % 4) + 1][l / 4];
        }
        r[i] = lo | hi << 16;
    }
    warp_sync();
}

inline void ldsm_x4(uint32_t r[4], const void *p)
{
    ldsm_common(r, p, false);
}

inline void ldsm_x4_t(uint32_t r[4], const void *p)
{
    ldsm_common(r, p, true);
}

/* cp.async: a copy lands only when a cp.async.wait_group lets its group
 * complete (the oldest groups first, all but the n newest), so a kernel
 * that reads shared memory before waiting reads stale data here too. */
inline void cp_async16(void *s, const void *g)
{
    /* the hardware faults on a misaligned cp.async of 16 bytes */
    if ((uintptr_t)s % 16 != 0 || (uintptr_t)g % 16 != 0) {
        fprintf(stderr, "cp.async.cg 16: misaligned address %p <- %p\n", s, g);
        abort();
    }
    mrad_emu::pending_open.push_back({s, g});
}
inline void cp_commit()
{
    mrad_emu::pending_groups.push_back(std::move(mrad_emu::pending_open));
    mrad_emu::pending_open.clear();
}
template <int n> inline void cp_wait()
{
    auto &groups = mrad_emu::pending_groups;
    while (groups.size() > (size_t)n) {
        for (const mrad_emu::async_copy &c : groups.front())
            memcpy(c.dst, c.src, 16);
        groups.erase(groups.begin());
    }
}

/* Launches: the arguments are evaluated and copied now, as a launch does;
 * the blocks run in turn when the stream gets to them (at once on the
 * NULL stream the tests use). */
template <class K, class... A>
void submit(cudaStream_t st, size_t grid, size_t block, size_t smem, K kern,
            A... args)
{
    ::mrad_emu::submit_kernel(st, (unsigned)grid, (unsigned)block, smem,
                              [kern, args...] { kern(args...); });
}
#define MRAD_LAUNCH(kern, grid, block, st, ...)                                \
    ::mrad_cuda::submit((st), (grid), (block), 0, kern, __VA_ARGS__)
#define MRAD_LAUNCH_SMEM(kern, grid, block, smem, st, ...)                     \
    ::mrad_cuda::submit((st), (grid), (block), (smem), kern, __VA_ARGS__)

/* cublasSgemmStridedBatched as cuBLAS defines it (column-major, op(A) is
 * m x k, op(B) is k x n), on host memory: at once without a handle (the
 * tests' direct calls), else on the handle's stream. */
inline void sgemm_host(cublasOperation_t ta, cublasOperation_t tb, int m,
                       int n, int k, float alpha, const float *A, int lda,
                       long long sA, const float *B, int ldb, long long sB,
                       float beta, float *C, int ldc, long long sC, int batch)
{
    for (int bt = 0; bt < batch; bt++) {
        const float *a = A + bt * sA, *b = B + bt * sB;
        float *c = C + bt * sC;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                float acc = 0.0f;
                for (int l = 0; l < k; l++) {
                    float x = ta == CUBLAS_OP_N ? a[i + (long long)l * lda]
                                                : a[l + (long long)i * lda];
                    float y = tb == CUBLAS_OP_N ? b[l + (long long)j * ldb]
                                                : b[j + (long long)l * ldb];
                    acc += x * y;
                }
                float old =
                    beta != 0.0f ? beta * c[i + (long long)j * ldc] : 0.0f;
                c[i + (long long)j * ldc] = alpha * acc + old;
            }
    }
}

inline cublasStatus_t sgemm_strided(cublasHandle_t h, cublasOperation_t ta,
                                    cublasOperation_t tb, int m, int n, int k,
                                    const float *alpha, const float *A, int lda,
                                    long long sA, const float *B, int ldb,
                                    long long sB, const float *beta, float *C,
                                    int ldc, long long sC, int batch)
{
    float al = *alpha, be = *beta;
    if (!h) {
        sgemm_host(ta, tb, m, n, k, al, A, lda, sA, B, ldb, sB, be, C, ldc,
                   sC, batch);
        return CUBLAS_STATUS_SUCCESS;
    }
    if (!::mrad_emu::blas_live(h))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (::mrad_emu::S().sticky != cudaSuccess)
        return CUBLAS_STATUS_EXECUTION_FAILED;
    cudaError_t e = ::mrad_emu::enqueue(
        h->st, {::mrad_emu::op::RUN,
                [=] {
                    sgemm_host(ta, tb, m, n, k, al, A, lda, sA, B, ldb, sB, be,
                               C, ldc, sC, batch);
                },
                nullptr, 0, 'G', C, nullptr});
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                            : CUBLAS_STATUS_EXECUTION_FAILED;
}

inline cudaError_t memset_async(void *p, int v, size_t n, cudaStream_t st)
{
    return ::mrad_emu::rt_memset(p, v, n, st);
}

/* Device memory is host memory here, aligned as cudaMalloc aligns it. */
inline cudaError_t dev_malloc(void **p, size_t n)
{
    return ::mrad_emu::rt_alloc(p, n, false);
}

inline void dev_free(void *p)
{
    ::mrad_emu::rt_free(p, false);
}

inline cudaError_t copy_async(void *dst, const void *src, size_t n,
                              cudaMemcpyKind kind, cudaStream_t st)
{
    return ::mrad_emu::rt_memcpy(dst, src, n, kind, st);
}

inline cudaError_t event_record(cudaEvent_t ev, cudaStream_t st)
{
    return ::mrad_emu::rt_event_record(ev, st);
}

inline cudaError_t event_sync(cudaEvent_t ev)
{
    return ::mrad_emu::rt_event_sync(ev);
}

inline cudaError_t stream_sync(cudaStream_t st)
{
    return ::mrad_emu::rt_stream_sync(st);
}

inline cudaError_t launch_status()
{
    return ::mrad_emu::rt_last_error();
}

/* The test hook's faulty kernel: loses the context when it runs. */
template <int N = 0> inline cudaError_t launch_fault(cudaStream_t st)
{
    if (::mrad_emu::S().sticky != cudaSuccess)
        return ::mrad_emu::S().sticky;
    return ::mrad_emu::enqueue(
        st, {::mrad_emu::op::RUN,
             [] { ::mrad_emu::S().sticky = cudaErrorIllegalAddress; }, nullptr,
             0, 'F', nullptr, nullptr});
}

template <typename T> inline T *dyn_smem()
{
    return reinterpret_cast<T *>(mrad_emu::smem_bytes);
}

} // namespace

} // namespace mrad_cuda

#endif /* MRAD_TESTS_CUDA_EMU_PRIMS_H */
