/*
 * test-accuracy.c - the accuracy controls (attention/README.md, "Accuracy
 * controls") against the float64 reference, which implements them apart
 * (tests/unit/attention/helper-ref64.c): the row minimum, the error
 * estimate on sampled rows and target_error's budget search, with every
 * method, the three dtypes, masks, causality, cross-attention and grouped
 * heads; each head's statistics equal the reference's (budgets and pair
 * counts exactly, estimates closely); the outputs and statistics are the
 * same bits on 1, 2 and 7 threads; a backend without the controls and
 * bad parameters are refused; the admission cost counts them.
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
#include "tests/unit/attention/ref64.h"

/* Computes f on be with per-head statistics; checks output and
 * statistics against the reference.  Returns the heads (caller frees). */
static struct attn_head_stats *check_heads(struct attn_backend *be,
                                           struct fx *f, const char *what,
                                           struct attn_stats *st_out)
{
    size_t heads = (size_t)f->p.B * f->p.H;
    struct attn_head_stats *hs = calloc(heads, sizeof *hs);
    struct attn_head_stats *want = calloc(heads, sizeof *want);
    double *out = malloc(f->nq * sizeof *out);
    assert_non_null(hs);
    assert_non_null(want);
    assert_non_null(out);
    f->p.head_stats = hs;
    struct attn_stats st;
    double err = fx_check(be, f, what);
    (void)err;
    /* fx_check computed with hs; the problem statistics again for est */
    assert_int_equal(attn_backend_compute(be, &f->p, &st), ATTN_OK);
    assert_int_equal(
        ref64_attention_heads(&f->p, f->q64, f->k64, f->v64, out, want), 0);
    double num = 0.0, den = 0.0;
    for (size_t h = 0; h < heads; h++) {
        const struct attn_head_stats *g = &hs[h], *w = &want[h];
        if (g->budget != w->budget ||
            g->blocks_selected != w->blocks_selected ||
            g->blocks_total != w->blocks_total)
            fail_msg("%s head %zu: budget %llu selected %llu total %llu, want "
                     "%llu %llu %llu",
                     what, h, (unsigned long long)g->budget,
                     (unsigned long long)g->blocks_selected,
                     (unsigned long long)g->blocks_total,
                     (unsigned long long)w->budget,
                     (unsigned long long)w->blocks_selected,
                     (unsigned long long)w->blocks_total);
        if (fabs(g->density - w->density) > 1e-12)
            fail_msg("%s head %zu: density %g, want %g", what, h, g->density,
                     w->density);
        int estimated = f->p.error_samples || f->p.target_error > 0.0f;
        if (!estimated) {
            if (g->est_rel_err != -1.0)
                fail_msg("%s head %zu: estimate %g without samples", what, h,
                         g->est_rel_err);
            continue;
        }
        /* the same rows, the same sums, up to the dtype's rounding of
         * the output (the reference's is exact) */
        double tol = f->p.dtype == ATTN_F32 ? 1e-3 : 3e-2;
        if (!(fabs(g->est_rel_err - w->est_rel_err) <=
              tol * w->est_rel_err + (f->p.dtype == ATTN_F32 ? 1e-5 : 3e-3)))
            fail_msg("%s head %zu: estimate %g, reference %g", what, h,
                     g->est_rel_err, w->est_rel_err);
        num += g->err_num;
        den += g->err_den;
    }
    if (f->p.error_samples || f->p.target_error > 0.0f) {
        double est = den > 0.0 ? sqrt(num / den) : 0.0;
        if (fabs(st.est_rel_err - est) > 1e-12 * (1.0 + est))
            fail_msg("%s: problem estimate %g, heads give %g", what,
                     st.est_rel_err, est);
    } else if (st.est_rel_err != -1.0) {
        fail_msg("%s: problem estimate %g without samples", what,
                 st.est_rel_err);
    }
    if (st_out)
        *st_out = st;
    free(want), free(out);
    f->p.head_stats = NULL;
    return hs;
}

struct shape {
    uint32_t B, H, Hkv, Nq, Nk, D;
};

static const struct shape shapes[] = {
    {1, 2, 1, 256, 256, 16}, /* self-attention, grouped heads */
    {2, 2, 2, 100, 300, 8},  /* cross, padding on both sides */
    {1, 3, 1, 200, 200, 24}, /* odd D */
};
#define NSHAPES (sizeof shapes / sizeof shapes[0])

/* Every control alone and together, on each shape, method, dtype, with
 * and without causality and masks. */
