/*
 * test-cuda-kv.c - GPU checks of the CUDA backend's stores of keys and
 * values (attention/cuda/kv.cu), beyond what test-kv-emul replays on the
 * host and what the shared unit test test-kv.c checks with
 * ATTN_TEST_BACKEND=cuda: a problem on a store has the bits of the same
 * problem on tensors in every method and dtype, decoding, a block of
 * queries with a query mask, cross-attention and self-attention (whose
 * query mask is the store's), for stores filled in pieces of 1, 5, 32, 33
 * and 100 tokens and in one append larger than the staging buffer;
 * decoding steps that carry their token; the device-pointer path on a
 * store, with an append; the bytes a store holds and the device memory it
 * takes and gives back; freeing a store from another thread while the
 * backend computes.  On a machine without a GPU it checks only the byte
 * count attn_kv_bytes_for("cuda") predicts.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cuda_runtime_api.h>

#include "attention/attn.h"
#include "attention/cuda/attn-cuda.h"
#include "tests/cuda/cuda-case.h"

/* A store of the first `tokens` keys and values (and key mask) of a case,
 * appended in pieces of the sizes in `pieces` (cycling). */
static struct attn_kv *store_first(struct attn_backend *be,
                                   const struct case_data *c, uint32_t tokens,
                                   const uint32_t *pieces, size_t npieces)
{
    const struct attn_problem *p = &c->p;
    struct attn_kv_shape sh = {p->dtype, p->B, p->Hkv, p->D};
    struct attn_kv *kv = NULL;
    assert_int_equal(attn_kv_new(be, &sh, &kv), ATTN_OK);
    size_t es = attn_dtype_size(p->dtype), row = (size_t)p->D * es;
    size_t units = (size_t)p->B * p->Hkv;
    uint32_t held = 0;
    for (size_t i = 0; held < tokens; i++) {
        uint32_t n = pieces[i % npieces];
        if (n > tokens - held)
            n = tokens - held;
        char *k = malloc(units * n * row), *v = malloc(units * n * row);
        uint8_t *m = malloc((size_t)p->B * n);
        assert_true(k && v && m);
        for (size_t u = 0; u < units; u++) {
            size_t src = (u * p->Nk + held) * row;
            memcpy(k + u * n * row, (const char *)c->k + src, n * row);
            memcpy(v + u * n * row, (const char *)c->v + src, n * row);
        }
        for (uint32_t b = 0; b < p->B; b++)
            for (uint32_t j = 0; j < n; j++)
                m[(size_t)b * n + j] =
                    c->mask ? c->mask[(size_t)b * p->Nk + held + j] : 1;
        struct attn_kv_tokens t = {k, v, c->mask ? m : NULL, n};
        assert_int_equal(attn_kv_append(kv, &t), ATTN_OK);
        held += n;
        free(k), free(v), free(m);
    }
    assert_int_equal(attn_kv_tokens(kv), tokens);
    return kv;
}

/* A store of all the keys and values of a case. */
static struct attn_kv *store_of(struct attn_backend *be,
                                const struct case_data *c,
                                const uint32_t *pieces, size_t npieces)
{
    return store_first(be, c, c->p.Nk, pieces, npieces);
}

/* The problem of c read from kv instead of its tensors. */
static struct attn_problem on_store(const struct case_data *c,
                                    struct attn_kv *kv)
{
    struct attn_problem p = c->p;
    p.k = p.v = NULL;
    p.mask = NULL;
    p.kv = kv;
    return p;
}

/* What the CUDA store of a shape holds: whole pages of keys, values, their
 * f32 sums, the mask and the counts. */
static uint64_t cuda_page_bytes(const struct attn_kv_shape *sh)
{
    uint64_t units = (uint64_t)sh->B * sh->Hkv;
    return 2 * units * 32 * sh->D * attn_dtype_size(sh->dtype) +
           2 * units * sh->D * 4 + (uint64_t)sh->B * (32 + 4);
}

