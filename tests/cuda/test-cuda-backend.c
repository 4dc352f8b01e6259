/*
 * test-cuda-backend.c - GPU-specific checks of the CUDA backend that the
 * shared attention unit tests (run with ATTN_TEST_BACKEND=cuda) do not make:
 * bitwise reproducibility across runs and batch compositions, the
 * full-budget identity mra2 == exact (causal too), agreement with the CPU
 * backend on long sequences and on cross-attention, query masks and causal
 * attention with offsets, the device-pointer entry point of attn-cuda.h,
 * a batch of many problems (grouped launches) against each alone, memory
 * given back by trim(), a fault that loses the context and the backend
 * that heals without being made anew (attn_cuda_test_fault()),
 * and the device / memory / health queries (test-cuda-kv.c checks the
 * stores of keys and values).  On a machine without a GPU it checks
 * instead that asking for "cuda" answers ATTN_ENODEV and "auto" falls back
 * to the CPU.
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
#include <cuda_runtime_api.h>

#include "attention/attn.h"
#include "attention/cuda/attn-cuda.h"
#include "tests/cuda/cuda-case.h"

/* Without a GPU: "cuda" is ENODEV, "auto" is the CPU. */
static void test_no_device(void **state)
{
    (void)state;
    struct attn_config cfg = {0};
    struct attn_backend *be = NULL;
    assert_int_equal(attn_backend_new("cuda", &cfg, &be), ATTN_ENODEV);
    assert_null(be);
    be = new_backend("auto");
    assert_string_equal(attn_backend_name(be), "cpu");
    struct case_data c;
    case_init(&c, ATTN_MRA2, ATTN_F32, 1, 1, 1, 70, 16, 0, 1);
    assert_int_equal(attn_cuda_compute_device(be, &c.p, NULL), ATTN_ENOTSUP);
    case_free(&c);
    attn_backend_free(be);
}

static void test_queries(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    assert_string_equal(attn_backend_name(be), "cuda");
    assert_non_null(strstr(attn_backend_device(be), "(sm_"));
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    uint64_t used = 0, total = 0;
    assert_int_equal(attn_backend_memory(be, &used, &total), ATTN_OK);
    assert_true(total > 0 && used <= total);
    struct attn_config cfg = {.device = 1 << 20};
    struct attn_backend *none = NULL;
    assert_int_equal(attn_backend_new("cuda", &cfg, &none), ATTN_ENODEV);
    attn_backend_free(be);
}

/* The same request gives the same bits: twice alone, and in a batch
 * between other problems (which also exercises the slot pipeline). */
static void test_deterministic(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    struct case_data a, x, y;
    case_init(&a, ATTN_MRA2, ATTN_BF16, 2, 4, 2, 1000, 64, 1, 7);
    a.p.block_per_row = 4;
    case_init(&x, ATTN_EXACT, ATTN_F32, 1, 2, 2, 333, 40, 1, 8);
    /* causal cross-attention with a query mask between them */
    case_init_cross(&y, ATTN_MRA2_SPARSE, ATTN_F16, 1, 3, 1, 700, 2049, 128, 0,
                    9);
    y.p.causal = 1;
    case_add_q_mask(&y);
    size_t bytes = a.nq * attn_dtype_size(a.p.dtype);
    void *first = malloc(bytes);
    assert_non_null(first);
    assert_int_equal(attn_backend_compute(be, &a.p, NULL), ATTN_OK);
    memcpy(first, a.out, bytes);
    memset(a.out, 0xff, bytes);
    assert_int_equal(attn_backend_compute(be, &a.p, NULL), ATTN_OK);
    assert_memory_equal(first, a.out, bytes);
    for (int round = 0; round < 2; round++) {
        memset(a.out, 0xff, bytes);
        const struct attn_problem *batch[5] = {&x.p, &a.p, &y.p, &a.p, &x.p};
        int errs[5];
        assert_int_equal(attn_backend_compute_batch(be, batch, 5, NULL, errs),
                         ATTN_OK);
        for (int i = 0; i < 5; i++)
            assert_int_equal(errs[i], ATTN_OK);
        assert_memory_equal(first, a.out, bytes);
    }
    free(first);
    case_free(&a);
    case_free(&x);
    case_free(&y);
    attn_backend_free(be);
}

