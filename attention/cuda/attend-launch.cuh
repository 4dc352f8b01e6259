/*
 * attend-launch.cuh - launchers of the tensor-core attention kernels of
 * attend-mma.cuh: one launch per group of problems of one kind (the head
 * dimension tile, 32-row blocks for MRA-2 and 128-row blocks for exact
 * attention; attend_kind_of() of common.cuh picks it, with the shared
 * memory the device allows).  Included by attend-f16.cu and
 * attend-bf16.cu, one instantiation set per file, so that the two compile
 * in parallel.
 */
#ifndef MRAD_CUDA_ATTEND_LAUNCH_CUH
#define MRAD_CUDA_ATTEND_LAUNCH_CUH

#include "attention/cuda/attend-mma.cuh"

namespace mrad_cuda
{

namespace
{

template <typename T, int DP, int W>
int launch_mma(const attend_group &g, uint32_t blocks, cudaStream_t st)
{
    constexpr size_t smem = attend_mma_smem(DP, 16 * W);
    auto kern = k_attend_mma<T, DP, W>;
    cudaError_t e = cudaFuncSetAttribute(
        kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess)
        return cuda_err(e);
    MRAD_LAUNCH_SMEM(kern, blocks, W * 32, smem, st, g);
    return cuda_err(launch_status());
}

/* 32-row blocks (2 warps) or 128-row blocks (8 warps). */
template <typename T, int DP>
int launch_rows(const attend_group &g, uint32_t rows, uint32_t blocks,
                cudaStream_t st)
{
    return rows == 128 ? launch_mma<T, DP, 8>(g, blocks, st)
                       : launch_mma<T, DP, 2>(g, blocks, st);
}

template <typename T>
int dispatch(const attend_group &g, const attend_kind &k, uint32_t blocks,
             cudaStream_t st)
{
    switch (k.dp) {
    case 32:
        return launch_rows<T, 32>(g, k.rows, blocks, st);
    case 64:
        return launch_rows<T, 64>(g, k.rows, blocks, st);
    case 128:
        return launch_rows<T, 128>(g, k.rows, blocks, st);
    case 256:
        return launch_rows<T, 256>(g, k.rows, blocks, st);
    }
    return ATTN_ENOTSUP;
}

} // namespace

} // namespace mrad_cuda

#endif /* MRAD_CUDA_ATTEND_LAUNCH_CUH */
