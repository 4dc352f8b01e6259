/*
 * test-attend-emul.cpp - the fused attention kernels of
 * attention/cuda/attend-mma.cuh (f16/bf16, tensor cores) and
 * attend-simt.cuh (f32), run on the CPU.
 *
 * The kernel sources are compiled as host C++ against emulated primitives
 * (emu-prims.h: a std::thread per GPU thread, barriers for __syncthreads,
 * warp-collective shuffle / ballot / ldmatrix / mma.sync following the PTX
 * fragment layouts).  The MRA plan the kernel consumes (CSR lists of
 * selected blocks, low-resolution softmax state) is built here on the host
 * with the library's selection functions.  The outputs are compared with
 * the CPU backend for mra2, mra2_sparse and exact, f16, bf16 and f32, several
 * head dimensions (register and shared-memory Q paths, vector and scalar
 * loads), masks, grouped heads and odd lengths; cross-attention (Nq < Nk,
 * Nq > Nk, Nq = 1), query masks, and causal attention with offsets
 * Nk - Nq that are and are not multiples of 32, with padding, grouped
 * heads and priors; and the 32-row and 128-row variants of exact attention
 * must agree bit for bit.  The key tiles each thread block walks are
 * checked too: exact attention visits exactly the key blocks its rows see,
 * MRA its list and then its causally partial blocks.  It needs no GPU; it
 * does not check timing, cp.async ordering or anything of the real
 * hardware beyond the documented semantics.
 *
 * The last group runs the whole device path of an MRA problem: plan.cu's
 * mra_plan() (counts, means, logits through an emulated
 * cublasSgemmStridedBatched with cuBLAS's column-major definition, the
 * radix select, the row scan and the CSR lists, the low-resolution
 * weights) and then the fused kernel.  Its lists must equal the host
 * plan's exactly and its output must match the CPU backend, on square,
 * cross and causal grids, and on logits with NaN (lists only).
 */
/* The backend's code lands in a namespace of its own here, so that it
 * cannot clash with the library's compiled copy that the test also links. */
#define mrad_cuda mrad_cuda_emu
#define MRAD_CUDA_PRIMS "tests/cuda/emu-prims.h"
#include "attention/cuda/attend-mma.cuh"
#include "attention/cuda/attend-simt.cuh"
#include "attention/cuda/plan.cu"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include <cmocka.h>

#include "attention/internal.h"
}

using namespace mrad_cuda;

