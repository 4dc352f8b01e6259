/*
 * test-kv-emul.cpp - the CUDA backend's stores of keys and values
 * (attention/cuda/kv.cu), run on the CPU.
 *
 * kv.cu, plan.cu and the fused kernels are compiled as host C++ against
 * the emulated primitives of emu-prims.h (as test-attend-emul.cpp does),
 * where device memory is host memory and launches run the blocks in turn.
 * So the store's own code runs here: the slabs of pages and the page
 * table that doubles, the staging layout, the upload in pieces, and the
 * kernels that place the rows and keep the block sums.
 *
 * Appends in pieces of 1, 5, 32, 33 and 100 tokens, mixed, and through a
 * staging buffer too small for one append, must leave pages whose rows,
 * masks, counts and key and value sums are exactly those of the dense
 * tokens (sums added in token order, as plan.cu's means add), whose
 * block counts and means (the plan's first phases on the store) are
 * bitwise those of the tokens themselves, and whose
 * device table addresses them as the host copy does; the page bytes must
 * be attn_kv_page_bytes(); a staging buffer below one token fails with
 * ENOMEM and leaves the store as it was.  Then problems on a store
 * (exact, mra2, mra2_sparse; f32, f16, bf16; causal or not, grouped
 * heads, key and query masks, self-attention whose query mask is the
 * store's, Nq = 1, 3 and more) must give bitwise the output, and for MRA
 * the block lists, of the same problem on dense tensors, through the same
 * device path (mra_plan() and the kernels), and agree with the CPU
 * backend.  It needs no GPU; it checks nothing of the real hardware.
 */
#define mrad_cuda mrad_cuda_emu
#define MRAD_CUDA_PRIMS "tests/cuda/emu-prims.h"
#include "attention/cuda/attend-mma.cuh"
#include "attention/cuda/attend-simt.cuh"
#include "attention/cuda/kv.cu"
#include "attention/cuda/plan.cu"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include <cmocka.h>
}

using namespace mrad_cuda;

