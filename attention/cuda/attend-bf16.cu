/*
 * attend-bf16.cu - the bf16 instantiations of the tensor-core attention
 * kernels of attend-mma.cuh (launchers in attend-launch.cuh) (head dimensions
 * 32, 64, 128, 256; MRA-2 and exact).
 */
#include "attention/cuda/attend-launch.cuh"

namespace mrad_cuda
{

int attend_bf16(const attend_group &g, const attend_kind &k, uint32_t blocks,
                cudaStream_t st)
{
    return dispatch<__nv_bfloat16>(g, k, blocks, st);
}

} // namespace mrad_cuda
