/*
 * test-backend-emul.cpp - the CUDA backend itself (backend.cu, batch.cu,
 * plan.cu, kv.cu and the fused kernels) run on the CPU, through the
 * public attn_backend_* API, against the emulated CUDA runtime of
 * emu-runtime.h: device memory is host memory, streams are queues of
 * operations, kernels run on threads (emu-prims.h).
 *
 * It checks what no other host test reaches: the batch pipeline (waves,
 * staging slots, tables of grouped launches, pinned inputs and outputs
 * copied where they are), that a batch gives every problem the bits it
 * gets alone and agrees with the CPU backend, under both an eager and a
 * lazy stream order (the lazy one runs operations only when the host
 * waits, so a missing event wait shows up as wrong bits); that a batch
 * costs the launches of one problem; that the compute of a wave depends
 * only on its own inputs and its outputs only on its own compute (the
 * order in which the lazy streams run); memory given back by trim() and
 * pinned memory bounded by the staging slots; a problem that does not
 * fit the device, or the shared memory of a smaller GPU, failing alone;
 * cancellation; the device-pointer entry point; and faults: a kernel that
 * loses the context fails its batch, the backend resets and rebuilds
 * (health() recovers, stores of the lost context fail, nothing of the
 * old context is touched again), a rebuild that fails is retried, a
 * second backend on the device follows the reset, and the test hook
 * attn_cuda_test_fault() does what a real fault does.
 *
 * What it cannot check: the real hardware (timing, real overlap, the
 * real cuBLAS, real faults and whether cudaDeviceReset() recovers them).
 */
#define mrad_cuda mrad_cuda_emu
#define MRAD_CUDA_PRIMS "tests/cuda/emu-prims.h"
#include "attention/cuda/attend-bf16.cu"
#include "attention/cuda/attend-f16.cu"
#include "attention/cuda/attend-simt.cu"
#include "attention/cuda/backend.cu"
#include "attention/cuda/batch.cu"
#include "attention/cuda/kv.cu"
#include "attention/cuda/plan.cu"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

extern "C" {
#include <cmocka.h>
}

using mrad_emu::S;

