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

/* Computes problem p (method, shape, mask, scale, budget, priors; its
 * tensor pointers are ignored) on the float64 inputs q [B,H,N,D], k and v
 * [B,Hkv,N,D] into out [B,H,N,D].  *selected receives |T| summed over
 * heads (may be NULL).  Returns 0, or -1 if memory ran out. */
int ref64_attention(const struct attn_problem *p, const double *q,
                    const double *k, const double *v, double *out,
                    uint64_t *selected);

#endif /* MRAD_TEST_REF64_H */
