/*
 * test-select-emul.cpp - the GPU block selection, replayed on the host.
 *
 * plan.cu selects the top-k blocks of a head with a radix select over
 * order-preserving 64-bit keys and resolves ties by a prefix count in flat
 * order.  This test runs the very functions the kernels call
 * (attention/select-rule.h for the keys, attention/cuda/select-rule.cuh
 * for the rest) in the order the kernels call them (8 histogram passes,
 * per-row counts, the row scan, the row write) and checks that the chosen
 * set is the one attn_select_topk() - the CPU backend's selection -
 * chooses, on grids full of exact ties, empty blocks, priors, extreme
 * budgets and NaN.  It needs no GPU.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

extern "C" {
#include <cmocka.h>

#include "attention/internal.h"
}
#include "attention/cuda/select-rule.cuh"

using namespace mrad_cuda;

static uint64_t rng = 88172645463325252ull;

static uint32_t next_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

/* One head's grid: logits, block counts, priors and budget. */
struct grid {
    uint32_t nb, pf, pd;
    uint64_t k;
    std::vector<float> L, cnt, r;
};

/* The selection as plan.cu computes it, step by step. */
static std::vector<uint8_t> gpu_select(const grid &g)
{
    uint32_t nb = g.nb;
    auto key = [&](uint32_t I, uint32_t J) {
        return attn_select_pair_key(g.L[(size_t)I * nb + J], g.r[I],
                                    g.cnt[I] == 0.0f || g.cnt[J] == 0.0f, I, J,
                                    g.pf, g.pd);
    };
    /* k_radix_init, then 8 x (k_hist, k_radix_step) */
    uint64_t prefix = g.k ? 0 : ~0ull, rem = g.k;
    if (g.k > 0) {
        for (int shift = 56; shift >= 0; shift -= 8) {
            uint32_t hist[256] = {0};
            for (uint32_t I = 0; I < nb; I++)
                for (uint32_t J = 0; J < nb; J++) {
                    uint64_t k = key(I, J);
                    if (radix_in_prefix(k, prefix, shift))
                        hist[(k >> shift) & 255]++;
                }
            radix_pick(hist, shift, &prefix, &rem);
        }
    }
    uint64_t T = prefix, need = rem;
    /* k_rowcount */
    std::vector<uint32_t> gt(nb), eq(nb), before(nb), off(nb + 1);
    for (uint32_t I = 0; I < nb; I++)
        for (uint32_t J = 0; J < nb; J++) {
            uint64_t k = key(I, J);
            gt[I] += k > T;
            eq[I] += k == T;
        }
    /* k_rowscan */
    uint64_t ce = 0, cs = 0;
    for (uint32_t I = 0; I < nb; I++) {
        before[I] = (uint32_t)ce;
        off[I] = (uint32_t)cs;
        cs += gt[I] + row_take(need, ce, eq[I]);
        ce += eq[I];
    }
    off[nb] = (uint32_t)cs;
    assert_int_equal(cs, g.k < (uint64_t)nb * nb ? g.k : (uint64_t)nb * nb);
    /* k_rowwrite: lists ascending within [off[I], off[I+1]) */
    std::vector<uint8_t> sel((size_t)nb * nb, 0);
    for (uint32_t I = 0; I < nb; I++) {
        uint64_t neq = 0;
        uint32_t n = 0;
        for (uint32_t J = 0; J < nb; J++) {
            uint64_t k = key(I, J);
            bool s = is_selected(k, T, need, (uint64_t)before[I] + neq);
            neq += k == T;
            if (s) {
                sel[(size_t)I * nb + J] = 1;
                n++;
            }
        }
        assert_int_equal(n, off[I + 1] - off[I]);
    }
    return sel;
}

/* The CPU backend's selection of the same grid. */
static std::vector<uint8_t> cpu_select(const grid &g)
{
    uint32_t nb = g.nb;
    size_t n = (size_t)nb * nb;
    std::vector<uint64_t> key(n);
    for (uint32_t I = 0; I < nb; I++)
        attn_select_keys_row(&g.L[(size_t)I * nb], g.r[I], g.cnt.data(),
                             g.cnt[I], I, nb, g.pf, g.pd, &key[(size_t)I * nb]);
    std::vector<uint8_t> sel(n);
    std::vector<uint32_t> scratch(ATTN_SELECT_SCRATCH(n));
    attn_select_topk(key.data(), n, g.k, sel.data(), scratch.data());
    return sel;
}