namespace
{

struct tcase {
    attn_method method;
    attn_dtype dt;
    uint32_t B, H, Hkv, Nq, Nk, D, bpr, pf, pd;
    bool masked;          /* a key mask (holes, an empty block, padding) */
    bool causal = false;  /* bottom-right aligned */
    bool qmasked = false; /* an explicit query mask (and an empty block) */
    uint64_t num_blocks = 0;
};

struct data {
    attn_problem p;
    std::vector<unsigned char> q, k, v, out, ref; /* raw dtype bytes */
    std::vector<uint8_t> mask, qmask;
    std::vector<float> qf, kf, vf;
    /* the plan */
    std::vector<uint32_t> list, row_off;
    std::vector<float> low_m, low_z, low_num;
    uint64_t budget;
};

uint64_t rng = 0x2545f4914f6cdd1dull;

float noise()
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* The query mask in use: q_mask, or in self-attention the key mask. */
const uint8_t *query_mask(const attn_problem &p)
{
    return p.q_mask ? p.q_mask : p.Nq == p.Nk ? p.mask : nullptr;
}

void init(data &d, const tcase &c)
{
    size_t nq = (size_t)c.B * c.H * c.Nq * c.D;
    size_t nk = (size_t)c.B * c.Hkv * c.Nk * c.D;
    d.qf.resize(nq);
    d.kf.resize(nk);
    d.vf.resize(nk);
    for (auto &x : d.qf)
        x = 2.0f * noise();
    for (auto &x : d.kf)
        x = 2.0f * noise();
    for (auto &x : d.vf)
        x = noise();
    size_t es = attn_dtype_size(c.dt);
    d.q.resize(nq * es);
    d.k.resize(nk * es);
    d.v.resize(nk * es);
    attn_from_f32(c.dt, d.qf.data(), d.q.data(), nq);
    attn_from_f32(c.dt, d.kf.data(), d.k.data(), nk);
    attn_from_f32(c.dt, d.vf.data(), d.v.data(), nk);
    /* the kernel and the plan see the rounded values */
    attn_to_f32(c.dt, d.q.data(), d.qf.data(), nq);
    attn_to_f32(c.dt, d.k.data(), d.kf.data(), nk);
    attn_to_f32(c.dt, d.v.data(), d.vf.data(), nk);
    d.out.assign(nq * es, 0xff);
    d.ref.assign(nq * es, 0);
    memset(&d.p, 0, sizeof d.p);
    if (c.masked) {
        /* holes, key block 2 empty, and the last 3 keys padding */
        d.mask.resize((size_t)c.B * c.Nk);
        for (size_t i = 0; i < d.mask.size(); i++) {
            size_t j = i % c.Nk;
            d.mask[i] = (i % 5 != 2) && j + 3 < c.Nk && !(j >= 64 && j < 96);
        }
        d.p.mask = d.mask.data();
    }
    if (c.qmasked) {
        /* holes, query block 1 empty, and the first query padding */
        d.qmask.resize((size_t)c.B * c.Nq);
        for (size_t i = 0; i < d.qmask.size(); i++) {
            size_t t = i % c.Nq;
            d.qmask[i] = (i % 7 != 4) && t != 0 && !(t >= 32 && t < 64);
        }
        d.p.q_mask = d.qmask.data();
    }
    d.p.method = c.method;
    d.p.dtype = c.dt;
    d.p.B = c.B;
    d.p.H = c.H;
    d.p.Hkv = c.Hkv;
    d.p.Nq = c.Nq;
    d.p.Nk = c.Nk;
    d.p.D = c.D;
    d.p.q = d.q.data();
    d.p.k = d.k.data();
    d.p.v = d.v.data();
    d.p.out = d.ref.data();
    d.p.causal = c.causal;
    d.p.block_per_row = c.bpr;
    d.p.num_blocks = c.num_blocks;
    d.p.prior_first = c.pf;
    d.p.prior_diagonal = c.pd;
}

/* What plan.cu computes, on the host, the way the CPU backend does it
 * (attention/cpu/head.c): means, logits, r_I over the pairs not hidden,
 * the library's selection keys and top-k, CSR lists of the pairs the
 * budget picked, and the low-resolution state of every block row from
 * its visible unselected pairs. */
void plan(data &d)
{
    const attn_problem &p = d.p;
    attn_grid grid;
    attn_grid_init(&grid, &p);
    uint32_t nbq = grid.nbq, nbk = grid.nbk, D = p.D, G = p.H / p.Hkv;
    int64_t shift = attn_grid_diag_shift(&grid);
    float s = attn_scale(&p);
    size_t heads = (size_t)p.B * p.H;
    const uint8_t *qm = query_mask(p);
    d.budget = attn_budget(&p);
    auto real = [&](const uint8_t *m, uint32_t N, uint32_t b, uint32_t j) {
        return j < N && (!m || m[(size_t)b * N + j]);
    };
    auto counts = [&](const uint8_t *m, uint32_t N, uint32_t nb) {
        std::vector<float> c((size_t)p.B * nb);
        for (uint32_t b = 0; b < p.B; b++)
            for (uint32_t J = 0; J < nb; J++)
                for (uint32_t t = 0; t < 32; t++)
                    c[(size_t)b * nb + J] += real(m, N, b, J * 32 + t);
        return c;
    };
    std::vector<float> cnt = counts(p.mask, p.Nk, nbk);
    std::vector<float> cntq = counts(qm, p.Nq, nbq);
    auto means = [&](const std::vector<float> &x, uint32_t Hx, const uint8_t *m,
                     uint32_t N, uint32_t nb, const std::vector<float> &c) {
        std::vector<float> out((size_t)p.B * Hx * nb * D, 0.0f);
        for (size_t hb = 0; hb < (size_t)p.B * Hx; hb++) {
            uint32_t b = (uint32_t)(hb / Hx);
            for (uint32_t I = 0; I < nb; I++) {
                float ci = c[(size_t)b * nb + I];
                for (uint32_t dd = 0; dd < D; dd++) {
                    float acc = 0;
                    for (uint32_t t = 0; t < 32; t++)
                        if (real(m, N, b, I * 32 + t))
                            acc += x[(hb * N + I * 32 + t) * D + dd];
                    out[(hb * nb + I) * D + dd] = ci > 0 ? acc / ci : 0.0f;
                }
            }
        }
        return out;
    };
    std::vector<float> qh = means(d.qf, p.H, qm, p.Nq, nbq, cntq);
    std::vector<float> kh = means(d.kf, p.Hkv, p.mask, p.Nk, nbk, cnt);
    std::vector<float> vh = means(d.vf, p.Hkv, p.mask, p.Nk, nbk, cnt);
    d.row_off.assign(heads * (nbq + 1), 0);
    /* one more: a list that is empty (budget 0) still is a list, not the
     * NULL of exact attention */
    d.list.assign(heads * d.budget + 1, 0);
    d.low_m.assign(heads * nbq, 0);
    d.low_z.assign(heads * nbq, 0);
    d.low_num.assign(heads * nbq * D, 0);
    size_t nn = (size_t)nbq * nbk;
    std::vector<float> L(nn);
    std::vector<uint64_t> key(nn);
    std::vector<uint8_t> sel(nn);
    std::vector<uint32_t> scratch(ATTN_SELECT_SCRATCH(nn));
    for (size_t hb = 0; hb < heads; hb++) {
        uint32_t b = (uint32_t)(hb / p.H), h = (uint32_t)(hb % p.H);
        size_t kvh = (size_t)b * p.Hkv + h / G;
        const float *cb = &cnt[(size_t)b * nbk], *cqb = &cntq[(size_t)b * nbq];
        for (uint32_t I = 0; I < nbq; I++)
            for (uint32_t J = 0; J < nbk; J++) {
                float acc = 0;
                for (uint32_t dd = 0; dd < D; dd++)
                    acc += qh[(hb * nbq + I) * D + dd] *
                           kh[(kvh * nbk + J) * D + dd];
                L[(size_t)I * nbk + J] = s * acc;
            }
        for (uint32_t I = 0; I < nbq; I++) {
            uint32_t vis, seen;
            attn_grid_row(&grid, I, &vis, &seen);
            const float *Lr = &L[(size_t)I * nbk];
            /* L[0] raised by every larger logit not hidden; 0 if none */
            float r = seen ? Lr[0] : 0.0f;
            for (uint32_t J = 1; J < seen; J++)
                r = Lr[J] > r ? Lr[J] : r;
            attn_select_keys_row_at(Lr, r, cb, cqb[I], I, (int64_t)I + shift,
                                    vis, nbk, p.prior_first, p.prior_diagonal,
                                    &key[(size_t)I * nbk]);
        }
        attn_select_topk(key.data(), nn, d.budget, sel.data(), scratch.data());
        uint32_t at = 0;
        for (uint32_t I = 0; I < nbq; I++) {
            uint32_t vis, seen;
            attn_grid_row(&grid, I, &vis, &seen);
            d.row_off[hb * (nbq + 1) + I] = at;
            const float *Lr = &L[(size_t)I * nbk];
            const uint8_t *sr = &sel[(size_t)I * nbk];
            auto term = [&](uint32_t J) {
                return J < vis && !sr[J] && cqb[I] > 0 && cb[J] > 0;
            };
            float M = -INFINITY;
            for (uint32_t J = 0; J < nbk; J++) {
                if (sr[J]) {
                    assert_true(J < vis); /* the budget picks visible pairs */
                    d.list[hb * d.budget + at++] = J;
                } else if (term(J)) {
                    M = fmaxf(M, Lr[J] + logf(cb[J]));
                }
            }
            float Z = 0;
            for (uint32_t J = 0; J < nbk; J++) {
                if (!term(J))
                    continue;
                float w = expf(Lr[J] + logf(cb[J]) - M);
                Z += w;
                for (uint32_t dd = 0; dd < D; dd++)
                    d.low_num[(hb * nbq + I) * D + dd] +=
                        w * vh[(kvh * nbk + J) * D + dd];
            }
            d.low_m[hb * nbq + I] = M;
            d.low_z[hb * nbq + I] = Z;
        }
        d.row_off[hb * (nbq + 1) + nbq] = at;
        assert_int_equal(at, d.budget);
    }
}

attend_args args_for(data &d, bool use_list)
{
    const attn_problem &p = d.p;
    attend_args a;
    memset(&a, 0, sizeof a);
    a.q = d.q.data();
    a.kv.k = d.k.data();
    a.kv.v = d.v.data();
    a.kv.mask = p.mask;
    a.qmask = query_mask(p);
    a.out = d.out.data();
    a.B = p.B;
    a.H = p.H;
    a.Hkv = p.Hkv;
    a.Nq = p.Nq;
    a.Nk = p.Nk;
    a.D = p.D;
    a.nbq = attn_num_blocks(p.Nq);
    a.nbk = attn_num_blocks(p.Nk);
    a.scale = attn_scale(&p);
    a.causal = p.causal;
    a.off = (int64_t)p.Nk - (int64_t)p.Nq;
    a.vec_ok = p.D % 8 == 0; /* vectors are 16-byte aligned (malloc) */
    if (use_list) {
        a.list = d.list.data();
        a.row_off = d.row_off.data();
        a.list_stride = d.budget;
        if (p.method == ATTN_MRA2) {
            a.low_m = d.low_m.data();
            a.low_z = d.low_z.data();
            a.low_num = d.low_num.data();
        }
    }
    return a;
}

template <typename T, int DP, int W> void run_dp(data &d, bool use_list)
{
    const attn_problem &p = d.p;
    (void)p;
    attend_args a = args_for(d, use_list);
    attend_group g = attend_one(a);
    mrad_emu::launch((unsigned)attend_blocks(a, 16 * W), W * 32,
                     [&] { k_attend_mma<T, DP, W>(g); });
}

template <typename T, int W> void run(data &d, bool use_list)
{
    switch (pad_dim(d.p.D)) {
    case 32:
        return run_dp<T, 32, W>(d, use_list);
    case 64:
        return run_dp<T, 64, W>(d, use_list);
    case 128:
        return run_dp<T, 128, W>(d, use_list);
    default:
        return run_dp<T, 256, W>(d, use_list);
    }
}

template <int DP> void run_f32_dp(data &d, bool use_list)
{
    attend_args a = args_for(d, use_list);
    attend_group g = attend_one(a);
    mrad_emu::launch((unsigned)attend_blocks(a, 32), 128,
                     [&] { k_attend_f32<DP>(g); });
}

void run_f32(data &d, bool use_list)
{
    switch (pad_dim(d.p.D)) {
    case 32:
        return run_f32_dp<32>(d, use_list);
    case 64:
        return run_f32_dp<64>(d, use_list);
    case 128:
        return run_f32_dp<128>(d, use_list);
    default:
        return run_f32_dp<256>(d, use_list);
    }
}

template <int W> void run_t(data &d, bool use_list)
{
    if (d.p.dtype == ATTN_F32)
        run_f32(d, use_list);
    else if (d.p.dtype == ATTN_F16)
        run<__half, W>(d, use_list);
    else
        run<__nv_bfloat16, W>(d, use_list);
}

double rel_diff(attn_dtype dt, const std::vector<unsigned char> &a,
                const std::vector<unsigned char> &b)
{
    size_t n = a.size() / attn_dtype_size(dt);
    std::vector<float> x(n), y(n);
    attn_to_f32(dt, a.data(), x.data(), n);
    attn_to_f32(dt, b.data(), y.data(), n);
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); i++) {
        num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        den += (double)y[i] * y[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Rows the reference leaves at zero (masked queries, or under causality
 * rows that see no real key) must be exactly zero here too. */
void check_zero_rows(const data &d)
{
    size_t es = attn_dtype_size(d.p.dtype), row = (size_t)d.p.D * es;
    size_t rows = d.ref.size() / row;
    std::vector<unsigned char> zero(row, 0);
    for (size_t r = 0; r < rows; r++) {
        const unsigned char *want = &d.ref[r * row], *got = &d.out[r * row];
        std::vector<float> w(d.p.D);
        attn_to_f32(d.p.dtype, want, w.data(), d.p.D);
        bool all0 = true;
        for (float x : w)
            all0 = all0 && x == 0.0f;
        if (all0) {
            std::vector<float> g(d.p.D);
            attn_to_f32(d.p.dtype, got, g.data(), d.p.D);
            for (float x : g)
                assert_true(x == 0.0f);
        }
    }
}

/* The case's inputs, and the CPU backend's answer in d.ref. */
void init_with_reference(data &d, const tcase &c)
{
    init(d, c);
    attn_config cfg;
    memset(&cfg, 0, sizeof cfg);
    attn_backend *cpu = nullptr;
    assert_int_equal(attn_backend_new("cpu", &cfg, &cpu), ATTN_OK);
    assert_int_equal(attn_backend_compute(cpu, &d.p, nullptr), ATTN_OK);
    attn_backend_free(cpu);
}

void print_case(const char *what, const tcase &c, double err)
{
    printf("%s%-11s %-4s B=%u H=%u Hkv=%u Nq=%u Nk=%u D=%u%s%s%s: rel diff "
           "vs cpu %.2e\n",
           what, attn_method_name(c.method), attn_dtype_name(c.dt), c.B, c.H,
           c.Hkv, c.Nq, c.Nk, c.D, c.masked ? " masked" : "",
           c.qmasked ? " q_mask" : "", c.causal ? " causal" : "", err);
}

void check_case(const tcase &c)
{
    data d;
    init_with_reference(d, c);
    if (c.method == ATTN_EXACT) {
        run_t<8>(d, false);
        std::vector<unsigned char> tall = d.out;
        d.out.assign(d.out.size(), 0xff);
        run_t<2>(d, false); /* the small-shared-memory fallback */
        assert_memory_equal(tall.data(), d.out.data(), tall.size());
    } else {
        plan(d);
        run_t<2>(d, true);
    }
    assert_int_equal(mrad_emu::unwaited_copies.load(), 0);
    double err = rel_diff(c.dt, d.out, d.ref);
    print_case("", c, err);
    assert_true(err < (c.dt == ATTN_F32 ? 1e-4 : 1e-2));
    check_zero_rows(d);
}

void test_mra2(void **state)
{
    (void)state;
    check_case({ATTN_MRA2, ATTN_BF16, 2, 2, 1, 200, 200, 64, 2, 0, 0, true});
    check_case({ATTN_MRA2, ATTN_F16, 1, 2, 2, 150, 150, 40, 3, 1, 3, true});
    check_case({ATTN_MRA2, ATTN_F16, 1, 1, 1, 130, 130, 16, 2, 0, 0, false});
    check_case({ATTN_MRA2, ATTN_BF16, 1, 1, 1, 96, 96, 200, 1, 0, 2, false});
}

void test_mra2_sparse(void **state)
{
    (void)state;
    check_case(
        {ATTN_MRA2_SPARSE, ATTN_BF16, 1, 2, 1, 170, 170, 128, 2, 0, 3, true});
    check_case(
        {ATTN_MRA2_SPARSE, ATTN_F16, 2, 1, 1, 64, 64, 24, 1, 1, 0, false});
}

/* Cross-attention without causality: Nq < Nk, Nq > Nk, Nq = 1, query
 * masks (explicit, and none while the keys are masked). */
void test_cross(void **state)
{
    (void)state;
    check_case({ATTN_MRA2, ATTN_BF16, 2, 2, 1, 70, 230, 64, 2, 0, 0, true});
    check_case({ATTN_MRA2_SPARSE, ATTN_F16, 1, 2, 2, 230, 70, 40, 2, 1, 3, true,
                false, true});
    check_case({ATTN_MRA2, ATTN_F32, 1, 2, 1, 1, 300, 48, 3, 0, 0, true});
    check_case({ATTN_EXACT, ATTN_F16, 1, 2, 1, 1, 300, 64, 0, 0, 0, true});
    check_case({ATTN_EXACT, ATTN_BF16, 2, 1, 1, 200, 45, 72, 0, 0, 0, false,
                false, true});
    check_case({ATTN_EXACT, ATTN_F32, 1, 1, 1, 97, 33, 20, 0, 0, 0, true, false,
                true});
    /* self-attention with a query mask of its own */
    check_case({ATTN_MRA2, ATTN_F16, 1, 1, 1, 160, 160, 64, 2, 0, 0, true,
                false, true});
}

/* Causal attention: offsets 0, a multiple of 32 and not, negative (rows
 * that see nothing), Nq = 1; padding, grouped heads, query masks, priors
 * centred on the shifted diagonal, and a budget past the visible pairs. */
void test_causal(void **state)
{
    (void)state;
    /* exact: every variant; the 128-row block spans partial tiles */
    check_case(
        {ATTN_EXACT, ATTN_F16, 1, 2, 1, 200, 200, 64, 0, 0, 0, true, true});
    check_case(
        {ATTN_EXACT, ATTN_BF16, 1, 1, 1, 64, 192, 40, 0, 0, 0, false, true});
    check_case({ATTN_EXACT, ATTN_F16, 1, 2, 2, 150, 337, 128, 0, 0, 0, true,
                true, true});
    check_case(
        {ATTN_EXACT, ATTN_BF16, 1, 1, 1, 300, 170, 64, 0, 0, 0, true, true});
    check_case(
        {ATTN_EXACT, ATTN_F16, 1, 2, 1, 1, 77, 24, 0, 0, 0, false, true});
    check_case(
        {ATTN_EXACT, ATTN_F32, 2, 2, 1, 130, 130, 48, 0, 0, 0, true, true});
    check_case(
        {ATTN_EXACT, ATTN_F32, 1, 1, 1, 45, 100, 130, 0, 0, 0, false, true});
    /* mra2 and mra2_sparse */
    check_case(
        {ATTN_MRA2, ATTN_BF16, 1, 4, 2, 256, 256, 64, 2, 0, 0, true, true});
    check_case(
        {ATTN_MRA2, ATTN_F16, 1, 2, 1, 100, 324, 64, 2, 1, 3, true, true});
    check_case({ATTN_MRA2_SPARSE, ATTN_BF16, 1, 2, 2, 96, 288, 32, 1, 0, 5,
                false, true});
    check_case({ATTN_MRA2, ATTN_F16, 2, 1, 1, 260, 140, 64, 3, 0, 3, true, true,
                true});
    check_case(
        {ATTN_MRA2, ATTN_BF16, 1, 2, 1, 1, 333, 128, 2, 0, 0, true, true});
    check_case(
        {ATTN_MRA2, ATTN_F32, 1, 2, 1, 190, 250, 48, 2, 1, 3, true, true});
    check_case({ATTN_MRA2_SPARSE, ATTN_F32, 1, 1, 1, 161, 161, 32, 1, 0, 0,
                true, true, true});
    /* no visible pair at all (budget 0): the partial diagonal only */
    check_case(
        {ATTN_MRA2, ATTN_F16, 1, 2, 1, 20, 20, 64, 2, 0, 0, false, true});
    check_case({ATTN_MRA2, ATTN_F32, 1, 1, 1, 40, 30, 32, 2, 0, 0, true, true});
    /* every visible pair selected: mra2 is exact attention */
    check_case({ATTN_MRA2, ATTN_F16, 1, 1, 1, 120, 220, 64, 0, 0, 0, true, true,
                false, 1000});
}

/* mra_plan() + the fused kernel, as backend.cu's run_problem() does it.
 * With nan_key, key 0 of the first KV head is NaN (so are L_I0 and every
 * r_I of the heads that share it): only the selection is compared. */
void check_pipeline(const tcase &c, bool nan_key = false)
{
    data d;
    init(d, c);
    if (nan_key) {
        d.kf[0] = NAN;
        attn_from_f32(c.dt, d.kf.data(), d.k.data(), 1);
    }
    {
        attn_config cfg;
        memset(&cfg, 0, sizeof cfg);
        attn_backend *cpu = nullptr;
        assert_int_equal(attn_backend_new("cpu", &cfg, &cpu), ATTN_OK);
        assert_int_equal(attn_backend_compute(cpu, &d.p, nullptr), ATTN_OK);
        attn_backend_free(cpu);
    }
    plan(d);

    dev_problem dp;
    memset(&dp, 0, sizeof dp);
    dp.method = c.method;
    dp.dtype = c.dt;
    dp.B = c.B;
    dp.H = c.H;
    dp.Hkv = c.Hkv;
    dp.Nq = c.Nq;
    dp.Nk = c.Nk;
    dp.D = c.D;
    dp.nbq = attn_num_blocks(c.Nq);
    dp.nbk = attn_num_blocks(c.Nk);
    dp.q = d.q.data();
    dp.kv.k = d.k.data();
    dp.kv.v = d.v.data();
    dp.kv.mask = d.p.mask;
    dp.qmask = query_mask(d.p);
    dp.out = d.out.data();
    dp.scale = attn_scale(&d.p);
    dp.causal = c.causal;
    dp.off = (int64_t)c.Nk - (int64_t)c.Nq;
    dp.budget = attn_budget(&d.p);
    dp.prior_first = c.pf;
    dp.prior_diagonal = c.pd;
    size_t sz[MRA_NBUF];
    assert_true(mra_work_sizes(dp, sz));
    std::vector<std::vector<uint64_t>> store(MRA_NBUF);
    void *bufs[MRA_NBUF];
    for (int i = 0; i < MRA_NBUF; i++) {
        store[i].assign(sz[i] / 8 + 1, 0x7ff7ff7ff7ff7ff7ull); /* garbage */
        bufs[i] = store[i].data();
    }
    mra_work w;
    mra_work_bind(&w, bufs);
    assert_int_equal(mra_plan(dp, w, nullptr, nullptr), ATTN_OK);

    /* the same selection, in the same order, as the host plan */
    size_t heads = (size_t)c.B * c.H;
    uint32_t nbq = dp.nbq;
    assert_memory_equal(w.row_off, d.row_off.data(),
                        heads * (nbq + 1) * sizeof(uint32_t));
    assert_memory_equal(w.list, d.list.data(),
                        heads * dp.budget * sizeof(uint32_t));
    if (c.method == ATTN_MRA2)
        for (size_t r = 0; r < heads * nbq; r++) {
            if (isnan(d.low_z[r])) {
                assert_true(isnan(w.low_z[r]));
                continue;
            }
            assert_true(fabsf(w.low_z[r] - d.low_z[r]) <=
                        1e-4f * fabsf(d.low_z[r]) + 1e-6f);
            if (d.low_z[r] > 0)
                assert_true(fabsf(w.low_m[r] - d.low_m[r]) <= 1e-4f);
        }
    if (nan_key) {
        printf("pipeline %-11s NaN logits Nq=%u Nk=%u%s: same selection\n",
               attn_method_name(c.method), c.Nq, c.Nk,
               c.causal ? " causal" : "");
        return;
    }

    /* then the kernel on the device plan */
    attend_args a = args_for(d, true);
    a.list = w.list;
    a.row_off = w.row_off;
    if (c.method == ATTN_MRA2) {
        a.low_m = w.low_m;
        a.low_z = w.low_z;
        a.low_num = w.low_num;
    }
    d.list.assign(w.list, w.list + heads * dp.budget);
    d.list.push_back(0);
    attend_group g = attend_one(a);
    if (c.dt == ATTN_F32) {
        switch (pad_dim(c.D)) {
        case 32:
            mrad_emu::launch(nbq * c.B * c.H, 128,
                             [&] { k_attend_f32<32>(g); });
            break;
        default:
            mrad_emu::launch(nbq * c.B * c.H, 128,
                             [&] { k_attend_f32<64>(g); });
        }
    } else {
        mrad_emu::launch(nbq * c.B * c.H, 64,
                         [&] { k_attend_mma<__nv_bfloat16, 64, 2>(g); });
    }
    double err = rel_diff(c.dt, d.out, d.ref);
    print_case("pipeline ", c, err);
    assert_true(err < (c.dt == ATTN_F32 ? 1e-4 : 1e-2));
    check_zero_rows(d);
}

void test_pipeline(void **state)
{
    (void)state;
    /* bf16 pipelines use the D = 64 instantiation; f32 ones D <= 64 */
    check_pipeline(
        {ATTN_MRA2, ATTN_BF16, 2, 2, 1, 230, 230, 64, 2, 0, 0, true});
    check_pipeline(
        {ATTN_MRA2_SPARSE, ATTN_BF16, 1, 2, 2, 300, 300, 50, 3, 1, 3, true});
    check_pipeline(
        {ATTN_MRA2, ATTN_F32, 1, 3, 1, 161, 161, 32, 1, 0, 2, false});
    check_pipeline({ATTN_MRA2, ATTN_F32, 1, 1, 1, 400, 400, 40, 4, 2, 0, true});
    /* several histogram chunks and row-loop rounds (nb = 66) */
    check_pipeline(
        {ATTN_MRA2, ATTN_BF16, 1, 1, 1, 2100, 2100, 64, 3, 1, 5, true});
    /* more block rows than one pass of the row scan (nb = 516) */
    check_pipeline({ATTN_MRA2_SPARSE, ATTN_F32, 1, 1, 1, 16500, 16500, 32, 1, 0,
                    0, false});
}

/* The same on cross and causal grids. */
void test_pipeline_causal(void **state)
{
    (void)state;
    check_pipeline(
        {ATTN_MRA2, ATTN_BF16, 1, 2, 1, 230, 230, 64, 2, 0, 0, true, true});
    check_pipeline({ATTN_MRA2, ATTN_F32, 2, 2, 2, 100, 261, 40, 2, 1, 3, true,
                    true, true});
    check_pipeline({ATTN_MRA2_SPARSE, ATTN_BF16, 1, 1, 1, 300, 120, 64, 2, 0, 3,
                    true, true});
    check_pipeline(
        {ATTN_MRA2, ATTN_BF16, 1, 2, 1, 70, 300, 64, 3, 0, 0, false});
    check_pipeline({ATTN_MRA2_SPARSE, ATTN_F32, 1, 1, 1, 280, 90, 32, 2, 0, 2,
                    true, false, true});
    check_pipeline(
        {ATTN_MRA2, ATTN_F32, 1, 2, 1, 1, 500, 64, 4, 0, 0, true, true});
    check_pipeline(
        {ATTN_MRA2, ATTN_BF16, 1, 2, 1, 20, 20, 64, 2, 0, 0, false, true});
    /* many rows of a long causal grid (nbq = nbk = 80: several histogram
     * chunks, some wholly hidden) */
    check_pipeline(
        {ATTN_MRA2, ATTN_BF16, 1, 1, 1, 2560, 2560, 64, 4, 1, 3, false, true});
    /* NaN logits: r_I is NaN where L_I0 is, as on the CPU */
    check_pipeline({ATTN_MRA2, ATTN_F32, 1, 2, 1, 150, 150, 32, 2, 0, 0, true},
                   true);
    check_pipeline({ATTN_MRA2_SPARSE, ATTN_F32, 1, 1, 1, 100, 200, 32, 3, 0, 0,
                    true, true},
                   true);
}

void test_f32(void **state)
{
    (void)state;
    check_case({ATTN_MRA2, ATTN_F32, 1, 2, 1, 190, 190, 48, 2, 1, 0, true});
    check_case(
        {ATTN_MRA2_SPARSE, ATTN_F32, 1, 1, 1, 100, 100, 130, 2, 0, 3, false});
    check_case({ATTN_EXACT, ATTN_F32, 2, 1, 1, 77, 77, 20, 0, 0, 0, true});
}

void test_exact(void **state)
{
    (void)state;
    check_case({ATTN_EXACT, ATTN_F16, 1, 2, 1, 150, 150, 64, 0, 0, 0, true});
    check_case({ATTN_EXACT, ATTN_BF16, 1, 1, 1, 140, 140, 72, 0, 0, 0, false});
    check_case({ATTN_EXACT, ATTN_F16, 1, 1, 1, 40, 40, 256, 0, 0, 0, true});
}

/* The key tiles of every thread block: exact attention walks exactly the
 * key blocks that hold a key some real row of the block sees (never a
 * hidden one), MRA its list and then the partial blocks of its row. */
void test_tile_walk(void **state)
{
    (void)state;
    const uint32_t shapes[][2] = {{1, 1},     {1, 300},   {31, 33},
                                  {64, 192},  {100, 324}, {200, 200},
                                  {300, 170}, {129, 1},   {1000, 1031}};
    for (const auto &sh : shapes)
        for (int causal = 0; causal < 2; causal++) {
            attn_problem p;
            memset(&p, 0, sizeof p);
            p.Nq = sh[0];
            p.Nk = sh[1];
            p.causal = causal;
            attn_grid grid;
            attn_grid_init(&grid, &p);
            attend_args a;
            memset(&a, 0, sizeof a);
            a.Nq = p.Nq;
            a.Nk = p.Nk;
            a.nbq = grid.nbq;
            a.nbk = grid.nbk;
            a.causal = causal;
            a.off = grid.off;
            a.H = a.Hkv = a.B = 1;
            /* exact, 128-row and 32-row blocks */
            for (uint32_t R : {128u, 32u})
                for (uint32_t row0 = 0; row0 < p.Nq; row0 += R) {
                    tile_walk w = attend_tiles(a, 0, row0, R);
                    uint32_t last = row0 + R < p.Nq ? row0 + R - 1 : p.Nq - 1;
                    uint32_t want = grid.nbk;
                    if (causal) {
                        int64_t pos = (int64_t)last + grid.off;
                        want = pos < 0 ? 0 : (uint32_t)(pos / 32 + 1);
                        want = want < grid.nbk ? want : grid.nbk;
                    }
                    assert_int_equal(w.n, want);
                    for (uint32_t it = 0; it < w.n; it++)
                        assert_int_equal(w.at(it), it);
                }
            /* MRA: a made-up list of the visible blocks of even index */
            std::vector<uint32_t> row_off(grid.nbq + 1), list;
            for (uint32_t I = 0; I < grid.nbq; I++) {
                uint32_t vis, seen;
                attn_grid_row(&grid, I, &vis, &seen);
                row_off[I] = (uint32_t)list.size();
                for (uint32_t J = 0; J < vis; J += 2)
                    list.push_back(J);
            }
            row_off[grid.nbq] = (uint32_t)list.size();
            list.push_back(0);
            a.list = list.data();
            a.row_off = row_off.data();
            a.list_stride = list.size();
            for (uint32_t I = 0; I < grid.nbq; I++) {
                uint32_t vis, seen;
                attn_grid_row(&grid, I, &vis, &seen);
                tile_walk w = attend_tiles(a, 0, I * 32, 32);
                uint32_t n0 = row_off[I + 1] - row_off[I];
                assert_int_equal(w.n, n0 + (seen - vis));
                for (uint32_t it = 0; it < w.n; it++)
                    assert_int_equal(w.at(it), it < n0 ? list[row_off[I] + it]
                                                       : vis + (it - n0));
            }
        }
}

} // namespace

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tile_walk),
        cmocka_unit_test(test_exact),
        cmocka_unit_test(test_mra2),
        cmocka_unit_test(test_mra2_sparse),
        cmocka_unit_test(test_f32),
        cmocka_unit_test(test_cross),
        cmocka_unit_test(test_causal),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_pipeline_causal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
