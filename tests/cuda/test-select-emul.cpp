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
 * budgets and NaN; on cross-attention grids (nbq != nbk, the diagonal band
 * shifted by the offset) and causal ones, where the kernels never look at
 * the pairs past vis(I).  It also checks the causal grid arithmetic that
 * the kernels and the library share (attention/select-rule.h) against its
 * key-by-key definition.  It needs no GPU.
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

/* One head's grid: nbq x nbk logits, block counts of keys and queries,
 * each row's maximum, the causal shape, priors and budget. */
struct grid {
    uint32_t nbq, nbk, pf, pd;
    int causal;
    int64_t off; /* Nk - Nq */
    uint64_t k;
    std::vector<float> L, cnt, cntq, r;
};

/* vis(I) and the centre of the diagonal band of row I, as plan.cu's
 * kernels compute them. */
static uint32_t row_vis(const grid &g, uint32_t I)
{
    uint32_t vis, seen;
    attn_grid_row_inline(I, g.off, g.causal, g.nbk, &vis, &seen);
    return vis;
}

/* The selection as plan.cu computes it, step by step; the kernels visit
 * only the pairs J < vis(I). */
static std::vector<uint8_t> gpu_select(const grid &g)
{
    uint32_t nbq = g.nbq, nbk = g.nbk;
    int64_t shift = attn_grid_diag_shift_inline(g.off);
    auto key = [&](uint32_t I, uint32_t J) {
        return pair_key_at(g.L[(size_t)I * nbk + J], g.r[I],
                           g.cntq[I] == 0.0f || g.cnt[J] == 0.0f, I,
                           (int64_t)I + shift, J, g.pf, g.pd);
    };
    /* k_radix_init, then 8 x (k_hist, k_radix_step) */
    uint64_t prefix = g.k ? 0 : ~0ull, rem = g.k;
    if (g.k > 0) {
        for (int shift8 = 56; shift8 >= 0; shift8 -= 8) {
            uint32_t hist[256] = {0};
            for (uint32_t I = 0; I < nbq; I++)
                for (uint32_t J = 0; J < row_vis(g, I); J++) {
                    uint64_t k = key(I, J);
                    if (radix_in_prefix(k, prefix, shift8))
                        hist[(k >> shift8) & 255]++;
                }
            radix_pick(hist, shift8, &prefix, &rem);
        }
    }
    uint64_t T = prefix, need = rem;
    /* k_rowcount */
    std::vector<uint32_t> gt(nbq), eq(nbq), before(nbq), off(nbq + 1);
    for (uint32_t I = 0; I < nbq; I++)
        for (uint32_t J = 0; J < row_vis(g, I); J++) {
            uint64_t k = key(I, J);
            gt[I] += k > T;
            eq[I] += k == T;
        }
    /* k_rowscan */
    uint64_t ce = 0, cs = 0;
    for (uint32_t I = 0; I < nbq; I++) {
        before[I] = (uint32_t)ce;
        off[I] = (uint32_t)cs;
        cs += gt[I] + row_take(need, ce, eq[I]);
        ce += eq[I];
    }
    off[nbq] = (uint32_t)cs;
    assert_int_equal(cs, g.k);
    /* k_rowwrite: lists ascending within [off[I], off[I+1]) */
    std::vector<uint8_t> sel((size_t)nbq * nbk, 0);
    for (uint32_t I = 0; I < nbq; I++) {
        uint64_t neq = 0;
        uint32_t n = 0;
        for (uint32_t J = 0; J < row_vis(g, I); J++) {
            uint64_t k = key(I, J);
            bool s = is_selected(k, T, need, (uint64_t)before[I] + neq);
            neq += k == T;
            if (s) {
                sel[(size_t)I * nbk + J] = 1;
                n++;
            }
        }
        assert_int_equal(n, off[I + 1] - off[I]);
    }
    return sel;
}

/* The CPU backend's selection of the same grid (attention/cpu/head.c:
 * every pair's key, NONE past vis(I), then the top k). */
static std::vector<uint8_t> cpu_select(const grid &g)
{
    attn_grid ag;
    memset(&ag, 0, sizeof ag);
    ag.nbq = g.nbq;
    ag.nbk = g.nbk;
    ag.off = g.off;
    ag.causal = g.causal;
    int64_t shift = attn_grid_diag_shift(&ag);
    size_t n = (size_t)g.nbq * g.nbk;
    std::vector<uint64_t> key(n);
    for (uint32_t I = 0; I < g.nbq; I++) {
        uint32_t vis, seen;
        attn_grid_row(&ag, I, &vis, &seen);
        attn_select_keys_row_at(&g.L[(size_t)I * g.nbk], g.r[I], g.cnt.data(),
                                g.cntq[I], I, (int64_t)I + shift, vis, g.nbk,
                                g.pf, g.pd, &key[(size_t)I * g.nbk]);
    }
    std::vector<uint8_t> sel(n);
    std::vector<uint32_t> scratch(ATTN_SELECT_SCRATCH(n));
    attn_select_topk(key.data(), n, g.k, sel.data(), scratch.data());
    return sel;
}

