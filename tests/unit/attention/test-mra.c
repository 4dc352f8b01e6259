/*
 * test-mra.c - MRA-2 ("mra2") and MRA-2-s ("mra2_sparse") on the backend
 * under test against the float64 reference: token counts around the block
 * size, odd head dimensions, masks (random, whole blocks, every token),
 * priors (first rows/columns, diagonal band), budgets (tiny, per row, a
 * total, and every block, which must equal exact), grouped KV heads,
 * batches, custom scale, the three dtypes, and the statistics.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/unit/attention/attn-fixture.h"

static const uint32_t Ns[] = {1, 31, 32, 33, 100, 256, 1000};
static const uint32_t Ds[] = {1, 3, 8, 17, 64, 100, 256};
static const enum attn_method methods[] = {ATTN_MRA2, ATTN_MRA2_SPARSE};

static int setup(void **state)
{
    *state = fx_backend(0);
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    attn_backend_free(*state);
    return 0;
}

static void test_shapes(void **state)
{
    struct attn_backend *be = *state;
    char what[96];
    for (size_t m = 0; m < 2; m++)
        for (size_t a = 0; a < 7; a++)
            for (size_t b = 0; b < 7; b++) {
                uint32_t N = Ns[a], D = Ds[b];
                if (N >= 1000 && D > 64 && b != 6)
                    continue;
                struct fx f;
                fx_init(&f, methods[m], ATTN_F32, 1, 1, 1, N, D,
                        m * 100 + a * 7 + b, 2.0);
                f.p.block_per_row = 3;
                snprintf(what, sizeof what, "%s N=%u D=%u",
                         attn_method_name(methods[m]), N, D);
                fx_check(be, &f, what);
                fx_free(&f);
            }
}

static void test_masks(void **state)
{
    struct attn_backend *be = *state;
    char what[96];
    for (size_t m = 0; m < 2; m++) {
        for (size_t a = 1; a < 7; a++) {
            struct fx f;
            fx_init(&f, methods[m], ATTN_F32, 2, 2, 1, Ns[a], 17, 200 + a, 2.0);
            fx_mask_random(&f, 0.5, 50 + a);
            f.p.block_per_row = 2;
            snprintf(what, sizeof what, "%s random mask N=%u",
                     attn_method_name(methods[m]), Ns[a]);
            fx_check(be, &f, what);
            fx_free(&f);
        }
        /* whole blocks masked: empty blocks rank last and have no terms */
        struct fx f;
        fx_init(&f, methods[m], ATTN_F32, 1, 2, 2, 300, 8, 300, 2.0);
        fx_mask_range(&f, 0, 32);
        fx_mask_range(&f, 64, 160);
        f.p.block_per_row = 4;
        fx_check(be, &f, "whole blocks masked");
        fx_free(&f);
        /* every token masked: all zero, budget still counted */
        fx_init(&f, methods[m], ATTN_F32, 1, 1, 1, 100, 8, 301, 2.0);
        fx_mask_range(&f, 0, 100);
        fx_check(be, &f, "all masked");
        for (size_t i = 0; i < f.nq; i++)
            assert_true(fx_out(&f, i) == 0.0f);
        fx_free(&f);
    }
}

static void test_priors(void **state)
{
    struct attn_backend *be = *state;
    char what[96];
    static const uint32_t firsts[] = {0, 1, 3}, diags[] = {0, 1, 3, 6};
    for (size_t m = 0; m < 2; m++)
        for (size_t a = 0; a < 3; a++)
            for (size_t b = 0; b < 4; b++) {
                struct fx f;
                fx_init(&f, methods[m], ATTN_F32, 1, 2, 2, 500, 16,
                        400 + a * 4 + b, 2.0);
                f.p.prior_first = firsts[a];
                f.p.prior_diagonal = diags[b];
                f.p.block_per_row = 2;
                snprintf(what, sizeof what, "%s prior_first=%u diag=%u",
                         attn_method_name(methods[m]), firsts[a], diags[b]);
                fx_check(be, &f, what);
                fx_free(&f);
            }
}

static void test_budgets(void **state)
{
    struct attn_backend *be = *state;
    char what[96];
    static const uint64_t totals[] = {1, 5, 37, 255, 256, 1000};
    for (size_t m = 0; m < 2; m++) {
        for (size_t i = 0; i < 6; i++) {
            struct fx f;
            fx_init(&f, methods[m], ATTN_F32, 1, 1, 1, 512, 32, 500 + i, 2.0);
            f.p.num_blocks = totals[i];
            f.p.block_per_row = 7; /* overridden by num_blocks */
            snprintf(what, sizeof what, "%s num_blocks=%llu",
                     attn_method_name(methods[m]),
                     (unsigned long long)totals[i]);
            fx_check(be, &f, what);
            fx_free(&f);
        }
        for (uint32_t bpr = 1; bpr <= 16; bpr *= 4) {
            struct fx f;
            fx_init(&f, methods[m], ATTN_F32, 1, 1, 1, 640, 16, 510 + bpr, 2.0);
            f.p.block_per_row = bpr;
            snprintf(what, sizeof what, "%s block_per_row=%u",
                     attn_method_name(methods[m]), bpr);
            fx_check(be, &f, what);
            fx_free(&f);
        }
    }
}

