/*
 * test-load-hist.c - tests the log-linear latency histogram of mra-load
 * (clients/load/hist.c): bucket boundaries, relative precision, quantiles
 * against exact order statistics, merging.
 *
 * The histogram is internal to mra-load, so its source is compiled in.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "clients/load/hist.c"

static struct hist h1, h2;

/* Every value lies inside its bucket, buckets tile the range without gaps,
 * and a bucket is at most 1/64 of its low end wide. */
static void test_buckets(void **state)
{
    (void)state;
    assert_int_equal(hist_index(0), 0);
    assert_int_equal(hist_index(127), 127);
    assert_int_equal(hist_index(128), 128);
    assert_int_equal(hist_index(129), 128);
    assert_int_equal(hist_index(130), 129);
    assert_int_equal(hist_index(UINT64_MAX), HIST_BUCKETS - 1);
    for (size_t i = 0; i + 1 < HIST_BUCKETS; i++) {
        assert_true(hist_bucket_high(i) + 1 == hist_bucket_low(i + 1));
        assert_int_equal(hist_index(hist_bucket_low(i)), i);
        assert_int_equal(hist_index(hist_bucket_high(i)), i);
        uint64_t lo = hist_bucket_low(i), w = hist_bucket_high(i) - lo + 1;
        if (lo >= HIST_SUB)
            assert_true(w * 64 <= lo);
    }
    uint64_t s = 12345;
    for (int i = 0; i < 100000; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        uint64_t v = s >> (s & 63);
        size_t idx = hist_index(v);
        assert_true(hist_bucket_low(idx) <= v && v <= hist_bucket_high(idx));
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Quantiles agree with the exact order statistic to one bucket width,
 * never below it, and never above the maximum. */
static void test_quantiles(void **state)
{
    (void)state;
    enum { n = 20000 };
    static uint64_t v[n];
    hist_reset(&h1);
    uint64_t s = 99;
    for (int i = 0; i < n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        /* latencies from 50 us to ~1 s, skewed like a real tail */
        v[i] = 50 + (s >> 33) % 1000 + ((s >> 20) % 100 == 0 ? (s >> 44) : 0);
        hist_record(&h1, v[i]);
    }
    qsort(v, n, sizeof v[0], cmp_u64);
    const double qs[] = {0.0, 0.5, 0.9, 0.99, 0.999, 1.0};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        size_t rank = (size_t)ceil(qs[i] * n);
        uint64_t exact = v[rank ? rank - 1 : 0];
        uint64_t got = hist_quantile(&h1, qs[i]);
        assert_true(got >= exact);
        assert_true(got <= exact + exact / 64 + 1);
        assert_true(got <= v[n - 1]);
    }
    assert_int_equal(hist_quantile(&h1, 1.0), v[n - 1]);
    assert_int_equal(h1.min, v[0]);
    assert_int_equal(h1.total, n);
}

static void test_empty_and_merge(void **state)
{
    (void)state;
    hist_reset(&h1);
    hist_reset(&h2);
    assert_int_equal(hist_quantile(&h1, 0.5), 0);
    assert_true(hist_mean(&h1) == 0.0);
    for (uint64_t i = 1; i <= 100; i++)
        hist_record(&h1, i);
    for (uint64_t i = 1001; i <= 1100; i++)
        hist_record(&h2, i);
    hist_merge(&h1, &h2);
    assert_int_equal(h1.total, 200);
    assert_int_equal(h1.min, 1);
    assert_int_equal(h1.max, 1100);
    assert_int_equal(hist_quantile(&h1, 0.5), 100);
    uint64_t p75 = hist_quantile(&h1, 0.75);
    assert_true(p75 >= 1050 && p75 <= 1050 + 1050 / 64);
    assert_true(hist_mean(&h1) == (5050.0 + 105050.0) / 200.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets),
        cmocka_unit_test(test_quantiles),
        cmocka_unit_test(test_empty_and_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
