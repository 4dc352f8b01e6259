/*
 * test-select.c - tests of attention/select.c: the score formula term by
 * term, and the top-k selection against a full sort, with many ties, on
 * sorted and reverse-sorted grids, with NaN, and at the edges of k.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attention/cpu/kernels.h"
#include "attention/internal.h"

static void test_score_terms(void **state)
{
    (void)state;
    /* plain: L - r */
    assert_float_equal(attn_select_score(0.5f, 2.0f, 0, 3, 7, 0, 0), -1.5, 0);
    /* empty pair */
    assert_float_equal(attn_select_score(0.5f, 2.0f, 1, 3, 7, 0, 0), -1.5 - 1e4,
                       0);
    /* diagonal band: |I-J| <= P_diag / 2 */
    assert_float_equal(attn_select_score(0.0f, 0.0f, 0, 3, 5, 0, 4), 5e3, 0);
    assert_float_equal(attn_select_score(0.0f, 0.0f, 0, 3, 6, 0, 4), 0, 0);
    assert_float_equal(attn_select_score(0.0f, 0.0f, 0, 3, 4, 0, 3), 5e3, 0);
    assert_float_equal(attn_select_score(0.0f, 0.0f, 0, 3, 5, 0, 3), 0, 0);
    assert_float_equal(attn_select_score(0.0f, 0.0f, 0, 4, 4, 0, 1), 5e3, 0);
    /* first rows and columns, cumulative */
    assert_float_equal(attn_select_score(0.0f, 0.0f, 0, 1, 9, 2, 0), 5e3, 0);
    assert_float_equal(attn_select_score(0.0f, 0.0f, 0, 9, 1, 2, 0), 5e3, 0);
    assert_float_equal(attn_select_score(0.0f, 0.0f, 0, 1, 1, 2, 0), 1e4, 0);
    assert_float_equal(attn_select_score(0.0f, 0.0f, 1, 0, 0, 1, 1),
                       -1e4 + 1.5e4, 0);
    /* computed in double: a small difference survives the bonuses */
    double a = attn_select_score(1e-4f, 0.0f, 0, 0, 0, 1, 1);
    double b = attn_select_score(0.0f, 0.0f, 0, 0, 0, 1, 1);
    assert_true(a > b);
}

static void test_scores_row(void **state)
{
    (void)state;
    float L[4] = {0.1f, -0.2f, 0.4f, 0.0f}, cnt[4] = {32, 0, 5, 1};
    uint64_t key[4];
    attn_select_keys_row(L, 0.4f, cnt, 3.0f, 2, 4, 1, 2, key);
    for (uint32_t J = 0; J < 4; J++)
        assert_int_equal(key[J], attn_select_key(attn_select_score(
                                     L[J], 0.4f, cnt[J] == 0, 2, J, 1, 2)));
    attn_select_keys_row(L, 0.4f, cnt, 0.0f, 2, 4, 0, 0, key);
    for (uint32_t J = 0; J < 4; J++) /* empty query block: all empty pairs */
        assert_true(key[J] < attn_select_key(-9000.0));
}

/* The row function gives the keys of attn_select_score() for
 * every combination of empty blocks and priors, rows and columns inside
 * and outside them. */
static void test_scores_row_matches_score(void **state)
{
    (void)state;
    enum { NB = 37 };
    float L[NB], cnt[NB];
    uint64_t key[NB];
    uint64_t st = 12345;
    for (int J = 0; J < NB; J++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        L[J] = (float)((double)(st >> 40) / (double)(1ull << 24)) * 8.0f - 4.0f;
        cnt[J] = (J % 5 == 3) ? 0.0f : (float)(1 + J % 32);
    }
    L[4] = 0.0f, L[5] = -0.0f, L[6] = NAN, L[7] = -INFINITY, L[8] = INFINITY;
    static const uint32_t firsts[] = {0, 1, 3, 40};
    static const uint32_t diags[] = {0, 1, 2, 5, 100};
    static const uint32_t rows[] = {0, 2, 7, 36};
    static const float cIs[] = {0.0f, 32.0f};
    static const char *const isas[] = {"portable", "avx2", "avx512"};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 5; b++)
            for (int c = 0; c < 4; c++)
                for (int e = 0; e < 2; e++) {
                    attn_select_keys_row(L, 1.5f, cnt, cIs[e], rows[c], NB,
                                         firsts[a], diags[b], key);
                    for (uint32_t J = 0; J < NB; J++) {
                        double want = attn_select_score(
                            L[J], 1.5f, cIs[e] == 0.0f || cnt[J] == 0.0f,
                            rows[c], J, firsts[a], diags[b]);
                        if (key[J] != attn_select_key(want))
                            fail_msg("I=%u J=%u first=%u diag=%u cI=%g: key "
                                     "%llx, want the key of %.17g",
                                     rows[c], J, firsts[a], diags[b],
                                     (double)cIs[e], (unsigned long long)key[J],
                                     want);
                    }
                    /* each CPU kernel variant this machine runs gives
                     * the same keys */
                    for (int v = 0; v < 3; v++) {
                        const struct cpu_kernels *kern =
                            cpu_kernels_pick(isas[v]);
                        uint64_t kk[NB];
                        if (!kern)
                            continue;
                        kern->select_keys_row(L, 1.5f, cnt, cIs[e], rows[c],
                                              rows[c], NB, NB, firsts[a],
                                              diags[b], kk);
                        if (memcmp(kk, key, sizeof kk) != 0)
                            fail_msg("%s keys differ: I=%u first=%u diag=%u",
                                     isas[v], rows[c], firsts[a], diags[b]);
                    }
                }
}

