/*
 * test-auth.c - the API-key comparison of mrad (server/auth.c): right
 * answers for equal, shorter, longer, prefixed and differently-cased keys,
 * and a time that does not depend on where the keys differ (an early-exit
 * comparison would answer a first-byte mismatch about a hundred times
 * faster than a last-byte one on a 4 KiB key; the minimum over many rounds
 * is used, which load on the machine cannot make smaller).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/auth.h"

static void test_answers(void **state)
{
    (void)state;
    const char *k = "s3cret";
    size_t n = strlen(k);
    assert_int_equal(mrad_key_matches(k, n, "Bearer s3cret"), 1);
    assert_int_equal(mrad_key_matches(k, n, "bearer s3cret"), 1);
    assert_int_equal(mrad_key_matches(k, n, "BEARER s3cret"), 1);
    assert_int_equal(mrad_key_matches(k, n, "Bearer s3cre"), 0);
    assert_int_equal(mrad_key_matches(k, n, "Bearer s3crett"), 0);
    assert_int_equal(mrad_key_matches(k, n, "Bearer S3cret"), 0);
    assert_int_equal(mrad_key_matches(k, n, "Bearer s3creT"), 0);
    assert_int_equal(mrad_key_matches(k, n, "Bearer "), 0);
    assert_int_equal(mrad_key_matches(k, n, "Bearer"), 0);
    assert_int_equal(mrad_key_matches(k, n, "Basic s3cret"), 0);
    assert_int_equal(mrad_key_matches(k, n, "s3cret"), 0);
    assert_int_equal(mrad_key_matches(k, n, ""), 0);
    assert_int_equal(mrad_key_matches(k, n, NULL), 0);
    assert_int_equal(mrad_key_matches(k, n, "Bearer  s3cret"), 0);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Smallest time of `reps` calls over `rounds` rounds. */
static double min_time(const char *want, size_t n, const char *auth, int rounds,
                       int reps)
{
    double best = 1e9;
    for (int r = 0; r < rounds; r++) {
        double t0 = now_s();
        int sum = 0;
        for (int i = 0; i < reps; i++)
            sum += mrad_key_matches(want, n, auth);
        double t = now_s() - t0;
        assert_int_equal(sum, 0);
        if (t < best)
            best = t;
    }
    return best;
}

static void test_time_does_not_depend_on_the_difference(void **state)
{
    (void)state;
    enum { N = 4096 };
    char *want = malloc(N + 1);
    char *first = malloc(N + 8), *last = malloc(N + 8), *shorter = malloc(16);
    assert_non_null(want);
    assert_non_null(first);
    assert_non_null(last);
    assert_non_null(shorter);
    for (int i = 0; i < N; i++)
        want[i] = (char)('a' + i % 26);
    want[N] = '\0';
    sprintf(first, "Bearer %s", want);
    strcpy(last, first);
    first[7] = '#';        /* differs at the first byte */
    last[7 + N - 1] = '#'; /* differs at the last byte */
    strcpy(shorter, "Bearer a");
    double tf = 0, tl = 0, ts = 0;
    /* Interleaved, so that a change of machine load hits both alike. */
    for (int k = 0; k < 5; k++) {
        double a = min_time(want, N, first, 40, 50);
        double b = min_time(want, N, last, 40, 50);
        double c = min_time(want, N, shorter, 40, 50);
        tf = k ? (a < tf ? a : tf) : a;
        tl = k ? (b < tl ? b : tl) : b;
        ts = k ? (c < ts ? c : ts) : c;
    }
    printf("4 KiB key, 50 calls: first-byte difference %.1f us, last-byte "
           "%.1f us, 1-byte key %.1f us\n",
           tf * 1e6, tl * 1e6, ts * 1e6);
    assert_true(tf > 0.5 * tl && tf < 2.0 * tl);
    assert_true(ts > 0.5 * tl && ts < 2.0 * tl);
    free(want), free(first), free(last), free(shorter);
}

/* Writes `text` to a temporary file; returns its path (static). */
static const char *key_file(const char *text, size_t len)
{
    static char path[64];
    strcpy(path, "/tmp/mrad-test-keys-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

static void test_keyring(void **state)
{
    (void)state;
    char err[160];
    struct mrad_keyring *k;
    const char *ok = "first\r\n\nsecond-key\nthird.key";
    const char *path = key_file(ok, strlen(ok));
    assert_int_equal(mrad_keyring_load(path, &k, err, sizeof(err)), 0);
    unlink(path);
    assert_int_equal(mrad_keyring_count(k), 3);
    uint64_t a = 0, b = 0, c = 0;
    assert_int_equal(mrad_keyring_check(k, "Bearer first", &a), 1);
    assert_int_equal(mrad_keyring_check(k, "Bearer second-key", &b), 1);
    assert_int_equal(mrad_keyring_check(k, "Bearer third.key", &c), 1);
    assert_true(a && b && c && a != b && b != c && a != c);
    assert_int_equal(mrad_keyring_check(k, "Bearer first\r", NULL), 0);
    assert_int_equal(mrad_keyring_check(k, "Bearer fourth", NULL), 0);
    assert_int_equal(mrad_keyring_check(k, NULL, NULL), 0);
    mrad_keyring_free(k);

    /* The same key, loaded again, has the same identity. */
    path = key_file("second-key\n", 11);
    assert_int_equal(mrad_keyring_load(path, &k, err, sizeof(err)), 0);
    unlink(path);
    uint64_t b2 = 0;
    assert_int_equal(mrad_keyring_check(k, "Bearer second-key", &b2), 1);
    assert_true(b2 == b);
    mrad_keyring_free(k);

    /* A key of 4096 bytes loads; one of 4097 is refused, not cut. */
    char *big = malloc(MRAD_KEY_MAX + 2);
    assert_non_null(big);
    memset(big, 'x', MRAD_KEY_MAX + 1);
    path = key_file(big, MRAD_KEY_MAX);
    assert_int_equal(mrad_keyring_load(path, &k, err, sizeof(err)), 0);
    unlink(path);
    mrad_keyring_free(k);
    path = key_file(big, MRAD_KEY_MAX + 1);
    assert_int_equal(mrad_keyring_load(path, &k, err, sizeof(err)), -1);
    unlink(path);
    assert_non_null(strstr(err, "line 1"));
    assert_non_null(strstr(err, "longer than 4096"));
    free(big);

    /* No key, a space inside a key, a missing file. */
    path = key_file("\n\n", 2);
    assert_int_equal(mrad_keyring_load(path, &k, err, sizeof(err)), -1);
    unlink(path);
    assert_non_null(strstr(err, "no key"));
    path = key_file("good\nbad key\n", 14);
    assert_int_equal(mrad_keyring_load(path, &k, err, sizeof(err)), -1);
    unlink(path);
    assert_non_null(strstr(err, "line 2"));
    assert_int_equal(
        mrad_keyring_load("/nonexistent/keys", &k, err, sizeof(err)), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answers),
        cmocka_unit_test(test_time_does_not_depend_on_the_difference),
        cmocka_unit_test(test_keyring),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
