/*
 * test-isa.c - tests of the CPU backend's kernel paths (attention/cpu/
 * kernels*.c): every path this machine runs is bitwise stable across
 * thread counts 1, 2 and 7, the paths agree with each other within 1e-5
 * relative error, and the environment variable MRAD_ISA picks a path when
 * attn_config.isa leaves the choice to the backend.  Also: K and V read in
 * place (f32, no mask, whole blocks, D a multiple of 32) give bitwise the
 * result of the working copies (the same problem with an all-ones mask).
 * bf16 and f16 on every path, the AMX tile kernels included: within 1e-2
 * (bf16) and 2e-3 (f16) of the float64 reference on the rounded inputs,
 * bitwise stable across thread counts, keys read in place equal to keys
 * copied, and with causality, masks, priors and query masks.  The
 * kernels' vectorised conversions give the bits of attn_from_f32() and
 * the values of attn_to_f32().
 *
 * These run on the CPU backend whatever ATTN_TEST_BACKEND names: the
 * kernel paths are a CPU matter.
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

#include "attention/cpu/kernels.h"
#include "tests/unit/attention/attn-fixture.h"

#define NISA 4
static const char *const isas[NISA] = {"portable", "avx2", "avx512", "amx"};

/* f32 problems that exercise every kernel: exact and both MRA modes,
 * masks, priors, GQA, D that is and is not a multiple of the padding,
 * one block and many, a budget between nothing and everything. */
#define NPROB 6
static void isa_problems(struct fx *f)
{
    fx_init(&f[0], ATTN_EXACT, ATTN_F32, 1, 2, 1, 1000, 64, 71, 2.0);
    fx_init(&f[1], ATTN_MRA2, ATTN_F32, 1, 2, 2, 2048, 64, 72, 2.0);
    fx_init(&f[2], ATTN_MRA2_SPARSE, ATTN_F32, 2, 2, 1, 333, 17, 73, 2.0);
    fx_init(&f[3], ATTN_MRA2, ATTN_F32, 1, 3, 3, 700, 100, 74, 2.0);
    fx_init(&f[4], ATTN_EXACT, ATTN_F32, 1, 1, 1, 31, 3, 75, 2.0);
    /* more than CPU_FOLD_CHUNK blocks, so the low-resolution fold
     * rescales between chunks */
    fx_init(&f[5], ATTN_MRA2, ATTN_F32, 1, 1, 1, 9000, 32, 76, 2.0);
    fx_mask_random(&f[2], 0.8, 3);
    fx_mask_range(&f[3], 100, 180);
    f[3].p.prior_diagonal = 3;
    f[1].p.prior_first = 1;
    f[5].p.block_per_row = 4;
}

/* The CPU backend with `threads` on kernel path `isa`; NULL when this CPU
 * cannot run the path. */
static struct attn_backend *isa_backend(const char *isa, int threads)
{
    struct attn_config cfg = {.threads = threads, .isa = isa};
    struct attn_backend *be = NULL;
    int rc = attn_backend_new("cpu", &cfg, &be);
    if (rc == ATTN_ENOTSUP)
        return NULL;
    assert_int_equal(rc, ATTN_OK);
    assert_non_null(strstr(attn_backend_device(be), isa));
    return be;
}