struct item {
    double s;
    uint32_t i;
};

static int cmp(const void *a, const void *b)
{
    const struct item *x = a, *y = b;
    int xn = isnan(x->s), yn = isnan(y->s);
    if (xn != yn)
        return xn - yn;
    if (!xn && x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

static void check_topk(const double *S, size_t n, size_t k)
{
    uint8_t *sel = malloc(n ? n : 1);
    uint32_t *scratch = malloc(ATTN_SELECT_SCRATCH(n) * sizeof *scratch);
    uint64_t *key = malloc((n ? n : 1) * sizeof *key);
    struct item *it = malloc((n ? n : 1) * sizeof *it);
    assert_non_null(sel);
    assert_non_null(scratch);
    assert_non_null(it);
    assert_non_null(key);
    for (size_t i = 0; i < n; i++)
        key[i] = attn_select_key(S[i]);
    attn_select_topk(key, n, k, sel, scratch);
    for (size_t i = 0; i < n; i++)
        it[i] = (struct item){S[i], (uint32_t)i};
    qsort(it, n, sizeof *it, cmp);
    size_t want = k < n ? k : n, got = 0;
    for (size_t t = 0; t < n; t++) {
        int expect = t < want;
        if (sel[it[t].i] != expect)
            fail_msg("n=%zu k=%zu: rank %zu (index %u, score %g) sel=%d", n, k,
                     t, it[t].i, it[t].s, sel[it[t].i]);
        got += sel[it[t].i];
    }
    assert_int_equal(got, want);
    free(sel), free(scratch), free(it), free(key);
}

static void test_topk_against_sort(void **state)
{
    (void)state;
    uint64_t st = 99;
    /* 70000 takes the wide first digit (grids of 65536 pairs or more) */
    static double S[70000];
    static const size_t ns[] = {1, 2, 3, 10, 64, 1000, 5000, 70000};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++) {
        size_t n = ns[a];
        for (int pattern = 0; pattern < 5; pattern++) {
            for (size_t i = 0; i < n; i++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                double r = (double)(st >> 11) * 0x1p-53;
                switch (pattern) {
                case 0:
                    S[i] = r;
                    break; /* distinct */
                case 1:
                    S[i] = floor(r * 4);
                    break; /* many ties */
                case 2:
                    S[i] = (double)i;
                    break; /* ascending */
                case 3:
                    S[i] = -(double)i;
                    break; /* descending */
                case 4:
                    S[i] = 1.0;
                    break; /* all tied */
                }
            }
            size_t ks[] = {0, 1, n / 3, n / 2, n - 1, n, n + 5};
            for (size_t b = 0; b < sizeof ks / sizeof *ks; b++)
                check_topk(S, n, ks[b]);
        }
    }
}

/* attn_select_topk() on the keys of n scores. */
static void topk_of(const double *S, size_t n, size_t k, uint8_t *sel)
{
    uint64_t key[8];
    uint32_t *scratch = malloc(ATTN_SELECT_SCRATCH(n) * sizeof *scratch);
    assert_non_null(scratch);
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++)
        key[i] = attn_select_key(S[i]);
    attn_select_topk(key, n, k, sel, scratch);
    free(scratch);
}

static void test_topk_ties_to_smaller_index(void **state)
{
    (void)state;
    double S[6] = {1, 2, 2, 2, 0, 2};
    uint8_t sel[6];
    topk_of(S, 6, 2, sel);
    uint8_t want[6] = {0, 1, 1, 0, 0, 0};
    assert_memory_equal(sel, want, 6);
    topk_of(S, 6, 5, sel);
    uint8_t want5[6] = {1, 1, 1, 1, 0, 1};
    assert_memory_equal(sel, want5, 6);
}

static void test_topk_nan_ranks_last(void **state)
{
    (void)state;
    double S[5] = {NAN, -1e300, NAN, 0, -INFINITY};
    uint8_t sel[5];
    topk_of(S, 5, 3, sel);
    uint8_t want[5] = {0, 1, 0, 1, 1};
    assert_memory_equal(sel, want, 5);
    topk_of(S, 5, 4, sel);
    uint8_t want4[5] = {1, 1, 0, 1, 1};
    assert_memory_equal(sel, want4, 5);
    check_topk(S, 5, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_score_terms),
        cmocka_unit_test(test_scores_row),
        cmocka_unit_test(test_scores_row_matches_score),
        cmocka_unit_test(test_topk_against_sort),
        cmocka_unit_test(test_topk_ties_to_smaller_index),
        cmocka_unit_test(test_topk_nan_ranks_last),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
