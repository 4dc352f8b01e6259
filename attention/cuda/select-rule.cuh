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
 *
 * The grid of a head is nbq x nbk blocks (queries x keys).  Under causal
 * attention the block row I sees the key blocks J < vis(I) wholly and
 * vis(I) <= J < seen(I) in part; the rest are hidden (attn_grid_row_inline()
 * of attention/select-rule.h, which attention/problem.c calls too).  Only
 * the visible pairs compete for the budget: the others have the key
 * ATTN_SELECT_KEY_NONE, below every score's, and since the budget never
 * exceeds the visible pairs, the k-th largest key is a visible pair's and
 * the radix select never needs to look at the others.
 */
#ifndef MRAD_CUDA_SELECT_RULE_CUH
#define MRAD_CUDA_SELECT_RULE_CUH

#include <stdint.h>

#include "attention/attn.h"
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

/* The number of key blocks that hold a key at a position <= pos, i.e.
 * that a query at key position pos sees at least in part (0 .. nbk). */
__host__ __device__ inline uint32_t key_blocks_upto(int64_t pos, uint32_t nbk)
{
    return attn_clamp_blocks(attn_floor_blocks(pos) + 1, nbk);
}

/* The key of a selectable pair (I, J) (J < vis(I)) of a grid whose row I
 * has its diagonal band centred on key block `center`: key[J] of
 * attn_select_keys_row_at_inline(), one pair at a time.  The pairs
 * J >= vis(I) have ATTN_SELECT_KEY_NONE. */
__host__ __device__ inline uint64_t pair_key_at(float L, float r, int32_t empty,
                                                uint32_t I, int64_t center,
                                                uint32_t J, uint32_t pf,
                                                uint32_t pd)
{
    struct attn_select_row row = attn_select_row_init_at(r, I, center, pf, pd);
    return attn_select_key_inline(
        attn_select_row_score(&row, L, empty, (int32_t)J));
}

/* The row maximum r_I of the spec over the pairs of a row that are not
 * hidden, as the CPU backend takes it: the first logit L0 raised by every
 * larger one, so a NaN L0 gives NaN and a later NaN is passed over; `mx`
 * is the fmaxf of the row's logits (NaN passed over), `seen` the pairs not
 * hidden, and a row that sees none has r_I = 0. */
__host__ __device__ inline float row_max(float L0, float mx, uint32_t seen)
{
    if (seen == 0)
        return 0.0f;
    return L0 != L0 ? L0 : mx;
}

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
