/*
 * select.c - block selection of MRA-2, shared by every backend.
 *
 * The score of a pair of blocks is the low-resolution logit relative to its
 * row maximum, pushed down for empty blocks and up for the priors (see
 * attention/README.md).  The selected set is the k pairs with the largest
 * scores over a head's whole grid, ties to the smaller flat index: a strict
 * total order, so the set is unique and a quickselect finds it in linear
 * expected time whatever pivots it happens to use.
 */
#include <math.h>

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

/* Strict total order "a ranks before b": larger score first, then smaller
 * index; NaN ranks after every number (and among NaNs by index). */
static inline int before(const double *S, uint32_t a, uint32_t b)
{
    double x = S[a], y = S[b];
    int xn = isnan(x), yn = isnan(y);
    if (xn || yn) {
        if (xn != yn)
            return yn;
        return a < b;
    }
    if (x != y)
        return x > y;
    return a < b;
}

static inline void swap32(uint32_t *a, uint32_t *b)
{
    uint32_t t = *a;
    *a = *b;
    *b = t;
}

void attn_select_topk(const double *S, size_t n, size_t k, uint8_t *sel,
                      uint32_t *scratch)
{
    if (k >= n) {
        for (size_t i = 0; i < n; i++)
            sel[i] = 1;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        sel[i] = 0;
        scratch[i] = (uint32_t)i;
    }
    if (k == 0)
        return;
    /* Quickselect: afterwards scratch[0..k) holds the k top indices.
     * Pivots come from a fixed xorshift sequence (median of three) so the
     * expected time is linear on any input, including sorted grids. */
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    size_t lo = 0, hi = n; /* the k-th boundary lies in [lo, hi) */
    while (hi - lo > 1) {
        size_t len = hi - lo, c[3];
        for (int t = 0; t < 3; t++) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            c[t] = lo + (size_t)(rng % len);
        }
        /* median of the three candidates under `before` */
        uint32_t a = scratch[c[0]], b = scratch[c[1]], d = scratch[c[2]];
        uint32_t piv;
        if (before(S, a, b))
            piv = before(S, b, d) ? b : (before(S, a, d) ? d : a);
        else
            piv = before(S, a, d) ? a : (before(S, b, d) ? d : b);
        /* Three-way partition: [lo,lt) before piv, [lt,gt) == piv (only
         * the pivot itself, the order being strict), [gt,hi) after. */
        size_t lt = lo, i = lo, gt = hi;
        while (i < gt) {
            uint32_t x = scratch[i];
            if (x == piv) {
                i++;
            } else if (before(S, x, piv)) {
                swap32(&scratch[lt], &scratch[i]);
                lt++;
                i++;
            } else {
                gt--;
                swap32(&scratch[i], &scratch[gt]);
            }
        }
        if (k <= lt)
            hi = lt;
        else if (k >= gt)
            lo = gt;
        else
            break; /* the pivot sits at the boundary */
    }
    for (size_t i = 0; i < k; i++)
        sel[scratch[i]] = 1;
}
