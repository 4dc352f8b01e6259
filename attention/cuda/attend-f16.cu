/*
 * attend-f16.cu - the f16 instantiations of the tensor-core attention
 * kernels of attend-mma.cuh (launchers in attend-launch.cuh) (head dimensions
 * 32, 64, 128, 256; MRA-2 and exact).
 */
#include "attention/cuda/attend-launch.cuh"

namespace mrad_cuda
{

int attend_f16(const attend_group &g, const attend_kind &k, uint32_t blocks,
               cudaStream_t st)
{
    return dispatch<__half>(g, k, blocks, st);
}

} // namespace mrad_cuda
