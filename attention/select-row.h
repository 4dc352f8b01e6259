/*
 * select-row.h - the selection keys of one block row, as inline functions
 * so that each CPU kernel variant compiles them for its own ISA (the loop
 * vectorises on AVX2 and AVX-512, not on the SSE2 baseline).  Every
 * operation is exact or a comparison, so each compilation gives the same
 * keys bit for bit.  attn_select_keys_row() (select.c) is the reference.
 */
#ifndef MRAD_ATTN_SELECT_ROW_H
#define MRAD_ATTN_SELECT_ROW_H

#include <stdint.h>
#include <string.h>

#include "attention/internal.h"

/* attn_select_key() without branches: NaN gets key 0 through the mask of
 * s == s. */
static inline uint64_t attn_select_key_inline(double s)
{
    s += 0.0; /* -0 -> +0 */
    uint64_t u;
    memcpy(&u, &s, sizeof u);
    uint64_t neg = (uint64_t)0 - (u >> 63); /* all ones for a negative s */
    uint64_t k = u ^ (neg | 0x8000000000000000ull);
    return k & ((uint64_t)0 - (uint64_t)(s == s));
}

/* The terms of attn_select_score() in the same order, each added whether
 * or not it applies (as 0 * its size when it does not): x - 0 and x + 0
 * are x, but for -0 + 0 = +0, which has the key of -0.  So the keys are
 * those of attn_select_score(), without a branch per pair. */
static inline void
attn_select_keys_row_inline(const float *L_row, float r, const float *cnt,
                            float cI, uint32_t I, uint32_t nb,
                            uint32_t prior_first, uint32_t prior_diagonal,
                            uint64_t *key)
{
    double rd = (double)r;
    double first_I = I < prior_first ? ATTN_SCORE_PRIOR : 0.0;
    /* the diagonal band [lo, hi] (empty without the prior); nb < 2^16, so
     * every bound fits in int32_t */
    int32_t half = (int32_t)(prior_diagonal / 2 < nb ? prior_diagonal / 2 : nb);
    int32_t lo = prior_diagonal > 0 ? (int32_t)I - half : 1;
    int32_t hi = prior_diagonal > 0 ? (int32_t)I + half : 0;
    int32_t pf = (int32_t)(prior_first < nb ? prior_first : nb);
    int32_t all_empty = cI == 0.0f;
    for (int32_t J = 0; J < (int32_t)nb; J++) {
        int32_t empty = all_empty | (cnt[J] == 0.0f);
        int32_t band = (J >= lo) & (J <= hi);
        double s = (double)L_row[J] - rd;
        s -= (double)empty * ATTN_SCORE_EMPTY;
        s += (double)band * ATTN_SCORE_PRIOR;
        s += first_I;
        s += (double)(J < pf) * ATTN_SCORE_PRIOR;
        key[J] = attn_select_key_inline(s);
    }
}

#endif /* MRAD_ATTN_SELECT_ROW_H */
