/*
 * accuracy.c - the device-independent parts of the accuracy controls
 * (attention/README.md, "Accuracy controls"): the row minimum of the
 * selection and the merge of a row's softmax terms by groups, with which
 * the estimate evaluates budgets.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/internal.h"
#include "attention/select-rule.h"

/* qsort's comparison takes no context: the keys of the row being sorted,
 * per thread (the backends sort rows on several threads). */
static _Thread_local const uint64_t *cmp_keys;

/* The selection's order: the larger key first, then the smaller index. */
static int by_key(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    uint64_t kx = cmp_keys[x], ky = cmp_keys[y];
    if (kx != ky)
        return kx > ky ? -1 : 1;
    return x < y ? -1 : x > y;
}

uint32_t attn_row_minimum(const uint64_t *key, const float *cnt, uint32_t vis,
                          uint32_t m, uint8_t *forced, uint32_t *scratch)
{
    uint32_t n = 0;
    for (uint32_t J = 0; J < vis; J++)
        if (cnt[J] > 0.0f)
            scratch[n++] = J;
    if (m >= n) {
        for (uint32_t t = 0; t < n; t++)
            forced[scratch[t]] = 1;
        return n;
    }
    if (m <= 8) {
        /* a few passes, each taking the best of what is left; J ascends,
         * so a tie keeps the smaller J */
        for (uint32_t t = 0; t < m; t++) {
            uint32_t best = UINT32_MAX;
            for (uint32_t c = 0; c < n; c++) {
                uint32_t J = scratch[c];
                if (!forced[J] && (best == UINT32_MAX || key[J] > key[best]))
                    best = J;
            }
            forced[best] = 1;
        }
        return m;
    }
    cmp_keys = key;
    qsort(scratch, n, sizeof *scratch, by_key);
    for (uint32_t t = 0; t < m; t++)
        forced[scratch[t]] = 1;
    return m;
}

void attn_select_with_minimum(uint64_t *key, const uint8_t *forced, size_t n,
                              uint64_t nforced, uint64_t k, uint8_t *sel,
                              uint32_t *scratch)
{
    if (nforced)
        for (size_t i = 0; i < n; i++)
            key[i] = forced[i] ? ATTN_SELECT_KEY_NONE : key[i];
    attn_select_topk(key, n, k > nforced ? k - nforced : 0, sel, scratch);
    if (nforced)
        for (size_t i = 0; i < n; i++)
            sel[i] |= forced[i];
}

void attn_part_merge(float *M, float *Lsum, float *out, float mx, float l,
                     const float *acc, uint32_t D)
{
    if (!(l > 0.0f))
        return;
    if (mx > *M) {
        float a = expf(*M - mx); /* 0 while the row is empty */
        *Lsum = *Lsum * a + l;
        for (uint32_t e = 0; e < D; e++)
            out[e] = out[e] * a + acc[e];
        *M = mx;
    } else {
        float a = expf(mx - *M);
        *Lsum += l * a;
        for (uint32_t e = 0; e < D; e++)
            out[e] += acc[e] * a;
    }
}
