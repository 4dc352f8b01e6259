/*
 * select.c - block selection of MRA-2, shared by every backend.
 *
 * The score of a pair of blocks is the low-resolution logit relative to its
 * row maximum, pushed down for empty blocks and up for the priors (see
 * attention/README.md).  The selected set is the k pairs with the largest
 * scores over a head's whole grid, ties to the smaller flat index: a strict
 * total order, so the set is unique; a radix select on order-preserving
 * integer keys finds it in linear time with sequential memory access.
 */
#include <math.h>
#include <string.h>

#include "attention/internal.h"

double attn_select_score(float L, float r, int empty, uint32_t I, uint32_t J,
                         uint32_t prior_first, uint32_t prior_diagonal)
{
    double s = (double)L - (double)r;
    if (empty)
        s -= ATTN_SCORE_EMPTY;
    if (prior_diagonal > 0) {
        uint32_t dist = I > J ? I - J : J - I;
        if (dist <= prior_diagonal / 2)
            s += ATTN_SCORE_PRIOR;
    }
    if (I < prior_first)
        s += ATTN_SCORE_PRIOR;
    if (J < prior_first)
        s += ATTN_SCORE_PRIOR;
    return s;
}

void attn_select_scores_row(const float *L_row, float r, const float *cnt,
                            float cI, uint32_t I, uint32_t nb,
                            uint32_t prior_first, uint32_t prior_diagonal,
                            double *S)
{
    for (uint32_t J = 0; J < nb; J++)
        S[J] = attn_select_score(L_row[J], r, cI == 0.0f || cnt[J] == 0.0f, I,
                                 J, prior_first, prior_diagonal);
}

/* Order-preserving 64-bit key of a score: a larger score gives a larger
 * key.  -0 counts as +0 (they compare equal), NaN gets key 0, below every
 * number (-inf maps to 0x000fffffffffffff). */
static inline uint64_t score_key(double s)
{
    if (isnan(s))
        return 0;
    s += 0.0; /* -0 -> +0 */
    uint64_t u;
    memcpy(&u, &s, sizeof u);
    return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}

#define DIGIT_BITS 12
#define DIGIT_SIZE (1u << DIGIT_BITS)

/* Among the counts hist[], from the largest digit down, finds the digit
 * holding the want-th largest element; lowers *want by the elements above
 * it. */
static uint32_t pick_digit(const size_t *hist, uint32_t size, size_t *want)
{
    uint32_t d = size;
    while (d-- > 0) {
        if (*want <= hist[d])
            return d;
        *want -= hist[d];
    }
    return 0; /* unreachable: the counts add up to at least *want */
}

void attn_select_topk(const double *S, size_t n, size_t k, uint8_t *sel,
                      uint32_t *scratch)
{
    if (k >= n) {
        for (size_t i = 0; i < n; i++)
            sel[i] = 1;
        return;
    }
    memset(sel, 0, n);
    if (k == 0)
        return;
    /*
     * Radix select, most significant digit first.  A first pass counts the
     * top digit of every key; a second marks keys with a larger top digit
     * and gathers the ones on the boundary digit, in index order, into
     * scratch.  Each later digit narrows that list the same way, keeping
     * its order.  What remains at the end are keys equal to the k-th
     * largest, of which the first `want` (smallest indices) complete the
     * set: exactly the spec's tie rule.  Two passes over the grid plus
     * passes over a shrinking list: linear time.
     */
    size_t hist[DIGIT_SIZE];
    size_t want = k;
    const int top_shift = 64 - DIGIT_BITS;
    memset(hist, 0, sizeof hist);
    for (size_t i = 0; i < n; i++)
        hist[score_key(S[i]) >> top_shift]++;
    uint32_t d = pick_digit(hist, DIGIT_SIZE, &want);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t dig = (uint32_t)(score_key(S[i]) >> top_shift);
        if (dig > d)
            sel[i] = 1;
        else if (dig == d)
            scratch[m++] = (uint32_t)i;
    }
    for (int shift = top_shift - DIGIT_BITS; shift > -DIGIT_BITS;
         shift -= DIGIT_BITS) {
        int sh = shift < 0 ? 0 : shift;
        uint32_t size = shift < 0 ? 1u << (DIGIT_BITS + shift) : DIGIT_SIZE;
        memset(hist, 0, size * sizeof *hist);
        for (size_t c = 0; c < m; c++)
            hist[(score_key(S[scratch[c]]) >> sh) & (size - 1)]++;
        d = pick_digit(hist, size, &want);
        size_t keep = 0;
        for (size_t c = 0; c < m; c++) {
            uint32_t dig =
                (uint32_t)(score_key(S[scratch[c]]) >> sh) & (size - 1);
            if (dig > d)
                sel[scratch[c]] = 1;
            else if (dig == d)
                scratch[keep++] = scratch[c];
        }
        m = keep;
    }
    for (size_t c = 0; c < want && c < m; c++)
        sel[scratch[c]] = 1;
}
