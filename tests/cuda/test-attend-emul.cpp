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
 * loads), masks, grouped heads and odd N; and the 32-row and 128-row
 * variants of exact attention must agree bit for bit.  It needs no GPU; it
 * does not check timing, cp.async ordering or anything of the real
 * hardware beyond the documented semantics.
 *
 * The last group runs the whole device path of an MRA problem: plan.cu's
 * mra_plan() (counts, means, logits through an emulated
 * cublasSgemmStridedBatched with cuBLAS's column-major definition, the
 * radix select, the row scan and the CSR lists, the low-resolution
 * weights) and then the fused kernel.  Its lists must equal the host
 * plan's exactly and its output must match the CPU backend.
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
    uint32_t B, H, Hkv, N, D, bpr, pf, pd;
    bool masked;
};

struct data {
    attn_problem p;
    std::vector<unsigned char> q, k, v, out, ref; /* raw dtype bytes */
    std::vector<uint8_t> mask;
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

void init(data &d, const tcase &c)
{
    size_t nq = (size_t)c.B * c.H * c.N * c.D;
    size_t nk = (size_t)c.B * c.Hkv * c.N * c.D;
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
        d.mask.resize((size_t)c.B * c.N);
        for (size_t i = 0; i < d.mask.size(); i++)
            d.mask[i] = (i % 5 != 2) && (i % c.N) < c.N - 3;
        d.p.mask = d.mask.data();
    }
    d.p.method = c.method;
    d.p.dtype = c.dt;
    d.p.B = c.B;
    d.p.H = c.H;
    d.p.Hkv = c.Hkv;
    d.p.N = c.N;
    d.p.D = c.D;
    d.p.q = d.q.data();
    d.p.k = d.k.data();
    d.p.v = d.v.data();
    d.p.out = d.ref.data();
    d.p.block_per_row = c.bpr;
    d.p.prior_first = c.pf;
    d.p.prior_diagonal = c.pd;
}

/* What plan.cu computes, on the host: means, logits, the selection of the
 * library, CSR lists, and the low-resolution state of every block row. */
void plan(data &d)
{
    const attn_problem &p = d.p;
    uint32_t nb = attn_num_blocks(p.N), D = p.D, G = p.H / p.Hkv;
    float s = attn_scale(&p);
    size_t heads = (size_t)p.B * p.H;
    d.budget = attn_budget(&p);
    auto real = [&](uint32_t b, uint32_t j) {
        return j < p.N && (!p.mask || p.mask[(size_t)b * p.N + j]);
    };
    std::vector<float> cnt((size_t)p.B * nb);
    for (uint32_t b = 0; b < p.B; b++)
        for (uint32_t J = 0; J < nb; J++)
            for (uint32_t t = 0; t < 32; t++)
                cnt[(size_t)b * nb + J] += real(b, J * 32 + t);
    auto means = [&](const std::vector<float> &x, uint32_t Hx) {
        std::vector<float> m((size_t)p.B * Hx * nb * D, 0.0f);
        for (size_t hb = 0; hb < (size_t)p.B * Hx; hb++) {
            uint32_t b = (uint32_t)(hb / Hx);
            for (uint32_t I = 0; I < nb; I++) {
                float c = cnt[(size_t)b * nb + I];
                for (uint32_t dd = 0; dd < D; dd++) {
                    float acc = 0;
                    for (uint32_t t = 0; t < 32; t++)
                        if (real(b, I * 32 + t))
                            acc += x[(hb * p.N + I * 32 + t) * D + dd];
                    m[(hb * nb + I) * D + dd] = c > 0 ? acc / c : 0.0f;
                }
            }
        }
        return m;
    };
    std::vector<float> qh = means(d.qf, p.H), kh = means(d.kf, p.Hkv),
                       vh = means(d.vf, p.Hkv);
    d.row_off.assign(heads * (nb + 1), 0);
    d.list.assign(heads * d.budget, 0);
    d.low_m.assign(heads * nb, 0);
    d.low_z.assign(heads * nb, 0);
    d.low_num.assign(heads * nb * D, 0);
    std::vector<float> L((size_t)nb * nb);
    std::vector<uint64_t> key((size_t)nb * nb);
    std::vector<uint8_t> sel((size_t)nb * nb);
    std::vector<uint32_t> scratch(ATTN_SELECT_SCRATCH((size_t)nb * nb));
    for (size_t hb = 0; hb < heads; hb++) {
        uint32_t b = (uint32_t)(hb / p.H), h = (uint32_t)(hb % p.H);
        size_t kvh = (size_t)b * p.Hkv + h / G;
        const float *cb = &cnt[(size_t)b * nb];
        for (uint32_t I = 0; I < nb; I++)
            for (uint32_t J = 0; J < nb; J++) {
                float acc = 0;
                for (uint32_t dd = 0; dd < D; dd++)
                    acc += qh[(hb * nb + I) * D + dd] *
                           kh[(kvh * nb + J) * D + dd];
                L[(size_t)I * nb + J] = s * acc;
            }
        for (uint32_t I = 0; I < nb; I++) {
            float r = -INFINITY;
            for (uint32_t J = 0; J < nb; J++)
                r = fmaxf(r, L[(size_t)I * nb + J]);
            attn_select_keys_row(&L[(size_t)I * nb], r, cb, cb[I], I, nb,
                                 p.prior_first, p.prior_diagonal,
                                 &key[(size_t)I * nb]);
        }
        attn_select_topk(key.data(), key.size(), d.budget, sel.data(),
                         scratch.data());
        uint32_t at = 0;
        for (uint32_t I = 0; I < nb; I++) {
            d.row_off[hb * (nb + 1) + I] = at;
            float M = -INFINITY;
            for (uint32_t J = 0; J < nb; J++) {
                if (sel[(size_t)I * nb + J])
                    d.list[hb * d.budget + at++] = J;
                else if (cb[I] > 0 && cb[J] > 0)
                    M = fmaxf(M, L[(size_t)I * nb + J] + logf(cb[J]));
            }
            float Z = 0;
            for (uint32_t J = 0; J < nb; J++) {
                if (sel[(size_t)I * nb + J] || !(cb[I] > 0 && cb[J] > 0))
                    continue;
                float w = expf(L[(size_t)I * nb + J] + logf(cb[J]) - M);
                Z += w;
                for (uint32_t dd = 0; dd < D; dd++)
                    d.low_num[(hb * nb + I) * D + dd] +=
                        w * vh[(kvh * nb + J) * D + dd];
            }
            d.low_m[hb * nb + I] = M;
            d.low_z[hb * nb + I] = Z;
        }
        d.row_off[hb * (nb + 1) + nb] = at;
    }
}

