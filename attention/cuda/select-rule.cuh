/*
 * select-rule.cuh - the pure pieces of the GPU block selection (plan.cu),
 * kept apart and __host__ __device__ so that a host program can check them
 * against attn_select_topk() (tests/cuda/test-select-emul.cpp) on machines
 * without a GPU.
 *
 * A score becomes an order-preserving 64-bit key (attention/select-rule.h,
 * the rule every backend shares); a radix select over the keys of a head
 * finds the k-th largest key T and the number `need` of pairs equal to T
 * that still belong to the set; a pair is selected when its key is above
 * T, or equal to T and among the first `need` equal pairs in flat
 * (row-major) order, which is the spec's tie rule.
 */
#ifndef MRAD_CUDA_SELECT_RULE_CUH
#define MRAD_CUDA_SELECT_RULE_CUH

#include <stdint.h>

#include "attention/select-rule.h"

#ifndef __CUDACC__ /* plain C++ (the host replay tests) */
#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#endif

namespace mrad_cuda
{

/* Whether `key` agrees with the radix prefix on the bytes above `shift`
 * (the bytes already decided by earlier passes). */
__host__ __device__ inline bool radix_in_prefix(uint64_t key, uint64_t prefix,
                                                int shift)
{
    uint64_t hi = shift >= 56 ? 0 : (~0ull << (shift + 8));
    return ((key ^ prefix) & hi) == 0;
}

/* One radix step: given the histogram of the byte at `shift` among the keys
 * in the prefix, and `*rem` >= 1 keys still to take from the top, fixes that
 * byte in *prefix and leaves in *rem how many keys to take from inside the
 * chosen bin. */
__host__ __device__ inline void radix_pick(const uint32_t *hist, int shift,
                                           uint64_t *prefix, uint64_t *rem)
{
    uint64_t cum = 0;
    for (int bin = 255; bin >= 0; bin--) {
        uint64_t h = hist[bin];
        if (cum + h >= *rem) {
            *prefix |= (uint64_t)bin << shift;
            *rem -= cum;
            return;
        }
        cum += h;
    }
}

/* Pairs of a row taken from those equal to T: the row holds `eq` of them and
 * `before` came in earlier rows; `need` are taken in all. */
__host__ __device__ inline uint32_t row_take(uint64_t need, uint64_t before,
                                             uint32_t eq)
{
    if (need <= before)
        return 0;
    return (uint32_t)(need - before < eq ? need - before : eq);
}

/* Whether a pair is selected; `rank` counts the pairs equal to T before it
 * in flat order. */
__host__ __device__ inline bool is_selected(uint64_t key, uint64_t T,
                                            uint64_t need, uint64_t rank)
{
    return key > T || (key == T && rank < need);
}

} // namespace mrad_cuda

#endif /* MRAD_CUDA_SELECT_RULE_CUH */