/* With every block selected, mra2 and mra2_sparse are exact attention:
 * self-attention, then causal attention with Nq = Nk and with an offset
 * that is not a multiple of 32 (the budget past the visible pairs). */
static void test_full_budget_is_exact(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    const enum attn_dtype dts[] = {ATTN_F32, ATTN_F16, ATTN_BF16};
    const uint32_t shapes[3][3] = {
        {2065, 2065, 0}, {2065, 2065, 1}, {700, 2065, 1}}; /* Nq, Nk, causal */
    for (int t = 0; t < 9; t++) {
        const uint32_t *sh = shapes[t / 3];
        struct case_data e, m;
        case_init_cross(&e, ATTN_EXACT, dts[t % 3], 1, 2, 1, sh[0], sh[1], 80,
                        1, 11);
        case_init_cross(&m, ATTN_MRA2, dts[t % 3], 1, 2, 1, sh[0], sh[1], 80, 1,
                        11);
        e.p.causal = m.p.causal = (int)sh[2];
        uint64_t nb = attn_num_blocks(sh[0]) * attn_num_blocks(sh[1]);
        m.p.num_blocks = nb;
        assert_int_equal(attn_backend_compute(be, &e.p, NULL), ATTN_OK);
        for (int s = 0; s < 2; s++) {
            m.p.method = s ? ATTN_MRA2_SPARSE : ATTN_MRA2;
            assert_int_equal(attn_backend_compute(be, &m.p, NULL), ATTN_OK);
            double err = rel_diff(dts[t % 3], m.out, e.out, e.nq);
            printf("full budget %s %s Nq=%u Nk=%u%s: rel diff %.3g\n",
                   attn_dtype_name(dts[t % 3]), attn_method_name(m.p.method),
                   sh[0], sh[1], sh[2] ? " causal" : "", err);
            assert_true(err < (dts[t % 3] == ATTN_F32 ? 1e-5 : 1e-2));
        }
        case_free(&e);
        case_free(&m);
    }
    attn_backend_free(be);
}

/* Same answers as the CPU backend, on a long sequence and on a problem
 * with priors, grouped heads, a mask and odd sizes. */