/* attn_kv_bytes_for("cuda"): whole pages, none for no token (this needs
 * no device). */
static void test_bytes_for(void **state)
{
    (void)state;
    const struct attn_kv_shape shapes[] = {
        {ATTN_F16, 2, 3, 64}, {ATTN_F32, 1, 1, 1}, {ATTN_BF16, 3, 8, 128}};
    for (int i = 0; i < 3; i++) {
        uint64_t page = cuda_page_bytes(&shapes[i]);
        assert_int_equal(attn_kv_bytes_for("cuda", &shapes[i], 0), 0);
        assert_int_equal(attn_kv_bytes_for("cuda", &shapes[i], 1), page);
        assert_int_equal(attn_kv_bytes_for("cuda", &shapes[i], 32), page);
        assert_int_equal(attn_kv_bytes_for("cuda", &shapes[i], 33), 2 * page);
        assert_int_equal(attn_kv_bytes_for("cuda", &shapes[i], 100000),
                         3125 * page);
    }
}

/* A store's bytes, as attn_kv_bytes_for("cuda") predicts, and the device
 * memory it takes and gives back. */
static void test_store_bytes(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    struct attn_kv_shape sh = {ATTN_BF16, 1, 8, 128};
    struct attn_kv *kv = NULL;
    uint64_t used0, used1, used2, total;
    assert_int_equal(attn_backend_memory(be, &used0, &total), ATTN_OK);
    assert_int_equal(attn_kv_new(be, &sh, &kv), ATTN_OK);
    assert_int_equal(attn_kv_bytes(kv), 0);
    uint32_t n = 16000; /* 500 pages, about 68 MiB */
    size_t rows = (size_t)8 * n * 128;
    uint16_t *buf = calloc(rows, sizeof *buf);
    assert_non_null(buf);
    struct attn_kv_tokens t = {buf, buf, NULL, n};
    assert_int_equal(attn_kv_append(kv, &t), ATTN_OK);
    uint64_t page = cuda_page_bytes(&sh);
    assert_int_equal(attn_kv_bytes(kv), 500 * page);
    assert_int_equal(attn_kv_bytes_for("cuda", &sh, n), 500 * page);
    assert_int_equal(attn_kv_bytes_for("cuda", &sh, n + 1), 501 * page);
    assert_int_equal(attn_backend_memory(be, &used1, &total), ATTN_OK);
    printf("store of %u tokens: %llu bytes; device memory used %+lld MiB\n", n,
           (unsigned long long)attn_kv_bytes(kv),
           (long long)((int64_t)(used1 - used0) >> 20));
    /* the device memory grew by the store (staging included), within the
     * allocator's granularity */
    assert_true(used1 + (8u << 20) >= used0 + attn_kv_bytes(kv));
    attn_kv_free(kv);
    assert_int_equal(attn_backend_memory(be, &used2, &total), ATTN_OK);
    assert_true(used2 + attn_kv_bytes_for("cuda", &sh, n) <=
                used1 + (8u << 20));
    free(buf);
    attn_backend_free(be);
}

/* A problem on a store gives bitwise the answer of the same problem on
 * tensors, whatever the pieces the store was filled in: decoding (Nq = 1,
 * causal, grouped heads, a key mask), a block of queries with a query
 * mask, cross-attention, and self-attention whose query mask is the key
 * mask the store holds; every method and dtype.  One store filled in one
 * append of 70000 tokens (beyond the staging buffer: several uploads). */
