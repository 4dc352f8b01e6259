/*
 * attend-launch.cuh - launchers of the tensor-core attention kernels of
 * attend-mma.cuh: shared-memory sizing, the block shape per method (32-row
 * blocks for MRA-2, 128-row blocks for exact attention) and the head
 * dimension tiles.  Included by attend-f16.cu and attend-bf16.cu, one
 * instantiation set per file, so that the two compile in parallel.
 */
#ifndef MRAD_CUDA_ATTEND_LAUNCH_CUH
#define MRAD_CUDA_ATTEND_LAUNCH_CUH

#include "attention/cuda/attend-mma.cuh"

namespace mrad_cuda
{

namespace
{

/* Shared memory a block may opt in to on the current device (227 KiB on
 * sm_90, 163 KiB on sm_80, 99 KiB on sm_86/sm_89). */
inline size_t smem_optin_max()
{
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                               dev) != cudaSuccess) {
        cudaGetLastError();
        return 48 << 10;
    }
    return (size_t)v;
}

template <typename T, int DP, int W>
int launch(const attend_args &a, cudaStream_t st)
{
    constexpr int R = 16 * W, LD = DP + 8;
    size_t smem = (size_t)(R + 4 * BLK) * LD * sizeof(uint16_t);
    if (smem > smem_optin_max())
        return ATTN_ENOTSUP;
    cudaError_t e = cudaFuncSetAttribute(
        k_attend_mma<T, DP, W>, cudaFuncAttributeMaxDynamicSharedMemorySize,
        (int)smem);
    if (e != cudaSuccess)
        return cuda_err(e);
    uint32_t qtiles = W == 2 ? a.nbq : (a.Nq + R - 1) / R;
    size_t ctas = (size_t)qtiles * a.B * a.H;
    if (ctas > 0x7fffffffu)
        return ATTN_ENOTSUP;
    k_attend_mma<T, DP, W><<<(unsigned)ctas, W * 32, smem, st>>>(a, qtiles);
    return cuda_err(cudaGetLastError());
}

/* MRA-2 (a CSR list) runs one 32-row block row per thread block.  Exact
 * attention shares each K/V tile between 128 rows (8 warps): every block
 * streams the whole K and V of its head, so taller blocks halve that
 * traffic. */
template <typename T, int DP>
int launch_dp(const attend_args &a, cudaStream_t st)
{
    if (a.list)
        return launch<T, DP, 2>(a, st);
    /* Devices with less shared memory (sm_86, sm_89) run exact attention
     * with the 32-row blocks of MRA when 128-row ones do not fit. */
    int rc = launch<T, DP, 8>(a, st);
    return rc == ATTN_ENOTSUP ? launch<T, DP, 2>(a, st) : rc;
}

template <typename T> int dispatch(const attend_args &a, cudaStream_t st)
{
    if (a.D > 256)
        return ATTN_ENOTSUP;
    switch (pad_dim(a.D)) {
    case 32:
        return launch_dp<T, 32>(a, st);
    case 64:
        return launch_dp<T, 64>(a, st);
    case 128:
        return launch_dp<T, 128>(a, st);
    default:
        return launch_dp<T, 256>(a, st);
    }
}

} // namespace

} // namespace mrad_cuda

#endif /* MRAD_CUDA_ATTEND_LAUNCH_CUH */
