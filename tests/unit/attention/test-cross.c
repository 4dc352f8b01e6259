/*
 * test-cross.c - cross-attention (Nq != Nk), query masks and causal
 * attention (attention/README.md, "Queries, keys and causality") against
 * the float64 reference: every method, the three dtypes, Nq < Nk, Nq > Nk,
 * Nq = 1, causal with offsets that are and are not multiples of 32 (and
 * negative ones, where the first queries see no key), query masks, key
 * padding with causality, grouped KV heads with causality, priors whose
 * diagonal follows the offset; a budget that covers every visible pair
 * equals exact; outputs bitwise the same on 1, 2 and 7 threads and alone
 * or in a batch.
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

static const enum attn_method methods[3] = {ATTN_EXACT, ATTN_MRA2,
                                            ATTN_MRA2_SPARSE};

struct shape {
    uint32_t B, H, Hkv, Nq, Nk, D;
};

/* Checks one problem of every method against the reference; `setup`
 * adjusts it (masks, priors, budget) after fx_init_cross. */
static void check_shape(struct attn_backend *be, const struct shape *s,
                        enum attn_dtype dt, int causal,
                        void (*setup)(struct fx *), const char *what)
{
    for (int m = 0; m < 3; m++) {
        struct fx f;
        char name[160];
        fx_init_cross(&f, methods[m], dt, s->B, s->H, s->Hkv, s->Nq, s->Nk,
                      s->D, 1000 + s->Nq * 7 + s->Nk + (uint64_t)m, 2.0);
        f.p.causal = causal;
        f.p.block_per_row = 2;
        if (setup)
            setup(&f);
        snprintf(name, sizeof name, "%s %s %s Nq=%u Nk=%u D=%u%s", what,
                 attn_method_name(methods[m]), attn_dtype_name(dt), s->Nq,
                 s->Nk, s->D, causal ? " causal" : "");
        fx_check(be, &f, name);
        fx_free(&f);
    }
}

static const struct shape shapes[] = {
    {1, 2, 1, 40, 100, 16}, /* Nq < Nk, offset 60 */
    {1, 2, 2, 100, 40, 8},  /* Nq > Nk, offset -60 */
    {2, 4, 2, 1, 300, 32},  /* one query: a decode step */
    {1, 1, 1, 32, 32, 17},  /* offset 0 */
    {1, 2, 1, 64, 128, 64}, /* offset 64, a multiple of 32 */
    {1, 1, 1, 50, 117, 24}, /* offset 67 */
    {1, 2, 1, 33, 33, 3},   /* odd sizes, padding on both sides */
    {2, 3, 3, 257, 31, 8},  /* many queries, one key block */
};
#define NSHAPES (sizeof shapes / sizeof shapes[0])

static void test_cross_and_causal(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    for (size_t i = 0; i < NSHAPES; i++)
        for (int causal = 0; causal < 2; causal++)
            check_shape(be, &shapes[i], ATTN_F32, causal, NULL, "plain");
    attn_backend_free(be);
}

static void test_dtypes(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    static const struct shape s[2] = {{1, 2, 1, 40, 100, 16},
                                      {1, 1, 1, 70, 70, 64}};
    for (int i = 0; i < 2; i++)
        for (int dt = ATTN_F16; dt <= ATTN_BF16; dt++)
            check_shape(be, &s[i], (enum attn_dtype)dt, 1, NULL, "dtype");
    attn_backend_free(be);
}

static void qmask(struct fx *f)
{
    fx_qmask_random(f, 0.7, 77);
}

static void padding(struct fx *f)
{
    fx_mask_random(f, 0.8, 78);
}

static void padding_tail(struct fx *f)
{
    /* the last keys are padding, as in a batch of unequal sequences */
    fx_mask_range(f, f->p.Nk - f->p.Nk / 3, f->p.Nk);
}

static void priors(struct fx *f)
{
    f->p.prior_first = 1;
    f->p.prior_diagonal = 3;
    f->p.block_per_row = 1;
}

static void test_masks_and_priors(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    static const struct shape s[] = {
        {2, 2, 1, 40, 100, 16}, {1, 2, 2, 100, 40, 8}, {1, 4, 2, 96, 96, 32},
        {1, 2, 1, 50, 117, 24}, {2, 2, 1, 1, 200, 8},
    };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        for (int causal = 0; causal < 2; causal++) {
            check_shape(be, &s[i], ATTN_F32, causal, qmask, "q_mask");
            check_shape(be, &s[i], ATTN_F32, causal, padding, "padding");
            check_shape(be, &s[i], ATTN_F32, causal, padding_tail,
                        "padded tail");
            check_shape(be, &s[i], ATTN_F32, causal, priors, "priors");
        }
    attn_backend_free(be);
}

