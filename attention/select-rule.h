/*
 * select-rule.h - the block-selection score of MRA-2 and its
 * order-preserving key, written once for every place that computes them:
 * host C (attention/select.c), the CPU kernels (attention/cpu/
 * kernels-body.h compiles the row loop below for each ISA) and the CUDA
 * device code (attention/cuda/plan.cu).  So the CPU and the GPU pick the
 * same pairs from the same logits.
 *
 * The score of the spec (attention/README.md), in double so that the
 * bonuses do not swallow the differences between logits:
 *   S_IJ = L_IJ - r_I - 1e4*[c_I*c_J = 0]
 *          + 5e3*[prior_diagonal > 0 and |J - c(I)| <= prior_diagonal/2]
 *          + 5e3*[I < prior_first] + 5e3*[J < prior_first],
 * where c(I) is the key block on the diagonal of block row I (I itself
 * when there are as many queries as keys; attn_grid_diag_shift()).  Pairs
 * the budget may not pick (causally partial or hidden) get the key
 * ATTN_SELECT_KEY_NONE, below every score's key.
 * The terms are added in that order, each whether or not it applies (as
 * 0 * its size when it does not), so a loop over a row has no branch per
 * pair and vectorises.  x - 0 and x + 0 are x, except -0 + 0 = +0, which
 * has the same key as -0; every product is exact, so a compiler that
 * contracts a*b+c into an FMA gets the same bits.  Every compilation of
 * these functions therefore gives the same keys.
 *
 * The bounds of a block row of a causal grid (which pairs are visible,
 * partial or hidden) and the diagonal's shift live here too, for the same
 * reason: attention/problem.c (attn_grid_row(), attn_grid_diag_shift())
 * and the CUDA kernels compute them with the same functions.
 *
 * Pure functions, no state.  Never included by public headers.
 */
#ifndef MRAD_ATTN_SELECT_RULE_H
#define MRAD_ATTN_SELECT_RULE_H

#include <stdint.h>
#include <string.h>

#include "attention/attn.h"

/* Callable from host code and, under nvcc, from device code too. */
#ifdef __CUDACC__
#define ATTN_HOST_DEVICE __host__ __device__
#else
#define ATTN_HOST_DEVICE
#endif

/* ---- the block grid of a head ------------------------------------------ */

/* floor(a / ATTN_BLOCK), for either sign of a. */
static inline ATTN_HOST_DEVICE int64_t attn_floor_blocks(int64_t a)
{
    int64_t q = a / ATTN_BLOCK;
    return (a % ATTN_BLOCK != 0 && a < 0) ? q - 1 : q;
}

/* x clamped to [0, nbk]. */
static inline ATTN_HOST_DEVICE uint32_t attn_clamp_blocks(int64_t x,
                                                          uint32_t nbk)
{
    return x < 0 ? 0 : x > (int64_t)nbk ? nbk : (uint32_t)x;
}

/* vis(I) and seen(I) of block row I of a grid of nbk key blocks whose
 * query i sits at key position i + off (off = Nk - Nq): the rows of query
 * block I sit at 32 I + off .. 32 I + 31 + off.  A key block J is visible
 * when its last key is seen by the first row (32 J + 31 <= 32 I + off),
 * hidden when its first key is past the last row (32 J > 32 I + 31 +
 * off), partial in between.  Without causality every block is visible.
 * attn_grid_row() of attn.h. */
static inline ATTN_HOST_DEVICE void
attn_grid_row_inline(uint32_t I, int64_t off, int causal, uint32_t nbk,
                     uint32_t *vis, uint32_t *seen)
{
    if (!causal) {
        *vis = *seen = nbk;
        return;
    }
    const int64_t b = ATTN_BLOCK;
    *vis = attn_clamp_blocks(attn_floor_blocks(b * I + off + 1), nbk);
    *seen = attn_clamp_blocks(attn_floor_blocks(b * I + b - 1 + off) + 1, nbk);
}

/* floor(off / 32): block row I's diagonal is key block I + this
 * (attn_grid_diag_shift() of attn.h; 0 when Nq == Nk). */
static inline ATTN_HOST_DEVICE int64_t attn_grid_diag_shift_inline(int64_t off)
{
    return attn_floor_blocks(off);
}

/* ---- the selection score and its key ------------------------------------ */

/* The key of a pair outside the selection (causally partial or hidden):
 * every score's key is larger, NaN's included. */
#define ATTN_SELECT_KEY_NONE 0

/* Penalty for a pair with an empty block, and bonus for a forced pair. */
#define ATTN_SCORE_EMPTY 1e4
#define ATTN_SCORE_PRIOR 5e3

/* Block indices I, J must stay below this bound, so that the row's bounds
 * below fit int32_t; both backends have nb * nb < 2^32, so nb < 2^16. */
#define ATTN_SELECT_MAX_INDEX 0x3fffffff

/* What the scores of block row I take from the row, computed once per row
 * (int32_t bounds: integer comparisons that vectorise on every ISA). */
struct attn_select_row {
    double r;       /* r_I, the row maximum */
    double first_I; /* ATTN_SCORE_PRIOR when I < prior_first, else 0 */
    int32_t lo, hi; /* the diagonal band: lo <= J <= hi (lo > hi: none) */
    int32_t pf;     /* the forced columns: J < pf */
};

/* The row of block row I whose diagonal band is centred on key block
 * `center` (I + attn_grid_diag_shift()). */
