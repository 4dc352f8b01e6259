/*
 * internal.h - device-independent pieces shared by the attention backends.
 *
 * The block selection of MRA-2 as functions for the backends: the score
 * and its key (out of line here; the rule itself is attention/select-rule.h,
 * which the CPU kernels and the CUDA device code compile too) and the
 * top-k with the spec's tie rule, so every backend chooses exactly the
 * same blocks.  Never included by public headers.
 */
#ifndef MRAD_ATTN_INTERNAL_H
#define MRAD_ATTN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Selection score S_IJ of the spec for one pair of blocks:
 *   L_IJ - r_I - 1e4*[empty] + 5e3*[|I-J| <= prior_diagonal/2, when
 *   prior_diagonal > 0] + 5e3*[I < prior_first] + 5e3*[J < prior_first].
 * `L` is the low-resolution logit, `r` its row maximum, `empty` is nonzero
 * when c_I * c_J == 0; I and J below 2^30.  Computed in double so that the
 * bonuses (5e3) do not swallow the differences between logits.  The rule
 * itself is attention/select-rule.h.  Pure, thread-safe.
 */
double attn_select_score(float L, float r, int empty, uint32_t I, uint32_t J,
                         uint32_t prior_first, uint32_t prior_diagonal);

/*
 * Order-preserving 64-bit key of a score: a larger score gives a larger
 * key.  -0 counts as +0 (they compare equal); NaN gets key 1, below every
 * number (-inf maps to 0x000fffffffffffff) and above the key 0 of pairs
 * outside the selection (ATTN_SELECT_KEY_NONE).  Pure.
 */
uint64_t attn_select_key(double s);

/*
 * Selection keys of one block row I of a head: key[J] =
 * attn_select_key(S_IJ) for J in [0, nb).  L_row: the nb logits L_IJ; r:
 * max over L_row (all J); cnt: the nb block counts c_J; cI: c_I.  Pure,
 * thread-safe.
 */
void attn_select_keys_row(const float *L_row, float r, const float *cnt,
                          float cI, uint32_t I, uint32_t nb,
                          uint32_t prior_first, uint32_t prior_diagonal,
                          uint64_t *key);

/*
 * The same for a block row of any grid: the diagonal band centred on key
 * block `center` (I + attn_grid_diag_shift()), and key[J] = 0 for J >= vis
 * (causally partial or hidden pairs, which the budget never picks).
 */
void attn_select_keys_row_at(const float *L_row, float r, const float *cnt,
                             float cI, uint32_t I, int64_t center, uint32_t vis,
                             uint32_t nb, uint32_t prior_first,
                             uint32_t prior_diagonal, uint64_t *key);

/* uint32_t elements of scratch attn_select_topk() needs for n keys. */
#define ATTN_SELECT_SCRATCH(n) ((size_t)(n) + ((size_t)1 << 16))

/*
 * Top-k of n keys: marks sel[i] = 1 for the k indices with the largest
 * key[i] (ties to the smaller index), 0 for the others.  Linear time
 * (radix select).  `scratch` holds ATTN_SELECT_SCRATCH(n) uint32_t and is
 * clobbered; n must be below 2^32.  k >= n selects everything.  Pure,
 * thread-safe.
 */
void attn_select_topk(const uint64_t *key, size_t n, size_t k, uint8_t *sel,
                      uint32_t *scratch);

/*
 * The row minimum of block row I (min_blocks_per_row = m): among the pairs
 * J < vis with a real key block (cnt[J] > 0), marks forced[J] = 1 for the
 * min(m, their number) of largest key (ties to the smaller J) and returns
 * how many; the caller calls it only for rows with real queries.  forced
 * must be zero on entry.  `scratch` holds vis uint32_t.  Pure.
 */
uint32_t attn_row_minimum(const uint64_t *key, const float *cnt, uint32_t vis,
                          uint32_t m, uint8_t *forced, uint32_t *scratch);

/*
 * The selection of a head with a row minimum: sel = forced plus the
 * (k - nforced) pairs of largest key among the others (none when nforced
 * >= k).  Sets the keys of the forced pairs to ATTN_SELECT_KEY_NONE (they
 * stay so: a caller that selects again with another k passes the same
 * forced and keys).  k must not exceed the pairs with a key above
 * ATTN_SELECT_KEY_NONE plus nforced; forced may be NULL when nforced is 0.
 */
void attn_select_with_minimum(uint64_t *key, const uint8_t *forced, size_t n,
                              uint64_t nforced, uint64_t k, uint8_t *sel,
                              uint32_t *scratch);

/*
 * The rows sampled for the error estimate: of the u rows U that MRA does
 * not compute exactly (ascending), sample t < m = min(n, u) is U[
 * attn_spread_index(t, u, m)] = U[floor((2t+1) u / 2m)], evenly spread
 * over U.
 */
static inline uint32_t attn_spread_index(uint32_t t, uint32_t u, uint32_t m)
{
    return (uint32_t)(((2ull * t + 1) * u) / (2ull * m));
}

/*
 * One term group of a row's softmax, as the estimate merges them: a
 * maximum logit mx, the sum l of exp(logit - mx) and the sum acc of
 * exp(logit - mx) * value (D floats, given apart).  A low-resolution term
 * is (L_IJ + ln c_J, 1, vh_J); an empty group has l = 0.
 */
struct attn_part {
    float mx, l;
};
/* Merges group (mx, l, acc) into the running (*M, *Lsum, out[D]) of a
 * row (start from M = -inf, Lsum = 0, out = 0). */
void attn_part_merge(float *M, float *Lsum, float *out, float mx, float l,
                     const float *acc, uint32_t D);

#ifdef __cplusplus
}
#endif
#endif /* MRAD_ATTN_INTERNAL_H */
