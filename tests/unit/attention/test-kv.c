/*
 * test-kv.c - stores of keys and values (attn.h, "Resident keys and
 * values"): a problem reading its keys and values from a store gives
 * bitwise the answer of the same problem given them as tensors, however
 * the store was filled (one token at a time, in chunks, with masks);
 * appends carried by problems apply in batch order; a decoding loop over a
 * store equals causal attention over the whole sequence; bad uses fail
 * alone; the byte count follows the pages.
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

/* Fills a store with the keys and values (and key mask, if on) of f, in
 * appends of `chunk` tokens. */
static struct attn_kv *store_of(struct attn_backend *be, const struct fx *f,
                                uint32_t chunk)
{
    const struct attn_problem *p = &f->p;
    struct attn_kv_shape sh = {p->dtype, p->B, p->Hkv, p->D};
    struct attn_kv *kv;
    assert_int_equal(attn_kv_new(be, &sh, &kv), ATTN_OK);
    size_t es = attn_dtype_size(p->dtype);
    for (uint32_t t0 = 0; t0 < p->Nk; t0 += chunk) {
        uint32_t n = p->Nk - t0 < chunk ? p->Nk - t0 : chunk;
        /* the chunk's tokens of every (entry, head), contiguous */
        size_t rows = (size_t)p->B * p->Hkv * n * p->D;
        char *k = malloc(rows * es), *v = malloc(rows * es);
        uint8_t *m = malloc((size_t)p->B * n);
        assert_non_null(k);
        assert_non_null(v);
        assert_non_null(m);
        for (uint32_t bh = 0; bh < p->B * p->Hkv; bh++) {
            size_t src = ((size_t)bh * p->Nk + t0) * p->D * es;
            size_t dst = (size_t)bh * n * p->D * es;
            memcpy(k + dst, (const char *)f->k + src, (size_t)n * p->D * es);
            memcpy(v + dst, (const char *)f->v + src, (size_t)n * p->D * es);
        }
        for (uint32_t b = 0; b < p->B; b++)
            for (uint32_t i = 0; i < n; i++)
                m[(size_t)b * n + i] =
                    p->mask ? p->mask[(size_t)b * p->Nk + t0 + i] : 1;
        struct attn_kv_tokens t = {k, v, p->mask ? m : NULL, n};
        assert_int_equal(attn_kv_append(kv, &t), ATTN_OK);
        free(k), free(v), free(m);
    }
    assert_int_equal(attn_kv_tokens(kv), p->Nk);
    return kv;
}

/* Computes f with its tensors, then through a store filled in `chunk`s,
 * and checks the bits are the same. */
static void same_bits(struct attn_backend *be, struct fx *f, uint32_t chunk,
                      const char *what)
{
    size_t bytes = f->nq * attn_dtype_size(f->p.dtype);
    assert_int_equal(attn_backend_compute(be, &f->p, NULL), ATTN_OK);
    void *want = malloc(bytes);
    assert_non_null(want);
    memcpy(want, f->out, bytes);
    struct attn_kv *kv = store_of(be, f, chunk);
    struct attn_problem p = f->p;
    p.k = p.v = NULL;
    p.mask = NULL;
    p.kv = kv;
    /* self-attention's query mask is the key mask, which the store holds */
    if (!p.q_mask && p.Nq == p.Nk && f->p.mask) {
        p.q_mask = f->p.mask;
    }
    memset(f->out, 0x7f, bytes);
    struct attn_stats st;
    assert_int_equal(attn_backend_compute(be, &p, &st), ATTN_OK);
    if (memcmp(want, f->out, bytes) != 0)
        fail_msg("%s: the store's answer differs", what);
    free(want);
    attn_kv_free(kv);
}