static inline ATTN_HOST_DEVICE struct attn_select_row
attn_select_row_init_at(float r, uint32_t I, int64_t center,
                        uint32_t prior_first, uint32_t prior_diagonal)
{
    struct attn_select_row row;
    /* |J - center| <= half; no J at all for half = -1 */
    int32_t half = prior_diagonal / 2 < ATTN_SELECT_MAX_INDEX
                       ? (int32_t)(prior_diagonal / 2)
                       : ATTN_SELECT_MAX_INDEX;
    if (prior_diagonal == 0)
        half = -1;
    /* keep the band's ends inside int32_t; a centre far outside the grid
     * leaves the band empty there either way */
    if (center > ATTN_SELECT_MAX_INDEX)
        center = ATTN_SELECT_MAX_INDEX;
    if (center < -ATTN_SELECT_MAX_INDEX)
        center = -ATTN_SELECT_MAX_INDEX;
    row.r = (double)r;
    row.first_I = I < prior_first ? ATTN_SCORE_PRIOR : 0.0;
    row.lo = (int32_t)center - half;
    row.hi = (int32_t)center + half;
    if (half < 0)
        row.lo = 1, row.hi = 0;
    row.pf = prior_first < ATTN_SELECT_MAX_INDEX ? (int32_t)prior_first
                                                 : ATTN_SELECT_MAX_INDEX;
    return row;
}

/* The row of block row I of a square grid (diagonal at J = I). */
static inline ATTN_HOST_DEVICE struct attn_select_row
attn_select_row_init(float r, uint32_t I, uint32_t prior_first,
                     uint32_t prior_diagonal)
{
    return attn_select_row_init_at(r, I, (int64_t)I, prior_first,
                                   prior_diagonal);
}

/* S_IJ of column J of the row: `L` is the low-resolution logit L_IJ,
 * `empty` is 1 when c_I * c_J == 0, else 0. */
static inline ATTN_HOST_DEVICE double
attn_select_row_score(const struct attn_select_row *row, float L, int32_t empty,
                      int32_t J)
{
    int32_t band = (J >= row->lo) & (J <= row->hi);
    double s = (double)L - row->r;
    s -= (double)empty * ATTN_SCORE_EMPTY;
    s += (double)band * ATTN_SCORE_PRIOR;
    s += row->first_I;
    s += (double)(J < row->pf) * ATTN_SCORE_PRIOR;
    return s;
}

/* S_IJ of one pair, the row taken from its arguments. */
static inline ATTN_HOST_DEVICE double
attn_select_score_inline(float L, float r, int32_t empty, uint32_t I,
                         uint32_t J, uint32_t prior_first,
                         uint32_t prior_diagonal)
{
    struct attn_select_row row =
        attn_select_row_init(r, I, prior_first, prior_diagonal);
    return attn_select_row_score(&row, L, empty, (int32_t)J);
}

/* The order-preserving key of a score: a larger score gives a larger key;
 * -0 counts as +0, NaN gets key 1 (below every number, -inf included, and
 * above ATTN_SELECT_KEY_NONE) through the mask of s == s.  No branches. */
static inline ATTN_HOST_DEVICE uint64_t attn_select_key_inline(double s)
{
    s += 0.0; /* -0 -> +0 */
    uint64_t u;
    memcpy(&u, &s, sizeof u);
    uint64_t neg = (uint64_t)0 - (u >> 63); /* all ones for a negative s */
    uint64_t k = u ^ (neg | 0x8000000000000000ull);
    uint64_t num = (uint64_t)0 - (uint64_t)(s == s);
    return (k & num) | (~num & 1);
}

/* The key of pair (I, J): the key of attn_select_score_inline(). */
static inline ATTN_HOST_DEVICE uint64_t
attn_select_pair_key(float L, float r, int32_t empty, uint32_t I, uint32_t J,
                     uint32_t prior_first, uint32_t prior_diagonal)
{
    return attn_select_key_inline(attn_select_score_inline(
        L, r, empty, I, J, prior_first, prior_diagonal));
}

/* The keys of block row I: key[J] for J in [0, nb), from the row's logits
 * L_row, its maximum r, the key block counts cnt and the query block's
 * count cI; the diagonal band is centred on key block `center`, and the
 * pairs J >= vis (causally partial or hidden) get ATTN_SELECT_KEY_NONE.  A
 * plain loop that each CPU kernel variant compiles for its own ISA (it
 * vectorises on AVX2 and AVX-512). */
static inline void
attn_select_keys_row_at_inline(const float *L_row, float r, const float *cnt,
                               float cI, uint32_t I, int64_t center,
                               uint32_t vis, uint32_t nb, uint32_t prior_first,
                               uint32_t prior_diagonal, uint64_t *key)
{
    struct attn_select_row row =
        attn_select_row_init_at(r, I, center, prior_first, prior_diagonal);
    int32_t all_empty = cI == 0.0f;
    for (int32_t J = 0; J < (int32_t)nb; J++) {
        uint64_t k = attn_select_key_inline(attn_select_row_score(
            &row, L_row[J], all_empty | (cnt[J] == 0.0f), J));
        key[J] = k & ((uint64_t)0 - (uint64_t)(J < (int32_t)vis));
    }
}

/* The keys of block row I of a square grid, every pair selectable. */
static inline void attn_select_keys_row_inline(
    const float *L_row, float r, const float *cnt, float cI, uint32_t I,
    uint32_t nb, uint32_t prior_first, uint32_t prior_diagonal, uint64_t *key)
{
    attn_select_keys_row_at_inline(L_row, r, cnt, cI, I, (int64_t)I, nb, nb,
                                   prior_first, prior_diagonal, key);
}

#endif /* MRAD_ATTN_SELECT_RULE_H */
