/*
 * test-backend.c - tests of attention/backend.c and the backend contract:
 * creation by name, errors, device/health/memory queries, a batch where
 * bad problems fail alone, statistics, fault injection, and determinism:
 * bitwise the same output whatever the thread count (CPU only) and whether
 * a problem runs alone or inside a batch.  Every CPU kernel variant this
 * machine runs is also checked against the reference.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "attention/attn-test.h"
#include "tests/unit/attention/attn-fixture.h"

static void test_create_by_name(void **state)
{
    (void)state;
    struct attn_backend *be = NULL;
    struct attn_config cfg = {0};
    assert_int_equal(attn_backend_new("cpu", &cfg, &be), ATTN_OK);
    assert_string_equal(attn_backend_name(be), "cpu");
    const char *dev = attn_backend_device(be);
    assert_non_null(dev);
    assert_non_null(strstr(dev, "threads"));
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    uint64_t used = 1, total = 1;
    assert_int_equal(attn_backend_memory(be, &used, &total), ATTN_ENOTSUP);
    attn_backend_free(be);

    /* NULL config means defaults */
    assert_int_equal(attn_backend_new("cpu", NULL, &be), ATTN_OK);
    attn_backend_free(be);

    /* auto: CUDA when present, else the CPU */
    assert_int_equal(attn_backend_new("auto", &cfg, &be), ATTN_OK);
    assert_true(!strcmp(attn_backend_name(be), "cpu") ||
                !strcmp(attn_backend_name(be), "cuda"));
    attn_backend_free(be);

    /* cuda: a backend or "no device" */
    int rc = attn_backend_new("cuda", &cfg, &be);
    assert_true(rc == ATTN_OK || rc == ATTN_ENODEV);
    if (rc == ATTN_OK) {
        assert_string_equal(attn_backend_name(be), "cuda");
        attn_backend_free(be);
    } else {
        assert_null(be);
    }

    assert_int_equal(attn_backend_new("tpu", &cfg, &be), ATTN_EINVAL);
    assert_null(be);
    assert_int_equal(attn_backend_new("cpu", &cfg, NULL), ATTN_EINVAL);
    cfg.isa = "no-such-isa";
    assert_int_equal(attn_backend_new("cpu", &cfg, &be), ATTN_ENOTSUP);
    cfg.isa = "portable";
    assert_int_equal(attn_backend_new("cpu", &cfg, &be), ATTN_OK);
    assert_non_null(strstr(attn_backend_device(be), "portable"));
    attn_backend_free(be);
    attn_backend_free(NULL);
}

static void test_null_arguments(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(1);
    int err = 0;
    assert_int_equal(attn_backend_compute(be, NULL, NULL), ATTN_EINVAL);
    assert_int_equal(attn_backend_compute_batch(be, NULL, 1, NULL, &err),
                     ATTN_EINVAL);
    assert_int_equal(attn_backend_compute_batch(be, NULL, 0, NULL, &err),
                     ATTN_OK);
    struct fx f;
    fx_init(&f, ATTN_EXACT, ATTN_F32, 1, 1, 1, 8, 4, 1, 1.0);
    const struct attn_problem *pp = &f.p;
    assert_int_equal(attn_backend_compute_batch(be, &pp, 1, NULL, NULL),
                     ATTN_EINVAL);
    assert_int_equal(attn_backend_compute(NULL, &f.p, NULL), ATTN_EINVAL);
    assert_int_equal(attn_backend_health(NULL), ATTN_EINVAL);
    fx_free(&f);
    attn_backend_free(be);
}

/* A batch with bad problems: each bad one fails alone with EINVAL, the
 * good ones are computed and equal to running them alone. */