static void test_against_reference(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    const enum attn_method methods[2] = {ATTN_MRA2, ATTN_MRA2_SPARSE};
    const enum attn_dtype dts[3] = {ATTN_F32, ATTN_BF16, ATTN_F16};
    for (size_t i = 0; i < NSHAPES; i++)
        for (int m = 0; m < 2; m++)
            for (int c = 0; c < 4; c++) {
                const struct shape *s = &shapes[i];
                int causal = c & 1, masked = c >> 1;
                enum attn_dtype dt = dts[(i + (size_t)c) % 3];
                struct fx f;
                char name[200];
                fx_init_cross(&f, methods[m], dt, s->B, s->H, s->Hkv, s->Nq,
                              s->Nk, s->D, 77 + i * 13 + (size_t)c * 5 + m,
                              2.0);
                f.p.causal = causal;
                if (masked) {
                    fx_mask_random(&f, 0.7, 5 + i);
                    fx_qmask_random(&f, 0.8, 9 + i);
                }
                f.p.block_per_row = 1;
                f.p.min_blocks_per_row = 2;
                f.p.error_samples = (uint32_t)(5 + 20 * c);
                snprintf(name, sizeof name,
                         "%s %s Nq=%u Nk=%u%s%s min 2 samples %u",
                         attn_method_name(methods[m]), attn_dtype_name(dt),
                         s->Nq, s->Nk, causal ? " causal" : "",
                         masked ? " masked" : "", f.p.error_samples);
                free(check_heads(be, &f, name, NULL));
                /* target_error, on the ladder to every visible pair */
                f.p.block_per_row = 0;
                f.p.min_blocks_per_row = 0;
                f.p.error_samples = 0;
                f.p.target_error = 0.05f;
                snprintf(name, sizeof name, "%s %s Nq=%u Nk=%u%s%s target",
                         attn_method_name(methods[m]), attn_dtype_name(dt),
                         s->Nq, s->Nk, causal ? " causal" : "",
                         masked ? " masked" : "");
                free(check_heads(be, &f, name, NULL));
                fx_free(&f);
            }
    attn_backend_free(be);
}

/* Each real query row of mra2_sparse with a row minimum of 1 has a
 * selected block, so no row with a real key in its view is 0; without
 * it, with a budget of one pair, most rows are. */
static void test_no_empty_rows(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    for (int minimum = 0; minimum < 2; minimum++) {
        struct fx f;
        fx_init(&f, ATTN_MRA2_SPARSE, ATTN_F32, 1, 2, 2, 320, 16, 4, 1.0);
        f.p.num_blocks = 1;
        f.p.min_blocks_per_row = (uint32_t)minimum;
        free(check_heads(be, &f, minimum ? "min 1" : "min 0", NULL));
        size_t zero = 0;
        for (size_t r = 0; r < f.nq / f.p.D; r++) {
            int all0 = 1;
            for (size_t d = 0; d < f.p.D; d++)
                all0 &= fx_out(&f, r * f.p.D + d) == 0.0f;
            zero += (size_t)all0;
        }
        if (minimum)
            assert_int_equal(zero, 0);
        else
            assert_true(zero >= f.nq / f.p.D / 2);
        fx_free(&f);
    }
    attn_backend_free(be);
}

/* A larger budget buys a smaller estimate; target_error picks the
 * smallest step of the ladder whose estimate meets it, so its estimate
 * is below the target (with the margin, comfortably) and a looser target
 * takes no more blocks. */
static void test_target_picks_budgets(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    struct fx f;
    fx_init(&f, ATTN_MRA2, ATTN_F32, 1, 4, 4, 1024, 32, 6, 3.0);
    uint64_t prev = UINT64_MAX;
    const float targets[3] = {0.02f, 0.1f, 0.5f};
    for (int t = 0; t < 3; t++) {
        f.p.target_error = targets[t];
        struct attn_stats st;
        struct attn_head_stats *hs = check_heads(be, &f, "target", &st);
        uint64_t sel = st.blocks_selected;
        for (size_t h = 0; h < 4; h++)
            if (hs[h].budget < hs[h].blocks_total)
                assert_true(hs[h].est_rel_err <= targets[t]);
        assert_true(sel <= prev);
        prev = sel;
        free(hs);
    }
    /* a budget cap holds even when the target is not met */
    f.p.target_error = 1e-6f;
    f.p.block_per_row = 3;
    struct attn_head_stats *hs = check_heads(be, &f, "capped", NULL);
    for (size_t h = 0; h < 4; h++)
        assert_int_equal(hs[h].budget, 3 * 32);
    free(hs);
    fx_free(&f);
    attn_backend_free(be);
}

/* Nothing left out (the budget covers every visible pair): no row to
 * sample, an estimate of 0; exact with error_samples: 0 too. */
static void test_nothing_left_out(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    for (int exact = 0; exact < 2; exact++) {
        struct fx f;
        fx_init(&f, exact ? ATTN_EXACT : ATTN_MRA2, ATTN_F32, 1, 2, 1, 96, 8,
                11, 1.0);
        f.p.block_per_row = 3;
        f.p.error_samples = 16;
        struct attn_stats st;
        struct attn_head_stats *hs =
            check_heads(be, &f, exact ? "exact" : "all pairs", &st);
        assert_true(st.est_rel_err == 0.0);
        assert_true(hs[0].est_rel_err == 0.0 && hs[1].est_rel_err == 0.0);
        assert_true(st.density == 1.0);
        free(hs);
        fx_free(&f);
    }
    attn_backend_free(be);
}