static void test_store_matches_dense(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    static const uint32_t mixed[] = {1, 5, 32, 33, 100};
    static const uint32_t big[] = {70000};
    struct {
        uint32_t B, H, Hkv, Nq, Nk, D;
        int causal, q_masked;
        const uint32_t *pieces;
        size_t npieces;
    } shapes[] = {
        {2, 8, 2, 1, 3000, 128, 1, 0, mixed, 5},
        {1, 4, 1, 32, 2100, 64, 1, 1, mixed + 2, 1},
        {1, 2, 2, 700, 2100, 64, 0, 0, mixed + 4, 1},
        {1, 4, 2, 1000, 1000, 80, 1, 0, mixed + 3, 1},
        {1, 8, 8, 1, 70000, 128, 1, 0, big, 1},
    };
    const enum attn_method ms[] = {ATTN_EXACT, ATTN_MRA2, ATTN_MRA2_SPARSE};
    const enum attn_dtype dts[] = {ATTN_F32, ATTN_F16, ATTN_BF16};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int m = 0; m < 3; m++)
            for (int d = 0; d < 3; d++) {
                /* the large one in bf16 only */
                if (shapes[i].Nk > 10000 && dts[d] != ATTN_BF16)
                    continue;
                struct case_data c;
                case_init_cross(&c, ms[m], dts[d], shapes[i].B, shapes[i].H,
                                shapes[i].Hkv, shapes[i].Nq, shapes[i].Nk,
                                shapes[i].D, 1, 200 + i);
                c.p.causal = shapes[i].causal;
                if (shapes[i].q_masked)
                    case_add_q_mask(&c);
                size_t bytes = c.nq * attn_dtype_size(dts[d]);
                assert_int_equal(attn_backend_compute(be, &c.p, NULL), ATTN_OK);
                void *want = malloc(bytes);
                assert_non_null(want);
                memcpy(want, c.out, bytes);
                struct attn_kv *kv =
                    store_of(be, &c, shapes[i].pieces, shapes[i].npieces);
                struct attn_problem p = on_store(&c, kv);
                memset(c.out, 0x7f, bytes);
                assert_int_equal(attn_backend_compute(be, &p, NULL), ATTN_OK);
                printf("store %s %s B=%u H=%u Hkv=%u Nq=%u Nk=%u D=%u%s%s: "
                       "%s\n",
                       attn_method_name(ms[m]), attn_dtype_name(dts[d]),
                       shapes[i].B, shapes[i].H, shapes[i].Hkv, shapes[i].Nq,
                       shapes[i].Nk, shapes[i].D,
                       shapes[i].causal ? " causal" : "",
                       shapes[i].q_masked ? " q_mask" : "",
                       memcmp(want, c.out, bytes) ? "DIFFERS" : "same bits");
                assert_memory_equal(want, c.out, bytes);
                attn_kv_free(kv);
                free(want);
                case_free(&c);
            }
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    attn_backend_free(be);
}

/* Decoding steps that carry their token: each step appends one key and
 * value (and mask byte) and attends its query; its output has the bits of
 * the same query against the tensors of every token so far, and is close
 * to the CPU backend's step on its own store. */