static void test_batch_bad_fail_alone(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    struct fx f[4], alone;
    fx_init(&f[0], ATTN_MRA2, ATTN_F32, 1, 2, 1, 100, 16, 1, 2.0);
    fx_init(&f[1], ATTN_EXACT, ATTN_F32, 1, 1, 1, 50, 8, 2, 2.0);
    fx_init(&f[2], ATTN_MRA2_SPARSE, ATTN_F16, 2, 2, 2, 70, 8, 3, 2.0);
    fx_init(&f[3], ATTN_EXACT, ATTN_F32, 1, 1, 1, 10, 8, 4, 2.0);
    f[1].p.D = 300;    /* bad */
    f[3].p.out = NULL; /* bad */
    const struct attn_problem *pp[5] = {&f[0].p, &f[1].p, &f[2].p, &f[3].p,
                                        NULL};
    struct attn_stats st[5];
    int errs[5];
    assert_int_equal(attn_backend_compute_batch(be, pp, 5, st, errs), ATTN_OK);
    assert_int_equal(errs[0], ATTN_OK);
    assert_int_equal(errs[1], ATTN_EINVAL);
    assert_int_equal(errs[2], ATTN_OK);
    assert_int_equal(errs[3], ATTN_EINVAL);
    assert_int_equal(errs[4], ATTN_EINVAL);
    assert_int_equal(st[1].blocks_total, 0);
    assert_true(fx_ref_error(&f[0], NULL) < fx_tolerance(ATTN_F32));
    assert_true(fx_ref_error(&f[2], NULL) < fx_tolerance(ATTN_F16));
    /* stats of the good ones: B*H*k and B*H*nb*nb */
    assert_int_equal(st[0].blocks_total, 2 * 16);
    assert_int_equal(st[0].blocks_selected, 2 * 16); /* k = min(8*4, 16) */
    assert_int_equal(st[2].blocks_total, 4 * 9);
    assert_int_equal(st[2].blocks_selected, 4 * 9);
    for (int i = 0; i < 4; i += 2) {
        fx_init(&alone, f[i].p.method, f[i].p.dtype, f[i].p.B, f[i].p.H,
                f[i].p.Hkv, f[i].p.Nq, f[i].p.D, (uint64_t)i + 1, 2.0);
        assert_int_equal(attn_backend_compute(be, &alone.p, NULL), ATTN_OK);
        assert_memory_equal(alone.out, f[i].out,
                            alone.nq * attn_dtype_size(alone.p.dtype));
        fx_free(&alone);
    }
    /* a single bad problem through attn_backend_compute */
    assert_int_equal(attn_backend_compute(be, &f[1].p, NULL), ATTN_EINVAL);
    for (int i = 0; i < 4; i++)
        fx_free(&f[i]);
    attn_backend_free(be);
}

static void test_stats(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    struct fx f;
    struct attn_stats st;
    fx_init(&f, ATTN_EXACT, ATTN_F32, 2, 3, 1, 100, 8, 5, 1.0); /* nb = 4 */
    assert_int_equal(attn_backend_compute(be, &f.p, &st), ATTN_OK);
    assert_int_equal(st.blocks_total, 6 * 16);
    assert_int_equal(st.blocks_selected, 6 * 16);
    assert_float_equal(st.density, 1.0, 0.0);
    f.p.method = ATTN_MRA2;
    f.p.block_per_row = 1; /* k = 4 */
    assert_int_equal(attn_backend_compute(be, &f.p, &st), ATTN_OK);
    assert_int_equal(st.blocks_selected, 6 * 4);
    assert_float_equal(st.density, 0.25, 0.0);
    f.p.method = ATTN_MRA2_SPARSE;
    f.p.num_blocks = 3;
    assert_int_equal(attn_backend_compute(be, &f.p, &st), ATTN_OK);
    assert_int_equal(st.blocks_selected, 6 * 3);
    assert_float_equal(st.density, 3.0 / 16.0, 1e-15);
    fx_free(&f);
    attn_backend_free(be);
}

static void test_fault_injection(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    struct fx f;
    fx_init(&f, ATTN_MRA2, ATTN_F32, 1, 1, 1, 64, 8, 6, 1.0);
    const struct attn_problem *pp[2] = {&f.p, &f.p};
    int errs[2];
    attn_backend_inject_fault(be, 2);
    assert_int_equal(attn_backend_compute(be, &f.p, NULL), ATTN_EFAULT);
    /* a batch is one call: every problem in it fails */
    assert_int_equal(attn_backend_compute_batch(be, pp, 2, NULL, errs),
                     ATTN_EFAULT);
    assert_int_equal(errs[0], ATTN_EFAULT);
    assert_int_equal(errs[1], ATTN_EFAULT);
    assert_int_equal(attn_backend_compute(be, &f.p, NULL), ATTN_OK);
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    attn_backend_inject_fault(be, 5);
    attn_backend_inject_fault(be, -1); /* disables */
    assert_int_equal(attn_backend_compute(be, &f.p, NULL), ATTN_OK);
    fx_free(&f);
    attn_backend_free(be);
}