/* levels: how many distinct logit values (few = many exact ties).  A
 * square grid unless nbk is given; k is capped at the visible pairs, as
 * attn_budget() does. */
static grid make_grid(uint32_t nb, uint32_t levels, int empties, uint32_t pf,
                      uint32_t pd, uint64_t k, uint32_t nbk = 0,
                      int64_t off = 0, int causal = 0)
{
    grid g;
    g.nbq = nb;
    g.nbk = nbk ? nbk : nb;
    g.pf = pf;
    g.pd = pd;
    g.causal = causal;
    g.off = off;
    g.L.resize((size_t)g.nbq * g.nbk);
    g.cnt.resize(g.nbk);
    g.cntq.resize(g.nbq);
    g.r.resize(g.nbq);
    for (uint32_t J = 0; J < g.nbk; J++)
        g.cnt[J] = (empties && next_u32() % 4 == 0)
                       ? 0.0f
                       : (float)(1 + next_u32() % 32);
    for (uint32_t I = 0; I < g.nbq; I++)
        g.cntq[I] = (empties && next_u32() % 5 == 0)
                        ? 0.0f
                        : (float)(1 + next_u32() % 32);
    uint64_t visible = 0;
    for (uint32_t I = 0; I < g.nbq; I++) {
        uint32_t vis, seen;
        attn_grid_row_inline(I, off, causal, g.nbk, &vis, &seen);
        visible += vis;
        float m = -INFINITY;
        for (uint32_t J = 0; J < g.nbk; J++) {
            float x =
                levels
                    ? (float)(next_u32() % levels) * 0.25f - 1.0f
                    : (float)(next_u32() * (1.0 / 4294967296.0)) * 8.0f - 4.0f;
            if (g.cntq[I] == 0.0f || g.cnt[J] == 0.0f)
                x = 0.0f; /* empty means give zero logits */
            g.L[(size_t)I * g.nbk + J] = x;
            if (J < seen)
                m = fmaxf(m, x);
        }
        g.r[I] = seen ? m : 0.0f;
    }
    g.k = k < visible ? k : visible;
    return g;
}

static void check(const grid &g)
{
    std::vector<uint8_t> a = gpu_select(g), b = cpu_select(g);
    size_t diff = 0;
    for (size_t i = 0; i < a.size(); i++)
        diff += a[i] != b[i];
    if (diff)
        printf("nbq=%u nbk=%u off=%lld causal=%d k=%llu pf=%u pd=%u: %zu "
               "pairs differ\n",
               g.nbq, g.nbk, (long long)g.off, g.causal,
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
            check(make_grid(nb, 0, 0, 0, 0, k));
            check(make_grid(nb, 0, 1, 0, 0, k));
            check(make_grid(nb, 3, 1, 0, 0, k));
            check(make_grid(nb, 2, 1, 1, 3, k));
            check(make_grid(nb, 0, 1, 2, 0, k));
            check(make_grid(nb, 1, 0, 0, 2, k));
        }
    }
}

/* Cross-attention and causal grids: query and key block counts apart,
 * offsets Nk - Nq that are and are not multiples of 32, negative ones,
 * the diagonal band centred on the shifted diagonal, every budget from 0
 * past the visible pairs. */
static void test_causal_grids(void **state)
{
    (void)state;
    const struct {
        uint32_t Nq, Nk;
    } shapes[] = {{1, 1},       {1, 500},   {32, 32},   {100, 100},
                  {200, 1000},  {300, 90},  {64, 192},  {97, 161},
                  {1000, 1100}, {700, 700}, {40, 1400}, {1, 33}};
    for (const auto &sh : shapes)
        for (int causal = 0; causal < 2; causal++) {
            uint32_t nbq = attn_num_blocks(sh.Nq), nbk = attn_num_blocks(sh.Nk);
            int64_t off = (int64_t)sh.Nk - (int64_t)sh.Nq;
            uint64_t all = (uint64_t)nbq * nbk;
            const uint64_t ks[] = {0, 1, nbq, 3ull * nbq, all / 2, all};
            for (uint64_t k : ks) {
                check(make_grid(nbq, 0, 1, 0, 0, k, nbk, off, causal));
                check(make_grid(nbq, 3, 1, 0, 3, k, nbk, off, causal));
                check(make_grid(nbq, 2, 0, 1, 5, k, nbk, off, causal));
                check(make_grid(nbq, 1, 1, 2, 2, k, nbk, off, causal));
            }
        }
}