/* Relative Frobenius distance between two f32 outputs of n elements. */
static double rel_diff(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static void test_paths_stable_and_agree(void **state)
{
    (void)state;
    static const int threads[] = {1, 2, 7};
    struct fx f[NPROB];
    isa_problems(f);
    /* out[v][i]: path v's output of problem i on one thread */
    float *out[NISA][NPROB] = {{NULL}};
    int ran[NISA] = {0};
    for (int v = 0; v < NISA; v++) {
        for (int t = 0; t < 3; t++) {
            struct attn_backend *be = isa_backend(isas[v], threads[t]);
            if (!be)
                break;
            ran[v] = 1;
            for (int i = 0; i < NPROB; i++) {
                size_t bytes = f[i].nq * sizeof(float);
                memset(f[i].out, 0x55, bytes);
                assert_int_equal(attn_backend_compute(be, &f[i].p, NULL),
                                 ATTN_OK);
                if (t == 0) {
                    out[v][i] = malloc(bytes);
                    assert_non_null(out[v][i]);
                    memcpy(out[v][i], f[i].out, bytes);
                    /* portable meets the float64 reference; the others are
                     * held to portable below (and to the reference one by
                     * one in test-backend) */
                    double err = v == 0 ? fx_ref_error(&f[i], NULL) : 0.0;
                    if (!(err < 1e-5))
                        fail_msg("portable, problem %d: error %.3g against "
                                 "float64",
                                 i, err);
                } else if (memcmp(out[v][i], f[i].out, bytes) != 0) {
                    fail_msg("%s kernels, problem %d: 1 and %d threads differ",
                             isas[v], i, threads[t]);
                }
            }
            attn_backend_free(be);
        }
    }
    assert_true(ran[0]); /* portable runs everywhere */
    for (int v = 1; v < NISA; v++) {
        if (!ran[v])
            continue;
        for (int i = 0; i < NPROB; i++) {
            double d = rel_diff(out[v][i], out[0][i], f[i].nq);
            if (!(d < 1e-5))
                fail_msg("problem %d: %s and portable differ by %.3g", i,
                         isas[v], d);
        }
    }
    for (int v = 0; v < NISA; v++)
        for (int i = 0; i < NPROB; i++)
            free(out[v][i]);
    for (int i = 0; i < NPROB; i++)
        fx_free(&f[i]);
}

/* The device string names the path the backend runs. */
static int runs_path(const struct attn_backend *be, const char *isa)
{
    char want[32];
    snprintf(want, sizeof want, "%s kernels", isa);
    return strstr(attn_backend_device(be), want) != NULL;
}

static void test_env_picks_path(void **state)
{
    (void)state;
    const char *saved = getenv("MRAD_ISA");
    char *keep = saved ? strdup(saved) : NULL;
    struct attn_backend *be = NULL;
    struct attn_config cfg = {.threads = 1};

    /* every path the CPU runs can be forced through the environment, with
     * isa NULL and "auto" alike */
    for (int v = 0; v < NISA; v++) {
        struct attn_backend *direct = isa_backend(isas[v], 1);
        assert_int_equal(setenv("MRAD_ISA", isas[v], 1), 0);
        cfg.isa = NULL;
        int rc = attn_backend_new("cpu", &cfg, &be);
        if (!direct) {
            assert_int_equal(rc, ATTN_ENOTSUP);
            continue;
        }
        assert_int_equal(rc, ATTN_OK);
        assert_true(runs_path(be, isas[v]));
        attn_backend_free(be);
        cfg.isa = "auto";
        assert_int_equal(attn_backend_new("cpu", &cfg, &be), ATTN_OK);
        assert_true(runs_path(be, isas[v]));
        attn_backend_free(be);
        attn_backend_free(direct);
    }

    /* an explicit isa wins over the environment */
    assert_int_equal(setenv("MRAD_ISA", "no-such-isa", 1), 0);
    cfg.isa = "portable";
    assert_int_equal(attn_backend_new("cpu", &cfg, &be), ATTN_OK);
    assert_true(runs_path(be, "portable"));
    attn_backend_free(be);

    /* an unknown name in the environment fails like one in the config */
    cfg.isa = NULL;
    assert_int_equal(attn_backend_new("cpu", &cfg, &be), ATTN_ENOTSUP);

    /* empty means unset: the best path */
    assert_int_equal(setenv("MRAD_ISA", "", 1), 0);
    assert_int_equal(attn_backend_new("cpu", &cfg, &be), ATTN_OK);
    struct attn_backend *best = NULL;
    assert_int_equal(unsetenv("MRAD_ISA"), 0);
    assert_int_equal(attn_backend_new("cpu", &cfg, &best), ATTN_OK);
    assert_string_equal(attn_backend_device(be), attn_backend_device(best));
    attn_backend_free(be);
    attn_backend_free(best);

    if (keep) {
        assert_int_equal(setenv("MRAD_ISA", keep, 1), 0);
        free(keep);
    }
}

static void test_inplace_matches_copy(void **state)
{
    (void)state;
    static const enum attn_method methods[] = {ATTN_EXACT, ATTN_MRA2,
                                               ATTN_MRA2_SPARSE};
    for (int v = 0; v < NISA; v++) {
        struct attn_backend *be = isa_backend(isas[v], 2);
        if (!be)
            continue;
        for (int m = 0; m < 3; m++) {
            struct fx f;
            /* GQA and B > 1 exercise the in-place row offsets */
            fx_init(&f, methods[m], ATTN_F32, 2, 4, 2, 1024, 64, 80 + m, 2.0);
            size_t bytes = f.nq * sizeof(float);
            float *plain = malloc(bytes);
            assert_non_null(plain);
            assert_int_equal(attn_backend_compute(be, &f.p, NULL), ATTN_OK);
            memcpy(plain, f.out, bytes);
            f.p.mask = f.mask; /* all ones: every token real, copied */
            memset(f.out, 0x55, bytes);
            assert_int_equal(attn_backend_compute(be, &f.p, NULL), ATTN_OK);
            if (memcmp(plain, f.out, bytes) != 0)
                fail_msg("%s kernels, method %d: in place and copied differ",
                         isas[v], m);
            f.p.mask = NULL;
            /* the copied path is checked everywhere else; one look at the
             * reference shows the in-place one is not wrong alike */
            double err = v == 0 ? fx_ref_error(&f, NULL) : 0.0;
            if (!(err < 1e-5))
                fail_msg("%s kernels, method %d: error %.3g", isas[v], m, err);
            free(plain);
            fx_free(&f);
        }
        attn_backend_free(be);
    }
}

/* Half-precision problems: every method, D that is and is not a multiple
 * of 32, masks, causality with an offset, priors, query masks, grouped KV
 * heads, a head long enough for many steps of the tile kernels, and one
 * whose rows see keys so far apart that the running maximum moves. */
#define NHALF 9
static void half_problems(struct fx *f, enum attn_dtype dt)
{
    fx_init(&f[0], ATTN_EXACT, dt, 1, 2, 1, 1000, 64, 91, 2.0);
    fx_init(&f[1], ATTN_MRA2, dt, 1, 2, 2, 2048, 64, 92, 2.0);
    fx_init(&f[2], ATTN_MRA2_SPARSE, dt, 2, 2, 1, 333, 17, 93, 2.0);
    fx_init(&f[3], ATTN_MRA2, dt, 1, 3, 3, 700, 100, 94, 2.0);
    fx_init_cross(&f[4], ATTN_EXACT, dt, 1, 4, 2, 300, 365, 128, 95, 2.0);
    fx_init_cross(&f[5], ATTN_MRA2, dt, 2, 2, 1, 200, 250, 32, 96, 2.0);
    fx_init(&f[6], ATTN_EXACT, dt, 1, 1, 1, 40, 256, 97, 2.0);
    fx_init(&f[7], ATTN_EXACT, dt, 1, 2, 2, 600, 64, 98, 6.0);
    fx_init(&f[8], ATTN_MRA2, dt, 1, 1, 1, 1100, 8, 99, 2.0);
    fx_mask_random(&f[2], 0.8, 3);
    fx_mask_range(&f[3], 100, 180);
    f[3].p.prior_diagonal = 3;
    f[4].p.causal = 1;
    f[5].p.causal = 1;
    fx_qmask_random(&f[5], 0.9, 4);
    f[5].p.block_per_row = 2;
    f[1].p.prior_first = 1;
    f[8].p.causal = 1;
    f[8].p.block_per_row = 3;
}

static void test_half_paths(void **state)
{
    (void)state;
    static const enum attn_dtype dts[] = {ATTN_BF16, ATTN_F16};
    static const int threads[] = {1, 2, 7};
    for (int di = 0; di < 2; di++) {
        enum attn_dtype dt = dts[di];
        double tol = dt == ATTN_BF16 ? 1e-2 : 2e-3;
        struct fx f[NHALF];
        half_problems(f, dt);
        for (int v = 0; v < NISA; v++) {
            double worst = 0.0;
            float *first[NHALF] = {NULL};
            for (int t = 0; t < 3; t++) {
                struct attn_backend *be = isa_backend(isas[v], threads[t]);
                if (!be)
                    break;
                for (int i = 0; i < NHALF; i++) {
                    size_t bytes = f[i].nq * attn_dtype_size(dt);
                    memset(f[i].out, 0x55, bytes);
                    assert_int_equal(attn_backend_compute(be, &f[i].p, NULL),
                                     ATTN_OK);
                    if (t > 0) {
                        if (memcmp(first[i], f[i].out, bytes) != 0)
                            fail_msg("%s kernels, %s problem %d: 1 and %d "
                                     "threads differ",
                                     isas[v], attn_dtype_name(dt), i,
                                     threads[t]);
                        continue;
                    }
                    first[i] = malloc(bytes);
                    assert_non_null(first[i]);
                    memcpy(first[i], f[i].out, bytes);
                    double err = fx_ref_error(&f[i], NULL);
                    if (!(err < tol))
                        fail_msg("%s kernels, %s problem %d: error %.3g "
                                 "against float64",
                                 isas[v], attn_dtype_name(dt), i, err);
                    worst = err > worst ? err : worst;
                }
                attn_backend_free(be);
            }
            if (first[0])
                print_message("%s kernels, %s: largest error %.2e (limit "
                              "%.0e)\n",
                              isas[v], attn_dtype_name(dt), worst, tol);
            for (int i = 0; i < NHALF; i++)
                free(first[i]);
        }
        for (int i = 0; i < NHALF; i++)
            fx_free(&f[i]);
    }
}

/* bf16 keys read in place by the tile kernels (no mask, whole blocks, D a
 * multiple of 32) give the bits of keys copied (an all-ones mask). */
static void test_half_inplace_matches_copy(void **state)
{
    (void)state;
    static const enum attn_method methods[] = {ATTN_EXACT, ATTN_MRA2};
    for (int v = 0; v < NISA; v++) {
        struct attn_backend *be = isa_backend(isas[v], 2);
        if (!be)
            continue;
        for (int m = 0; m < 2; m++) {
            struct fx f;
            fx_init(&f, methods[m], ATTN_BF16, 2, 4, 2, 512, 64, 60 + m, 2.0);
            size_t bytes = f.nq * 2;
            uint16_t *plain = malloc(bytes);
            assert_non_null(plain);
            assert_int_equal(attn_backend_compute(be, &f.p, NULL), ATTN_OK);
            memcpy(plain, f.out, bytes);
            f.p.mask = f.mask;
            memset(f.out, 0x55, bytes);
            assert_int_equal(attn_backend_compute(be, &f.p, NULL), ATTN_OK);
            if (memcmp(plain, f.out, bytes) != 0)
                fail_msg("%s kernels, method %d: bf16 keys in place and "
                         "copied differ",
                         isas[v], m);
            free(plain);
            fx_free(&f);
        }
        attn_backend_free(be);
    }
}

/* Every kernel table's conversions between f32 and f16 or bf16 give the
 * bits of attn_from_f32() and the values of attn_to_f32(): over 2^20 bit
 * patterns spread
 * across all of them (every sign and exponent, ties, NaN payloads, the
 * subnormals of both sides) and lengths that leave a scalar tail. */
static void test_conversions_match(void **state)
{
    (void)state;
    enum { N = 1 << 20 };
    uint32_t *bits = malloc(N * sizeof *bits);
    uint16_t *want = malloc(N * 2), *got = malloc(N * 2);
    float *wf = malloc(N * sizeof(float)), *gf = malloc(N * sizeof(float));
    assert_non_null(bits);
    assert_non_null(want);
    assert_non_null(got);
    assert_non_null(wf);
    assert_non_null(gf);
    for (uint32_t i = 0; i < N; i++) /* an odd stride visits every class */
        bits[i] = i * 4093u + (i >> 7);
    for (int v = 0; v < NISA; v++) {
        const struct cpu_kernels *k = cpu_kernels_pick(isas[v]);
        if (!k)
            continue;
        for (int dt = ATTN_F16; dt <= ATTN_BF16; dt++) {
            for (size_t n = N; n >= N - 5; n -= 5) {
                attn_from_f32(dt, (const float *)bits, want, n);
                memset(got, 0, N * 2);
                k->from_f32(dt, (const float *)bits, got, n);
                if (memcmp(want, got, n * 2) != 0)
                    fail_msg("%s kernels: f32 to %s differs", isas[v],
                             attn_dtype_name(dt));
            }
            /* every 16-bit pattern, twice: the same values (a signalling
             * NaN may come out quiet) */
            attn_to_f32(dt, bits, wf, N);
            k->to_f32(dt, bits, gf, N);
            for (size_t i = 0; i < N; i++)
                if (memcmp(&wf[i], &gf[i], sizeof(float)) != 0 &&
                    !(isnan(wf[i]) && isnan(gf[i])))
                    fail_msg("%s kernels: %s %04x to f32 differs", isas[v],
                             attn_dtype_name(dt),
                             ((const uint16_t *)bits)[i]);
        }
    }
    free(bits), free(want), free(got), free(wf), free(gf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paths_stable_and_agree),
        cmocka_unit_test(test_env_picks_path),
        cmocka_unit_test(test_inplace_matches_copy),
        cmocka_unit_test(test_half_paths),
        cmocka_unit_test(test_half_inplace_matches_copy),
        cmocka_unit_test(test_conversions_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
