/*
 * attend-simt.cu - launcher of the float32 attention kernel of
 * attend-simt.cuh (head dimensions 32, 64, 128, 256; MRA-2 and exact).
 */
#include "attention/cuda/attend-simt.cuh"

namespace mrad_cuda
{

namespace
{

template <int DP> int launch(const attend_args &a, cudaStream_t st)
{
    size_t smem = (size_t)(2 * BLK * (DP + 1) + BLK * DP + BLK * 33) * 4;
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                               dev) == cudaSuccess &&
        smem > (size_t)optin)
        return ATTN_ENOTSUP; /* f32 with D > 128 on sm_86 / sm_89 */
    cudaError_t e = cudaFuncSetAttribute(
        k_attend_f32<DP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
        (int)smem);
    if (e != cudaSuccess)
        return cuda_err(e);
    size_t ctas = (size_t)a.nbq * a.B * a.H;
    if (ctas > 0x7fffffffu)
        return ATTN_ENOTSUP;
    k_attend_f32<DP><<<(unsigned)ctas, SIMT_THREADS, smem, st>>>(a, a.nbq);
    return cuda_err(cudaGetLastError());
}

} // namespace

int attend_f32(const attend_args &a, cudaStream_t st)
{
    switch (pad_dim(a.D)) {
    case 32:
        return launch<32>(a, st);
    case 64:
        return launch<64>(a, st);
    case 128:
        return launch<128>(a, st);
    case 256:
        return a.D <= 256 ? launch<256>(a, st) : ATTN_ENOTSUP;
    }
    return ATTN_ENOTSUP;
}

} // namespace mrad_cuda