/* levels: how many distinct logit values (few = many exact ties). */
static grid make_grid(uint32_t nb, uint32_t levels, int empties, uint32_t pf,
                      uint32_t pd, uint64_t k)
{
    grid g;
    g.nb = nb;
    g.pf = pf;
    g.pd = pd;
    g.k = k;
    g.L.resize((size_t)nb * nb);
    g.cnt.resize(nb);
    g.r.resize(nb);
    for (uint32_t J = 0; J < nb; J++)
        g.cnt[J] = (empties && next_u32() % 4 == 0)
                       ? 0.0f
                       : (float)(1 + next_u32() % 32);
    for (uint32_t I = 0; I < nb; I++) {
        float m = -INFINITY;
        for (uint32_t J = 0; J < nb; J++) {
            float x =
                levels
                    ? (float)(next_u32() % levels) * 0.25f - 1.0f
                    : (float)(next_u32() * (1.0 / 4294967296.0)) * 8.0f - 4.0f;
            if (g.cnt[I] == 0.0f || g.cnt[J] == 0.0f)
                x = 0.0f; /* empty means give zero logits */
            g.L[(size_t)I * nb + J] = x;
            m = fmaxf(m, x);
        }
        g.r[I] = m;
    }
    return g;
}

static void check(const grid &g)
{
    std::vector<uint8_t> a = gpu_select(g), b = cpu_select(g);
    size_t diff = 0;
    for (size_t i = 0; i < a.size(); i++)
        diff += a[i] != b[i];
    if (diff)
        printf("nb=%u k=%llu pf=%u pd=%u: %zu pairs differ\n", g.nb,
               (unsigned long long)g.k, g.pf, g.pd, diff);
    assert_int_equal(diff, 0);
}

static void test_random_grids(void **state)
{
    (void)state;
    const uint32_t nbs[] = {1, 2, 3, 7, 32, 45};
    for (uint32_t nb : nbs) {
        uint64_t all = (uint64_t)nb * nb;
        const uint64_t ks[] = {0, 1, nb, 4ull * nb, all - 1, all, all + 5};
        for (uint64_t k : ks) {
            if (k > all + 5 || (k == 0 && nb == 0))
                continue;
            uint64_t kk = k < all ? k : all; /* attn_budget caps */
            check(make_grid(nb, 0, 0, 0, 0, kk));
            check(make_grid(nb, 0, 1, 0, 0, kk));
            check(make_grid(nb, 3, 1, 0, 0, kk));
            check(make_grid(nb, 2, 1, 1, 3, kk));
            check(make_grid(nb, 0, 1, 2, 0, kk));
            check(make_grid(nb, 1, 0, 0, 2, kk));
        }
    }
}

/* Keys order like the scores: check attn_select_pair_key against plain
 * comparisons, including signed zeros, infinities and NaN (below
 * everything). */
static void test_key_order(void **state)
{
    (void)state;
    const float vals[] = {-INFINITY, -1e30f, -3.5f, -1e-30f,  -0.0f, 0.0f,
                          1e-30f,    2.0f,   1e30f, INFINITY, NAN};
    size_t n = sizeof vals / sizeof vals[0];
    for (size_t a = 0; a < n; a++)
        for (size_t b = 0; b < n; b++) {
            uint64_t ka = attn_select_pair_key(vals[a], 0.0f, 0, 5, 9, 0, 0);
            uint64_t kb = attn_select_pair_key(vals[b], 0.0f, 0, 5, 9, 0, 0);
            double x = (double)vals[a], y = (double)vals[b];
            if (isnan(x) || isnan(y)) {
                if (isnan(x) && !isnan(y))
                    assert_true(ka < kb);
                if (!isnan(x) && isnan(y))
                    assert_true(ka > kb);
                continue;
            }
            assert_int_equal(ka < kb, x < y);
            assert_int_equal(ka == kb, x == y);
        }
    /* the key of attn_select_score(), mapped here with branches */
    for (int i = 0; i < 1000; i++) {
        float L = (float)(next_u32() % 1000) * 0.01f - 5.0f, r = 3.0f;
        uint32_t I = next_u32() % 20, J = next_u32() % 20;
        int empty = next_u32() % 3 == 0;
        double s = attn_select_score(L, r, empty, I, J, 3, 4);
        uint64_t k = attn_select_pair_key(L, r, empty, I, J, 3, 4);
        uint64_t u;
        if (s == 0.0)
            s = 0.0;
        memcpy(&u, &s, sizeof u);
        assert_int_equal(k, (u >> 63) ? ~u : (u | 0x8000000000000000ull));
    }
}

static void test_nan_grid(void **state)
{
    (void)state;
    grid g = make_grid(6, 4, 0, 0, 0, 20);
    g.L[7] = NAN;
    g.L[20] = NAN;
    check(g);
    g.k = 35;
    check(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_order),
        cmocka_unit_test(test_random_grids),
        cmocka_unit_test(test_nan_grid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