static void test_store_decoding_loop(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    struct attn_backend *cpu = new_backend("cpu");
    enum { N = 300, H = 8, HKV = 2, D = 64 };
    const enum attn_method ms[] = {ATTN_MRA2, ATTN_EXACT};
    for (int mi = 0; mi < 2; mi++) {
        struct case_data all;
        case_init_cross(&all, ms[mi], ATTN_BF16, 1, H, HKV, N, N, D, 1, 300);
        struct attn_kv_shape sh = {ATTN_BF16, 1, HKV, D};
        struct attn_kv *kv = NULL, *kc = NULL;
        assert_int_equal(attn_kv_new(be, &sh, &kv), ATTN_OK);
        assert_int_equal(attn_kv_new(cpu, &sh, &kc), ATTN_OK);
        const uint16_t *Q = all.q, *K = all.k, *V = all.v;
        uint16_t *kd = malloc((size_t)HKV * N * D * 2);
        uint16_t *vd = malloc((size_t)HKV * N * D * 2);
        uint8_t *md = malloc(N);
        assert_true(kd && vd && md);
        double worst = 0;
        for (uint32_t t = 0; t < N; t++) {
            uint16_t q[H * D], k[HKV * D], v[HKV * D], out[H * D], want[H * D],
                oc[H * D];
            for (int h = 0; h < H; h++)
                memcpy(q + h * D, Q + ((size_t)h * N + t) * D, D * 2);
            for (int h = 0; h < HKV; h++) {
                memcpy(k + h * D, K + ((size_t)h * N + t) * D, D * 2);
                memcpy(v + h * D, V + ((size_t)h * N + t) * D, D * 2);
            }
            uint8_t m = all.mask[t];
            struct attn_problem p = {.method = ms[mi],
                                     .dtype = ATTN_BF16,
                                     .B = 1,
                                     .H = H,
                                     .Hkv = HKV,
                                     .Nq = 1,
                                     .Nk = t + 1,
                                     .D = D,
                                     .q = q,
                                     .out = out,
                                     .causal = 1,
                                     .block_per_row = 2,
                                     .kv = kv,
                                     .append = {k, v, &m, 1}};
            assert_int_equal(attn_backend_compute(be, &p, NULL), ATTN_OK);
            /* the CPU on its own store, Nk = 0: what the store holds */
            struct attn_problem pc = p;
            pc.kv = kc;
            pc.Nk = 0;
            pc.out = oc;
            assert_int_equal(attn_backend_compute(cpu, &pc, NULL), ATTN_OK);
            /* the dense problem over tokens 0..t */
            for (int h = 0; h < HKV; h++) {
                memcpy(kd + (size_t)h * (t + 1) * D, K + (size_t)h * N * D,
                       (size_t)(t + 1) * D * 2);
                memcpy(vd + (size_t)h * (t + 1) * D, V + (size_t)h * N * D,
                       (size_t)(t + 1) * D * 2);
            }
            memcpy(md, all.mask, t + 1);
            struct attn_problem pd = p;
            pd.kv = NULL;
            pd.append.n = 0;
            pd.append.k = pd.append.v = NULL;
            pd.append.mask = NULL;
            pd.k = kd;
            pd.v = vd;
            pd.mask = md;
            pd.out = want;
            assert_int_equal(attn_backend_compute(be, &pd, NULL), ATTN_OK);
            if (memcmp(out, want, sizeof out) != 0)
                fail_msg("%s step %u: the store's answer differs",
                         attn_method_name(ms[mi]), t);
            double e = rel_diff(ATTN_BF16, out, oc, H * D);
            worst = e > worst ? e : worst;
        }
        printf("decoding %s, %d steps: same bits as tensors; vs cpu store "
               "worst rel diff %.3g\n",
               attn_method_name(ms[mi]), N, worst);
        assert_true(worst < 2e-2);
        assert_int_equal(attn_kv_tokens(kv), N);
        attn_kv_free(kv);
        attn_kv_free(kc);
        free(kd), free(vd), free(md);
        case_free(&all);
    }
    attn_backend_free(cpu);
    attn_backend_free(be);
}

/* attn_cuda_compute_device() on a store: queries and output in device
 * memory, the append from the host, on the backend's stream and on a
 * caller's; the bits of the host path. */
