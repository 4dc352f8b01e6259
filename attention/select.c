/*
 * select.c - block selection of MRA-2, shared by every backend.
 *
 * The score of a pair of blocks is the low-resolution logit relative to its
 * row maximum, pushed down for empty blocks and up for the priors (the
 * rule and its keys: attention/select-rule.h, shared with the CPU kernels
 * and the CUDA device code).  The selected set is the k pairs with the largest
 * scores over a head's whole grid, ties to the smaller flat index: a strict
 * total order, so the set is unique; a radix select on order-preserving
 * integer keys finds it in linear time with sequential memory access.
 */
#include <math.h>
#include <string.h>

#include "attention/internal.h"
#include "attention/select-rule.h"

double attn_select_score(float L, float r, int empty, uint32_t I, uint32_t J,
                         uint32_t prior_first, uint32_t prior_diagonal)
{
    return attn_select_score_inline(L, r, empty != 0, I, J, prior_first,
                                    prior_diagonal);
}

uint64_t attn_select_key(double s)
{
    return attn_select_key_inline(s);
}

void attn_select_keys_row(const float *L_row, float r, const float *cnt,
                          float cI, uint32_t I, uint32_t nb,
                          uint32_t prior_first, uint32_t prior_diagonal,
                          uint64_t *key)
{
    attn_select_keys_row_inline(L_row, r, cnt, cI, I, nb, prior_first,
                                prior_diagonal, key);
}

void attn_select_keys_row_at(const float *L_row, float r, const float *cnt,
                             float cI, uint32_t I, int64_t center, uint32_t vis,
                             uint32_t nb, uint32_t prior_first,
                             uint32_t prior_diagonal, uint64_t *key)
{
    attn_select_keys_row_at_inline(L_row, r, cnt, cI, I, center, vis, nb,
                                   prior_first, prior_diagonal, key);
}

/* Digits of the radix select: the first one wide (the sign, the exponent
 * and five bits of mantissa of a score), so that on large grids few keys
 * share the boundary digit; then narrower ones for the shrinking list. */
#define FIRST_BITS_LARGE 16
#define FIRST_BITS_SMALL 8
#define DIGIT_BITS 12

/* Among the counts hist[], from the largest digit down, finds the digit
 * holding the want-th largest element; lowers *want by the elements above
 * it. */
static uint32_t pick_digit(const uint32_t *hist, uint32_t size, size_t *want)
{
    uint32_t d = size;
    while (d-- > 0) {
        if (*want <= hist[d])
            return d;
        *want -= hist[d];
    }
    return 0; /* unreachable: the counts add up to at least *want */
}

void attn_select_topk(const uint64_t *key, size_t n, size_t k, uint8_t *sel,
                      uint32_t *scratch)
{
    if (k >= n) {
        for (size_t i = 0; i < n; i++)
            sel[i] = 1;
        return;
    }
    if (k == 0) {
        memset(sel, 0, n);
        return;
    }
    /*
     * Radix select, most significant digit first.  A first pass counts the
     * top digit of every key; a second marks keys with a larger top digit
     * and gathers the ones on the boundary digit, in index order, into
     * the list.  Each later digit narrows that list the same way, keeping
     * its order.  What remains at the end are keys equal to the k-th
     * largest, of which the first `want` (smallest indices) complete the
     * set: exactly the spec's tie rule.  Two passes over the grid plus
     * passes over a shrinking list: linear time.  The passes are
     * branch-free: on random scores a branch per key mispredicts often.
     */
    uint32_t *hist = scratch + n; /* ATTN_SELECT_SCRATCH(n) */
    uint32_t *list = scratch;
    size_t want = k;
    int bits = n >= ((size_t)1 << 16) ? FIRST_BITS_LARGE : FIRST_BITS_SMALL;
    int shift = 64 - bits;
    uint32_t size = 1u << bits;
    memset(hist, 0, size * sizeof *hist);
    for (size_t i = 0; i < n; i++)
        hist[key[i] >> shift]++;
    uint32_t d = pick_digit(hist, size, &want);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t dig = (uint32_t)(key[i] >> shift);
        sel[i] = dig > d;
        list[m] = (uint32_t)i;
        m += dig == d;
    }
    while (shift > 0 && m > want) {
        bits = shift < DIGIT_BITS ? shift : DIGIT_BITS;
        shift -= bits;
        size = 1u << bits;
        memset(hist, 0, size * sizeof *hist);
        for (size_t c = 0; c < m; c++)
            hist[(key[list[c]] >> shift) & (size - 1)]++;
        d = pick_digit(hist, size, &want);
        size_t keep = 0;
        for (size_t c = 0; c < m; c++) {
            uint32_t i = list[c];
            uint32_t dig = (uint32_t)(key[i] >> shift) & (size - 1);
            sel[i] = dig > d;
            list[keep] = i;
            keep += dig == d;
        }
        m = keep;
    }
    for (size_t c = 0; c < want && c < m; c++)
        sel[list[c]] = 1;
}
