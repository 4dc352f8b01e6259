/*
 * ref64.h - float64 ground truth of MRA-2 attention for the unit tests,
 * written straight from the method as attention/README.md states it and
 * sharing no code with the library (its own selection by full sort, its
 * own softmax), so the tests compare two independent implementations.
 * Dense per head: test sizes only.
 */
#ifndef MRAD_TEST_REF64_H
#define MRAD_TEST_REF64_H

#include <stdint.h>

#include "attention/attn.h"

/* Computes problem p (method, shape, masks, causality, scale, budget,
 * priors; its tensor pointers but mask and q_mask are ignored) on the
 * float64 inputs q [B,H,Nq,D], k and v [B,Hkv,Nk,D] into out [B,H,Nq,D].
 * *selected receives |T| summed over heads, forced partial pairs included
 * (the pairs not hidden, for exact; may be NULL).  Returns 0, or -1 if
 * memory ran out. */
int ref64_attention(const struct attn_problem *p, const double *q,
                    const double *k, const double *v, double *out,
                    uint64_t *selected);

/* The same, with the accuracy controls (min_blocks_per_row,
 * error_samples, target_error) and each head's statistics in heads[B*H]:
 * its budget, selected and total pairs, density, and the estimate's sums
 * and value, computed from the reference's own float64 output. */
int ref64_attention_heads(const struct attn_problem *p, const double *q,
                          const double *k, const double *v, double *out,
                          struct attn_head_stats *heads);

/* Pairs of blocks of one head that causality does not hide (nbq * nbk
 * without it), by the spec's classification. */
uint64_t ref64_pairs_seen(const struct attn_problem *p);

#endif /* MRAD_TEST_REF64_H */
