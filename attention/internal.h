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

#ifdef __cplusplus
}
#endif
#endif /* MRAD_ATTN_INTERNAL_H */
