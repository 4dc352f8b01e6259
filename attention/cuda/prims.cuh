/*
 * prims.cuh - what the backend's kernels use of the GPU beyond plain C++:
 * mma.sync m16n8k16 for f16 and bf16 with f32 accumulation, ldmatrix
 * (plain and transposed), cp.async, the dynamic shared memory, and on the
 * host side kernel launches, the batched SGEMM, asynchronous memset and
 * copies, device allocations and events.  (backend.cu and batch.cu call
 * the CUDA runtime directly; the emulation of tests/cuda/emu-runtime.h
 * stands in for it when they are compiled as host C++.)
 * Kept apart so that the kernels (attend-*.cuh) and the planning code
 * (plan.cu) can also be compiled against host emulations of exactly these
 * primitives (tests/cuda/emu-prims.h, used by the emulation tests); they
 * include this file unless MRAD_CUDA_PRIMS names another.
 */
#ifndef MRAD_CUDA_PRIMS_CUH
#define MRAD_CUDA_PRIMS_CUH

#include "attention/cuda/common.cuh"

namespace mrad_cuda
{

namespace
{

/* c += a b on the tensor cores: mma.sync m16n8k16, A row-major and B
 * column-major fragments of the 16-bit input type named `ty` in PTX
 * ("f16", "bf16"), f32 accumulators.  A macro because the instruction's
 * name must be a string literal. */
#define MRAD_MMA_M16N8K16(ty, c, a, b0, b1)                                    \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." ty "." ty ".f32 "    \
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "                     \
                 "{%0,%1,%2,%3};\n"                                            \
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])              \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0),        \
                   "r"(b1))

template <typename T> struct mma_t;

template <> struct mma_t<__half> {
    static __device__ __forceinline__ void run(float c[4], const uint32_t a[4],
                                               uint32_t b0, uint32_t b1)
    {
        MRAD_MMA_M16N8K16("f16", c, a, b0, b1);
    }
    static __device__ __forceinline__ uint32_t pack(float x, float y)
    {
        __half2 h = __floats2half2_rn(x, y); /* x in the low half */
        return *reinterpret_cast<uint32_t *>(&h);
    }
    static __device__ __forceinline__ void store(__half *p, float x)
    {
        *p = __float2half_rn(x);
    }
};

template <> struct mma_t<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float c[4], const uint32_t a[4],
                                               uint32_t b0, uint32_t b1)
    {
        MRAD_MMA_M16N8K16("bf16", c, a, b0, b1);
    }
    static __device__ __forceinline__ uint32_t pack(float x, float y)
    {
        __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    static __device__ __forceinline__ void store(__nv_bfloat16 *p, float x)
    {
        *p = __float2bfloat16_rn(x);
    }
};
#undef MRAD_MMA_M16N8K16

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 "
                 "{%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 "
                 "{%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void cp_async16(void *s, const void *g)
{
    asm volatile(
        "cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(s)),
        "l"(g));
}

__device__ __forceinline__ void cp_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int n> __device__ __forceinline__ void cp_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(n));
}

/* Enqueues kern<<<grid, block, 0, st>>>(args...), and with `smem` bytes
 * of dynamic shared memory.  `kern` may be a pointer to a kernel. */
#define MRAD_LAUNCH(kern, grid, block, st, ...)                                \
    kern<<<(grid), (block), 0, (st)>>>(__VA_ARGS__)
#define MRAD_LAUNCH_SMEM(kern, grid, block, smem, st, ...)                     \
    kern<<<(grid), (block), (smem), (st)>>>(__VA_ARGS__)

/* cublasSgemmStridedBatched, column-major as cuBLAS defines it. */
inline cublasStatus_t sgemm_strided(cublasHandle_t h, cublasOperation_t ta,
                                    cublasOperation_t tb, int m, int n, int k,
                                    const float *alpha, const float *A, int lda,
                                    long long sA, const float *B, int ldb,
                                    long long sB, const float *beta, float *C,
                                    int ldc, long long sC, int batch)
{
    return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, sA, B,
                                     ldb, sB, beta, C, ldc, sC, batch);
}

inline cudaError_t memset_async(void *p, int v, size_t n, cudaStream_t st)
{
    return cudaMemsetAsync(p, v, n, st);
}

/* Device memory, copies and events as the stores of kv.cu use them. */
inline cudaError_t dev_malloc(void **p, size_t n)
{
    return cudaMalloc(p, n);
}

inline void dev_free(void *p)
{
    cudaFree(p);
}

inline cudaError_t copy_async(void *dst, const void *src, size_t n,
                              cudaMemcpyKind kind, cudaStream_t st)
{
    return cudaMemcpyAsync(dst, src, n, kind, st);
}

inline cudaError_t event_record(cudaEvent_t ev, cudaStream_t st)
{
    return cudaEventRecord(ev, st);
}

inline cudaError_t event_sync(cudaEvent_t ev)
{
    return cudaEventSynchronize(ev);
}

inline cudaError_t stream_sync(cudaStream_t st)
{
    return cudaStreamSynchronize(st);
}

/* Test hook (attn_cuda_test_fault()): a kernel that writes outside every
 * allocation, as a faulty kernel would, which loses the context
 * (cudaErrorIllegalAddress, sticky). */
template <int N> __global__ void k_fault(unsigned *p)
{
    p[N] = 1u;
}
template <int N = 0> inline cudaError_t launch_fault(cudaStream_t st)
{
    k_fault<N><<<1, 1, 0, st>>>((unsigned *)(uintptr_t)16);
    return cudaGetLastError();
}

/* The error of the last launch (and clears it). */
inline cudaError_t launch_status()
{
    return cudaGetLastError();
}

/* The block's dynamic shared memory. */
template <typename T> __device__ __forceinline__ T *dyn_smem()
{
    extern __shared__ __align__(16) unsigned char mrad_dyn_smem[];
    return reinterpret_cast<T *>(mrad_dyn_smem);
}

} // namespace

} // namespace mrad_cuda

#endif /* MRAD_CUDA_PRIMS_CUH */