namespace
{

uint64_t rng = 0x853c49e6748fea9bull;

float noise()
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

struct tcase {
    attn_method m;
    attn_dtype dt;
    uint32_t B, H, Hkv, Nq, Nk, D, bpr;
    bool masked, causal, qmasked;
};

/* The host tensors of a problem, pageable (malloc) or pinned (the
 * emulation's cudaHostAlloc). */
struct data {
    tcase c;
    attn_problem p;
    bool pinned;
    void *q, *k, *v, *out;
    uint8_t *mask, *qm;
    size_t qb, kb;
};

void *host_alloc(size_t n, bool pinned)
{
    void *p = nullptr;
    if (pinned)
        assert_int_equal(mrad_emu::rt_alloc(&p, n, true), cudaSuccess);
    else
        p = malloc(n);
    assert_non_null(p);
    return p;
}

void host_free(void *p, bool pinned)
{
    if (!p)
        return;
    if (pinned)
        mrad_emu::rt_free(p, true);
    else
        free(p);
}

void fill(attn_dtype dt, void *dst, size_t n, float amp)
{
    std::vector<float> f(n);
    for (auto &x : f)
        x = amp * noise();
    attn_from_f32(dt, f.data(), dst, n);
}

data *make(const tcase &c, uint64_t seed, bool pinned = false)
{
    rng = seed * 0x9e3779b97f4a7c15ull + 1;
    data *d = new data;
    memset((void *)d, 0, sizeof *d);
    d->c = c;
    d->pinned = pinned;
    size_t es = attn_dtype_size(c.dt);
    size_t nq = (size_t)c.B * c.H * c.Nq * c.D,
           nk = (size_t)c.B * c.Hkv * c.Nk * c.D;
    d->qb = nq * es;
    d->kb = nk * es;
    d->q = host_alloc(d->qb, pinned);
    d->k = host_alloc(d->kb, pinned);
    d->v = host_alloc(d->kb, pinned);
    d->out = host_alloc(d->qb, pinned);
    fill(c.dt, d->q, nq, 2.0f);
    fill(c.dt, d->k, nk, 2.0f);
    fill(c.dt, d->v, nk, 1.0f);
    memset(d->out, 0xee, d->qb);
    attn_problem &p = d->p;
    if (c.masked) {
        d->mask = (uint8_t *)host_alloc((size_t)c.B * c.Nk, pinned);
        for (size_t i = 0; i < (size_t)c.B * c.Nk; i++)
            d->mask[i] = (i % 7 != 3) && (i % c.Nk + 3 < c.Nk);
        p.mask = d->mask;
    }
    if (c.qmasked) {
        d->qm = (uint8_t *)host_alloc((size_t)c.B * c.Nq, pinned);
        for (size_t i = 0; i < (size_t)c.B * c.Nq; i++)
            d->qm[i] = (i % 5 != 1) && i % c.Nq != 0;
        p.q_mask = d->qm;
    }
    p.method = c.m;
    p.dtype = c.dt;
    p.B = c.B;
    p.H = c.H;
    p.Hkv = c.Hkv;
    p.Nq = c.Nq;
    p.Nk = c.Nk;
    p.D = c.D;
    p.q = d->q;
    p.k = d->k;
    p.v = d->v;
    p.out = d->out;
    p.causal = c.causal;
    p.block_per_row = c.bpr;
    return d;
}

void drop(data *d)
{
    host_free(d->q, d->pinned);
    host_free(d->k, d->pinned);
    host_free(d->v, d->pinned);
    host_free(d->out, d->pinned);
    host_free(d->mask, d->pinned);
    host_free(d->qm, d->pinned);
    delete d;
}

attn_backend *open(const char *name)
{
    attn_config cfg;
    memset(&cfg, 0, sizeof cfg);
    attn_backend *be = nullptr;
    assert_int_equal(attn_backend_new(name, &cfg, &be), ATTN_OK);
    return be;
}

double rel_diff(attn_dtype dt, const void *a, const void *b, size_t bytes)
{
    size_t n = bytes / attn_dtype_size(dt);
    std::vector<float> x(n), y(n);
    attn_to_f32(dt, a, x.data(), n);
    attn_to_f32(dt, b, y.data(), n);
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        den += (double)y[i] * y[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The output the CPU backend gives. */
std::vector<unsigned char> cpu_answer(const data *d)
{
    std::vector<unsigned char> out(d->qb);
    attn_problem p = d->p;
    p.out = out.data();
    attn_backend *cpu = open("cpu");
    assert_int_equal(attn_backend_compute(cpu, &p, nullptr), ATTN_OK);
    attn_backend_free(cpu);
    return out;
}

/* Computes the problems as one batch; each must succeed. */
void run_batch(attn_backend *be, const std::vector<data *> &ds)
{
    std::vector<const attn_problem *> ps;
    for (data *d : ds) {
        memset(d->out, 0xee, d->qb);
        ps.push_back(&d->p);
    }
    std::vector<int> errs(ds.size(), -1);
    assert_int_equal(attn_backend_compute_batch(be, ps.data(), ps.size(),
                                                nullptr, errs.data()),
                     ATTN_OK);
    for (int e : errs)
        assert_int_equal(e, ATTN_OK);
}

/* The emulation saw no bug of the backend's: no copy off an allocation,
 * no unknown free, no use of a dead handle, no bad launch. */
void clean()
{
    assert_int_equal(S().bad_copies, 0);
    assert_int_equal(S().bad_frees, 0);
    assert_int_equal(S().stale, 0);
    assert_int_equal(S().bad_launches, 0);
    assert_int_equal(mrad_emu::unwaited_copies.load(), 0);
}

int setup(void **state)
{
    (void)state;
    mrad_emu::reset_state();
    mrad_cuda::g_tune = {16u << 20, 16u << 20};
    return 0;
}

/* The mixed problems of the batch tests: every dtype and method, causal
 * cross-attention with masks, grouped heads, a query mask, two problems
 * of one kind (a table of more than one), exact attention in 128-row
 * blocks. */
const tcase MIXED[] = {
    {ATTN_EXACT, ATTN_F16, 1, 2, 1, 40, 70, 64, 0, true, true, false},
    {ATTN_MRA2, ATTN_BF16, 1, 2, 2, 96, 96, 64, 2, true, false, false},
    {ATTN_MRA2_SPARSE, ATTN_F32, 1, 2, 1, 70, 70, 32, 1, false, true, true},
    {ATTN_EXACT, ATTN_F32, 2, 1, 1, 33, 33, 20, 0, true, false, false},
    {ATTN_MRA2, ATTN_BF16, 1, 2, 2, 96, 96, 64, 2, false, true, false},
    {ATTN_EXACT, ATTN_BF16, 1, 1, 1, 64, 64, 40, 0, false, false, true},
    {ATTN_MRA2, ATTN_F16, 1, 4, 2, 50, 120, 48, 3, true, true, true},
};
constexpr size_t NMIXED = sizeof MIXED / sizeof MIXED[0];

/* Each problem alone, then all of them in one batch under the given
 * sizes and stream order: the same bits, and the CPU's answer. */
void check_batch(size_t ring_slot, size_t wave_bytes, mrad_emu::policy pol,
                 bool pinned)
{
    mrad_cuda::g_tune = {ring_slot, wave_bytes};
    S().pol = pol;
    attn_backend *be = open("cuda");
    std::vector<data *> ds;
    std::vector<std::vector<unsigned char>> alone;
    for (size_t i = 0; i < NMIXED; i++) {
        ds.push_back(make(MIXED[i], 10 + i, pinned));
        run_batch(be, {ds[i]});
        alone.emplace_back((unsigned char *)ds[i]->out,
                           (unsigned char *)ds[i]->out + ds[i]->qb);
    }
    run_batch(be, ds);
    for (size_t i = 0; i < NMIXED; i++) {
        assert_memory_equal(ds[i]->out, alone[i].data(), ds[i]->qb);
        double err = rel_diff(MIXED[i].dt, ds[i]->out, cpu_answer(ds[i]).data(),
                              ds[i]->qb);
        assert_true(err < (MIXED[i].dt == ATTN_F32 ? 1e-4 : 1e-2));
    }
    /* the batch again, in reverse order */
    std::vector<data *> rev(ds.rbegin(), ds.rend());
    run_batch(be, rev);
    for (size_t i = 0; i < NMIXED; i++)
        assert_memory_equal(ds[i]->out, alone[i].data(), ds[i]->qb);
    printf("batch of %zu, slots of %zu B, waves of %zu B, %s streams, %s "
           "buffers: bitwise as alone, as the CPU; pinned peak %zu B\n",
           NMIXED, ring_slot, wave_bytes,
           pol == mrad_emu::LAZY ? "lazy" : "eager",
           pinned ? "pinned" : "pageable", S().pinned_peak);
    clean();
    attn_backend_free(be);
    for (data *d : ds)
        drop(d);
}

void test_batch_one_wave(void **state)
{
    (void)state;
    check_batch(16u << 20, 16u << 20, mrad_emu::EAGER, false);
    check_batch(16u << 20, 16u << 20, mrad_emu::LAZY, false);
}

/* Staging slots of 4 KiB: tensors cut into chunks, chunks holding pieces
 * of several tensors; a wave per problem. */
void test_batch_small_slots(void **state)
{
    (void)state;
    check_batch(4096, 1, mrad_emu::LAZY, false);
    check_batch(4096, 20000, mrad_emu::EAGER, false);
}

/* Inputs and outputs in pinned memory: copied where they are. */
void test_batch_pinned(void **state)
{
    (void)state;
    check_batch(4096, 1, mrad_emu::LAZY, true);
    size_t d2h_direct = 0;
    for (const auto &c : S().copies)
        if (c.kind == cudaMemcpyDeviceToHost) {
            uintptr_t base;
            const mrad_emu::alloc *a = mrad_emu::find(c.dst, c.n, &base);
            /* the test's buffers were freed; the backend's slots not */
            d2h_direct += !a;
        }
    assert_true(d2h_direct > 0);
}

/* Eight problems of one shape cost the launches of one; an exact batch
 * is one launch. */
void test_one_launch_per_batch(void **state)
{
    (void)state;
    attn_backend *be = open("cuda");
    const tcase mra = {ATTN_MRA2, ATTN_BF16, 1, 2,    1,     70,
                       70,        64,        2, true, false, false};
    const tcase ex = {ATTN_EXACT, ATTN_F16, 1, 2,     1,    70,
                      70,         64,       0, false, true, false};
    for (const tcase &c : {mra, ex}) {
        std::vector<data *> ds;
        for (int i = 0; i < 8; i++)
            ds.push_back(make(c, 100 + i));
        uint64_t l0 = S().launches;
        run_batch(be, {ds[0]});
        uint64_t one = S().launches - l0;
        std::vector<unsigned char> first((unsigned char *)ds[0]->out,
                                         (unsigned char *)ds[0]->out +
                                             ds[0]->qb);
        l0 = S().launches;
        size_t c0 = S().copies.size();
        run_batch(be, ds);
        uint64_t eight = S().launches - l0;
        size_t h2d = 0, d2h = 0;
        for (size_t i = c0; i < S().copies.size(); i++) {
            h2d += S().copies[i].kind == cudaMemcpyHostToDevice;
            d2h += S().copies[i].kind == cudaMemcpyDeviceToHost;
        }
        printf("%s: %llu launches for one problem, %llu for eight; %zu "
               "copies up, %zu down\n",
               attn_method_name(c.m), (unsigned long long)one,
               (unsigned long long)eight, h2d, d2h);
        assert_int_equal(one, eight);
        if (c.m == ATTN_EXACT)
            assert_int_equal(eight, 1);
        /* the tables and one chunk of inputs; one chunk of outputs */
        assert_int_equal(h2d, 2);
        assert_int_equal(d2h, 1);
        assert_memory_equal(ds[0]->out, first.data(), ds[0]->qb);
        for (data *d : ds)
            drop(d);
    }
    clean();
    attn_backend_free(be);
}

/* Under lazy streams the operations run only when the host waits for
 * them, so the order they run in shows the dependencies: waiting for the
 * outputs, wave 0's kernels run after wave 0's inputs and before wave
 * 1's go up, and its output comes down before wave 1's inputs go up.  A
 * kernel that waited for the whole batch's inputs, or outputs that waited
 * for the whole batch's compute, would run in another order.  Inputs and
 * outputs are pinned, so the copies name the test's buffers. */
void test_waves_overlap(void **state)
{
    (void)state;
    mrad_cuda::g_tune = {4096, 1};
    S().pol = mrad_emu::LAZY;
    attn_backend *be = open("cuda");
    std::vector<data *> ds;
    for (int i = 0; i < 3; i++)
        ds.push_back(make(
            {ATTN_MRA2, ATTN_BF16, 1, 2, 1, 64, 64, 64, 2, false, false, false},
            200 + i, true));
    S().tracing = true;
    run_batch(be, ds);
    S().tracing = false;
    auto at = [&](char tag, const void *dst, const void *src) {
        for (size_t i = 0; i < S().ran.size(); i++)
            if (S().ran[i].tag == tag && (!dst || S().ran[i].dst == dst) &&
                (!src || S().ran[i].src == src))
                return (long)i;
        fail_msg("operation %c not run", tag);
        return -1L;
    };
    long up0 = at('H', nullptr, ds[0]->q), up1 = at('H', nullptr, ds[1]->q);
    long up2 = at('H', nullptr, ds[2]->q);
    long down0 = at('D', ds[0]->out, nullptr);
    long down1 = at('D', ds[1]->out, nullptr);
    long k0 = -1;
    for (size_t i = (size_t)up0; i < S().ran.size() && k0 < 0; i++)
        if (S().ran[i].tag == 'K')
            k0 = (long)i;
    printf("run order: up0 %ld, first kernel %ld, down0 %ld, up1 %ld, down1 "
           "%ld, up2 %ld (of %zu)\n",
           up0, k0, down0, up1, down1, up2, S().ran.size());
    assert_true(up0 < k0 && k0 < down0 && down0 < up1 && up1 < down1 &&
                down1 < up2);
    clean();
    attn_backend_free(be);
    for (data *d : ds)
        drop(d);
}

/* A large problem takes no more pinned memory than the staging slots;
 * trim() gives back every arena (the cuBLAS workspace stays), and the
 * backend computes the same bits afterwards. */
void test_memory_returns(void **state)
{
    (void)state;
    mrad_cuda::g_tune = {64 << 10, 16u << 20};
    attn_backend *be = open("cuda");
    size_t base_dev = S().dev_used, base_pinned = S().pinned_used;
    data *d = make(
        {ATTN_EXACT, ATTN_F32, 1, 4, 4, 2000, 2000, 64, 0, false, false, false},
        300);
    run_batch(be, {d});
    std::vector<unsigned char> first((unsigned char *)d->out,
                                     (unsigned char *)d->out + d->qb);
    printf("inputs %zu B: device %zu B in use, pinned %zu B (peak %zu)\n",
           3 * d->qb, S().dev_used - base_dev, S().pinned_used - base_pinned,
           S().pinned_peak);
    /* four staging slots; the tables of a batch of one are none */
    assert_true(S().pinned_used - base_pinned <= 4 * (64u << 10));
    assert_true(S().dev_used - base_dev >= 4 * d->qb);
    attn_backend_trim(be);
    assert_int_equal(S().dev_used, base_dev);
    assert_int_equal(S().pinned_used, base_pinned);
    run_batch(be, {d});
    assert_memory_equal(d->out, first.data(), d->qb);
    attn_backend_trim(be);
    clean();
    attn_backend_free(be);
    assert_int_equal(S().dev_used, 0);
    assert_int_equal(S().pinned_used, 0);
    drop(d);
}

/* A problem that cannot fit the device fails alone (ATTN_ENOMEM): the
 * batch is computed in halves around it.  One that needs more shared
 * memory than the GPU has (f32, D > 128 on a 99 KiB GPU) fails alone too
 * (ATTN_ENOTSUP), and exact bf16 with D = 200 falls back to 32-row
 * blocks; a cancelled problem is not computed. */
void test_fail_alone(void **state)
{
    (void)state;
    S().smem_optin = 99 << 10;
    S().capacity = (size_t)40 << 20; /* the cuBLAS workspace and 8 MiB */
    attn_backend *be = open("cuda");
    data *a = make(MIXED[1], 400), *b = make(MIXED[2], 401);
    data *big = make(
        {ATTN_EXACT, ATTN_F32, 1, 1, 1, 8192, 8192, 64, 0, false, false, false},
        402);
    data *wide = make(
        {ATTN_EXACT, ATTN_F32, 1, 1, 1, 40, 40, 200, 0, false, false, false},
        403);
    data *tall = make(
        {ATTN_EXACT, ATTN_BF16, 1, 1, 1, 40, 40, 200, 0, true, false, false},
        404);
    data *gone = make(MIXED[3], 405);
    int cancel = 1;
    gone->p.cancel = &cancel;
    run_batch(be, {a});
    std::vector<unsigned char> wa((unsigned char *)a->out,
                                  (unsigned char *)a->out + a->qb);
    run_batch(be, {b});
    std::vector<unsigned char> wb((unsigned char *)b->out,
                                  (unsigned char *)b->out + b->qb);
    const attn_problem *ps[] = {&a->p,    &big->p,  &wide->p,
                                &gone->p, &tall->p, &b->p};
    int errs[6];
    memset(a->out, 0, a->qb);
    memset(b->out, 0, b->qb);
    assert_int_equal(attn_backend_compute_batch(be, ps, 6, nullptr, errs),
                     ATTN_OK);
    printf("errs: %d %d %d %d %d %d\n", errs[0], errs[1], errs[2], errs[3],
           errs[4], errs[5]);
    assert_int_equal(errs[0], ATTN_OK);
    assert_int_equal(errs[1], ATTN_ENOMEM);
    assert_int_equal(errs[2], ATTN_ENOTSUP);
    assert_int_equal(errs[3], ATTN_ECANCELED);
    assert_int_equal(errs[4], ATTN_OK);
    assert_int_equal(errs[5], ATTN_OK);
    assert_memory_equal(a->out, wa.data(), a->qb);
    assert_memory_equal(b->out, wb.data(), b->qb);
    assert_true(rel_diff(ATTN_BF16, tall->out, cpu_answer(tall).data(),
                         tall->qb) < 1e-2);
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    clean();
    attn_backend_free(be);
    for (data *d : {a, b, big, wide, tall, gone})
        drop(d);
}

/* attn_cuda_compute_device() on tensors in (emulated) device memory, on
 * the backend's stream and a caller's: the bits of the host path. */
void test_device_pointers(void **state)
{
    (void)state;
    S().pol = mrad_emu::LAZY;
    attn_backend *be = open("cuda");
    data *d = make(MIXED[6], 500);
    run_batch(be, {d});
    std::vector<unsigned char> want((unsigned char *)d->out,
                                    (unsigned char *)d->out + d->qb);
    size_t mb = (size_t)d->c.B * d->c.Nk, qmb = (size_t)d->c.B * d->c.Nq;
    void *dq, *dk, *dv, *dout, *dm, *dqm;
    assert_int_equal(cudaMalloc(&dq, d->qb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dk, d->kb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dv, d->kb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dout, d->qb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dm, mb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dqm, qmb), cudaSuccess);
    memcpy(dq, d->q, d->qb);
    memcpy(dk, d->k, d->kb);
    memcpy(dv, d->v, d->kb);
    memcpy(dm, d->mask, mb);
    memcpy(dqm, d->qm, qmb);
    attn_problem p = d->p;
    p.q = dq;
    p.k = dk;
    p.v = dv;
    p.mask = (const uint8_t *)dm;
    p.q_mask = (const uint8_t *)dqm;
    p.out = dout;
    cudaStream_t st;
    assert_int_equal(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking),
                     cudaSuccess);
    for (int round = 0; round < 2; round++) {
        memset(dout, 0, d->qb);
        assert_int_equal(
            attn_cuda_compute_device(be, &p, round ? (void *)st : nullptr),
            ATTN_OK);
        assert_int_equal(cudaStreamSynchronize(st), cudaSuccess);
        assert_memory_equal(dout, want.data(), d->qb);
    }
    cudaStreamDestroy(st);
    for (void *x : {dq, dk, dv, dout, dm, dqm})
        cudaFree(x);
    clean();
    attn_backend_free(be);
    drop(d);
}

/* attn.h's struct attn_kv_tokens as C++ sees it (common.cuh, kv_tokens). */
const struct ::attn_kv_tokens *tokens_of(const mrad_cuda::kv_tokens *t)
{
    return reinterpret_cast<const struct ::attn_kv_tokens *>(t);
}

/* A store of keys and values made from the first n tokens of d's keys. */
attn_kv *store_of(attn_backend *be, const data *d, uint32_t n)
{
    attn_kv_shape sh = {d->c.dt, d->c.B, d->c.Hkv, d->c.D};
    attn_kv *kv = nullptr;
    assert_int_equal(attn_kv_new(be, &sh, &kv), ATTN_OK);
    size_t es = attn_dtype_size(d->c.dt), row = (size_t)d->c.D * es;
    size_t units = (size_t)d->c.B * d->c.Hkv;
    std::vector<char> k(units * n * row), v(units * n * row);
    std::vector<uint8_t> m((size_t)d->c.B * n, 1);
    for (size_t u = 0; u < units; u++) {
        memcpy(&k[u * n * row], (const char *)d->k + u * d->c.Nk * row,
               n * row);
        memcpy(&v[u * n * row], (const char *)d->v + u * d->c.Nk * row,
               n * row);
    }
    for (uint32_t b = 0; b < d->c.B && d->mask; b++)
        memcpy(&m[(size_t)b * n], d->mask + (size_t)b * d->c.Nk, n);
    mrad_cuda::kv_tokens t = {k.data(), v.data(), d->mask ? m.data() : nullptr,
                              n};
    assert_int_equal(attn_kv_append(kv, tokens_of(&t)), ATTN_OK);
    return kv;
}

/* A problem on a store among dense ones: the bits it gets alone and on
 * its dense tensors (the decoding step of one query, causal). */
void test_store_in_batch(void **state)
{
    (void)state;
    S().pol = mrad_emu::LAZY;
    attn_backend *be = open("cuda");
    data *x = make(MIXED[0], 600), *y = make(MIXED[4], 601);
    data *dec = make(
        {ATTN_MRA2, ATTN_BF16, 2, 4, 2, 1, 130, 64, 2, true, true, false}, 602);
    run_batch(be, {dec});
    std::vector<unsigned char> dense((unsigned char *)dec->out,
                                     (unsigned char *)dec->out + dec->qb);
    attn_kv *kv = store_of(be, dec, dec->c.Nk);
    attn_problem onstore = dec->p;
    onstore.k = onstore.v = nullptr;
    onstore.mask = nullptr;
    onstore.kv = kv;
    const attn_problem *ps[] = {&x->p, &onstore, &y->p};
    int errs[3];
    memset(dec->out, 0, dec->qb);
    assert_int_equal(attn_backend_compute_batch(be, ps, 3, nullptr, errs),
                     ATTN_OK);
    for (int e : errs)
        assert_int_equal(e, ATTN_OK);
    assert_memory_equal(dec->out, dense.data(), dec->qb);
    attn_kv_free(kv);
    clean();
    attn_backend_free(be);
    for (data *d : {x, y, dec})
        drop(d);
}

/* The first problems of MIXED and their bits, computed by `be`. */
std::vector<data *> reference(attn_backend *be,
                              std::vector<std::vector<unsigned char>> *want)
{
    std::vector<data *> ds;
    for (size_t i = 0; i < 4; i++)
        ds.push_back(make(MIXED[i], 700 + i));
    run_batch(be, ds);
    for (data *d : ds)
        want->emplace_back((unsigned char *)d->out,
                           (unsigned char *)d->out + d->qb);
    return ds;
}

void expect_bits(attn_backend *be, const std::vector<data *> &ds,
                 const std::vector<std::vector<unsigned char>> &want)
{
    run_batch(be, ds);
    for (size_t i = 0; i < ds.size(); i++)
        assert_memory_equal(ds[i]->out, want[i].data(), ds[i]->qb);
}

/* A kernel loses the context in the middle of a batch: the batch fails
 * (ATTN_EBACKEND), the backend resets the device and rebuilds, health()
 * is ATTN_OK again and the next batch has the bits of before.  A store of
 * the lost context fails with ATTN_EBACKEND and is freed without touching
 * the new context; a new store works.  Nothing of the old context is used
 * again. */
void test_heal_after_fault(void **state)
{
    (void)state;
    S().pol = mrad_emu::LAZY;
    attn_backend *be = open("cuda");
    std::vector<std::vector<unsigned char>> want;
    std::vector<data *> ds = reference(be, &want);
    attn_kv *old = store_of(be, ds[1], 64);
    S().fail_kernel = 3;
    std::vector<const attn_problem *> ps;
    for (data *d : ds)
        ps.push_back(&d->p);
    std::vector<int> errs(ds.size());
    assert_int_equal(attn_backend_compute_batch(be, ps.data(), ps.size(),
                                                nullptr, errs.data()),
                     ATTN_OK);
    for (int e : errs)
        assert_int_equal(e, ATTN_EBACKEND);
    assert_int_equal(S().resets, 1);
    assert_int_equal(attn_cuda_heals(be), 1);
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    expect_bits(be, ds, want);
    /* the store of the lost context */
    attn_problem on = ds[1]->p;
    on.k = on.v = nullptr;
    on.mask = nullptr;
    on.Nk = 64;
    on.kv = old;
    assert_int_equal(attn_backend_compute(be, &on, nullptr), ATTN_EBACKEND);
    mrad_cuda::kv_tokens t = {ds[1]->k, ds[1]->v, nullptr, 1};
    assert_int_equal(attn_kv_append(old, tokens_of(&t)), ATTN_EBACKEND);
    attn_kv_free(old);
    attn_kv *fresh = store_of(be, ds[1], 64);
    on.kv = fresh;
    assert_int_equal(attn_backend_compute(be, &on, nullptr), ATTN_OK);
    attn_kv_free(fresh);
    attn_backend_trim(be);
    expect_bits(be, ds, want);
    printf("fault: batch failed, %llu reset, health ok, bits as before\n",
           (unsigned long long)S().resets);
    clean();
    attn_backend_free(be);
    for (data *d : ds)
        drop(d);
}

/* A rebuild that fails (a stream cannot be made) leaves the backend
 * unhealthy; calls fail at once, and the rebuild is retried a second
 * later, by health() or the next call. */
void test_heal_retried(void **state)
{
    (void)state;
    attn_backend *be = open("cuda");
    std::vector<std::vector<unsigned char>> want;
    std::vector<data *> ds = reference(be, &want);
    S().fail_kernel = 0;
    S().fail_stream = 0; /* the rebuild's first stream */
    std::vector<const attn_problem *> ps;
    for (data *d : ds)
        ps.push_back(&d->p);
    std::vector<int> errs(ds.size());
    attn_backend_compute_batch(be, ps.data(), ps.size(), nullptr, errs.data());
    assert_int_equal(errs[0], ATTN_EBACKEND);
    assert_int_equal(attn_backend_health(be), ATTN_EBACKEND);
    assert_int_equal(attn_backend_compute(be, &ds[0]->p, nullptr),
                     ATTN_EBACKEND);
    assert_int_equal(S().resets, 1);
    usleep(1100 * 1000);
    assert_int_equal(attn_backend_health(be), ATTN_OK);
    assert_int_equal(attn_cuda_heals(be), 1);
    expect_bits(be, ds, want);
    clean();
    attn_backend_free(be);
    for (data *d : ds)
        drop(d);
}

/* Two backends on one device share its context: when one resets it, the
 * other rebuilds at its next call, without touching its old handles. */
void test_second_backend_follows(void **state)
{
    (void)state;
    attn_backend *a = open("cuda"), *b = open("cuda");
    std::vector<std::vector<unsigned char>> want;
    std::vector<data *> ds = reference(a, &want);
    expect_bits(b, ds, want);
    /* the test hook: a real fault's path, waited for */
    assert_int_equal(attn_cuda_test_fault(a, 1), ATTN_EBACKEND);
    assert_int_equal(attn_backend_health(a), ATTN_OK);
    assert_int_equal(attn_cuda_heals(a), 1);
    assert_int_equal(S().resets, 1);
    /* b rebuilds at its next call, without a reset of its own */
    expect_bits(b, ds, want);
    assert_int_equal(attn_cuda_heals(b), 1);
    assert_int_equal(S().resets, 1);
    expect_bits(a, ds, want);
    /* not waited for: the next batch finds it */
    assert_int_equal(attn_cuda_test_fault(b, 0), ATTN_OK);
    std::vector<const attn_problem *> ps;
    for (data *d : ds)
        ps.push_back(&d->p);
    std::vector<int> errs(ds.size());
    attn_backend_compute_batch(b, ps.data(), ps.size(), nullptr, errs.data());
    assert_int_equal(errs[0], ATTN_EBACKEND);
    assert_int_equal(attn_backend_health(b), ATTN_OK);
    assert_int_equal(S().resets, 2);
    expect_bits(a, ds, want);
    expect_bits(b, ds, want);
    clean();
    attn_backend_free(a);
    attn_backend_free(b);
    for (data *d : ds)
        drop(d);
}

} // namespace

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_batch_one_wave, setup),
        cmocka_unit_test_setup(test_batch_small_slots, setup),
        cmocka_unit_test_setup(test_batch_pinned, setup),
        cmocka_unit_test_setup(test_one_launch_per_batch, setup),
        cmocka_unit_test_setup(test_waves_overlap, setup),
        cmocka_unit_test_setup(test_memory_returns, setup),
        cmocka_unit_test_setup(test_fail_alone, setup),
        cmocka_unit_test_setup(test_device_pointers, setup),
        cmocka_unit_test_setup(test_store_in_batch, setup),
        cmocka_unit_test_setup(test_heal_after_fault, setup),
        cmocka_unit_test_setup(test_heal_retried, setup),
        cmocka_unit_test_setup(test_second_backend_follows, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
