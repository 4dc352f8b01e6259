/*
 * attend-simt.cu - launcher of the float32 attention kernel of
 * attend-simt.cuh (head dimensions 32, 64, 128, 256; MRA-2 and exact): one
 * launch per group of problems of one head dimension tile.
 */
#include "attention/cuda/attend-simt.cuh"

namespace mrad_cuda
{

namespace
{

template <int DP>
int launch_simt(const attend_group &g, uint32_t blocks, cudaStream_t st)
{
    constexpr size_t smem = attend_f32_smem(DP);
    auto kern = k_attend_f32<DP>;
    cudaError_t e = cudaFuncSetAttribute(
        kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess)
        return cuda_err(e);
    MRAD_LAUNCH_SMEM(kern, blocks, SIMT_THREADS, smem, st, g);
    return cuda_err(launch_status());
}

} // namespace

int attend_f32(const attend_group &g, const attend_kind &k, uint32_t blocks,
               cudaStream_t st)
{
    switch (k.dp) {
    case 32:
        return launch_simt<32>(g, blocks, st);
    case 64:
        return launch_simt<64>(g, blocks, st);
    case 128:
        return launch_simt<128>(g, blocks, st);
    case 256:
        return launch_simt<256>(g, blocks, st);
    }
    return ATTN_ENOTSUP;
}

} // namespace mrad_cuda
