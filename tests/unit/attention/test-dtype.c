/*
 * test-dtype.c - tests of attention/dtype.c: sizes and names, and the
 * f16 / bf16 conversions at their edges (round-to-nearest-even ties, NaN,
 * infinity and overflow, subnormals), plus exhaustive round trips.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "attention/attn.h"

static float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void test_names(void **state)
{
    (void)state;
    assert_int_equal(attn_dtype_size(ATTN_F32), 4);
    assert_int_equal(attn_dtype_size(ATTN_F16), 2);
    assert_int_equal(attn_dtype_size(ATTN_BF16), 2);
    assert_int_equal(attn_dtype_size((enum attn_dtype)7), 0);
    assert_string_equal(attn_dtype_name(ATTN_F32), "f32");
    assert_string_equal(attn_dtype_name(ATTN_F16), "f16");
    assert_string_equal(attn_dtype_name(ATTN_BF16), "bf16");
    assert_null(attn_dtype_name((enum attn_dtype)3));
    assert_string_equal(attn_method_name(ATTN_EXACT), "exact");
    assert_string_equal(attn_method_name(ATTN_MRA2), "mra2");
    assert_string_equal(attn_method_name(ATTN_MRA2_SPARSE), "mra2_sparse");
    assert_null(attn_method_name((enum attn_method) - 1));
}

static void test_f16_exact_values(void **state)
{
    (void)state;
    assert_int_equal(attn_f32_to_f16(0.0f), 0x0000);
    assert_int_equal(attn_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(attn_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(attn_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(attn_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(attn_f32_to_f16(0x1p-14f), 0x0400); /* smallest normal */
    assert_int_equal(attn_f32_to_f16(0x1p-24f), 0x0001); /* smallest sub */
    assert_int_equal(attn_f32_to_f16(0x3ffp-24f), 0x03ff);
    assert_true(attn_f16_to_f32(0x3c00) == 1.0f);
    assert_true(attn_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(attn_f16_to_f32(0x03ff) == 0x3ffp-24f);
    assert_true(attn_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(signbit(attn_f16_to_f32(0x8000)));
}

static void test_f16_round_to_nearest_even(void **state)
{
    (void)state;
    /* ulp of 1.0 in f16 is 2^-10; halfway cases go to the even mantissa */
    assert_int_equal(attn_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    assert_int_equal(attn_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
    assert_int_equal(attn_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    assert_int_equal(attn_f32_to_f16(1.0f + 0x1p-11f - 0x1p-20f), 0x3c00);
    /* a carry out of the mantissa bumps the exponent */
    assert_int_equal(attn_f32_to_f16(2.0f - 0x1p-12f), 0x4000);
    /* subnormal ties: 2^-25 -> 0 (even), 3*2^-25 -> 2*2^-24 (even) */
    assert_int_equal(attn_f32_to_f16(0x1p-25f), 0x0000);
    assert_int_equal(attn_f32_to_f16(0x1.000002p-25f), 0x0001);
    assert_int_equal(attn_f32_to_f16(3 * 0x1p-25f), 0x0002);
    assert_int_equal(attn_f32_to_f16(5 * 0x1p-25f), 0x0002);
    assert_int_equal(attn_f32_to_f16(-0x1p-26f), 0x8000);
    /* rounding up from the largest subnormal gives the smallest normal */
    assert_int_equal(attn_f32_to_f16(0x3ffp-24f + 0x1p-25f), 0x0400);
    /* a float subnormal is far below f16's range */
    assert_int_equal(attn_f32_to_f16(bits_f(0x00000001u)), 0x0000);
}

static void test_f16_overflow_inf_nan(void **state)
{
    (void)state;
    assert_int_equal(attn_f32_to_f16(65519.0f), 0x7bff); /* rounds down */
    assert_int_equal(attn_f32_to_f16(65520.0f), 0x7c00); /* tie -> inf */
    assert_int_equal(attn_f32_to_f16(1e6f), 0x7c00);
    assert_int_equal(attn_f32_to_f16(-1e30f), 0xfc00);
    assert_int_equal(attn_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(attn_f32_to_f16(-INFINITY), 0xfc00);
    uint16_t n = attn_f32_to_f16(NAN);
    assert_int_equal(n & 0x7c00, 0x7c00);
    assert_true((n & 0x03ff) != 0);
    /* a signalling-looking NaN whose payload lives in the low bits only
     * must still be a NaN, not infinity */
    n = attn_f32_to_f16(bits_f(0x7f800001u));
    assert_true((n & 0x7c00) == 0x7c00 && (n & 0x03ff) != 0);
    assert_true(isinf(attn_f16_to_f32(0x7c00)));
    assert_true(isinf(attn_f16_to_f32(0xfc00)) &&
                signbit(attn_f16_to_f32(0xfc00)));
    assert_true(isnan(attn_f16_to_f32(0x7e00)));
    assert_true(isnan(attn_f16_to_f32(0x7c01)));
}

static void test_f16_exhaustive_round_trip(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float f = attn_f16_to_f32((uint16_t)h);
        uint16_t back = attn_f32_to_f16(f);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
            assert_true(isnan(f));
            assert_true((back & 0x7c00) == 0x7c00 && (back & 0x3ff));
            assert_int_equal(back & 0x8000, h & 0x8000);
        } else {
            assert_int_equal(back, h);
        }
    }
}

/* Against the compiler's own conversion, where it has _Float16: every
 * exponent, random mantissas, both signs. */
static void test_f16_matches_compiler(void **state)
{
    (void)state;
#ifdef __FLT16_MAX__
    uint64_t st = 12345;
    for (int i = 0; i < 2000000; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t u = (uint32_t)(st >> 32);
        float f = bits_f(u);
        if (isnan(f))
            continue;
        _Float16 ref = (_Float16)f;
        uint16_t rb;
        memcpy(&rb, &ref, sizeof rb);
        if (attn_f32_to_f16(f) != rb)
            fail_msg("f32 %a (0x%08x): got 0x%04x want 0x%04x", (double)f, u,
                     attn_f32_to_f16(f), rb);
    }
#else
    skip();
#endif
}

static void test_bf16(void **state)
{
    (void)state;
    assert_int_equal(attn_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(attn_f32_to_bf16(-2.0f), 0xc000);
    assert_true(attn_bf16_to_f32(0x3f80) == 1.0f);
    /* ulp of 1.0 in bf16 is 2^-7: ties to even */
    assert_int_equal(attn_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    assert_int_equal(attn_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    assert_int_equal(attn_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    /* overflow past the largest finite bf16 goes to infinity */
    assert_int_equal(attn_f32_to_bf16(bits_f(0x7f7fffffu)), 0x7f80);
    assert_int_equal(attn_f32_to_bf16(bits_f(0x7f7f7fffu)), 0x7f7f);
    assert_int_equal(attn_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(attn_f32_to_bf16(-INFINITY), 0xff80);
    /* NaN whose payload is only in the low 16 bits stays NaN */
    uint16_t n = attn_f32_to_bf16(bits_f(0x7f800001u));
    assert_true((n & 0x7f80) == 0x7f80 && (n & 0x7f) != 0);
    assert_true(isnan(attn_bf16_to_f32(attn_f32_to_bf16(NAN))));
    /* subnormals are kept (bf16 has float's exponent range) */
    assert_int_equal(attn_f32_to_bf16(bits_f(0x00010000u)), 0x0001);
    assert_int_equal(attn_f32_to_bf16(bits_f(0x00008000u)), 0x0000); /* tie */
    assert_int_equal(attn_f32_to_bf16(bits_f(0x00018000u)), 0x0002); /* tie */
    assert_true(attn_bf16_to_f32(0x0001) == bits_f(0x00010000u));
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float f = attn_bf16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        assert_int_equal(attn_f32_to_bf16(f), h);
    }
}

static void test_arrays(void **state)
{
    (void)state;
    float src[5] = {1.0f, -0.5f, 65504.0f, 0x1p-24f, 3.140625f}, back[5];
    uint16_t h[5];
    float f[5];
    attn_from_f32(ATTN_F16, src, h, 5);
    attn_to_f32(ATTN_F16, h, back, 5);
    assert_memory_equal(src, back, sizeof src);
    attn_from_f32(ATTN_BF16, src, h, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(h[i], attn_f32_to_bf16(src[i]));
    attn_to_f32(ATTN_BF16, h, back, 5);
    for (int i = 0; i < 5; i++)
        assert_true(back[i] == attn_bf16_to_f32(h[i]));
    attn_from_f32(ATTN_F32, src, f, 5);
    assert_memory_equal(src, f, sizeof src);
    attn_to_f32(ATTN_F32, f, back, 5);
    assert_memory_equal(src, back, sizeof src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_f16_exact_values),
        cmocka_unit_test(test_f16_round_to_nearest_even),
        cmocka_unit_test(test_f16_overflow_inf_nan),
        cmocka_unit_test(test_f16_exhaustive_round_trip),
        cmocka_unit_test(test_f16_matches_compiler),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_arrays),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
