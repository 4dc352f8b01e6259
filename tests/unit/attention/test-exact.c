/*
 * test-exact.c - exact attention on the backend under test against the
 * float64 reference: token counts around the block size, head dimensions
 * that are and are not multiples of the vector width, key-padding masks
 * (random, whole blocks, every token), grouped KV heads, batches, custom
 * scale, and the three dtypes.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tests/unit/attention/attn-fixture.h"

static const uint32_t Ns[] = {1, 31, 32, 33, 100, 256, 1000};
static const uint32_t Ds[] = {1, 3, 8, 17, 64, 100, 256};

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
    /* every N with every D, the big N with a cheaper D pairing */
    for (size_t a = 0; a < 7; a++) {
        for (size_t b = 0; b < 7; b++) {
            uint32_t N = Ns[a], D = Ds[b];
            if (N >= 1000 && D > 64)
                continue;
            struct fx f;
            fx_init(&f, ATTN_EXACT, ATTN_F32, 1, 1, 1, N, D, a * 7 + b, 2.0);
            snprintf(what, sizeof what, "exact N=%u D=%u", N, D);
            fx_check(be, &f, what);
            fx_free(&f);
        }
    }
    struct fx f;
    fx_init(&f, ATTN_EXACT, ATTN_F32, 1, 1, 1, 1000, 256, 77, 1.0);
    fx_check(be, &f, "exact N=1000 D=256");
    fx_free(&f);
}

static void test_masks(void **state)
{
    struct attn_backend *be = *state;
    char what[96];
    for (size_t a = 0; a < 7; a++) {
        struct fx f;
        uint32_t N = Ns[a];
        fx_init(&f, ATTN_EXACT, ATTN_F32, 2, 2, 2, N, 17, 100 + a, 2.0);
        fx_mask_random(&f, 0.6, 5 + a);
        snprintf(what, sizeof what, "exact random mask N=%u", N);
        fx_check(be, &f, what);
        /* masked query rows are exactly 0 */
        for (uint32_t b = 0; b < 2; b++)
            for (uint32_t t = 0; t < N; t++)
                if (!f.mask[b * N + t])
                    for (uint32_t h = 0; h < 2; h++)
                        for (uint32_t d = 0; d < 17; d++)
                            assert_true(
                                fx_out(&f, (((size_t)b * 2 + h) * N + t) * 17 +
                                               d) == 0.0f);
        fx_free(&f);
    }
    /* whole blocks masked: the second and fourth block */
    struct fx f;
    fx_init(&f, ATTN_EXACT, ATTN_F32, 1, 2, 1, 150, 8, 7, 2.0);
    fx_mask_range(&f, 32, 64);
    fx_mask_range(&f, 96, 128);
    fx_check(be, &f, "exact whole blocks masked");
    fx_free(&f);
    /* every token masked: all zero */
    fx_init(&f, ATTN_EXACT, ATTN_F32, 2, 1, 1, 70, 8, 8, 2.0);
    fx_mask_range(&f, 0, 70);
    fx_check(be, &f, "exact all masked");
    for (size_t i = 0; i < f.nq; i++)
        assert_true(fx_out(&f, i) == 0.0f);
    fx_free(&f);
}

static void test_gqa_batch_scale(void **state)
{
    struct attn_backend *be = *state;
    struct fx f;
    fx_init(&f, ATTN_EXACT, ATTN_F32, 3, 6, 2, 77, 24, 9, 2.0);
    fx_mask_random(&f, 0.8, 3);
    fx_check(be, &f, "exact B=3 H=6 Hkv=2");
    fx_free(&f);
    fx_init(&f, ATTN_EXACT, ATTN_F32, 1, 4, 1, 64, 16, 10, 2.0);
    f.p.scale = 0.9f;
    fx_check(be, &f, "exact scale 0.9");
    fx_free(&f);
    /* large logits: the running max must keep exp() in range */
    fx_init(&f, ATTN_EXACT, ATTN_F32, 1, 1, 1, 200, 32, 11, 2.0);
    f.p.scale = 40.0f;
    fx_check(be, &f, "exact scale 40");
    fx_free(&f);
}

static void test_dtypes(void **state)
{
    struct attn_backend *be = *state;
    static const enum attn_dtype dts[] = {ATTN_F16, ATTN_BF16};
    char what[96];
    for (size_t i = 0; i < 2; i++) {
        for (size_t a = 0; a < 7; a += 2) {
            struct fx f;
            fx_init(&f, ATTN_EXACT, dts[i], 2, 2, 1, Ns[a], Ds[a], 20 + a, 2.0);
            fx_mask_random(&f, 0.9, 4);
            snprintf(what, sizeof what, "exact %s N=%u D=%u",
                     attn_dtype_name(dts[i]), Ns[a], Ds[a]);
            fx_check(be, &f, what);
            fx_free(&f);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_masks),
        cmocka_unit_test(test_gqa_batch_scale),
        cmocka_unit_test(test_dtypes),
    };
    return FX_RUN_PATHS(tests, setup, teardown);
}