/* Cancellation: a problem whose flag is set fails with ATTN_ECANCELED
 * and its batch mates are computed as if alone; a flag set while a large
 * problem computes stops it within a fraction of its compute time. */
struct canceller {
    volatile int *flag;
    unsigned delay_ms;
};

static void *cancel_later(void *arg)
{
    struct canceller *c = arg;
    struct timespec ts = {0, (long)c->delay_ms * 1000000};
    nanosleep(&ts, NULL);
    __atomic_store_n(c->flag, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void test_cancellation(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    struct fx a, b;
    fx_init(&a, ATTN_MRA2, ATTN_F32, 1, 2, 1, 300, 16, 41, 1.0);
    fx_init(&b, ATTN_MRA2, ATTN_F32, 1, 2, 1, 300, 16, 42, 1.0);
    volatile int flag = 1;
    a.p.cancel = &flag;
    assert_int_equal(attn_backend_compute(be, &a.p, NULL), ATTN_ECANCELED);

    /* b alone, then b beside the cancelled a: the same bits */
    assert_int_equal(attn_backend_compute(be, &b.p, NULL), ATTN_OK);
    size_t bytes = b.nq * attn_dtype_size(b.p.dtype);
    void *alone = malloc(bytes);
    assert_non_null(alone);
    memcpy(alone, b.out, bytes);
    memset(b.out, 0, bytes);
    const struct attn_problem *pp[2] = {&a.p, &b.p};
    int errs[2];
    assert_int_equal(attn_backend_compute_batch(be, pp, 2, NULL, errs),
                     ATTN_OK);
    assert_int_equal(errs[0], ATTN_ECANCELED);
    assert_int_equal(errs[1], ATTN_OK);
    assert_memory_equal(alone, b.out, bytes);
    free(alone);
    fx_free(&a);
    fx_free(&b);

    /* A large exact problem (several seconds of compute) cancelled 30 ms
     * in returns within half a second. */
    if (fx_backend_is_cpu()) {
        struct fx big;
        fx_init(&big, ATTN_EXACT, ATTN_F32, 1, 16, 16, 16384, 64, 43, 1.0);
        volatile int stop = 0;
        big.p.cancel = &stop;
        struct canceller c = {&stop, 30};
        pthread_t t;
        double t0 = now_s();
        assert_int_equal(pthread_create(&t, NULL, cancel_later, &c), 0);
        int rc = attn_backend_compute(be, &big.p, NULL);
        double took = now_s() - t0;
        pthread_join(t, NULL);
        printf("cancelled after 30 ms: returned after %.0f ms\n", took * 1e3);
        assert_int_equal(rc, ATTN_ECANCELED);
        assert_true(took < 0.5);
        fx_free(&big);
    }
    attn_backend_free(be);
}

/* The problems the determinism tests run: every method, masks, GQA,
 * batches, dtypes, sizes from one block to many. */
#define NDET 7
static void det_problems(struct fx *f)
{
    fx_init(&f[0], ATTN_EXACT, ATTN_F32, 2, 4, 2, 300, 64, 31, 2.0);
    fx_init(&f[1], ATTN_MRA2, ATTN_F32, 1, 3, 3, 1000, 17, 32, 2.0);
    fx_init(&f[2], ATTN_MRA2_SPARSE, ATTN_F32, 3, 2, 1, 257, 8, 33, 2.0);
    fx_init(&f[3], ATTN_MRA2, ATTN_F16, 1, 2, 1, 640, 100, 34, 2.0);
    fx_init(&f[4], ATTN_EXACT, ATTN_BF16, 1, 1, 1, 31, 3, 35, 2.0);
    fx_init(&f[5], ATTN_MRA2, ATTN_F32, 2, 8, 4, 96, 32, 36, 2.0);
    fx_init(&f[6], ATTN_MRA2, ATTN_F32, 1, 1, 1, 2048, 64, 37, 2.0);
    fx_mask_random(&f[1], 0.7, 1);
    fx_mask_random(&f[2], 0.9, 2);
    f[1].p.prior_diagonal = 3;
    f[3].p.prior_first = 2;
    f[5].p.num_blocks = 5;
}

static size_t out_bytes(const struct fx *f)
{
    return f->nq * attn_dtype_size(f->p.dtype);
}

static void test_bitwise_across_threads(void **state)
{
    (void)state;
    if (!fx_backend_is_cpu())
        skip(); /* thread count is a CPU backend setting */
    static const int threads[] = {1, 2, 7};
    struct fx f[NDET];
    det_problems(f);
    void *first[NDET];
    for (int t = 0; t < 3; t++) {
        struct attn_backend *be = fx_backend(threads[t]);
        for (int i = 0; i < NDET; i++) {
            memset(f[i].out, 0x55, out_bytes(&f[i]));
            assert_int_equal(attn_backend_compute(be, &f[i].p, NULL), ATTN_OK);
            if (t == 0) {
                first[i] = malloc(out_bytes(&f[i]));
                assert_non_null(first[i]);
                memcpy(first[i], f[i].out, out_bytes(&f[i]));
            } else if (memcmp(first[i], f[i].out, out_bytes(&f[i])) != 0) {
                fail_msg("problem %d differs between 1 and %d threads", i,
                         threads[t]);
            }
        }
        attn_backend_free(be);
    }
    for (int i = 0; i < NDET; i++) {
        free(first[i]);
        fx_free(&f[i]);
    }
}

static void test_bitwise_batch_vs_alone(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    struct fx f[NDET];
    det_problems(f);
    void *alone[NDET];
    const struct attn_problem *pp[NDET];
    for (int i = 0; i < NDET; i++) {
        assert_int_equal(attn_backend_compute(be, &f[i].p, NULL), ATTN_OK);
        alone[i] = malloc(out_bytes(&f[i]));
        assert_non_null(alone[i]);
        memcpy(alone[i], f[i].out, out_bytes(&f[i]));
        memset(f[i].out, 0x55, out_bytes(&f[i]));
        pp[i] = &f[i].p;
    }
    struct attn_stats st[NDET];
    int errs[NDET];
    assert_int_equal(attn_backend_compute_batch(be, pp, NDET, st, errs),
                     ATTN_OK);
    for (int i = 0; i < NDET; i++) {
        assert_int_equal(errs[i], ATTN_OK);
        if (memcmp(alone[i], f[i].out, out_bytes(&f[i])) != 0)
            fail_msg("problem %d differs in a batch from alone", i);
    }
    /* reversed order, and the same problem twice */
    for (int i = 0; i < NDET; i++) {
        pp[i] = &f[NDET - 1 - i].p;
        memset(f[i].out, 0x55, out_bytes(&f[i]));
    }
    assert_int_equal(attn_backend_compute_batch(be, pp, NDET, st, errs),
                     ATTN_OK);
    for (int i = 0; i < NDET; i++)
        if (memcmp(alone[i], f[i].out, out_bytes(&f[i])) != 0)
            fail_msg("problem %d differs in a reversed batch", i);
    for (int i = 0; i < NDET; i++) {
        free(alone[i]);
        fx_free(&f[i]);
    }
    attn_backend_free(be);
}

/* Every kernel variant this CPU runs meets the reference on its own (the
 * CPU backend, whatever ATTN_TEST_BACKEND names). */
static void test_cpu_isa_variants(void **state)
{
    (void)state;
    static const char *isas[] = {"portable", "avx2", "avx512", "amx"};
    int ran = 0;
    for (int v = 0; v < 4; v++) {
        struct attn_config cfg = {.threads = 2, .isa = isas[v]};
        struct attn_backend *be;
        int rc = attn_backend_new("cpu", &cfg, &be);
        if (rc == ATTN_ENOTSUP)
            continue;
        assert_int_equal(rc, ATTN_OK);
        assert_non_null(strstr(attn_backend_device(be), isas[v]));
        struct fx f[NDET];
        det_problems(f);
        for (int i = 0; i < NDET; i++) {
            char what[64];
            snprintf(what, sizeof what, "%s kernels, problem %d", isas[v], i);
            fx_check(be, &f[i], what);
            fx_free(&f[i]);
        }
        attn_backend_free(be);
        ran++;
    }
    assert_true(ran >= 1); /* portable always runs */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_by_name),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_batch_bad_fail_alone),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_fault_injection),
        cmocka_unit_test(test_cancellation),
        cmocka_unit_test(test_bitwise_across_threads),
        cmocka_unit_test(test_bitwise_batch_vs_alone),
        cmocka_unit_test(test_cpu_isa_variants),
    };
    return FX_RUN_PATHS(tests, NULL, NULL);
}