/* With every block selected both modes are exact attention. */
static void test_all_blocks_equal_exact(void **state)
{
    struct attn_backend *be = *state;
    for (size_t m = 0; m < 2; m++) {
        struct fx f, e;
        fx_init(&f, methods[m], ATTN_F32, 2, 2, 1, 333, 40, 600, 2.0);
        fx_init(&e, ATTN_EXACT, ATTN_F32, 2, 2, 1, 333, 40, 600, 2.0);
        fx_mask_random(&f, 0.8, 9);
        fx_mask_random(&e, 0.8, 9);
        uint32_t nb = attn_num_blocks(333);
        f.p.num_blocks = (uint64_t)nb * nb;
        fx_check(be, &f, "all blocks");
        assert_int_equal(attn_backend_compute(be, &e.p, NULL), ATTN_OK);
        double num = 0, den = 0;
        for (size_t i = 0; i < f.nq; i++) {
            double x = fx_out(&f, i), y = fx_out(&e, i);
            num += (x - y) * (x - y);
            den += y * y;
        }
        if (!(sqrt(num / den) < 1e-6))
            fail_msg("%s with every block differs from exact by %g",
                     attn_method_name(methods[m]), sqrt(num / den));
        fx_free(&f);
        fx_free(&e);
    }
}

static void test_gqa_batch_scale(void **state)
{
    struct attn_backend *be = *state;
    for (size_t m = 0; m < 2; m++) {
        struct fx f;
        fx_init(&f, methods[m], ATTN_F32, 3, 8, 2, 200, 24, 700, 2.0);
        fx_mask_random(&f, 0.85, 1);
        f.p.block_per_row = 2;
        fx_check(be, &f, "B=3 H=8 Hkv=2");
        fx_free(&f);
        fx_init(&f, methods[m], ATTN_F32, 1, 2, 1, 200, 24, 701, 2.0);
        f.p.scale = 0.7f;
        f.p.block_per_row = 2;
        fx_check(be, &f, "scale 0.7");
        fx_free(&f);
    }
}

static void test_dtypes(void **state)
{
    struct attn_backend *be = *state;
    static const enum attn_dtype dts[] = {ATTN_F16, ATTN_BF16};
    char what[96];
    for (size_t m = 0; m < 2; m++)
        for (size_t i = 0; i < 2; i++)
            for (size_t a = 1; a < 7; a += 2) {
                struct fx f;
                fx_init(&f, methods[m], dts[i], 2, 2, 2, Ns[a], Ds[a], 800 + a,
                        2.0);
                fx_mask_random(&f, 0.9, 2);
                f.p.block_per_row = 2;
                f.p.prior_diagonal = 1;
                snprintf(what, sizeof what, "%s %s N=%u D=%u",
                         attn_method_name(methods[m]), attn_dtype_name(dts[i]),
                         Ns[a], Ds[a]);
                fx_check(be, &f, what);
                fx_free(&f);
            }
}

/* The two modes differ exactly by the low-resolution terms: with a small
 * budget on non-trivial data they must give different outputs. */
static void test_modes_differ(void **state)
{
    struct attn_backend *be = *state;
    struct fx a, b;
    fx_init(&a, ATTN_MRA2, ATTN_F32, 1, 1, 1, 256, 16, 900, 2.0);
    fx_init(&b, ATTN_MRA2_SPARSE, ATTN_F32, 1, 1, 1, 256, 16, 900, 2.0);
    a.p.block_per_row = b.p.block_per_row = 1;
    assert_int_equal(attn_backend_compute(be, &a.p, NULL), ATTN_OK);
    assert_int_equal(attn_backend_compute(be, &b.p, NULL), ATTN_OK);
    assert_memory_not_equal(a.out, b.out, a.nq * sizeof(float));
    fx_free(&a);
    fx_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_masks),
        cmocka_unit_test(test_priors),
        cmocka_unit_test(test_budgets),
        cmocka_unit_test(test_all_blocks_equal_exact),
        cmocka_unit_test(test_gqa_batch_scale),
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_modes_differ),
    };
    return FX_RUN_PATHS(tests, setup, teardown);
}
