/*
 * attn-test.h - test hooks of the attention library.
 *
 * Test-only: unit tests and the test build of the daemon include it, so
 * that they can make a backend fail on demand.  Public headers never
 * include it, and release code paths never call what it declares.  The
 * hook's only effect is the ATTN_EFAULT error of attn.h, which nothing
 * else produces.
 */
#ifndef MRAD_ATTN_TEST_H
#define MRAD_ATTN_TEST_H

#include "attention/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fault injection: the next `count` calls of attn_backend_compute() or
 * attn_backend_compute_batch() on `be` fail with ATTN_EFAULT before the
 * backend sees them (a batch is one call: every problem in it fails);
 * count <= 0 disables the injection.  Thread-safe: may be called from any
 * thread while another computes. */
void attn_backend_inject_fault(struct attn_backend *be, int count);

#ifdef __cplusplus
}
#endif
#endif /* MRAD_ATTN_TEST_H */