static void test_store_device_pointers(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    struct case_data c;
    case_init_cross(&c, ATTN_MRA2, ATTN_F16, 1, 8, 2, 4, 2000, 128, 1, 400);
    c.p.causal = 1;
    size_t qb = c.nq * 2;
    assert_int_equal(attn_backend_compute(be, &c.p, NULL), ATTN_OK);
    void *want = malloc(qb), *got = malloc(qb);
    assert_true(want && got);
    memcpy(want, c.out, qb);
    /* the store holds all but the last 10 tokens; the problem appends
     * them */
    static const uint32_t pieces[] = {1990};
    uint32_t Nk = c.p.Nk;
    struct attn_kv *kv = store_first(be, &c, 1990, pieces, 1);
    size_t row = (size_t)c.p.D * 2;
    char *k = malloc(2 * 10 * row), *v = malloc(2 * 10 * row);
    uint8_t m[10];
    assert_true(k && v);
    for (int h = 0; h < 2; h++) {
        memcpy(k + h * 10 * row, (char *)c.k + ((size_t)h * Nk + 1990) * row,
               10 * row);
        memcpy(v + h * 10 * row, (char *)c.v + ((size_t)h * Nk + 1990) * row,
               10 * row);
    }
    memcpy(m, c.mask + 1990, 10);
    void *dq, *dout;
    assert_int_equal(cudaMalloc(&dq, qb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dout, qb), cudaSuccess);
    cudaMemcpy(dq, c.q, qb, cudaMemcpyHostToDevice);
    cudaStream_t st;
    assert_int_equal(cudaStreamCreate(&st), cudaSuccess);
    for (int round = 0; round < 2; round++) {
        struct attn_problem p = on_store(&c, kv);
        p.q = dq;
        p.out = dout;
        if (round == 0) {
            p.Nk = 0; /* what the store holds after the append */
            p.append = (struct attn_kv_tokens){k, v, m, 10};
        }
        assert_int_equal(cudaMemset(dout, 0, qb), cudaSuccess);
        assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
        assert_int_equal(
            attn_cuda_compute_device(be, &p, round ? (void *)st : NULL),
            ATTN_OK);
        assert_int_equal(cudaStreamSynchronize(st), cudaSuccess);
        assert_int_equal(cudaMemcpy(got, dout, qb, cudaMemcpyDeviceToHost),
                         cudaSuccess);
        assert_memory_equal(want, got, qb);
        assert_int_equal(attn_kv_tokens(kv), Nk);
    }
    /* a wrong count fails alone */
    struct attn_problem bad = on_store(&c, kv);
    bad.q = dq;
    bad.out = dout;
    bad.Nk = Nk + 1;
    assert_int_equal(attn_cuda_compute_device(be, &bad, NULL), ATTN_EINVAL);
    cudaStreamDestroy(st);
    cudaFree(dq);
    cudaFree(dout);
    attn_kv_free(kv);
    free(k), free(v), free(want), free(got);
    case_free(&c);
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    attn_backend_free(be);
}

static void *free_store(void *kv)
{
    attn_kv_free(kv);
    return NULL;
}

/* attn_kv_free() from another thread while the backend goes on: the
 * other stores and the backend are untouched. */
static void test_store_free_any_thread(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    struct case_data c;
    case_init_cross(&c, ATTN_MRA2, ATTN_BF16, 1, 4, 2, 1, 5000, 64, 1, 500);
    c.p.causal = 1;
    static const uint32_t pieces[] = {777};
    struct attn_kv *a = store_of(be, &c, pieces, 1);
    struct attn_kv *b = store_of(be, &c, pieces, 1);
    struct attn_problem p = on_store(&c, a);
    assert_int_equal(attn_backend_compute(be, &p, NULL), ATTN_OK);
    size_t bytes = c.nq * 2;
    void *want = malloc(bytes);
    assert_non_null(want);
    memcpy(want, c.out, bytes);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, free_store, a), 0);
    for (int i = 0; i < 20; i++) {
        p = on_store(&c, b);
        memset(c.out, 0, bytes);
        assert_int_equal(attn_backend_compute(be, &p, NULL), ATTN_OK);
        assert_memory_equal(want, c.out, bytes);
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    attn_kv_free(b);
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    free(want);
    case_free(&c);
    attn_backend_free(be);
}

int main(void)
{
    if (attn_cuda_device_count() < 1) {
        printf("test-cuda-kv: no GPU present: checking only the byte count "
               "of a store\n");
        const struct CMUnitTest none[] = {cmocka_unit_test(test_bytes_for)};
        return cmocka_run_group_tests(none, NULL, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_for),
        cmocka_unit_test(test_store_bytes),
        cmocka_unit_test(test_store_matches_dense),
        cmocka_unit_test(test_store_decoding_loop),
        cmocka_unit_test(test_store_device_pointers),
        cmocka_unit_test(test_store_free_any_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