attend_args args_for(data &d, bool use_list)
{
    const attn_problem &p = d.p;
    attend_args a;
    memset(&a, 0, sizeof a);
    a.q = d.q.data();
    a.k = d.k.data();
    a.v = d.v.data();
    a.mask = p.mask;
    a.out = d.out.data();
    a.B = p.B;
    a.H = p.H;
    a.Hkv = p.Hkv;
    a.N = p.N;
    a.D = p.D;
    a.nb = attn_num_blocks(p.N);
    a.scale = attn_scale(&p);
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
    attend_args a = args_for(d, use_list);
    uint32_t R = 16 * W;
    uint32_t qtiles = W == 2 ? a.nb : (p.N + R - 1) / R;
    mrad_emu::launch(qtiles * p.B * p.H, W * 32,
                     [&] { k_attend_mma<T, DP, W>(a, qtiles); });
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
    mrad_emu::launch(a.nb * d.p.B * d.p.H, 128,
                     [&] { k_attend_f32<DP>(a, a.nb); });
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
    printf("%-11s %-4s B=%u H=%u Hkv=%u N=%u D=%u%s: rel diff vs cpu %.2e\n",
           attn_method_name(c.method), attn_dtype_name(c.dt), c.B, c.H, c.Hkv,
           c.N, c.D, c.masked ? " masked" : "", err);
    assert_true(err < (c.dt == ATTN_F32 ? 1e-4 : 1e-2));
}

void test_mra2(void **state)
{
    (void)state;
    check_case({ATTN_MRA2, ATTN_BF16, 2, 2, 1, 200, 64, 2, 0, 0, true});
    check_case({ATTN_MRA2, ATTN_F16, 1, 2, 2, 150, 40, 3, 1, 3, true});
    check_case({ATTN_MRA2, ATTN_F16, 1, 1, 1, 130, 16, 2, 0, 0, false});
    check_case({ATTN_MRA2, ATTN_BF16, 1, 1, 1, 96, 200, 1, 0, 2, false});
}

void test_mra2_sparse(void **state)
{
    (void)state;
    check_case({ATTN_MRA2_SPARSE, ATTN_BF16, 1, 2, 1, 170, 128, 2, 0, 3, true});
    check_case({ATTN_MRA2_SPARSE, ATTN_F16, 2, 1, 1, 64, 24, 1, 1, 0, false});
}