/* Outputs, budgets and estimates: the same bits on 1, 2 and 7 threads,
 * alone and in a batch with a problem without the controls. */
static void test_deterministic(void **state)
{
    (void)state;
    struct fx f, g;
    fx_init_cross(&f, ATTN_MRA2, ATTN_BF16, 2, 4, 2, 300, 700, 32, 21, 3.0);
    fx_init(&g, ATTN_MRA2_SPARSE, ATTN_F32, 1, 2, 2, 200, 16, 22, 1.0);
    f.p.causal = 1;
    f.p.target_error = 0.08f;
    f.p.min_blocks_per_row = 1;
    f.p.error_samples = 40;
    size_t heads = (size_t)f.p.B * f.p.H, bytes = f.nq * 2;
    struct attn_head_stats *h1 = calloc(heads, sizeof *h1);
    struct attn_head_stats *h2 = calloc(heads, sizeof *h2);
    void *o1 = malloc(bytes);
    assert_non_null(h1);
    assert_non_null(h2);
    assert_non_null(o1);
    const int threads[3] = {1, 2, 7};
    for (int t = 0; t < 3; t++) {
        struct attn_backend *be = fx_backend(threads[t]);
        f.p.head_stats = t == 0 ? h1 : h2;
        if (t < 2) {
            assert_int_equal(attn_backend_compute(be, &f.p, NULL), ATTN_OK);
        } else {
            const struct attn_problem *ps[2] = {&g.p, &f.p};
            int errs[2];
            struct attn_stats st[2];
            assert_int_equal(attn_backend_compute_batch(be, ps, 2, st, errs),
                             ATTN_OK);
            assert_int_equal(errs[0], ATTN_OK);
            assert_int_equal(errs[1], ATTN_OK);
            assert_true(st[0].est_rel_err == -1.0);
        }
        if (t == 0)
            memcpy(o1, f.out, bytes);
        else {
            assert_memory_equal(o1, f.out, bytes);
            assert_memory_equal(h1, h2, heads * sizeof *h1);
        }
        attn_backend_free(be);
    }
    free(h1), free(h2), free(o1);
    fx_free(&f);
    fx_free(&g);
}

/* error_samples above the limit and a negative or NaN target_error are
 * refused with a message naming them; a backend without the controls
 * refuses a problem that asks for them and computes the others. */
static void test_refused(void **state)
{
    (void)state;
    struct fx f;
    char msg[200];
    fx_init(&f, ATTN_MRA2, ATTN_F32, 1, 1, 1, 64, 8, 3, 1.0);
    f.p.error_samples = ATTN_MAX_ERROR_SAMPLES + 1;
    assert_int_equal(attn_problem_check(&f.p, msg, sizeof msg), ATTN_EINVAL);
    assert_non_null(strstr(msg, "error_samples"));
    f.p.error_samples = ATTN_MAX_ERROR_SAMPLES;
    assert_int_equal(attn_problem_check(&f.p, msg, sizeof msg), ATTN_OK);
    f.p.error_samples = 0;
    f.p.target_error = -0.1f;
    assert_int_equal(attn_problem_check(&f.p, msg, sizeof msg), ATTN_EINVAL);
    assert_non_null(strstr(msg, "target_error"));
    f.p.target_error = NAN;
    assert_int_equal(attn_problem_check(&f.p, msg, sizeof msg), ATTN_EINVAL);
    f.p.target_error = 0.0f;
    /* the admission cost counts the samples and target_error's search */
    fx_free(&f);
    fx_init(&f, ATTN_MRA2, ATTN_F32, 1, 1, 1, 4096, 64, 3, 1.0);
    double plain = attn_cost(&f.p);
    f.p.error_samples = ATTN_MAX_ERROR_SAMPLES;
    double sampled = attn_cost(&f.p);
    f.p.error_samples = 0;
    f.p.target_error = 0.01f;
    double target = attn_cost(&f.p);
    assert_true(plain > 0 && sampled > 1.2 * plain && target > plain);
    f.p.target_error = 0.0f;
    /* which built-in backends compute them */
    assert_true(attn_backend_accuracy("cpu"));
    assert_false(attn_backend_accuracy("cuda"));
    /* the controls on exact: only the estimate counts as one */
    f.p.method = ATTN_EXACT;
    f.p.min_blocks_per_row = 3;
    assert_false(attn_problem_accuracy(&f.p));
    f.p.error_samples = 1;
    assert_true(attn_problem_accuracy(&f.p));
    fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_reference),
        cmocka_unit_test(test_no_empty_rows),
        cmocka_unit_test(test_target_picks_budgets),
        cmocka_unit_test(test_nothing_left_out),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_refused),
    };
    return FX_RUN_PATHS(tests, NULL, NULL);
}
