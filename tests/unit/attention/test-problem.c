/*
 * test-problem.c - tests of attention/problem.c: attn_problem_check()
 * rejects each bad field with a message naming it, and the derived values
 * (block count, budget, scale, FLOP count) follow the spec.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "attention/attn.h"

static float buf[4096];

static struct attn_problem good(void)
{
    return (struct attn_problem){
        .method = ATTN_MRA2,
        .dtype = ATTN_F32,
        .B = 2,
        .H = 4,
        .Hkv = 2,
        .Nq = 40,
        .Nk = 40,
        .D = 8,
        .q = buf,
        .k = buf,
        .v = buf,
        .out = buf,
    };
}

/* Expects the check to fail with a message containing `field`. */
static void expect_bad(const struct attn_problem *p, const char *field)
{
    char msg[160] = "";
    int rc = attn_problem_check(p, msg, sizeof msg);
    if (rc != ATTN_EINVAL)
        fail_msg("expected EINVAL for %s, got %d", field, rc);
    if (!strstr(msg, field))
        fail_msg("message \"%s\" does not name %s", msg, field);
}

static void test_good_problem(void **state)
{
    (void)state;
    struct attn_problem p = good();
    char msg[64] = "untouched";
    assert_int_equal(attn_problem_check(&p, msg, sizeof msg), ATTN_OK);
    p.mask = (const uint8_t *)buf;
    p.dtype = ATTN_BF16;
    p.D = ATTN_MAX_HEAD_DIM;
    p.scale = 0.25f;
    p.num_blocks = 1000000;
    assert_int_equal(attn_problem_check(&p, NULL, 0), ATTN_OK);
}

static void test_each_bad_field(void **state)
{
    (void)state;
    struct attn_problem p;
    assert_int_equal(attn_problem_check(NULL, NULL, 0), ATTN_EINVAL);

    p = good(), p.method = (enum attn_method)3;
    expect_bad(&p, "method");
    p = good(), p.dtype = (enum attn_dtype)9;
    expect_bad(&p, "dtype");
    p = good(), p.B = 0;
    expect_bad(&p, "B");
    p = good(), p.H = 0;
    expect_bad(&p, "H");
    p = good(), p.Hkv = 0;
    expect_bad(&p, "Hkv");
    p = good(), p.Nq = 0;
    expect_bad(&p, "Nq");
    p = good(), p.Nk = 0;
    expect_bad(&p, "Nk");
    p = good(), p.D = 0;
    expect_bad(&p, "D");
    p = good(), p.D = ATTN_MAX_HEAD_DIM + 1;
    expect_bad(&p, "D");
    p = good(), p.H = 6, p.Hkv = 4;
    expect_bad(&p, "Hkv");
    p = good(), p.q = NULL;
    expect_bad(&p, "q");
    p = good(), p.k = NULL;
    expect_bad(&p, "k");
    p = good(), p.v = NULL;
    expect_bad(&p, "v");
    p = good(), p.out = NULL;
    expect_bad(&p, "out");
    p = good(), p.scale = -1.0f;
    expect_bad(&p, "scale");
    p = good(), p.scale = NAN;
    expect_bad(&p, "scale");
    p = good(), p.scale = INFINITY;
    expect_bad(&p, "scale");
    p = good(), p.q = (const char *)buf + 2;
    expect_bad(&p, "aligned");
}

static void test_size_overflow(void **state)
{
    (void)state;
    struct attn_problem p = good();
    p.B = UINT32_MAX, p.H = UINT32_MAX, p.Hkv = 1, p.Nq = UINT32_MAX;
    p.Nk = UINT32_MAX;
    p.D = 256;
    expect_bad(&p, "B*H*Nq*D");
    p.H = 1, p.Hkv = 1, p.B = UINT32_MAX, p.Nq = p.Nk = UINT32_MAX;
    if (sizeof(size_t) == 8) {
        p.D = 256; /* 2^32 * 2^32 * 2^8 * 4 bytes overflows 64 bits */
        expect_bad(&p, "overflows");
    }
}

static void test_message_truncated_and_optional(void **state)
{
    (void)state;
    struct attn_problem p = good();
    p.Nq = 0;
    char small[4] = "xxx";
    assert_int_equal(attn_problem_check(&p, small, sizeof small), ATTN_EINVAL);
    assert_int_equal(strlen(small), 3); /* terminated within msglen */
    assert_int_equal(attn_problem_check(&p, NULL, 100), ATTN_EINVAL);
}

static void test_num_blocks_budget(void **state)
{
    (void)state;
    assert_int_equal(attn_num_blocks(1), 1);
    assert_int_equal(attn_num_blocks(32), 1);
    assert_int_equal(attn_num_blocks(33), 2);
    assert_int_equal(attn_num_blocks(1000), 32);
    assert_int_equal(attn_num_blocks(UINT32_MAX), 134217728u);

    struct attn_problem p = good();
    p.Nq = p.Nk = 1000;                        /* nb = 32 */
    assert_int_equal(attn_budget(&p), 8 * 32); /* default 8 per row */
    p.block_per_row = 3;
    assert_int_equal(attn_budget(&p), 3 * 32);
    p.num_blocks = 17; /* overrides block_per_row */
    assert_int_equal(attn_budget(&p), 17);
    p.num_blocks = 5000; /* capped at nb*nb */
    assert_int_equal(attn_budget(&p), 1024);
    p.num_blocks = 0, p.block_per_row = 100;
    assert_int_equal(attn_budget(&p), 1024);
    p.Nq = p.Nk = 1, p.block_per_row = 0;
    assert_int_equal(attn_budget(&p), 1);
}

static void test_scale_and_flops(void **state)
{
    (void)state;
    struct attn_problem p = good();
    p.D = 64;
    assert_float_equal(attn_scale(&p), 0.125f, 0.0f);
    p.scale = 0.3f;
    assert_float_equal(attn_scale(&p), 0.3f, 0.0f);

    p = good(); /* B=2, H=4, N=40 (nb=2), D=8 */
    p.method = ATTN_EXACT;
    assert_float_equal(attn_flops(&p), 8.0 * 4 * 40 * 40 * 8, 0.0);
    p.method = ATTN_MRA2; /* k = min(8*2, 4) = 4 */
    assert_float_equal(attn_flops(&p), 8.0 * (4.0 * 4 * 1024 * 8 + 2.0 * 4 * 8),
                       0.0);
    p.method = ATTN_MRA2_SPARSE;
    p.num_blocks = 1;
    assert_float_equal(attn_flops(&p), 8.0 * (4.0 * 1 * 1024 * 8 + 2.0 * 4 * 8),
                       0.0);
}

static void test_strerror(void **state)
{
    (void)state;
    int codes[] = {ATTN_OK,       ATTN_EINVAL, ATTN_ENOMEM, ATTN_ENOTSUP,
                   ATTN_EBACKEND, ATTN_ENODEV, ATTN_EFAULT, ATTN_ECANCELED};
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++) {
        const char *s = attn_strerror(codes[i]);
        assert_non_null(s);
        assert_true(strlen(s) > 3);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(s, attn_strerror(codes[j]));
    }
    assert_non_null(attn_strerror(-1000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_problem),
        cmocka_unit_test(test_each_bad_field),
        cmocka_unit_test(test_size_overflow),
        cmocka_unit_test(test_message_truncated_and_optional),
        cmocka_unit_test(test_num_blocks_budget),
        cmocka_unit_test(test_scale_and_flops),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