/* The grid arithmetic the kernels and the library share
 * (attn_grid_row_inline, attn_grid_diag_shift_inline of
 * attention/select-rule.h) against its definition, key by key: key block
 * J of block row I is visible when every query row of I sees every key
 * of J (key j seen by query i when j <= i + off, on the padded grid),
 * partial when some are seen, hidden when none; the diagonal of row I is
 * the key block holding position 32 I + off.  Then the library's
 * attn_grid_row() and key_blocks_upto() (the tiles of exact attention)
 * against the same. */
static void brute_row(uint32_t I, int64_t off, uint32_t nbk, uint32_t *vis,
                      uint32_t *seen)
{
    *vis = *seen = 0;
    for (uint32_t J = 0; J < nbk; J++) {
        int64_t first_row = (int64_t)I * 32 + off, last_row = first_row + 31;
        int64_t first_key = (int64_t)J * 32, last_key = first_key + 31;
        if (last_key <= first_row)
            *vis = J + 1;
        if (first_key <= last_row)
            *seen = J + 1;
    }
}

static int64_t brute_floor32(int64_t a)
{
    int64_t q = 0;
    while (q * 32 > a)
        q--;
    while ((q + 1) * 32 <= a)
        q++;
    return q;
}

static void test_grid_rows(void **state)
{
    (void)state;
    for (uint32_t Nq = 1; Nq < 300; Nq += 7)
        for (uint32_t Nk = 1; Nk < 300; Nk += 5)
            for (int causal = 0; causal < 2; causal++) {
                attn_problem p;
                memset(&p, 0, sizeof p);
                p.Nq = Nq;
                p.Nk = Nk;
                p.causal = causal;
                attn_grid ag;
                attn_grid_init(&ag, &p);
                assert_int_equal(attn_grid_diag_shift_inline(ag.off),
                                 brute_floor32(ag.off));
                assert_int_equal(attn_grid_diag_shift(&ag),
                                 brute_floor32(ag.off));
                for (uint32_t I = 0; I < ag.nbq; I++) {
                    uint32_t v0, s0, v1, s1;
                    if (causal)
                        brute_row(I, ag.off, ag.nbk, &v0, &s0);
                    else
                        v0 = s0 = ag.nbk;
                    attn_grid_row_inline(I, ag.off, causal, ag.nbk, &v1, &s1);
                    assert_int_equal(v0, v1);
                    assert_int_equal(s0, s1);
                    attn_grid_row(&ag, I, &v1, &s1);
                    assert_int_equal(v0, v1);
                    assert_int_equal(s0, s1);
                    /* the last row of block I sees key blocks up to seen */
                    if (causal)
                        assert_int_equal(
                            key_blocks_upto((int64_t)I * 32 + 31 + ag.off,
                                            ag.nbk),
                            s0);
                }
            }
    const int64_t offs[] = {-1000000, -33, -32, -31, -1, 0, 1, 31, 32, 33};
    for (int64_t off : offs)
        for (uint32_t I = 0; I < 3; I++) {
            uint32_t v0, s0, v1, s1;
            brute_row(I, off, 40000, &v0, &s0);
            attn_grid_row_inline(I, off, 1, 40000, &v1, &s1);
            assert_int_equal(v0, v1);
            assert_int_equal(s0, s1);
            assert_int_equal(attn_grid_diag_shift_inline(off),
                             brute_floor32(off));
        }
    /* r_I: 0 with nothing seen; NaN when the first logit is; else the
     * largest logit, later NaNs passed over */
    assert_true(row_max(NAN, -INFINITY, 0) == 0.0f);
    assert_true(isnan(row_max(NAN, 3.0f, 4)));
    assert_true(row_max(1.0f, 3.0f, 4) == 3.0f);
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
        /* the device's pair key, centred on the square diagonal */
        assert_int_equal(k, pair_key_at(L, r, empty, I, (int64_t)I, J, 3, 4));
    }
    /* NaN ranks above the pairs outside the selection */
    assert_true(attn_select_pair_key(NAN, 0.0f, 0, 5, 9, 0, 0) >
                ATTN_SELECT_KEY_NONE);
    assert_true(attn_select_pair_key(-INFINITY, INFINITY, 1, 5, 9, 0, 0) >
                ATTN_SELECT_KEY_NONE);
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
    /* NaN scores (key 1) still rank above the causally excluded pairs
     * (ATTN_SELECT_KEY_NONE = 0), which are never selected */
    grid c = make_grid(6, 4, 0, 0, 0, 1000, 9, 70, 1);
    for (uint32_t I = 0; I < c.nbq; I++)
        c.r[I] = NAN;
    check(c);
    c.k = 3;
    check(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_order),
        cmocka_unit_test(test_random_grids),
        cmocka_unit_test(test_causal_grids),
        cmocka_unit_test(test_grid_rows),
        cmocka_unit_test(test_nan_grid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
