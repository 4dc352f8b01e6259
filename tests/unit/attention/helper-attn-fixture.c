/*
 * helper-attn-fixture.c - the attention test fixture (attn-fixture.h).
 */
#include <math.h>
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/unit/attention/attn-fixture.h"
#include "tests/unit/attention/ref64.h"

static uint64_t fx_next(uint64_t *st)
{
    /* splitmix64 */
    uint64_t z = (*st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double fx_uniform(uint64_t *st)
{
    return (double)(fx_next(st) >> 11) * 0x1p-53;
}

static void fill(void *dst, double *d64, size_t n, enum attn_dtype dt,
                 uint64_t *st, double amp)
{
    for (size_t i = 0; i < n; i++) {
        float x = (float)((2.0 * fx_uniform(st) - 1.0) * amp);
        switch (dt) {
        case ATTN_F32:
            ((float *)dst)[i] = x;
            break;
        case ATTN_F16:
            ((uint16_t *)dst)[i] = attn_f32_to_f16(x);
            x = attn_f16_to_f32(((uint16_t *)dst)[i]);
            break;
        case ATTN_BF16:
            ((uint16_t *)dst)[i] = attn_f32_to_bf16(x);
            x = attn_bf16_to_f32(((uint16_t *)dst)[i]);
            break;
        }
        d64[i] = x;
    }
}

void fx_init_cross(struct fx *f, enum attn_method method, enum attn_dtype dt,
                   uint32_t B, uint32_t H, uint32_t Hkv, uint32_t Nq,
                   uint32_t Nk, uint32_t D, uint64_t seed, double amp)
{
    memset(f, 0, sizeof *f);
    size_t es = attn_dtype_size(dt);
    f->nq = (size_t)B * H * Nq * D;
    f->nkv = (size_t)B * Hkv * Nk * D;
    f->q = malloc(f->nq * es);
    f->k = malloc(f->nkv * es);
    f->v = malloc(f->nkv * es);
    f->out = malloc(f->nq * es);
    f->q64 = malloc(f->nq * sizeof(double));
    f->k64 = malloc(f->nkv * sizeof(double));
    f->v64 = malloc(f->nkv * sizeof(double));
    f->mask = malloc((size_t)B * Nk);
    f->qmask = malloc((size_t)B * Nq);
    assert_non_null(f->q);
    assert_non_null(f->k);
    assert_non_null(f->v);
    assert_non_null(f->out);
    assert_non_null(f->q64);
    assert_non_null(f->k64);
    assert_non_null(f->v64);
    assert_non_null(f->mask);
    assert_non_null(f->qmask);
    memset(f->mask, 1, (size_t)B * Nk);
    memset(f->qmask, 1, (size_t)B * Nq);
    /* garbage in out, so a backend that skips a row is caught */
    memset(f->out, 0x7f, f->nq * es);
    uint64_t st = seed * 0x2545f4914f6cdd1dull + 1;
    fill(f->q, f->q64, f->nq, dt, &st, amp);
    fill(f->k, f->k64, f->nkv, dt, &st, amp);
    fill(f->v, f->v64, f->nkv, dt, &st, 1.0);
    f->p = (struct attn_problem){
        .method = method,
        .dtype = dt,
        .B = B,
        .H = H,
        .Hkv = Hkv,
        .Nq = Nq,
        .Nk = Nk,
        .D = D,
        .q = f->q,
        .k = f->k,
        .v = f->v,
        .out = f->out,
    };
}

void fx_init(struct fx *f, enum attn_method method, enum attn_dtype dt,
             uint32_t B, uint32_t H, uint32_t Hkv, uint32_t N, uint32_t D,
             uint64_t seed, double amp)
{
    fx_init_cross(f, method, dt, B, H, Hkv, N, N, D, seed, amp);
}

void fx_free(struct fx *f)
{
    free(f->q), free(f->k), free(f->v), free(f->out);
    free(f->q64), free(f->k64), free(f->v64), free(f->mask), free(f->qmask);
    memset(f, 0, sizeof *f);
}

void fx_mask_random(struct fx *f, double keep, uint64_t seed)
{
    uint64_t st = seed;
    for (size_t i = 0; i < (size_t)f->p.B * f->p.Nk; i++)
        f->mask[i] = fx_uniform(&st) < keep;
    f->p.mask = f->mask;
}

void fx_mask_range(struct fx *f, uint32_t t0, uint32_t t1)
{
    for (uint32_t b = 0; b < f->p.B; b++)
        for (uint32_t t = t0; t < t1 && t < f->p.Nk; t++)
            f->mask[(size_t)b * f->p.Nk + t] = 0;
    f->p.mask = f->mask;
}

void fx_qmask_random(struct fx *f, double keep, uint64_t seed)
{
    uint64_t st = seed;
    for (size_t i = 0; i < (size_t)f->p.B * f->p.Nq; i++)
        f->qmask[i] = fx_uniform(&st) < keep;
    f->p.q_mask = f->qmask;
}

const char *fx_backend_name(void)
{
    const char *s = getenv("ATTN_TEST_BACKEND");
    return s && *s ? s : "cpu";
}

int fx_backend_is_cpu(void)
{
    return strcmp(fx_backend_name(), "cpu") == 0;
}

struct attn_backend *fx_backend(int threads)
{
    struct attn_config cfg = {.threads = threads};
    struct attn_backend *be = NULL;
    int rc = attn_backend_new(fx_backend_name(), &cfg, &be);
    if (rc != ATTN_OK)
        fail_msg("backend %s: %s", fx_backend_name(), attn_strerror(rc));
    return be;
}

float fx_out(const struct fx *f, size_t i)
{
    switch (f->p.dtype) {
    case ATTN_F32:
        return ((const float *)f->out)[i];
    case ATTN_F16:
        return attn_f16_to_f32(((const uint16_t *)f->out)[i]);
    case ATTN_BF16:
        return attn_bf16_to_f32(((const uint16_t *)f->out)[i]);
    }
    return NAN;
}

double fx_ref_error(const struct fx *f, uint64_t *selected)
{
    double *ref = malloc(f->nq * sizeof *ref);
    assert_non_null(ref);
    assert_int_equal(
        ref64_attention(&f->p, f->q64, f->k64, f->v64, ref, selected), 0);
    double num = 0, den = 0;
    for (size_t i = 0; i < f->nq; i++) {
        double x = fx_out(f, i);
        if (!isfinite(x)) {
            free(ref);
            return INFINITY;
        }
        num += (x - ref[i]) * (x - ref[i]);
        den += ref[i] * ref[i];
    }
    free(ref);
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

double fx_tolerance(enum attn_dtype dt)
{
    /* bf16 keeps 8 significant bits and f16 11: on the CPU, whose bf16
     * path rounds the weights to bf16 and whose f16 path keeps them to 16
     * bits, the outputs' own rounding dominates either way */
    if (dt == ATTN_BF16)
        return 1e-2;
    if (dt == ATTN_F16)
        return fx_backend_is_cpu() ? 2e-3 : 1e-2;
    return fx_backend_is_cpu() ? 1e-5 : 1e-4;
}

double fx_check(struct attn_backend *be, struct fx *f, const char *what)
{
    struct attn_stats st;
    memset(&st, 0xff, sizeof st);
    int rc = attn_backend_compute(be, &f->p, &st);
    if (rc != ATTN_OK)
        fail_msg("%s: compute failed: %s", what, attn_strerror(rc));
    uint64_t sel = 0;
    double err = fx_ref_error(f, &sel);
    uint64_t total = (uint64_t)f->p.B * f->p.H * ref64_pairs_seen(&f->p);
    if (st.blocks_total != total || st.blocks_selected != sel)
        fail_msg("%s: stats %llu/%llu, want %llu/%llu", what,
                 (unsigned long long)st.blocks_selected,
                 (unsigned long long)st.blocks_total, (unsigned long long)sel,
                 (unsigned long long)total);
    if (fabs(st.density - (double)sel / (double)total) > 1e-12)
        fail_msg("%s: density %g", what, st.density);
    if (!(err <= fx_tolerance(f->p.dtype)))
        fail_msg("%s: relative error %g above %g", what, err,
                 fx_tolerance(f->p.dtype));
    return err;
}

int fx_run_paths(const char *name, const struct CMUnitTest *tests, size_t n,
                 int (*setup)(void **), int (*teardown)(void **))
{
    const char *forced = getenv("MRAD_ISA");
    int half = 0;
    if (fx_backend_is_cpu() && !(forced && *forced)) {
        struct attn_config cfg = {.threads = 1};
        struct attn_backend *be = NULL;
        if (attn_backend_new("cpu", &cfg, &be) == ATTN_OK) {
            half = strstr(attn_backend_device(be), "amx kernels") != NULL;
            attn_backend_free(be);
        }
    }
    if (!half)
        return _cmocka_run_group_tests(name, tests, n, setup, teardown);
    printf("[ PATH     ] amx kernels: bf16 and f16 on AMX tiles\n");
    int failed = _cmocka_run_group_tests(name, tests, n, setup, teardown);
    if (setenv("MRAD_ISA", "avx512", 1) != 0)
        return failed + 1;
    printf("[ PATH     ] avx512 kernels: every dtype in f32\n");
    failed += _cmocka_run_group_tests(name, tests, n, setup, teardown);
    unsetenv("MRAD_ISA");
    return failed;
}