/* Few queries per head (the decode path, attention/cpu/decode.h): grouped
 * KV heads stacked into few-row and 32-lane tiles, keys in chunks, with
 * masks, causality and negative offsets. */
static void test_decode_shapes(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    static const struct shape s[] = {
        {1, 8, 2, 4, 700, 64},   /* 16 stacked rows: one 32-lane tile */
        {2, 6, 2, 3, 100, 24},   /* 9 rows: two few-row tiles */
        {1, 4, 1, 9, 1000, 128}, /* 36 rows: two 32-lane tiles */
        {1, 2, 2, 20, 5, 8},     /* more queries than keys */
        {1, 3, 1, 32, 543, 16},  /* a whole block of queries */
        {2, 1, 1, 1, 33, 1},     /* one key past a block */
    };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        for (int causal = 0; causal < 2; causal++) {
            check_shape(be, &s[i], ATTN_F32, causal, NULL, "decode");
            check_shape(be, &s[i], ATTN_F32, causal, qmask, "decode q_mask");
            check_shape(be, &s[i], ATTN_F32, causal, padding, "decode padding");
            check_shape(be, &s[i], ATTN_F32, causal, priors, "decode priors");
            check_shape(be, &s[i], ATTN_F16, causal, padding_tail,
                        "decode f16");
            check_shape(be, &s[i], ATTN_BF16, causal, NULL, "decode bf16");
        }
    attn_backend_free(be);
}

/* In self-attention without q_mask the key mask masks queries too; with
 * Nq != Nk and no q_mask every query is real. */
static void test_query_mask_defaults(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    struct fx f;
    fx_init_cross(&f, ATTN_EXACT, ATTN_F32, 1, 1, 1, 64, 64, 8, 5, 1.0);
    fx_mask_range(&f, 10, 20);
    fx_check(be, &f, "self");
    for (uint32_t i = 10; i < 20; i++)
        for (uint32_t d = 0; d < 8; d++)
            assert_true(fx_out(&f, (size_t)i * 8 + d) == 0.0f);
    fx_free(&f);
    fx_init_cross(&f, ATTN_EXACT, ATTN_F32, 1, 1, 1, 63, 64, 8, 5, 1.0);
    fx_mask_range(&f, 10, 20);
    fx_check(be, &f, "cross");
    assert_true(fx_out(&f, 15 * 8) != 0.0f);
    fx_free(&f);
    attn_backend_free(be);
}

/* Negative offset: query i < Nq - Nk sees no key and is 0. */
static void test_rows_that_see_nothing(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    for (int m = 0; m < 3; m++) {
        struct fx f;
        fx_init_cross(&f, methods[m], ATTN_F32, 1, 1, 1, 90, 30, 8, 6, 1.0);
        f.p.causal = 1;
        fx_check(be, &f, "negative offset");
        for (uint32_t i = 0; i < 90; i++) {
            int zero = 1;
            for (uint32_t d = 0; d < 8; d++)
                zero &= fx_out(&f, (size_t)i * 8 + d) == 0.0f;
            assert_int_equal(zero, i < 60);
        }
        fx_free(&f);
    }
    attn_backend_free(be);
}

/* With a budget of every visible pair, both MRA modes give exact's
 * answer, causal or not, for any Nq, Nk. */
static void test_full_budget_equals_exact(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    static const struct shape s[] = {
        {1, 2, 1, 40, 100, 16}, {1, 1, 1, 100, 40, 8}, {1, 2, 2, 1, 300, 8},
        {1, 1, 1, 50, 117, 24}, {1, 1, 1, 70, 70, 32},
    };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        for (int causal = 0; causal < 2; causal++) {
            struct fx e;
            fx_init_cross(&e, ATTN_EXACT, ATTN_F32, s[i].B, s[i].H, s[i].Hkv,
                          s[i].Nq, s[i].Nk, s[i].D, 9, 2.0);
            e.p.causal = causal;
            fx_mask_random(&e, 0.9, 3);
            assert_int_equal(attn_backend_compute(be, &e.p, NULL), ATTN_OK);
            for (int m = 1; m < 3; m++) {
                struct fx f;
                fx_init_cross(&f, methods[m], ATTN_F32, s[i].B, s[i].H,
                              s[i].Hkv, s[i].Nq, s[i].Nk, s[i].D, 9, 2.0);
                f.p.causal = causal;
                fx_mask_random(&f, 0.9, 3);
                f.p.num_blocks = UINT32_MAX;
                char name[96];
                snprintf(name, sizeof name, "full budget %s Nq=%u Nk=%u%s",
                         attn_method_name(methods[m]), s[i].Nq, s[i].Nk,
                         causal ? " causal" : "");
                fx_check(be, &f, name);
                double num = 0, den = 0;
                for (size_t t = 0; t < f.nq; t++) {
                    double d = (double)fx_out(&f, t) - fx_out(&e, t);
                    num += d * d;
                    den += (double)fx_out(&e, t) * fx_out(&e, t);
                }
                if (!(sqrt(num / den) < 1e-5))
                    fail_msg("%s: %g from exact", name, sqrt(num / den));
                fx_free(&f);
            }
            fx_free(&e);
        }
    attn_backend_free(be);
}