namespace
{

uint64_t rng = 0x9e3779b97f4a7c15ull;

float noise()
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* Dense keys, values and key mask of B entries, Hkv heads, N tokens. */
struct tokens {
    attn_dtype dt;
    uint32_t B, Hkv, N, D;
    std::vector<unsigned char> k, v; /* [B * Hkv][N][D] in dt */
    std::vector<uint8_t> mask;       /* [B][N], empty: every token real */
};

tokens make_tokens(attn_dtype dt, uint32_t B, uint32_t Hkv, uint32_t N,
                   uint32_t D, bool masked)
{
    tokens t;
    t.dt = dt;
    t.B = B;
    t.Hkv = Hkv;
    t.N = N;
    t.D = D;
    size_t n = (size_t)B * Hkv * N * D, es = attn_dtype_size(dt);
    std::vector<float> f(n);
    t.k.resize(n * es);
    t.v.resize(n * es);
    for (auto &x : f)
        x = 2.0f * noise();
    attn_from_f32(dt, f.data(), t.k.data(), n);
    for (auto &x : f)
        x = noise();
    attn_from_f32(dt, f.data(), t.v.data(), n);
    if (masked) {
        /* holes (nonzero values other than 1 too), key block 2 empty, and
         * the last 3 tokens padding */
        t.mask.resize((size_t)B * N);
        for (size_t i = 0; i < t.mask.size(); i++) {
            size_t j = i % N;
            bool real = (i % 5 != 2) && j + 3 < N && !(j >= 64 && j < 96);
            t.mask[i] = real ? (uint8_t)(1 + i % 3) : 0;
        }
    }
    return t;
}

bool real(const tokens &t, uint32_t b, uint32_t j)
{
    return t.mask.empty() || t.mask[(size_t)b * t.N + j] != 0;
}

/* Appends the tokens to a new store in pieces of the sizes in `pieces`
 * (cycling), through staging buffers of `cap` bytes (0: as much as the
 * largest piece needs), as the backend's cuda_kv_append() does. */
kv_store *fill(const tokens &t, const std::vector<uint32_t> &pieces,
               size_t cap = 0)
{
    attn_kv_shape sh = {t.dt, t.B, t.Hkv, t.D};
    kv_store *s = nullptr;
    assert_int_equal(kv_store_new(&sh, 0, &s), ATTN_OK);
    size_t es = attn_dtype_size(t.dt), units = (size_t)t.B * t.Hkv;
    size_t row = (size_t)t.D * es;
    uint64_t held = 0;
    for (size_t p = 0; held < t.N; p++) {
        uint32_t n = pieces[p % pieces.size()];
        if (n > t.N - held)
            n = (uint32_t)(t.N - held);
        /* the caller's layout: [B, Hkv, n, D] and [B, n] */
        std::vector<unsigned char> k(units * n * row), v(units * n * row);
        std::vector<uint8_t> m((size_t)t.B * n);
        for (size_t u = 0; u < units; u++) {
            memcpy(&k[u * n * row], &t.k[(u * t.N + held) * row], n * row);
            memcpy(&v[u * n * row], &t.v[(u * t.N + held) * row], n * row);
        }
        for (uint32_t b = 0; b < t.B; b++)
            for (uint32_t i = 0; i < n; i++)
                m[(size_t)b * n + i] =
                    t.mask.empty() ? 1 : t.mask[(size_t)b * t.N + held + i];
        kv_tokens tk;
        tk.k = k.data();
        tk.v = v.data();
        tk.mask = t.mask.empty() ? nullptr : m.data();
        tk.n = n;
        size_t c = cap ? cap : kv_stage_need(s, n);
        std::vector<uint64_t> host(c / 8 + 1), dev(c / 8 + 1);
        kv_stage st;
        st.host = host.data();
        st.dev = dev.data();
        st.cap = c;
        st.uploaded = nullptr;
        assert_int_equal(kv_store_append(s, held, &tk, st, nullptr), ATTN_OK);
        held += n;
    }
    assert_true(kv_store_ok(s));
    return s;
}

/* The dense description of the tokens, for the kernels. */
kv_src dense(const tokens &t)
{
    kv_src d;
    memset(&d, 0, sizeof d);
    d.k = t.k.data();
    d.v = t.v.data();
    d.mask = t.mask.empty() ? nullptr : t.mask.data();
    return d;
}

/* The pages of s hold exactly the tokens of t. */
void check_pages(const kv_store *s, const tokens &t)
{
    attn_kv_shape sh = {t.dt, t.B, t.Hkv, t.D};
    /* what a page holds, the CPU's count */
    assert_int_equal(2 * s->rows + s->meta_bytes, attn_kv_page_bytes(&sh));
    uint32_t nb = attn_num_blocks(t.N);
    assert_int_equal(s->npages, nb);
    assert_true(s->cap >= nb && s->nslabs >= 1 && s->nslabs <= nb);
    kv_src ks = kv_store_src(s), kd = dense(t);
    size_t es = attn_dtype_size(t.dt), units = (size_t)t.B * t.Hkv;
    std::vector<float> x(t.D);
    for (uint32_t J = 0; J < nb; J++) {
        /* the device table addresses the pages the host copy does */
        assert_true(s->dtable[J].kv == s->table[J].kv);
        assert_true(s->dtable[J].meta == s->table[J].meta);
        /* rows 64-byte aligned for the vector loads, sums 4-byte */
        assert_int_equal((uintptr_t)s->table[J].kv % 64, 0);
        assert_int_equal((uintptr_t)s->table[J].meta % 4, 0);
        uint32_t n = t.N - J * BLK < (uint32_t)BLK ? t.N - J * BLK : BLK;
        const char *meta = s->table[J].meta;
        for (uint32_t b = 0; b < t.B; b++) {
            const uint8_t *ms = kv_block_mask(ks, b, J, t.N);
            const uint8_t *md = kv_block_mask(kd, b, J, t.N);
            float c = 0.0f;
            for (uint32_t i = 0; i < (uint32_t)BLK; i++) {
                bool r = i < n && real(t, b, J * BLK + i);
                assert_int_equal(ms[i], r ? 1 : 0);
                if (i < n)
                    assert_int_equal(!md || md[i], r);
                c += r ? 1.0f : 0.0f;
            }
            assert_true(((const float *)(meta + s->pg.cnt))[b] == c);
        }
        for (size_t u = 0; u < units; u++) {
            uint32_t b = (uint32_t)(u / t.Hkv);
            for (int val = 0; val < 2; val++) {
                const unsigned char *rs =
                    kv_block_rows<unsigned char>(ks, val, u, J, t.N, t.D);
                /* byte rows: the element size comes in through D */
                const unsigned char *rd =
                    (val ? t.v : t.k).data() + (u * t.N + J * BLK) * t.D * es;
                assert_memory_equal(rs, rd, (size_t)n * t.D * es);
                assert_true(rs ==
                            (const unsigned char *)kv_block_rows<uint16_t>(
                                ks, val, u, J, t.N, t.D));
                /* the sums, bitwise: real tokens in order from 0 */
                const float *sum =
                    (const float *)(meta + (val ? s->pg.vsum : 0)) + u * t.D;
                std::vector<float> want(t.D, 0.0f);
                for (uint32_t i = 0; i < n; i++) {
                    if (!real(t, b, J * BLK + i))
                        continue;
                    attn_to_f32(t.dt, rd + (size_t)i * t.D * es, x.data(), t.D);
                    for (uint32_t d = 0; d < t.D; d++)
                        want[d] += x[d];
                }
                assert_memory_equal(sum, want.data(), t.D * sizeof(float));
            }
        }
    }
}

/* The block counts and means of the store (from the sums its pages keep)
 * against those of the dense tokens, bitwise: the plan's first two
 * phases (k_prep, k_means) run on a problem over each, one query. */
void check_means(const kv_store *s, const tokens &t)
{
    uint32_t nb = attn_num_blocks(t.N);
    size_t units = (size_t)t.B * t.Hkv;
    std::vector<float> cs((size_t)t.B * nb, -1), cd((size_t)t.B * nb, -2);
    std::vector<float> ks(units * nb * t.D, -1), kd(units * nb * t.D, -2);
    std::vector<float> vs(units * nb * t.D, -1), vd(units * nb * t.D, -2);
    auto run = [&](const kv_src &kv, float *cnt, float *kh, float *vh) {
        /* one query of every KV head, so that H = Hkv */
        std::vector<unsigned char> q(units * t.D * attn_dtype_size(t.dt), 0);
        dev_problem p;
        memset(&p, 0, sizeof p);
        p.method = ATTN_MRA2;
        p.dtype = t.dt;
        p.B = t.B;
        p.H = p.Hkv = t.Hkv;
        p.Nq = 1;
        p.Nk = t.N;
        p.D = t.D;
        p.nbq = 1;
        p.nbk = nb;
        p.q = q.data();
        p.kv = kv;
        p.budget = 1;
        std::vector<float> cntq(t.B), qh(units * t.D);
        std::vector<uint64_t> rstate(units * 2);
        std::vector<uint32_t> hist(units * 256);
        mra_work w;
        memset(&w, 0, sizeof w);
        w.cnt = cnt;
        w.cntq = cntq.data();
        w.qh = qh.data();
        w.kh = kh;
        w.vh = vh;
        w.rstate = rstate.data();
        w.hist = hist.data();
        plan_group g;
        memset(&g, 0, sizeof g);
        g.one = plan_item_of(p, w);
        g.n = 1;
        uint64_t bl[PH_COUNT];
        plan_blocks(p, bl);
        MRAD_LAUNCH(k_prep, bl[PH_PREP], 256, nullptr, g);
        MRAD_LAUNCH(k_means, bl[PH_MEANS], 64, nullptr, g);
    };
    run(kv_store_src(s), cs.data(), ks.data(), vs.data());
    run(dense(t), cd.data(), kd.data(), vd.data());
    assert_memory_equal(cs.data(), cd.data(), cs.size() * sizeof(float));
    assert_memory_equal(ks.data(), kd.data(), ks.size() * sizeof(float));
    assert_memory_equal(vs.data(), vd.data(), vs.size() * sizeof(float));
    /* and the key mask gathered for self-attention's query mask */
    std::vector<uint8_t> g((size_t)t.B * t.N, 7);
    assert_int_equal(
        kv_gather_mask(kv_store_src(s), t.B, t.N, g.data(), nullptr), ATTN_OK);
    for (uint32_t b = 0; b < t.B; b++)
        for (uint32_t j = 0; j < t.N; j++)
            assert_int_equal(g[(size_t)b * t.N + j], real(t, b, j) ? 1 : 0);
}

void check_appends(attn_dtype dt, uint32_t B, uint32_t Hkv, uint32_t N,
                   uint32_t D, bool masked, const std::vector<uint32_t> &pieces,
                   size_t cap = 0)
{
    tokens t = make_tokens(dt, B, Hkv, N, D, masked);
    kv_store *s = fill(t, pieces, cap);
    check_pages(s, t);
    check_means(s, t);
    printf("appends %-4s B=%u Hkv=%u N=%u D=%u%s pieces", attn_dtype_name(dt),
           B, Hkv, N, D, masked ? " masked" : "");
    for (uint32_t n : pieces)
        printf(" %u", n);
    printf("%s: %u pages in %u slabs, table of %u\n",
           cap ? " (small staging)" : "", s->npages, s->nslabs, s->cap);
    kv_store_free(s, true);
}

void test_appends(void **state)
{
    (void)state;
    /* one token at a time across page boundaries, then longer pieces */
    check_appends(ATTN_BF16, 2, 2, 70, 40, true, {1});
    check_appends(ATTN_F32, 1, 3, 45, 20, false, {1});
    const std::vector<std::vector<uint32_t>> pieces = {
        {5}, {32}, {33}, {100}, {1, 5, 32, 33, 100}};
    for (const auto &pc : pieces) {
        check_appends(ATTN_BF16, 2, 2, 200, 40, true, pc);
        check_appends(ATTN_F32, 1, 3, 170, 20, false, pc);
    }
    check_appends(ATTN_F16, 3, 1, 161, 64, true, {33, 1, 5});
    /* a table that doubles (16 -> 32 -> 64 entries), slabs of many pages,
     * one append of more than the first table */
    check_appends(ATTN_F16, 1, 1, 1100, 8, true, {100, 33, 257});
    check_appends(ATTN_BF16, 2, 1, 1500, 16, false, {600, 1, 899});
    /* staging too small for one append: uploads in pieces, some ending
     * inside a page */
    tokens t = make_tokens(ATTN_F32, 2, 2, 10, 24, false);
    kv_store *s = nullptr;
    attn_kv_shape sh = {ATTN_F32, 2, 2, 24};
    assert_int_equal(kv_store_new(&sh, 0, &s), ATTN_OK);
    size_t small = kv_stage_need(s, 7);
    kv_store_free(s, true);
    check_appends(ATTN_F32, 2, 2, 300, 24, true, {100, 1, 64}, small);
    check_appends(ATTN_BF16, 1, 2, 260, 40, true, {130}, small);
}

/* A staging buffer below one token: ENOMEM, and the store holds what it
 * held (its pages given back). */
void test_append_fails_clean(void **state)
{
    (void)state;
    tokens t = make_tokens(ATTN_F16, 1, 2, 40, 16, false);
    kv_store *s = fill(t, {40});
    uint32_t pages = s->npages, slabs = s->nslabs;
    std::vector<unsigned char> k(2 * 50 * 16 * 2), v(k.size());
    kv_tokens tk;
    tk.k = k.data();
    tk.v = v.data();
    tk.mask = nullptr;
    tk.n = 50;
    std::vector<uint64_t> buf(64);
    kv_stage st;
    st.host = st.dev = buf.data();
    st.cap = kv_stage_need(s, 1) - 1;
    st.uploaded = nullptr;
    assert_int_equal(kv_store_append(s, 40, &tk, st, nullptr), ATTN_ENOMEM);
    assert_int_equal(s->npages, pages);
    assert_int_equal(s->nslabs, slabs);
    assert_true(kv_store_ok(s));
    check_pages(s, t);
    kv_store_free(s, true);
}

/* ---- problems on a store ------------------------------------------------ */

struct pcase {
    attn_method method;
    attn_dtype dt;
    uint32_t B, H, Hkv, Nq, Nk, D, bpr;
    bool masked, causal, qmasked;
};

/* What backend.cu's run_problem() enqueues, on the emulation: the query
 * mask (gathered from a store in self-attention), the plan for MRA, then
 * the fused kernel.  Returns the MRA lists (empty for exact). */
std::vector<uint32_t> run_device(const attn_problem &hp, const kv_src &kv,
                                 void *out)
{
    dev_problem p;
    memset(&p, 0, sizeof p);
    p.method = hp.method;
    p.dtype = hp.dtype;
    p.B = hp.B;
    p.H = hp.H;
    p.Hkv = hp.Hkv;
    p.Nq = hp.Nq;
    p.Nk = hp.Nk;
    p.D = hp.D;
    p.nbq = attn_num_blocks(hp.Nq);
    p.nbk = attn_num_blocks(hp.Nk);
    p.q = hp.q;
    p.kv = kv;
    p.out = out;
    p.scale = attn_scale(&hp);
    p.causal = hp.causal;
    p.off = (int64_t)hp.Nk - (int64_t)hp.Nq;
    p.budget = hp.method == ATTN_EXACT ? 0 : attn_budget(&hp);
    std::vector<uint8_t> gathered;
    if (hp.q_mask) {
        p.qmask = hp.q_mask;
    } else if (hp.Nq == hp.Nk && kv.pg.table) {
        gathered.assign((size_t)hp.B * hp.Nq, 9);
        assert_int_equal(
            kv_gather_mask(kv, hp.B, hp.Nq, gathered.data(), nullptr), ATTN_OK);
        p.qmask = gathered.data();
    } else if (hp.Nq == hp.Nk) {
        p.qmask = kv.mask;
    }
    attend_args a;
    memset(&a, 0, sizeof a);
    a.q = p.q;
    a.kv = p.kv;
    a.qmask = p.qmask;
    a.out = p.out;
    a.B = p.B;
    a.H = p.H;
    a.Hkv = p.Hkv;
    a.Nq = p.Nq;
    a.Nk = p.Nk;
    a.D = p.D;
    a.nbq = p.nbq;
    a.nbk = p.nbk;
    a.scale = p.scale;
    a.causal = p.causal;
    a.off = p.off;
    a.vec_ok = p.D % 8 == 0; /* host vectors and pages are 16-aligned */
    std::vector<std::vector<uint64_t>> store(MRA_NBUF);
    std::vector<uint32_t> lists;
    if (p.method != ATTN_EXACT) {
        size_t sz[MRA_NBUF];
        assert_true(mra_work_sizes(p, sz));
        void *bufs[MRA_NBUF];
        for (int i = 0; i < MRA_NBUF; i++) {
            store[i].assign(sz[i] / 8 + 1, 0x7ff7ff7ff7ff7ff7ull);
            bufs[i] = store[i].data();
        }
        mra_work w;
        mra_work_bind(&w, bufs);
        assert_int_equal(mra_plan(p, w, nullptr, nullptr), ATTN_OK);
        a.list = w.list;
        a.row_off = w.row_off;
        a.list_stride = p.budget;
        if (p.method == ATTN_MRA2) {
            a.low_m = w.low_m;
            a.low_z = w.low_z;
            a.low_num = w.low_num;
        }
        size_t heads = (size_t)p.B * p.H;
        lists.assign(w.row_off, w.row_off + heads * (p.nbq + 1));
        lists.insert(lists.end(), w.list, w.list + heads * p.budget);
    }
    /* 32-row blocks, the head dimension padded to 32 (f32) or 64: exact
     * attention runs in the 128-row blocks of attend-launch.cuh on the
     * device, which test-attend-emul checks give the same bits */
    unsigned grid = (unsigned)(p.nbq * p.B * p.H);
    assert_true(pad_dim(p.D) <= 64);
    attend_group g = attend_one(a);
    if (p.dtype == ATTN_F32) {
        if (pad_dim(p.D) == 32)
            mrad_emu::launch(grid, 128, [&] { k_attend_f32<32>(g); });
        else
            mrad_emu::launch(grid, 128, [&] { k_attend_f32<64>(g); });
    } else if (p.dtype == ATTN_F16) {
        mrad_emu::launch(grid, 64, [&] { k_attend_mma<__half, 64, 2>(g); });
    } else {
        mrad_emu::launch(grid, 64,
                         [&] { k_attend_mma<__nv_bfloat16, 64, 2>(g); });
    }
    assert_int_equal(mrad_emu::unwaited_copies.load(), 0);
    return lists;
}

double rel_diff(attn_dtype dt, const std::vector<unsigned char> &a,
                const std::vector<unsigned char> &b)
{
    size_t n = a.size() / attn_dtype_size(dt);
    std::vector<float> x(n), y(n);
    attn_to_f32(dt, a.data(), x.data(), n);
    attn_to_f32(dt, b.data(), y.data(), n);
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        den += (double)y[i] * y[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Case c on dense tensors and on a store filled in `pieces`. */
void check_problem(const pcase &c, const std::vector<uint32_t> &pieces)
{
    tokens t = make_tokens(c.dt, c.B, c.Hkv, c.Nk, c.D, c.masked);
    size_t es = attn_dtype_size(c.dt), nq = (size_t)c.B * c.H * c.Nq * c.D;
    std::vector<float> qf(nq);
    for (auto &x : qf)
        x = 2.0f * noise();
    std::vector<unsigned char> q(nq * es);
    attn_from_f32(c.dt, qf.data(), q.data(), nq);
    std::vector<uint8_t> qm;
    attn_problem p;
    memset(&p, 0, sizeof p);
    p.method = c.method;
    p.dtype = c.dt;
    p.B = c.B;
    p.H = c.H;
    p.Hkv = c.Hkv;
    p.Nq = c.Nq;
    p.Nk = c.Nk;
    p.D = c.D;
    p.q = q.data();
    p.k = t.k.data();
    p.v = t.v.data();
    p.mask = t.mask.empty() ? nullptr : t.mask.data();
    p.causal = c.causal;
    p.block_per_row = c.bpr;
    if (c.qmasked) {
        qm.resize((size_t)c.B * c.Nq);
        for (size_t i = 0; i < qm.size(); i++)
            qm[i] = (i % 7 != 4) && i % c.Nq != 0;
        p.q_mask = qm.data();
    }
    std::vector<unsigned char> od(nq * es, 0xff), os(nq * es, 0xee),
        ref(nq * es, 0);
    std::vector<uint32_t> ld = run_device(p, dense(t), od.data());
    kv_store *s = fill(t, pieces);
    std::vector<uint32_t> ls = run_device(p, kv_store_src(s), os.data());
    kv_store_free(s, true);
    /* the store changes where keys are read, not a bit of the answer */
    assert_true(ld == ls);
    assert_memory_equal(od.data(), os.data(), od.size());
    /* and the answer is the CPU backend's */
    attn_config cfg;
    memset(&cfg, 0, sizeof cfg);
    attn_backend *cpu = nullptr;
    assert_int_equal(attn_backend_new("cpu", &cfg, &cpu), ATTN_OK);
    p.out = ref.data();
    assert_int_equal(attn_backend_compute(cpu, &p, nullptr), ATTN_OK);
    attn_backend_free(cpu);
    double err = rel_diff(c.dt, os, ref);
    printf("store == dense %-11s %-4s B=%u H=%u Hkv=%u Nq=%u Nk=%u D=%u%s%s%s: "
           "bitwise; vs cpu %.2e\n",
           attn_method_name(c.method), attn_dtype_name(c.dt), c.B, c.H, c.Hkv,
           c.Nq, c.Nk, c.D, c.masked ? " masked" : "",
           c.qmasked ? " q_mask" : "", c.causal ? " causal" : "", err);
    assert_true(err < (c.dt == ATTN_F32 ? 1e-4 : 1e-2));
}

/* Decoding: few queries, causal, grouped heads, a masked store; Nq = 1
 * for every method and dtype, Nq = 3 for one dtype each. */
void test_decode(void **state)
{
    (void)state;
    const attn_method ms[] = {ATTN_EXACT, ATTN_MRA2, ATTN_MRA2_SPARSE};
    const attn_dtype dts[] = {ATTN_F32, ATTN_F16, ATTN_BF16};
    for (int i = 0; i < 9; i++) {
        attn_method m = ms[i / 3];
        attn_dtype dt = dts[i % 3];
        check_problem({m, dt, 2, 4, 2, 1, 230, 64, 2, true, true, false},
                      {1, 5, 32, 33, 100});
        if (i % 3 == i / 3)
            check_problem({m, dt, 1, 4, 1, 3, 161, 40, 2, true, true, false},
                          {33});
    }
    /* no mask, not causal; a query mask of its own */
    check_problem(
        {ATTN_MRA2, ATTN_BF16, 1, 2, 2, 1, 300, 64, 3, false, false, false},
        {100});
    check_problem(
        {ATTN_MRA2_SPARSE, ATTN_F32, 2, 2, 1, 32, 200, 32, 2, true, true, true},
        {5});
}

/* Many queries: cross-attention, and self-attention whose query mask is
 * the key mask the store holds (gathered from its pages). */
void test_rows(void **state)
{
    (void)state;
    check_problem(
        {ATTN_MRA2, ATTN_BF16, 2, 2, 1, 70, 230, 64, 2, true, false, false},
        {32});
    check_problem(
        {ATTN_EXACT, ATTN_F16, 1, 2, 1, 100, 150, 40, 0, true, true, false},
        {33, 100});
    check_problem(
        {ATTN_MRA2, ATTN_F32, 1, 2, 1, 130, 130, 48, 2, true, false, false},
        {1, 5, 32, 33, 100});
    check_problem({ATTN_MRA2_SPARSE, ATTN_F16, 1, 2, 2, 160, 160, 64, 2, true,
                   true, false},
                  {100});
    check_problem(
        {ATTN_EXACT, ATTN_BF16, 2, 1, 1, 96, 96, 24, 0, true, false, false},
        {5});
    check_problem(
        {ATTN_MRA2, ATTN_F16, 1, 4, 2, 150, 150, 64, 2, true, true, true},
        {33});
}

} // namespace

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_appends),
        cmocka_unit_test(test_append_fails_clean),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