static void test_matches_cpu(void **state)
{
    (void)state;
    struct attn_backend *gpu = new_backend("cuda");
    struct attn_backend *cpu = new_backend("cpu");
    struct {
        enum attn_method m;
        enum attn_dtype dt;
        uint32_t B, H, Hkv, Nq, Nk, D, bpr, pf, pd;
        int masked, causal, q_masked;
        double tol;
    } cases[] = {
        {ATTN_MRA2, ATTN_F32, 2, 4, 1, 1500, 1500, 48, 8, 1, 3, 1, 0, 0, 1e-4},
        {ATTN_MRA2_SPARSE, ATTN_F32, 1, 2, 2, 777, 777, 33, 3, 0, 5, 1, 0, 0,
         1e-4},
        {ATTN_EXACT, ATTN_F32, 1, 3, 3, 901, 901, 256, 0, 0, 0, 1, 0, 0, 1e-4},
        {ATTN_MRA2, ATTN_BF16, 1, 2, 2, 16384, 16384, 128, 16, 0, 0, 0, 0, 0,
         1e-2},
        {ATTN_MRA2, ATTN_F16, 1, 2, 1, 4100, 4100, 64, 8, 2, 0, 1, 0, 0, 1e-2},
        /* cross-attention: Nq < Nk, Nq > Nk, Nq = 1, query masks */
        {ATTN_MRA2, ATTN_BF16, 2, 4, 2, 1000, 5000, 64, 8, 0, 3, 1, 0, 1, 1e-2},
        {ATTN_EXACT, ATTN_F16, 1, 2, 1, 3000, 700, 128, 0, 0, 0, 1, 0, 1, 1e-2},
        {ATTN_MRA2_SPARSE, ATTN_F32, 1, 2, 1, 1, 4000, 64, 8, 0, 0, 1, 0, 0,
         1e-4},
        /* causal: Nq = Nk with padding and grouped heads; offsets that are
         * and are not multiples of 32; rows that see nothing (Nq > Nk);
         * decoding (Nq = 1); priors on the shifted diagonal */
        {ATTN_EXACT, ATTN_BF16, 2, 4, 2, 4100, 4100, 64, 0, 0, 0, 1, 1, 0,
         1e-2},
        {ATTN_EXACT, ATTN_F32, 1, 2, 1, 1000, 3000, 80, 0, 0, 0, 1, 1, 1, 1e-4},
        {ATTN_MRA2, ATTN_BF16, 1, 4, 1, 8192, 8192, 128, 16, 0, 0, 0, 1, 0,
         1e-2},
        {ATTN_MRA2, ATTN_F16, 1, 2, 2, 1024, 4096, 64, 8, 1, 3, 1, 1, 0, 1e-2},
        {ATTN_MRA2, ATTN_F32, 1, 2, 1, 1000, 3017, 48, 4, 0, 5, 1, 1, 1, 1e-4},
        {ATTN_MRA2_SPARSE, ATTN_BF16, 1, 2, 1, 3000, 2000, 64, 8, 0, 0, 1, 1, 0,
         1e-2},
        {ATTN_MRA2, ATTN_BF16, 1, 8, 2, 1, 6000, 128, 8, 0, 0, 0, 1, 0, 1e-2},
        {ATTN_EXACT, ATTN_F16, 1, 8, 2, 1, 6000, 128, 0, 0, 0, 1, 1, 0, 1e-2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct case_data g, c;
        case_init_cross(&g, cases[i].m, cases[i].dt, cases[i].B, cases[i].H,
                        cases[i].Hkv, cases[i].Nq, cases[i].Nk, cases[i].D,
                        cases[i].masked, 100 + i);
        case_init_cross(&c, cases[i].m, cases[i].dt, cases[i].B, cases[i].H,
                        cases[i].Hkv, cases[i].Nq, cases[i].Nk, cases[i].D,
                        cases[i].masked, 100 + i);
        if (cases[i].q_masked) {
            case_add_q_mask(&g);
            case_add_q_mask(&c);
        }
        g.p.causal = c.p.causal = cases[i].causal;
        g.p.block_per_row = c.p.block_per_row = cases[i].bpr;
        g.p.prior_first = c.p.prior_first = cases[i].pf;
        g.p.prior_diagonal = c.p.prior_diagonal = cases[i].pd;
        struct attn_stats sg, sc;
        assert_int_equal(attn_backend_compute(gpu, &g.p, &sg), ATTN_OK);
        assert_int_equal(attn_backend_compute(cpu, &c.p, &sc), ATTN_OK);
        assert_int_equal(sg.blocks_selected, sc.blocks_selected);
        assert_int_equal(sg.blocks_total, sc.blocks_total);
        double err = rel_diff(cases[i].dt, g.out, c.out, g.nq);
        printf("vs cpu: %s %s Nq=%u Nk=%u D=%u%s%s%s: rel diff %.3g\n",
               attn_method_name(cases[i].m), attn_dtype_name(cases[i].dt),
               cases[i].Nq, cases[i].Nk, cases[i].D,
               cases[i].masked ? " masked" : "",
               cases[i].q_masked ? " q_mask" : "",
               cases[i].causal ? " causal" : "", err);
        assert_true(err < cases[i].tol);
        /* rows the CPU leaves at zero (masked queries, causal rows that
         * see no real key) are zero here too */
        size_t es = attn_dtype_size(cases[i].dt), rb = cases[i].D * es;
        unsigned char *zero = calloc(1, rb);
        assert_non_null(zero);
        for (size_t r = 0; r < g.nq / cases[i].D; r++)
            if (!memcmp((char *)c.out + r * rb, zero, rb))
                assert_memory_equal((char *)g.out + r * rb, zero, rb);
        free(zero);
        case_free(&g);
        case_free(&c);
    }
    attn_backend_free(gpu);
    attn_backend_free(cpu);
}

/* attn_cuda_compute_device on device buffers gives the bits of the host
 * path, on the backend's stream and on a caller's stream. */
static void test_device_pointers(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    struct case_data c;
    case_init(&c, ATTN_MRA2, ATTN_BF16, 1, 4, 2, 3000, 128, 1, 21);
    size_t es = 2, qb = c.nq * es, kb = c.nk * es, mb = 3000;
    assert_int_equal(attn_backend_compute(be, &c.p, NULL), ATTN_OK);
    void *want = malloc(qb), *got = malloc(qb);
    assert_true(want && got);
    memcpy(want, c.out, qb);
    void *dq, *dk, *dv, *dout, *dmask;
    assert_int_equal(cudaMalloc(&dq, qb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dk, kb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dv, kb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dout, qb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dmask, mb), cudaSuccess);
    cudaMemcpy(dq, c.q, qb, cudaMemcpyHostToDevice);
    cudaMemcpy(dk, c.k, kb, cudaMemcpyHostToDevice);
    cudaMemcpy(dv, c.v, kb, cudaMemcpyHostToDevice);
    cudaMemcpy(dmask, c.mask, mb, cudaMemcpyHostToDevice);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    struct attn_problem p = c.p;
    p.q = dq;
    p.k = dk;
    p.v = dv;
    p.mask = dmask;
    p.out = dout;
    cudaStream_t st;
    assert_int_equal(cudaStreamCreate(&st), cudaSuccess);
    for (int round = 0; round < 2; round++) {
        /* The backend's streams do not wait for the legacy default
         * stream: finish the memset before handing the buffer over. */
        assert_int_equal(cudaMemset(dout, 0, qb), cudaSuccess);
        assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
        assert_int_equal(
            attn_cuda_compute_device(be, &p, round ? (void *)st : NULL),
            ATTN_OK);
        assert_int_equal(cudaStreamSynchronize(st), cudaSuccess);
        assert_int_equal(cudaMemcpy(got, dout, qb, cudaMemcpyDeviceToHost),
                         cudaSuccess);
        assert_memory_equal(want, got, qb);
    }
    struct attn_problem bad = p;
    bad.Hkv = 3; /* 4 % 3 != 0 */
    assert_int_equal(attn_cuda_compute_device(be, &bad, NULL), ATTN_EINVAL);
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    cudaStreamDestroy(st);
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(dmask);
    free(want);
    free(got);
    case_free(&c);
    attn_backend_free(be);
}

/* The device-pointer path with a query mask of its own, cross-attention
 * and causality: the bits of the host path. */
static void test_device_pointers_cross(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    struct case_data c;
    case_init_cross(&c, ATTN_MRA2, ATTN_BF16, 2, 4, 2, 900, 2500, 64, 1, 22);
    case_add_q_mask(&c);
    c.p.causal = 1;
    size_t qb = c.nq * 2, kb = c.nk * 2;
    size_t mb = (size_t)2 * 2500, qmb = (size_t)2 * 900;
    assert_int_equal(attn_backend_compute(be, &c.p, NULL), ATTN_OK);
    void *want = malloc(qb), *got = malloc(qb);
    assert_true(want && got);
    memcpy(want, c.out, qb);
    void *dq, *dk, *dv, *dout, *dmask, *dqmask;
    assert_int_equal(cudaMalloc(&dq, qb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dk, kb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dv, kb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dout, qb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dmask, mb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dqmask, qmb), cudaSuccess);
    cudaMemcpy(dq, c.q, qb, cudaMemcpyHostToDevice);
    cudaMemcpy(dk, c.k, kb, cudaMemcpyHostToDevice);
    cudaMemcpy(dv, c.v, kb, cudaMemcpyHostToDevice);
    cudaMemcpy(dmask, c.mask, mb, cudaMemcpyHostToDevice);
    cudaMemcpy(dqmask, c.q_mask, qmb, cudaMemcpyHostToDevice);
    assert_int_equal(cudaMemset(dout, 0, qb), cudaSuccess);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    struct attn_problem p = c.p;
    p.q = dq;
    p.k = dk;
    p.v = dv;
    p.mask = dmask;
    p.q_mask = dqmask;
    p.out = dout;
    assert_int_equal(attn_cuda_compute_device(be, &p, NULL), ATTN_OK);
    assert_int_equal(cudaMemcpy(got, dout, qb, cudaMemcpyDeviceToHost),
                     cudaSuccess);
    assert_memory_equal(want, got, qb);
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(dmask);
    cudaFree(dqmask);
    free(want);
    free(got);
    case_free(&c);
    attn_backend_free(be);
}

/* Sixteen problems of one shape are one batch of grouped launches: each
 * gets the bits it gets alone; then trim() gives the pools back and the
 * bits stay. */
static void test_batch_of_many(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    enum { N = 16 };
    struct case_data c[N];
    const struct attn_problem *batch[N];
    void *alone[N];
    size_t bytes = 0;
    for (int i = 0; i < N; i++) {
        case_init(&c[i], i % 3 ? ATTN_MRA2 : ATTN_EXACT, ATTN_BF16, 1, 4, 2,
                  300 + 7 * (i % 2), 64, i % 2, 20 + i);
        c[i].p.block_per_row = 4;
        bytes = c[i].nq * attn_dtype_size(c[i].p.dtype);
        assert_int_equal(attn_backend_compute(be, &c[i].p, NULL), ATTN_OK);
        alone[i] = malloc(bytes);
        assert_non_null(alone[i]);
        memcpy(alone[i], c[i].out, bytes);
        memset(c[i].out, 0xff, bytes);
        batch[i] = &c[i].p;
    }
    for (int round = 0; round < 2; round++) {
        int errs[N];
        assert_int_equal(attn_backend_compute_batch(be, batch, N, NULL, errs),
                         ATTN_OK);
        for (int i = 0; i < N; i++) {
            assert_int_equal(errs[i], ATTN_OK);
            assert_memory_equal(alone[i], c[i].out,
                                c[i].nq * attn_dtype_size(c[i].p.dtype));
            memset(c[i].out, 0xff, c[i].nq * attn_dtype_size(c[i].p.dtype));
        }
        attn_backend_trim(be);
    }
    for (int i = 0; i < N; i++) {
        free(alone[i]);
        case_free(&c[i]);
    }
    attn_backend_free(be);
}

/* A kernel that faults loses the context: the call fails, the backend
 * resets the device and rebuilds, health() is ATTN_OK again without a new
 * backend, and the next computation has the bits of before.  A store of
 * the lost context fails; a new one works. */
static void test_heal_after_fault(void **state)
{
    (void)state;
    struct attn_backend *be = new_backend("cuda");
    struct case_data a;
    case_init(&a, ATTN_MRA2, ATTN_F16, 1, 4, 2, 500, 64, 1, 31);
    size_t bytes = a.nq * attn_dtype_size(a.p.dtype);
    void *first = malloc(bytes);
    assert_non_null(first);
    assert_int_equal(attn_backend_compute(be, &a.p, NULL), ATTN_OK);
    memcpy(first, a.out, bytes);
    struct attn_kv_shape sh = {a.p.dtype, a.p.B, a.p.Hkv, a.p.D};
    struct attn_kv *old = NULL;
    assert_int_equal(attn_kv_new(be, &sh, &old), ATTN_OK);
    uint64_t heals = attn_cuda_heals(be);
    assert_int_equal(attn_cuda_test_fault(be, 1), ATTN_EBACKEND);
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    assert_true(attn_cuda_heals(be) == heals + 1);
    memset(a.out, 0xff, bytes);
    assert_int_equal(attn_backend_compute(be, &a.p, NULL), ATTN_OK);
    assert_memory_equal(first, a.out, bytes);
    /* a fault not waited for: the next call finds it and fails */
    assert_int_equal(attn_cuda_test_fault(be, 0), ATTN_OK);
    assert_int_equal(attn_backend_compute(be, &a.p, NULL), ATTN_EBACKEND);
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    memset(a.out, 0xff, bytes);
    assert_int_equal(attn_backend_compute(be, &a.p, NULL), ATTN_OK);
    assert_memory_equal(first, a.out, bytes);
    /* a.k / a.v hold B * Hkv * 500 tokens: one token of each head */
    struct attn_kv_tokens t = {a.k, a.v, NULL, 1};
    assert_int_equal(attn_kv_append(old, &t), ATTN_EBACKEND);
    attn_kv_free(old);
    struct attn_kv *fresh = NULL;
    assert_int_equal(attn_kv_new(be, &sh, &fresh), ATTN_OK);
    assert_int_equal(attn_kv_append(fresh, &t), ATTN_OK);
    attn_kv_free(fresh);
    free(first);
    case_free(&a);
    attn_backend_free(be);
}

int main(void)
{
    if (attn_cuda_device_count() < 1) {
        printf("test-cuda-backend: no GPU present: checking only that the "
               "CUDA backend reports ENODEV and auto falls back\n");
        const struct CMUnitTest none[] = {cmocka_unit_test(test_no_device)};
        return cmocka_run_group_tests(none, NULL, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queries),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_full_budget_is_exact),
        cmocka_unit_test(test_matches_cpu),
        cmocka_unit_test(test_device_pointers),
        cmocka_unit_test(test_device_pointers_cross),
        cmocka_unit_test(test_batch_of_many),
        /* last: it resets the device's context */
        cmocka_unit_test(test_heal_after_fault),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
