/*
 * attn-fixture.h - test fixture of the attention unit tests: one problem
 * with random inputs in its dtype, the same inputs as float64 (rounded to
 * the dtype, so the reference sees exactly what the backend sees), and
 * helpers to run it and compare with the float64 reference.
 *
 * The backend under test comes from the environment variable
 * ATTN_TEST_BACKEND ("cpu" when unset), so the same tests run against
 * every backend.
 */
#ifndef MRAD_TEST_ATTN_FIXTURE_H
#define MRAD_TEST_ATTN_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attn.h"

struct fx {
    struct attn_problem p;
    void *q, *k, *v, *out;   /* in p.dtype */
    double *q64, *k64, *v64; /* the same values as float64 */
    uint8_t *mask;           /* [B, Nk], used when p.mask is set */
    uint8_t *qmask;          /* [B, Nq], used when p.q_mask is set */
    size_t nq, nkv;          /* elements of q/out and of k/v */
};

/* Allocates a problem with inputs uniform in [-amp, amp] from `seed` (a
 * fixed generator: same seed, same tensors).  Mask buffer allocated, all
 * ones, but p.mask left NULL.  Aborts the test on allocation failure. */
void fx_init(struct fx *f, enum attn_method method, enum attn_dtype dt,
             uint32_t B, uint32_t H, uint32_t Hkv, uint32_t N, uint32_t D,
             uint64_t seed, double amp);
/* The same with Nq queries and Nk keys. */
void fx_init_cross(struct fx *f, enum attn_method method, enum attn_dtype dt,
                   uint32_t B, uint32_t H, uint32_t Hkv, uint32_t Nq,
                   uint32_t Nk, uint32_t D, uint64_t seed, double amp);
void fx_free(struct fx *f);
/* Turns the key mask on with each key real with probability `keep`. */
void fx_mask_random(struct fx *f, double keep, uint64_t seed);
/* Masks keys [t0, t1) of every batch entry (turns the mask on). */
void fx_mask_range(struct fx *f, uint32_t t0, uint32_t t1);
/* Turns the query mask on with each query real with probability `keep`. */
void fx_qmask_random(struct fx *f, double keep, uint64_t seed);

/* The backend name of ATTN_TEST_BACKEND, "cpu" by default. */
const char *fx_backend_name(void);
/* Nonzero when the backend under test is the CPU. */
int fx_backend_is_cpu(void);
/* Creates the backend under test with `threads` (0 = default). */
struct attn_backend *fx_backend(int threads);

/* Relative Frobenius error of f->out against the float64 reference of
 * the same problem (absolute when the reference is all zero).  Stores the
 * reference's |T| in *selected when not NULL. */
double fx_ref_error(const struct fx *f, uint64_t *selected);
/* Tolerance for relative error of the dtype on the backend under test. */
double fx_tolerance(enum attn_dtype dt);
/* Runs f on be and checks it against the float64 reference: the call
 * succeeds, the statistics are the spec's (blocks_total = the pairs not
 * hidden, B*H*nbq*nbk without causality,
 * blocks_selected = the reference's |T|, density their ratio), every
 * output is finite, and the relative error is below fx_tolerance().
 * `what` names the case in failure messages.  Returns the error. */
double fx_check(struct attn_backend *be, struct fx *f, const char *what);
/* Output element i as float. */
float fx_out(const struct fx *f, size_t i);

/*
 * Runs a cmocka group once per path the CPU backend computes bf16 and f16
 * on: where its default kernels put them on a matrix engine (the "amx"
 * path), the group runs there and again on the f32 kernels alone
 * (MRAD_ISA=avx512), so every test covers both.  Elsewhere, on another
 * backend, or with MRAD_ISA already set, it runs once.  Returns the
 * number of failed tests (cmocka_run_group_tests()'s value).
 */
struct CMUnitTest;
int fx_run_paths(const char *name, const struct CMUnitTest *tests, size_t n,
                 int (*setup)(void **), int (*teardown)(void **));
#define FX_RUN_PATHS(tests, setup, teardown)                                   \
    fx_run_paths(#tests, tests, sizeof(tests) / sizeof((tests)[0]), setup,     \
                 teardown)

#endif /* MRAD_TEST_ATTN_FIXTURE_H */