/* The statistics count the pairs causality does not hide. */
static void test_causal_statistics(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    struct fx f;
    /* Nq = Nk = 128: 4 x 4 grid, 4 partial (diagonal), 6 visible */
    fx_init_cross(&f, ATTN_MRA2, ATTN_F32, 1, 2, 1, 128, 128, 8, 3, 1.0);
    f.p.causal = 1;
    f.p.num_blocks = 2;
    struct attn_stats st;
    assert_int_equal(attn_backend_compute(be, &f.p, &st), ATTN_OK);
    assert_int_equal(st.blocks_total, 2 * 10);
    assert_int_equal(st.blocks_selected, 2 * (4 + 2));
    f.p.num_blocks = 100; /* capped at the 6 visible */
    assert_int_equal(attn_backend_compute(be, &f.p, &st), ATTN_OK);
    assert_int_equal(st.blocks_selected, 2 * 10);
    f.p.method = ATTN_EXACT;
    assert_int_equal(attn_backend_compute(be, &f.p, &st), ATTN_OK);
    assert_int_equal(st.blocks_selected, 2 * 10);
    assert_true(st.density == 1.0);
    fx_free(&f);
    attn_backend_free(be);
}

/* Bitwise the same on 1, 2 and 7 threads, and alone or in a batch with
 * problems of other shapes and causality. */
static void test_determinism(void **state)
{
    (void)state;
    if (!fx_backend_is_cpu())
        skip();
    struct fx f[4];
    fx_init_cross(&f[0], ATTN_MRA2, ATTN_F32, 1, 3, 1, 100, 300, 32, 11, 2.0);
    fx_init_cross(&f[1], ATTN_EXACT, ATTN_F16, 2, 8, 2, 4, 1500, 16, 12, 2.0);
    fx_init_cross(&f[2], ATTN_MRA2_SPARSE, ATTN_F32, 1, 2, 1, 200, 70, 8, 13,
                  2.0);
    fx_init_cross(&f[3], ATTN_MRA2, ATTN_BF16, 1, 4, 2, 129, 129, 64, 14, 2.0);
    f[0].p.causal = 1, f[1].p.causal = 1, f[3].p.causal = 1;
    fx_qmask_random(&f[2], 0.8, 1);
    fx_mask_random(&f[3], 0.9, 2);
    void *first[4];
    static const int threads[3] = {1, 2, 7};
    for (int t = 0; t < 3; t++) {
        struct attn_backend *be = fx_backend(threads[t]);
        const struct attn_problem *pp[4] = {&f[3].p, &f[1].p, &f[0].p, &f[2].p};
        int errs[4];
        if (t == 1) { /* one batch, in another order */
            assert_int_equal(attn_backend_compute_batch(be, pp, 4, NULL, errs),
                             ATTN_OK);
        } else {
            for (int i = 0; i < 4; i++)
                assert_int_equal(attn_backend_compute(be, &f[i].p, NULL),
                                 ATTN_OK);
        }
        for (int i = 0; i < 4; i++) {
            size_t bytes = f[i].nq * attn_dtype_size(f[i].p.dtype);
            if (t == 0) {
                first[i] = malloc(bytes);
                assert_non_null(first[i]);
                memcpy(first[i], f[i].out, bytes);
            } else {
                assert_memory_equal(first[i], f[i].out, bytes);
            }
            memset(f[i].out, 0x7f, bytes);
        }
        attn_backend_free(be);
    }
    for (int i = 0; i < 4; i++) {
        free(first[i]);
        fx_free(&f[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cross_and_causal),
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_masks_and_priors),
        cmocka_unit_test(test_decode_shapes),
        cmocka_unit_test(test_query_mask_defaults),
        cmocka_unit_test(test_rows_that_see_nothing),
        cmocka_unit_test(test_full_budget_equals_exact),
        cmocka_unit_test(test_causal_statistics),
        cmocka_unit_test(test_determinism),
    };
    return FX_RUN_PATHS(tests, NULL, NULL);
}