/* mra_plan() + the fused kernel, as backend.cu's run_problem() does it. */
void check_pipeline(const tcase &c)
{
    data d;
    init_with_reference(d, c);
    plan(d);

    dev_problem dp;
    memset(&dp, 0, sizeof dp);
    dp.method = c.method;
    dp.dtype = c.dt;
    dp.B = c.B;
    dp.H = c.H;
    dp.Hkv = c.Hkv;
    dp.N = c.N;
    dp.D = c.D;
    dp.nb = attn_num_blocks(c.N);
    dp.q = d.q.data();
    dp.k = d.k.data();
    dp.v = d.v.data();
    dp.mask = d.p.mask;
    dp.out = d.out.data();
    dp.scale = attn_scale(&d.p);
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
    uint32_t nb = dp.nb;
    assert_memory_equal(w.row_off, d.row_off.data(),
                        heads * (nb + 1) * sizeof(uint32_t));
    assert_memory_equal(w.list, d.list.data(),
                        heads * dp.budget * sizeof(uint32_t));
    if (c.method == ATTN_MRA2)
        for (size_t r = 0; r < heads * nb; r++) {
            assert_true(fabsf(w.low_z[r] - d.low_z[r]) <=
                        1e-4f * fabsf(d.low_z[r]) + 1e-6f);
            if (d.low_z[r] > 0)
                assert_true(fabsf(w.low_m[r] - d.low_m[r]) <= 1e-4f);
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
    if (c.dt == ATTN_F32) {
        switch (pad_dim(c.D)) {
        case 32:
            mrad_emu::launch(nb * c.B * c.H, 128,
                             [&] { k_attend_f32<32>(a, nb); });
            break;
        default:
            mrad_emu::launch(nb * c.B * c.H, 128,
                             [&] { k_attend_f32<64>(a, nb); });
        }
    } else {
        mrad_emu::launch(nb * c.B * c.H, 64,
                         [&] { k_attend_mma<__nv_bfloat16, 64, 2>(a, nb); });
    }
    double err = rel_diff(c.dt, d.out, d.ref);
    printf("pipeline %-11s %-4s B=%u H=%u Hkv=%u N=%u D=%u: rel diff vs cpu "
           "%.2e\n",
           attn_method_name(c.method), attn_dtype_name(c.dt), c.B, c.H, c.Hkv,
           c.N, c.D, err);
    assert_true(err < (c.dt == ATTN_F32 ? 1e-4 : 1e-2));
}

void test_pipeline(void **state)
{
    (void)state;
    /* bf16 pipelines use the D = 64 instantiation; f32 ones D <= 64 */
    check_pipeline({ATTN_MRA2, ATTN_BF16, 2, 2, 1, 230, 64, 2, 0, 0, true});
    check_pipeline(
        {ATTN_MRA2_SPARSE, ATTN_BF16, 1, 2, 2, 300, 50, 3, 1, 3, true});
    check_pipeline({ATTN_MRA2, ATTN_F32, 1, 3, 1, 161, 32, 1, 0, 2, false});
    check_pipeline({ATTN_MRA2, ATTN_F32, 1, 1, 1, 400, 40, 4, 2, 0, true});
    /* several histogram chunks and row-loop rounds (nb = 66) */
    check_pipeline({ATTN_MRA2, ATTN_BF16, 1, 1, 1, 2100, 64, 3, 1, 5, true});
    /* more block rows than one pass of the row scan (nb = 516) */
    check_pipeline(
        {ATTN_MRA2_SPARSE, ATTN_F32, 1, 1, 1, 16500, 32, 1, 0, 0, false});
}

void test_f32(void **state)
{
    (void)state;
    check_case({ATTN_MRA2, ATTN_F32, 1, 2, 1, 190, 48, 2, 1, 0, true});
    check_case({ATTN_MRA2_SPARSE, ATTN_F32, 1, 1, 1, 100, 130, 2, 0, 3, false});
    check_case({ATTN_EXACT, ATTN_F32, 2, 1, 1, 77, 20, 0, 0, 0, true});
}

void test_exact(void **state)
{
    (void)state;
    check_case({ATTN_EXACT, ATTN_F16, 1, 2, 1, 150, 64, 0, 0, 0, true});
    check_case({ATTN_EXACT, ATTN_BF16, 1, 1, 1, 140, 72, 0, 0, 0, false});
    check_case({ATTN_EXACT, ATTN_F16, 1, 1, 1, 40, 256, 0, 0, 0, true});
}

} // namespace

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact),       cmocka_unit_test(test_mra2),
        cmocka_unit_test(test_mra2_sparse), cmocka_unit_test(test_f32),
        cmocka_unit_test(test_pipeline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