static void test_store_equals_tensors(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    static const enum attn_method ms[3] = {ATTN_EXACT, ATTN_MRA2,
                                           ATTN_MRA2_SPARSE};
    static const uint32_t chunks[3] = {1, 7, 100};
    for (int m = 0; m < 3; m++)
        for (int dt = ATTN_F32; dt <= ATTN_BF16; dt++)
            for (int c = 0; c < 3; c++) {
                char what[96];
                struct fx f;
                /* decode path: few queries, grouped KV heads */
                fx_init_cross(&f, ms[m], (enum attn_dtype)dt, 2, 8, 2, 3, 300,
                              64, 10 + (uint64_t)c, 2.0);
                f.p.causal = 1;
                fx_mask_random(&f, 0.9, 4);
                snprintf(what, sizeof what, "decode %s %s chunk %u",
                         attn_method_name(ms[m]),
                         attn_dtype_name((enum attn_dtype)dt), chunks[c]);
                same_bits(be, &f, chunks[c], what);
                fx_free(&f);
                /* block-row path: many queries */
                fx_init_cross(&f, ms[m], (enum attn_dtype)dt, 1, 2, 1, 70, 150,
                              32, 20 + (uint64_t)c, 2.0);
                snprintf(what, sizeof what, "rows %s %s chunk %u",
                         attn_method_name(ms[m]),
                         attn_dtype_name((enum attn_dtype)dt), chunks[c]);
                same_bits(be, &f, chunks[c], what);
                fx_free(&f);
            }
    attn_backend_free(be);
}

/* A decoding loop: each step appends one token (carried by the problem)
 * and attends its query causally; every output equals the same row of
 * causal attention over the whole sequence. */
static void test_decoding_loop(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    enum { N = 80, D = 16, H = 4, HKV = 2 };
    struct fx all;
    fx_init_cross(&all, ATTN_EXACT, ATTN_F32, 1, H, HKV, N, N, D, 31, 2.0);
    all.p.causal = 1;
    assert_int_equal(attn_backend_compute(be, &all.p, NULL), ATTN_OK);
    struct attn_kv_shape sh = {ATTN_F32, 1, HKV, D};
    struct attn_kv *kv;
    assert_int_equal(attn_kv_new(be, &sh, &kv), ATTN_OK);
    const float *K = all.k, *V = all.v, *Q = all.q, *O = all.out;
    for (uint32_t t = 0; t < N; t++) {
        float q[H * D], k[HKV * D], v[HKV * D], out[H * D];
        for (int h = 0; h < H; h++)
            memcpy(q + h * D, Q + ((size_t)h * N + t) * D, D * sizeof(float));
        for (int h = 0; h < HKV; h++) {
            memcpy(k + h * D, K + ((size_t)h * N + t) * D, D * sizeof(float));
            memcpy(v + h * D, V + ((size_t)h * N + t) * D, D * sizeof(float));
        }
        struct attn_problem p = {.method = ATTN_EXACT,
                                 .dtype = ATTN_F32,
                                 .B = 1,
                                 .H = H,
                                 .Hkv = HKV,
                                 .Nq = 1,
                                 .Nk = t + 1,
                                 .D = D,
                                 .q = q,
                                 .out = out,
                                 .causal = 1,
                                 .kv = kv,
                                 .append = {k, v, NULL, 1}};
        assert_int_equal(attn_backend_compute(be, &p, NULL), ATTN_OK);
        for (int h = 0; h < H; h++)
            for (int d = 0; d < D; d++) {
                float want = O[((size_t)h * N + t) * D + d];
                if (fabsf(out[h * D + d] - want) > 1e-5f * (1 + fabsf(want)))
                    fail_msg("step %u head %d: %g, want %g", t, h,
                             (double)out[h * D + d], (double)want);
            }
    }
    assert_int_equal(attn_kv_tokens(kv), N);
    attn_kv_free(kv);
    fx_free(&all);
    attn_backend_free(be);
}

/* Appends carried by the problems of one batch apply in order: the second
 * step sees the first's token; a problem that reads the store before an
 * append does not see it. */
static void test_appends_in_batch_order(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    enum { D = 8 };
    struct attn_kv_shape sh = {ATTN_F32, 1, 1, D};
    struct attn_kv *kv, *kv2;
    assert_int_equal(attn_kv_new(be, &sh, &kv), ATTN_OK);
    assert_int_equal(attn_kv_new(be, &sh, &kv2), ATTN_OK);
    float k0[D], k1[D], v0[D], v1[D], q[D] = {0}, out[4][D];
    for (int d = 0; d < D; d++)
        k0[d] = k1[d] = 0, v0[d] = 1, v1[d] = 3;
    struct attn_kv_tokens first = {k0, v0, NULL, 1};
    assert_int_equal(attn_kv_append(kv, &first), ATTN_OK);
    assert_int_equal(attn_kv_append(kv2, &first), ATTN_OK);
    struct attn_problem base = {.method = ATTN_EXACT,
                                .dtype = ATTN_F32,
                                .B = 1,
                                .H = 1,
                                .Hkv = 1,
                                .Nq = 1,
                                .D = D,
                                .q = q};
    struct attn_problem p[4];
    for (int i = 0; i < 4; i++)
        p[i] = base, p[i].out = out[i];
    p[0].kv = kv, p[0].Nk = 1; /* reads 1 */
    p[1].kv = kv, p[1].Nk = 2,
    p[1].append = (struct attn_kv_tokens){k1, v1, NULL, 1}; /* reads 2 */
    p[2].kv = kv2, p[2].Nk = 2,
    p[2].append = (struct attn_kv_tokens){k1, v1, NULL, 1}; /* other store */
    p[3].kv = kv, p[3].Nk = 5;                              /* wrong Nk */
    const struct attn_problem *pp[4] = {&p[0], &p[1], &p[2], &p[3]};
    int errs[4];
    assert_int_equal(attn_backend_compute_batch(be, pp, 4, NULL, errs),
                     ATTN_OK);
    assert_int_equal(errs[0], ATTN_OK);
    assert_int_equal(errs[1], ATTN_OK);
    assert_int_equal(errs[2], ATTN_OK);
    assert_int_equal(errs[3], ATTN_EINVAL);
    /* equal logits: the mean of the values seen */
    assert_true(out[0][0] == 1.0f);
    assert_true(out[1][0] == 2.0f);
    assert_true(out[2][0] == 2.0f);
    assert_int_equal(attn_kv_tokens(kv), 2);
    /* a store of another shape, a problem of another backend's store */
    struct attn_problem bad = base;
    bad.kv = kv, bad.Nk = 2, bad.D = 4, bad.out = out[3];
    assert_int_equal(attn_backend_compute(be, &bad, NULL), ATTN_EINVAL);
    struct attn_backend *other = fx_backend(1);
    bad = base, bad.kv = kv, bad.Nk = 2, bad.out = out[3];
    assert_int_equal(attn_backend_compute(other, &bad, NULL), ATTN_EINVAL);
    attn_backend_free(other);

    /* Nk = 0: whatever the store holds once each append is applied, in
     * batch order; stats follow the count computed. */
    float k2[D] = {0}, v2[D];
    for (int d = 0; d < D; d++)
        v2[d] = 8;
    for (int i = 0; i < 3; i++)
        p[i] = base, p[i].out = out[i], p[i].kv = kv;
    p[1].append = (struct attn_kv_tokens){k2, v2, NULL, 1};
    p[2].method = ATTN_MRA2;
    struct attn_stats st[3];
    assert_int_equal(attn_backend_compute_batch(be, pp, 3, st, errs), ATTN_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(errs[i], ATTN_OK);
    assert_true(out[0][0] == 2.0f);    /* (1 + 3) / 2 */
    assert_true(out[1][0] == 4.0f);    /* (1 + 3 + 8) / 3 */
    assert_true(fabsf(out[2][0] - 4.0f) < 1e-5f);
    assert_int_equal(st[1].blocks_total, 1);
    assert_int_equal(attn_kv_tokens(kv), 3);
    attn_kv_free(kv);
    attn_kv_free(kv2);
    attn_backend_free(be);
}

/* The byte count, as attn_kv_bytes_for() predicts; on the CPU whole pages
 * of keys, values and mask, and the block arrays of a capacity of 16
 * blocks, doubled as the blocks outgrow it. */
static void test_bytes(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    struct attn_kv_shape sh = {ATTN_F16, 2, 3, 64};
    struct attn_kv *kv;
    assert_int_equal(attn_kv_new(be, &sh, &kv), ATTN_OK);
    assert_int_equal(attn_kv_bytes(kv), 0);
    uint16_t *buf = calloc((size_t)2 * 3 * 600 * 64, sizeof *buf);
    assert_non_null(buf);
    struct attn_kv_tokens t = {buf, buf, NULL, 40};
    assert_int_equal(attn_kv_append(kv, &t), ATTN_OK);
    /* Every backend's store holds what attn_kv_bytes_for() says for it. */
    assert_int_equal(attn_kv_bytes(kv),
                     attn_kv_bytes_for(fx_backend_name(), &sh, 40));
    if (!fx_backend_is_cpu()) { /* the layout below is the CPU's */
        free(buf);
        attn_kv_free(kv);
        attn_backend_free(be);
        return;
    }
    /* 2*3 units x 32 tokens x 64 x 2 bytes, twice, and the mask */
    uint64_t page = 2 * 6 * 32 * 64 * 2 + 2 * 32;
    /* per block: key and value sums and key means (64 floats each), value
     * means (64, a multiple of the padding), count and log per entry */
    uint64_t block = 6 * (3 * 64 + 64) * 4 + 2 * 2 * 4;
    assert_int_equal(attn_kv_bytes(kv), 2 * page + 16 * block);
    assert_int_equal(attn_kv_bytes_for("cpu", &sh, 64), 2 * page + 16 * block);
    assert_int_equal(attn_kv_bytes_for("cpu", &sh, 65), 3 * page + 16 * block);
    assert_int_equal(attn_kv_bytes_for("cpu", &sh, 513),
                     17 * page + 32 * block);
    t.n = 560;
    assert_int_equal(attn_kv_append(kv, &t), ATTN_OK);
    assert_int_equal(attn_kv_bytes(kv), 19 * page + 32 * block);
    assert_int_equal(attn_kv_bytes_for("cpu", &sh, 0), 0);
    struct attn_kv *bad;
    struct attn_kv_shape zero = {ATTN_F16, 0, 1, 8};
    assert_int_equal(attn_kv_new(be, &zero, &bad), ATTN_EINVAL);
    free(buf);
    attn_kv_free(kv);
    attn_backend_free(be);
}

/* A store that outgrows its block arrays twice (1100 tokens: 35 blocks)
 * in pieces still answers what the tensors do. */
static void test_growth(void **state)
{
    (void)state;
    struct attn_backend *be = fx_backend(0);
    static const enum attn_method ms[2] = {ATTN_EXACT, ATTN_MRA2};
    for (int m = 0; m < 2; m++) {
        struct fx f;
        fx_init_cross(&f, ms[m], ATTN_F32, 1, 4, 2, 1, 1100, 64, 30, 2.0);
        f.p.causal = 1;
        fx_mask_random(&f, 0.95, 5);
        same_bits(be, &f, 37, "growth");
        fx_free(&f);
    }
    attn_backend_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_equals_tensors),
        cmocka_unit_test(test_decoding_loop),
        cmocka_unit_test(test_appends_in_batch_order),
        cmocka_unit_test(test_bytes),
        cmocka_unit_test(test_growth),
    };
    return FX_RUN_PATHS(tests, NULL, NULL);
}
