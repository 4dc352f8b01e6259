/*
 * harness.c - the GPU checks of tools/gpu-verify.sh: the CUDA backend
 * against the CPU backend through the public API (attn.h, attn-cuda.h).
 * Built by the script from the tree's libattn.a; not part of the library.
 * Modes:
 *   check [--small] [--gpu NAME]  every method x dtype x shapes (odd N and
 *                                 D, masks, query masks, causal, cross,
 *                                 grouped heads, priors, Nq = 1) against
 *                                 the CPU, bitwise repeatability, full
 *                                 budget == exact, a mixed batch against
 *                                 each problem alone, sessions (stores on
 *                                 the device, appends, decoding steps),
 *                                 device pointers, NaN input
 *   contain [--gpu NAME]          containment: ENOTSUP (nb > 65535) and
 *                                 ENOMEM (a 219 GB low-res grid) inside a
 *                                 batch, memory given back by trim(), a
 *                                 real fault (attn_cuda_test_fault()) the
 *                                 backend heals from
 *   bench --n LIST --h H --d D --dtypes LIST [--big N] [--json FILE]
 *                                 kernel-path timings (device pointers,
 *                                 CUDA events) and host-path end-to-end
 * --gpu cpu runs check on the CPU backend (the script's plumbing test).
 * Prints one line per case (PASS / FAIL); exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention/attn.h"
#include "attention/cuda/attn-cuda.h"

static const char *gpu_name = "cuda";
static int nfail = 0, npass = 0;
static int small_run = 0; /* --small: sizes for the sanitizers */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ull;
static float noise(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* A case: N queries, Nk keys (0: N, self-attention). */
struct tc {
    const char *name;
    enum attn_method m;
    enum attn_dtype dt;
    uint32_t B, H, Hkv, N, D, bpr, pf, pd;
    uint64_t nblk;
    int masked;
    uint32_t Nk;
    int causal, qmask;
};

static uint32_t nk_of(const struct tc *c)
{
    return c->Nk ? c->Nk : c->N;
}

struct data {
    struct attn_problem p;
    void *q, *k, *v, *out;
    uint8_t *mask, *qm;
    size_t nq, nk, es;
};

static int data_init(struct data *d, const struct tc *c, uint64_t seed,
                     int zero)
{
    memset(d, 0, sizeof *d);
    d->es = attn_dtype_size(c->dt);
    d->nq = (size_t)c->B * c->H * c->N * c->D;
    d->nk = (size_t)c->B * c->Hkv * nk_of(c) * c->D;
    d->q = malloc(d->nq * d->es);
    d->k = malloc(d->nk * d->es);
    d->v = malloc(d->nk * d->es);
    d->out = malloc(d->nq * d->es);
    if (!d->q || !d->k || !d->v || !d->out)
        return -1;
    if (zero) {
        memset(d->q, 0, d->nq * d->es);
        memset(d->k, 0, d->nk * d->es);
        memset(d->v, 0, d->nk * d->es);
    } else {
        rng = seed * 2654435761ull + 1;
        size_t big = d->nq > d->nk ? d->nq : d->nk;
        float *tmp = malloc(big * sizeof *tmp);
        if (!tmp)
            return -1;
        for (size_t i = 0; i < d->nq; i++)
            tmp[i] = 2.0f * noise();
        attn_from_f32(c->dt, tmp, d->q, d->nq);
        for (size_t i = 0; i < d->nk; i++)
            tmp[i] = 2.0f * noise();
        attn_from_f32(c->dt, tmp, d->k, d->nk);
        for (size_t i = 0; i < d->nk; i++)
            tmp[i] = noise();
        attn_from_f32(c->dt, tmp, d->v, d->nk);
        free(tmp);
    }
    memset(d->out, 0xff, d->nq * d->es);
    uint32_t Nk = nk_of(c);
    if (c->masked) {
        d->mask = malloc((size_t)c->B * Nk);
        if (!d->mask)
            return -1;
        for (size_t i = 0; i < (size_t)c->B * Nk; i++)
            d->mask[i] = (i % 7 != 3) && (i % Nk) + 5 < Nk;
    }
    if (c->qmask) {
        d->qm = malloc((size_t)c->B * c->N);
        if (!d->qm)
            return -1;
        for (size_t i = 0; i < (size_t)c->B * c->N; i++)
            d->qm[i] = (i % 11 != 6) && i % c->N != 0;
    }
    struct attn_problem p = {0};
    p.method = c->m;
    p.dtype = c->dt;
    p.B = c->B;
    p.H = c->H;
    p.Hkv = c->Hkv;
    p.Nq = c->N;
    p.Nk = Nk;
    p.causal = c->causal;
    p.q_mask = d->qm;
    p.D = c->D;
    p.q = d->q;
    p.k = d->k;
    p.v = d->v;
    p.mask = d->mask;
    p.out = d->out;
    p.block_per_row = c->bpr;
    p.num_blocks = c->nblk;
    p.prior_first = c->pf;
    p.prior_diagonal = c->pd;
    d->p = p;
    return 0;
}

static void data_free(struct data *d)
{
    free(d->q), free(d->k), free(d->v), free(d->out), free(d->mask);
    free(d->qm);
    memset(d, 0, sizeof *d);
}

/* Relative Frobenius distance over entries finite in both; counts NaN/inf. */
static double rel_diff(enum attn_dtype dt, const void *a, const void *b,
                       size_t n, double *maxabs, size_t *nonfin_a,
                       size_t *nonfin_b)
{
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    if (!x || !y) {
        free(x), free(y);
        return INFINITY;
    }
    attn_to_f32(dt, a, x, n);
    attn_to_f32(dt, b, y, n);
    double num = 0, den = 0, mx = 0;
    size_t na = 0, nb = 0;
    for (size_t i = 0; i < n; i++) {
        int fa = isfinite(x[i]), fb = isfinite(y[i]);
        na += !fa, nb += !fb;
        if (!fa || !fb)
            continue;
        double d = (double)x[i] - (double)y[i];
        num += d * d;
        den += (double)y[i] * y[i];
        if (fabs(d) > mx)
            mx = fabs(d);
    }
    free(x), free(y);
    *maxabs = mx;
    *nonfin_a = na, *nonfin_b = nb;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void verdict(int ok, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void verdict(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    if (ok)
        npass++;
    else
        nfail++;
}

static struct attn_backend *open_be(const char *name)
{
    struct attn_config cfg = {0};
    struct attn_backend *be = NULL;
    int rc = attn_backend_new(name, &cfg, &be);
    if (rc != ATTN_OK) {
        printf("FAIL open backend %s: %s\n", name, attn_strerror(rc));
        nfail++;
        return NULL;
    }
    printf("backend %s: %s\n", attn_backend_name(be), attn_backend_device(be));
    return be;
}

static const char *mname(enum attn_method m)
{
    return attn_method_name(m);
}

static int is_cuda(struct attn_backend *be)
{
    return strcmp(attn_backend_name(be), "cuda") == 0;
}

/* ---- check --------------------------------------------------------------- */

static void check_case(struct attn_backend *g, struct attn_backend *c,
                       const struct tc *t, uint64_t seed)
{
    struct data a, b;
    if (data_init(&a, t, seed, 0) || data_init(&b, t, seed, 0)) {
        verdict(0, "%s: host out of memory", t->name);
        data_free(&a), data_free(&b);
        return;
    }
    size_t bytes = a.nq * a.es;
    double t0 = now();
    int rg = attn_backend_compute(g, &a.p, NULL);
    double tg = now() - t0;
    t0 = now();
    int rc = attn_backend_compute(c, &b.p, NULL);
    double tcpu = now() - t0;
    if (rg != ATTN_OK || rc != ATTN_OK) {
        verdict(0,
                "%-12s %-11s %-4s B=%u H=%u Hkv=%u Nq=%u Nk=%u D=%u: gpu rc %d "
                "(%s), cpu rc %d",
                t->name, mname(t->m), attn_dtype_name(t->dt), t->B, t->H,
                t->Hkv, t->N, nk_of(t), t->D, rg, attn_strerror(rg), rc);
        data_free(&a), data_free(&b);
        return;
    }
    double mx;
    size_t nfa, nfb;
    double err = rel_diff(t->dt, a.out, b.out, a.nq, &mx, &nfa, &nfb);
    double tol = t->dt == ATTN_F32 ? 1e-4 : 1e-2;
    /* determinism: again, bitwise */
    void *first = malloc(bytes);
    int same = 0;
    if (first) {
        memcpy(first, a.out, bytes);
        memset(a.out, 0xa5, bytes);
        int r2 = attn_backend_compute(g, &a.p, NULL);
        same = r2 == ATTN_OK && memcmp(first, a.out, bytes) == 0;
        free(first);
    }
    verdict(
        err < tol && nfa == nfb && same,
        "%-12s %-11s %-4s B=%u H=%u Hkv=%u Nq=%u Nk=%u D=%u bpr=%u pf=%u "
        "pd=%u%s%s%s: "
        "rel %.2e (tol %.0e) maxabs %.2e nonfinite %zu/%zu bitwise-repeat %s  "
        "gpu %.1f ms cpu %.1f ms",
        t->name, mname(t->m), attn_dtype_name(t->dt), t->B, t->H, t->Hkv, t->N,
        nk_of(t), t->D, t->bpr, t->pf, t->pd, t->masked ? " masked" : "",
        t->qmask ? " q_mask" : "", t->causal ? " causal" : "", err, tol, mx,
        nfa, nfb, same ? "yes" : "NO", tg * 1e3, tcpu * 1e3);
    data_free(&a), data_free(&b);
}

static void check_batch(struct attn_backend *g)
{
    struct tc ts[4] = {
        {"batch-a", ATTN_MRA2, ATTN_BF16, 2, 4, 2, 1000, 64, 4, 0, 0, 0, 1, 0,
         0, 0},
        {"batch-x", ATTN_EXACT, ATTN_F32, 1, 2, 2, 333, 40, 0, 0, 0, 0, 1, 0, 0,
         0},
        {"batch-y", ATTN_MRA2_SPARSE, ATTN_F16, 1, 3, 1, 2049, 128, 8, 0, 0, 0,
         0, 0, 0, 0},
        {"batch-z", ATTN_MRA2, ATTN_F32, 1, 2, 1, 5000, 72, 16, 1, 3, 0, 1, 0,
         0, 0},
    };
    struct data d[4], solo[4];
    for (int i = 0; i < 4 && small_run; i++)
        ts[i].N = ts[i].N > 400 ? 400 : ts[i].N;
    for (int i = 0; i < 4; i++) {
        if (data_init(&d[i], &ts[i], 40 + i, 0) ||
            data_init(&solo[i], &ts[i], 40 + i, 0)) {
            verdict(0, "batch: host out of memory");
            return;
        }
        if (attn_backend_compute(g, &solo[i].p, NULL) != ATTN_OK) {
            verdict(0, "batch: solo run %d failed", i);
            return;
        }
    }
    struct attn_problem bad = d[0].p;
    bad.Hkv = 3; /* 4 % 3 != 0 */
    const struct attn_problem *batch[7] = {&d[1].p, &d[0].p, &bad,   &d[2].p,
                                           &d[3].p, &d[0].p, &d[1].p};
    int errs[7];
    struct attn_stats st[7];
    int rc = attn_backend_compute_batch(g, batch, 7, st, errs);
    int ok = rc == ATTN_OK;
    for (int i = 0; i < 7; i++)
        ok &= (i == 2) ? errs[i] == ATTN_EINVAL : errs[i] == ATTN_OK;
    for (int i = 0; i < 4; i++)
        ok &= memcmp(d[i].out, solo[i].out, d[i].nq * d[i].es) == 0;
    verdict(ok,
            "batch of 7 (mixed dtypes/methods, one invalid, repeats): rc %d "
            "errs [%d %d %d %d %d %d %d], outputs bitwise equal to solo runs",
            rc, errs[0], errs[1], errs[2], errs[3], errs[4], errs[5], errs[6]);
    for (int i = 0; i < 4; i++)
        data_free(&d[i]), data_free(&solo[i]);
}

static void check_device_ptr(struct attn_backend *g)
{
    if (!is_cuda(g)) {
        printf("SKIP device pointers (backend is not cuda)\n");
        return;
    }
    struct tc t = {"devptr", ATTN_MRA2, ATTN_BF16, 1, 4, 2, 3000, 128,
                   8,        0,         0,         0, 1, 0, 0,    0};
    if (small_run)
        t.N = 500;
    struct data d;
    if (data_init(&d, &t, 77, 0)) {
        verdict(0, "devptr: host out of memory");
        return;
    }
    size_t qb = d.nq * d.es, kb = d.nk * d.es, mb = (size_t)t.B * t.N;
    if (attn_backend_compute(g, &d.p, NULL) != ATTN_OK) {
        verdict(0, "devptr: host path failed");
        data_free(&d);
        return;
    }
    void *want = malloc(qb), *got = malloc(qb);
    memcpy(want, d.out, qb);
    void *dq = 0, *dk = 0, *dv = 0, *dout = 0, *dmask = 0;
    int ok = cudaMalloc(&dq, qb) == cudaSuccess &&
             cudaMalloc(&dk, kb) == cudaSuccess &&
             cudaMalloc(&dv, kb) == cudaSuccess &&
             cudaMalloc(&dout, qb) == cudaSuccess &&
             cudaMalloc(&dmask, mb) == cudaSuccess;
    ok = ok && cudaMemcpy(dq, d.q, qb, cudaMemcpyHostToDevice) == cudaSuccess &&
         cudaMemcpy(dk, d.k, kb, cudaMemcpyHostToDevice) == cudaSuccess &&
         cudaMemcpy(dv, d.v, kb, cudaMemcpyHostToDevice) == cudaSuccess &&
         cudaMemcpy(dmask, d.mask, mb, cudaMemcpyHostToDevice) == cudaSuccess;
    cudaStream_t st = 0;
    ok = ok && cudaStreamCreate(&st) == cudaSuccess;
    int rcs[2] = {99, 99}, eq[2] = {0, 0};
    for (int r = 0; ok && r < 2; r++) {
        struct attn_problem p = d.p;
        p.q = dq, p.k = dk, p.v = dv, p.mask = dmask, p.out = dout;
        cudaMemset(dout, 0, qb);
        cudaDeviceSynchronize();
        rcs[r] = attn_cuda_compute_device(g, &p, r ? (void *)st : NULL);
        cudaStreamSynchronize(st);
        cudaDeviceSynchronize();
        cudaMemcpy(got, dout, qb, cudaMemcpyDeviceToHost);
        eq[r] = memcmp(want, got, qb) == 0;
    }
    verdict(ok && rcs[0] == 0 && rcs[1] == 0 && eq[0] && eq[1],
            "device-pointer path (own stream rc %d %s, caller stream rc %d %s) "
            "vs host path",
            rcs[0], eq[0] ? "bitwise equal" : "DIFFERS", rcs[1],
            eq[1] ? "bitwise equal" : "DIFFERS");
    if (st)
        cudaStreamDestroy(st);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dmask);
    free(want), free(got);
    data_free(&d);
}

/* Tokens [start, start + n) of a [B, Hkv, Nk, D] tensor, as [B, Hkv, n, D]. */
static void *slice_tokens(const void *x, const struct tc *t, size_t es,
                          uint32_t start, uint32_t n)
{
    size_t row = (size_t)t->D * es, units = (size_t)t->B * t->Hkv;
    char *o = malloc(units * n * row + 1);
    if (!o)
        return NULL;
    for (size_t u = 0; u < units; u++)
        memcpy(o + u * n * row, (const char *)x + (u * nk_of(t) + start) * row,
               n * row);
    return o;
}

/* Sessions: keys and values resident in a store on the device, filled in
 * pieces, then decoding steps that each carry their token (Nq = 1,
 * causal): against the CPU backend on the dense tensors, and bitwise
 * against the same backend on the dense tensors. */
static void check_sessions(struct attn_backend *g, struct attn_backend *c)
{
    const enum attn_method ms[] = {ATTN_EXACT, ATTN_MRA2, ATTN_MRA2_SPARSE};
    const enum attn_dtype dts[] = {ATTN_F32, ATTN_F16, ATTN_BF16};
    uint32_t nk = small_run ? 200 : 1500;
    for (int mi = 0; mi < 3; mi++)
        for (int di = 0; di < 3; di++) {
            struct tc t = {"session", ms[mi], dts[di], 2, 4, 2,  1, 64,
                           8,         0,      0,       0, 1, nk, 1, 0};
            struct data d, ref;
            if (data_init(&d, &t, 600 + mi * 3 + di, 0) ||
                data_init(&ref, &t, 600 + mi * 3 + di, 0)) {
                verdict(0, "session: host out of memory");
                return;
            }
            size_t bytes = d.nq * d.es;
            int rc_cpu = attn_backend_compute(c, &ref.p, NULL);
            int rc_dense = attn_backend_compute(g, &d.p, NULL);
            void *dense = malloc(bytes);
            if (dense)
                memcpy(dense, d.out, bytes);
            struct attn_kv_shape sh = {t.dt, t.B, t.Hkv, t.D};
            struct attn_kv *kv = NULL;
            int rc = attn_kv_new(g, &sh, &kv);
            /* the first tokens in two appends, the last with the step */
            uint32_t cut[3] = {0, nk / 3, nk - 1};
            for (int piece = 0; piece < 2 && rc == ATTN_OK; piece++) {
                uint32_t n = cut[piece + 1] - cut[piece];
                void *k = slice_tokens(d.k, &t, d.es, cut[piece], n);
                void *v = slice_tokens(d.v, &t, d.es, cut[piece], n);
                uint8_t *m = malloc((size_t)t.B * n);
                for (uint32_t b = 0; m && b < t.B; b++)
                    memcpy(m + (size_t)b * n,
                           d.mask + (size_t)b * nk + cut[piece], n);
                struct attn_kv_tokens tok = {k, v, m, n};
                rc = k && v && m ? attn_kv_append(kv, &tok) : ATTN_ENOMEM;
                free(k), free(v), free(m);
            }
            void *lk = slice_tokens(d.k, &t, d.es, nk - 1, 1);
            void *lv = slice_tokens(d.v, &t, d.es, nk - 1, 1);
            uint8_t lm[2] = {d.mask[nk - 1], d.mask[2 * (size_t)nk - 1]};
            struct attn_problem step = d.p;
            step.k = step.v = NULL;
            step.mask = NULL;
            step.kv = kv;
            step.Nk = 0;
            step.append.k = lk;
            step.append.v = lv;
            step.append.mask = lm;
            step.append.n = 1;
            memset(d.out, 0xa5, bytes);
            int rc_step = rc == ATTN_OK && lk && lv
                              ? attn_backend_compute(g, &step, NULL)
                              : rc;
            double mx = 0, err = INFINITY;
            size_t na = 0, nb = 0;
            if (rc_step == ATTN_OK && rc_cpu == ATTN_OK)
                err = rel_diff(t.dt, d.out, ref.out, d.nq, &mx, &na, &nb);
            int same = dense && rc_dense == ATTN_OK &&
                       memcmp(dense, d.out, bytes) == 0;
            double tol = t.dt == ATTN_F32 ? 1e-4 : 1e-2;
            verdict(rc_step == ATTN_OK && err < tol && same && na == nb,
                    "session %-11s %-4s B=2 H=4 Hkv=2 tokens %u (appends of "
                    "%u, %u, then 1 with the step) Nq=1 causal: rc %d, rel "
                    "%.2e vs cpu (tol %.0e), bitwise as on tensors: %s",
                    mname(t.m), attn_dtype_name(t.dt), nk, cut[1],
                    cut[2] - cut[1], rc_step, err, tol, same ? "yes" : "NO");
            attn_kv_free(kv);
            free(lk), free(lv), free(dense);
            data_free(&d), data_free(&ref);
        }
}

static void check_nan(struct attn_backend *g, struct attn_backend *c)
{
    struct tc t = {"nan-input", ATTN_MRA2, ATTN_F32, 1, 2, 1, 1000, 64,
                   4,           0,         0,        0, 0, 0, 0,    0};
    struct data a, b;
    if (data_init(&a, &t, 5, 0) || data_init(&b, &t, 5, 0)) {
        verdict(0, "nan: host out of memory");
        return;
    }
    ((float *)a.q)[70] = ((float *)b.q)[70] = NAN;
    ((float *)a.k)[64 * 500 + 3] = ((float *)b.k)[64 * 500 + 3] = INFINITY;
    int rg = attn_backend_compute(g, &a.p, NULL);
    int rc = attn_backend_compute(c, &b.p, NULL);
    double mx;
    size_t na = 0, nb = 0;
    double err = rg == 0 && rc == 0
                     ? rel_diff(t.dt, a.out, b.out, a.nq, &mx, &na, &nb)
                     : INFINITY;
    int h = attn_backend_health(g);
    verdict(rg == ATTN_OK && h == ATTN_OK && na == nb,
            "NaN/Inf input mra2 f32: rc %d, health %d, non-finite outputs gpu "
            "%zu cpu %zu, rel(finite) %.2e",
            rg, h, na, nb, err);
    data_free(&a), data_free(&b);
}

static int run_check(int small)
{
    struct attn_backend *g = open_be(gpu_name), *c = open_be("cpu");
    if (!g || !c)
        return 1;
    /* N queries, Nk keys (0: N) */
    struct shape {
        const char *name;
        uint32_t B, H, Hkv, N, D, bpr, pf, pd;
        int masked, small_ok;
        uint32_t Nk;
        int causal, qmask;
    } shapes[] = {
        {"gqa-mask", 1, 2, 1, 1000, 64, 4, 0, 0, 1, 1, 0, 0, 0},
        {"odd-D50", 2, 3, 3, 333, 50, 8, 0, 0, 0, 1, 0, 0, 0},
        {"prior-D128", 1, 4, 2, 4097, 128, 8, 1, 3, 1, 0, 0, 0, 0},
        {"N31-D256", 1, 1, 1, 31, 256, 8, 0, 0, 0, 1, 0, 0, 0},
        {"N1-D32", 1, 2, 2, 1, 32, 8, 0, 0, 0, 1, 0, 0, 0},
        {"D8-mask", 1, 1, 1, 2080, 8, 8, 0, 0, 1, 1, 0, 0, 0},
        {"D200", 1, 2, 2, 700, 200, 4, 0, 0, 1, 0, 0, 0, 0},
        {"N16384", 1, 2, 1, 16384, 64, 16, 0, 0, 0, 0, 0, 0, 0},
        {"causal", 1, 4, 2, 1500, 64, 8, 0, 0, 1, 1, 0, 1, 0},
        {"causal-odd", 2, 2, 1, 777, 72, 4, 1, 1, 1, 1, 0, 1, 1},
        {"cross-q<k", 1, 4, 1, 300, 64, 8, 0, 0, 1, 1, 2100, 0, 1},
        {"cross-q>k", 1, 2, 2, 1300, 40, 4, 0, 0, 0, 1, 450, 0, 0},
        {"causal-cross", 1, 4, 2, 200, 128, 8, 0, 0, 1, 1, 3000, 1, 0},
        {"decode-Nq1", 2, 8, 2, 1, 64, 8, 0, 0, 1, 1, 5000, 1, 0},
    };
    const enum attn_method ms[] = {ATTN_EXACT, ATTN_MRA2, ATTN_MRA2_SPARSE};
    const enum attn_dtype dts[] = {ATTN_F32, ATTN_F16, ATTN_BF16};
    uint64_t seed = 1;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        if (small && !shapes[s].small_ok)
            continue;
        for (int mi = 0; mi < 3; mi++)
            for (int di = 0; di < 3; di++) {
                struct tc t = {shapes[s].name,   ms[mi],       dts[di],
                               shapes[s].B,      shapes[s].H,  shapes[s].Hkv,
                               shapes[s].N,      shapes[s].D,  shapes[s].bpr,
                               shapes[s].pf,     shapes[s].pd, 0,
                               shapes[s].masked, shapes[s].Nk, shapes[s].causal,
                               shapes[s].qmask};
                if (small) { /* sanitizers: keep it short */
                    t.N = t.N > 300 ? 300 : t.N;
                    t.Nk = t.Nk > 300 ? 300 : t.Nk;
                }
                check_case(g, c, &t, seed++);
            }
    }
    /* full budget: mra2 == exact */
    if (!small) {
        for (int di = 0; di < 3; di++) {
            struct tc te = {"full-budget",
                            ATTN_EXACT,
                            dts[di],
                            1,
                            2,
                            1,
                            2065,
                            80,
                            0,
                            0,
                            0,
                            0,
                            1,
                            0,
                            0,
                            0};
            struct tc tm = te;
            tm.m = ATTN_MRA2;
            uint64_t nb = attn_num_blocks(2065);
            tm.nblk = nb * nb;
            struct data e, m;
            if (data_init(&e, &te, 9, 0) || data_init(&m, &tm, 9, 0))
                continue;
            int r1 = attn_backend_compute(g, &e.p, NULL);
            int r2 = attn_backend_compute(g, &m.p, NULL);
            double mx;
            size_t na, nb2;
            double err = rel_diff(dts[di], m.out, e.out, e.nq, &mx, &na, &nb2);
            double tol = dts[di] == ATTN_F32 ? 1e-5 : 1e-2;
            verdict(r1 == 0 && r2 == 0 && err < tol,
                    "full budget mra2 == exact %-4s: rel %.2e (tol %.0e)",
                    attn_dtype_name(dts[di]), err, tol);
            data_free(&e), data_free(&m);
        }
    }
    check_batch(g);
    check_sessions(g, c);
    check_device_ptr(g);
    check_nan(g, c);
    uint64_t used = 0, total = 0;
    if (attn_backend_memory(g, &used, &total) == ATTN_OK)
        printf("device memory: used %.2f GiB of %.2f GiB\n",
               used / 1073741824.0, total / 1073741824.0);
    verdict(attn_backend_health(g) == ATTN_OK, "health after check: %d",
            attn_backend_health(g));
    attn_backend_free(g);
    attn_backend_free(c);
    printf("check: %d passed, %d failed\n", npass, nfail);
    return nfail ? 1 : 0;
}

/* ---- contain ------------------------------------------------------------- */

static int run_contain(void)
{
    struct attn_backend *g = open_be(gpu_name);
    if (!g)
        return 1;
    struct tc small = {"small", ATTN_MRA2, ATTN_BF16, 1, 2, 1, 1000, 64,
                       4,       0,         0,         0, 1, 0, 0,    0};
    struct data s1, s2, ref;
    if (data_init(&s1, &small, 3, 0) || data_init(&s2, &small, 3, 0) ||
        data_init(&ref, &small, 3, 0))
        return 1;
    attn_backend_compute(g, &ref.p, NULL);

    /* nb > 65535: ENOTSUP */
    struct tc ns = {"notsup", ATTN_MRA2, ATTN_F32, 1, 1, 1, 2100000, 8,
                    8,        0,         0,        0, 0, 0, 0,       0};
    struct data dn;
    if (data_init(&dn, &ns, 0, 1) == 0) {
        double t0 = now();
        int rc = attn_backend_compute(g, &dn.p, NULL);
        verdict(rc == ATTN_ENOTSUP && attn_backend_health(g) == ATTN_OK,
                "N=2100000 (nb=65625 > 65535) mra2: rc %d (%s), want ENOTSUP; "
                "health %d (%.1f s)",
                rc, attn_strerror(rc), attn_backend_health(g), now() - t0);
        data_free(&dn);
    }

    /* the low-resolution grid of this one is 14 * 62500^2 * 4 B = 219 GB */
    struct tc big = {"oom", ATTN_MRA2, ATTN_BF16, 1, 14, 1, 2000000, 16,
                     8,     0,         0,         0, 0,  0, 0,       0};
    struct data db;
    if (data_init(&db, &big, 0, 1) == 0) {
        const struct attn_problem *batch[3] = {&s1.p, &db.p, &s2.p};
        int errs[3] = {99, 99, 99};
        double t0 = now();
        int rc = attn_backend_compute_batch(g, batch, 3, NULL, errs);
        int same = memcmp(s1.out, ref.out, s1.nq * s1.es) == 0 &&
                   memcmp(s2.out, ref.out, s2.nq * s2.es) == 0;
        verdict(
            rc == ATTN_OK && errs[0] == 0 && errs[1] == ATTN_ENOMEM &&
                errs[2] == 0 && same && attn_backend_health(g) == ATTN_OK,
            "batch [small, 219 GB low-res grid, small]: rc %d errs [%d %d %d] "
            "(want [0 %d 0]), small outputs %s, health %d (%.1f s)",
            rc, errs[0], errs[1], errs[2], ATTN_ENOMEM,
            same ? "bitwise equal to solo" : "DIFFER", attn_backend_health(g),
            now() - t0);
        data_free(&db);
    } else {
        printf("SKIP oom case: host out of memory\n");
    }
    memset(s1.out, 0, s1.nq * s1.es);
    int rc = attn_backend_compute(g, &s1.p, NULL);
    verdict(rc == 0 && memcmp(s1.out, ref.out, s1.nq * s1.es) == 0,
            "after the failures a request still runs and gives the same bits: "
            "rc %d",
            rc);

    /* Memory that returns: a large batch grows the arenas, trim() gives
     * them back (the cuBLAS workspace stays). */
    struct tc large = {"large", ATTN_MRA2, ATTN_BF16, 1, 12, 12, 16384, 64,
                       16,      0,         0,         0, 0,  0,  0,     0};
    struct data dl;
    if (data_init(&dl, &large, 11, 0) == 0) {
        uint64_t u0 = 0, u1 = 0, u2 = 0, tot = 0;
        attn_backend_trim(g);
        attn_backend_memory(g, &u0, &tot);
        int r = attn_backend_compute(g, &dl.p, NULL);
        attn_backend_memory(g, &u1, &tot);
        attn_backend_trim(g);
        attn_backend_memory(g, &u2, &tot);
        verdict(r == 0 && u1 > u0 && u2 < u1 && u2 <= u0 + (64u << 20),
                "trim: device memory used %.0f MiB before a 16384-token batch, "
                "%.0f MiB after it, %.0f MiB after trim()",
                u0 / 1048576.0, u1 / 1048576.0, u2 / 1048576.0);
        data_free(&dl);
    }

    /* A kernel that faults (illegal address, sticky): the context is
     * lost, the backend resets and rebuilds it, health() recovers and the
     * bits are those of before, without a new backend. */
    if (is_cuda(g)) {
        uint64_t h0 = attn_cuda_heals(g);
        double t0 = now();
        int rf = attn_cuda_test_fault(g, 1);
        int hh = attn_backend_health(g);
        double th = now() - t0;
        memset(s1.out, 0, s1.nq * s1.es);
        int r1 = attn_backend_compute(g, &s1.p, NULL);
        verdict(rf == ATTN_EBACKEND && hh == ATTN_OK &&
                    attn_cuda_heals(g) == h0 + 1 && r1 == ATTN_OK &&
                    memcmp(s1.out, ref.out, s1.nq * s1.es) == 0,
                "fault waited for: rc %d (want %d), health %d after %.2f s, "
                "heals %llu, next request rc %d with the bits of before",
                rf, ATTN_EBACKEND, hh, th,
                (unsigned long long)(attn_cuda_heals(g) - h0), r1);
        /* not waited for: the next batch finds it, fails, and heals */
        int rn = attn_cuda_test_fault(g, 0);
        const struct attn_problem *two[2] = {&s1.p, &s2.p};
        int errs[2] = {99, 99};
        attn_backend_compute_batch(g, two, 2, NULL, errs);
        hh = attn_backend_health(g);
        memset(s2.out, 0, s2.nq * s2.es);
        int r2 = attn_backend_compute(g, &s2.p, NULL);
        verdict(rn == ATTN_OK && errs[0] == ATTN_EBACKEND &&
                    errs[1] == ATTN_EBACKEND && hh == ATTN_OK &&
                    r2 == ATTN_OK &&
                    memcmp(s2.out, ref.out, s2.nq * s2.es) == 0,
                "fault found by the next batch: errs [%d %d] (want %d), "
                "health %d, then rc %d with the bits of before",
                errs[0], errs[1], ATTN_EBACKEND, hh, r2);
    }
    uint64_t used = 0, total = 0;
    if (attn_backend_memory(g, &used, &total) == ATTN_OK)
        printf("device memory after containment: used %.2f GiB of %.2f GiB\n",
               used / 1073741824.0, total / 1073741824.0);
    attn_backend_free(g);
    data_free(&s1), data_free(&s2), data_free(&ref);
    printf("contain: %d passed, %d failed\n", npass, nfail);
    return nfail ? 1 : 0;
}

/* ---- bench --------------------------------------------------------------- */

static int parse_list(const char *s, uint32_t *out, int max)
{
    int n = 0;
    while (s && *s && n < max) {
        out[n++] = (uint32_t)strtoul(s, (char **)&s, 10);
        if (*s == ',')
            s++;
    }
    return n;
}

static int run_bench(int argc, char **argv)
{
    uint32_t Ns[16];
    int nN = 0;
    uint32_t H = 12, D = 64, big = 0;
    const char *dts = "bf16,f32", *json = NULL;
    double budget = 0.4;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--n"))
            nN = parse_list(v, Ns, 16), i++;
        else if (!strcmp(a, "--h"))
            H = (uint32_t)atoi(v), i++;
        else if (!strcmp(a, "--d"))
            D = (uint32_t)atoi(v), i++;
        else if (!strcmp(a, "--big"))
            big = (uint32_t)atoi(v), i++;
        else if (!strcmp(a, "--dtypes"))
            dts = v, i++;
        else if (!strcmp(a, "--json"))
            json = v, i++;
        else if (!strcmp(a, "--budget"))
            budget = atof(v), i++;
    }
    if (!nN)
        Ns[0] = 4096, Ns[1] = 16384, Ns[2] = 65536, nN = 3;
    struct attn_backend *g = open_be(gpu_name);
    if (!g)
        return 1;
    if (!is_cuda(g)) {
        printf("bench: the backend is not cuda: nothing to time\n");
        return 1;
    }
    FILE *jf = json ? fopen(json, "w") : NULL;
    printf("%-5s %7s %-16s %10s %9s %9s %11s\n", "dtype", "N", "method",
           "kernel ms", "TFLOP/s", "density", "e2e ms");
    cudaStream_t st;
    if (cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking) != cudaSuccess) {
        printf("FAIL stream\n");
        return 1;
    }
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    const char *dtn[3] = {"f32", "f16", "bf16"};
    for (int di = 0; di < 3; di++) {
        if (!strstr(dts, dtn[di]))
            continue;
        enum attn_dtype dt = (enum attn_dtype)di;
        uint32_t list[17];
        int nl = nN;
        memcpy(list, Ns, sizeof(uint32_t) * nN);
        if (big && dt != ATTN_F32)
            list[nl++] = big;
        for (int ni = 0; ni < nl; ni++) {
            uint32_t N = list[ni];
            int is_big = big && N == big && ni == nl - 1 && dt != ATTN_F32;
            struct tc t = {"bench", ATTN_EXACT, dt, 1, H, H, N, D,
                           0,       0,          0,  0, 0, 0, 0, 0};
            struct data h;
            if (data_init(&h, &t, N, 0)) {
                printf("FAIL bench N=%u: host out of memory\n", N);
                nfail++;
                continue;
            }
            size_t qb = h.nq * h.es;
            void *dq = 0, *dk = 0, *dv = 0, *dout = 0;
            if (cudaMalloc(&dq, qb) || cudaMalloc(&dk, qb) ||
                cudaMalloc(&dv, qb) || cudaMalloc(&dout, qb)) {
                printf("FAIL bench N=%u: cudaMalloc\n", N);
                nfail++;
                cudaGetLastError();
                data_free(&h);
                continue;
            }
            cudaMemcpy(dq, h.q, qb, cudaMemcpyHostToDevice);
            cudaMemcpy(dk, h.k, qb, cudaMemcpyHostToDevice);
            cudaMemcpy(dv, h.v, qb, cudaMemcpyHostToDevice);
            cudaDeviceSynchronize(); /* pageable copies may still be in flight
                                      */
            struct {
                const char *name;
                enum attn_method m;
                uint32_t bpr;
            } ms[] = {{"exact", ATTN_EXACT, 0},
                      {"mra2_bpr8", ATTN_MRA2, 8},
                      {"mra2_bpr16", ATTN_MRA2, 16},
                      {"mra2_sparse_bpr16", ATTN_MRA2_SPARSE, 16}};
            for (int mi = 0; mi < 4; mi++) {
                /* f32 exact is plain-FMA: keep the very long ones out */
                if (ms[mi].m == ATTN_EXACT &&
                    ((dt == ATTN_F32 && N > 65536) || is_big))
                    continue;
                struct attn_problem p = h.p;
                p.method = ms[mi].m;
                p.block_per_row = ms[mi].bpr;
                p.q = dq, p.k = dk, p.v = dv, p.out = dout;
                int rc = attn_cuda_compute_device(g, &p, st);
                cudaError_t ce = cudaStreamSynchronize(st);
                if (rc || ce) {
                    printf("FAIL %-5s %7u %-16s rc %d (%s) cuda %d\n", dtn[di],
                           N, ms[mi].name, rc, attn_strerror(rc), (int)ce);
                    nfail++;
                    continue;
                }
                cudaEventRecord(e0, st);
                attn_cuda_compute_device(g, &p, st);
                cudaEventRecord(e1, st);
                cudaEventSynchronize(e1);
                float once = 0;
                cudaEventElapsedTime(&once, e0, e1);
                int reps = (int)(budget * 1e3 / (once > 1e-3 ? once : 1e-3));
                reps = reps < 1 ? 1 : reps > 20 ? 20 : reps;
                cudaEventRecord(e0, st);
                for (int r = 0; r < reps; r++)
                    attn_cuda_compute_device(g, &p, st);
                cudaEventRecord(e1, st);
                cudaEventSynchronize(e1);
                float ms_tot = 0;
                cudaEventElapsedTime(&ms_tot, e0, e1);
                double kms = ms_tot / reps;
                struct attn_problem hp = h.p;
                hp.method = p.method;
                hp.block_per_row = p.block_per_row;
                double fl = attn_flops(&hp);
                struct attn_stats stt;
                /* host path (pinned staging + PCIe + copies), one warm call */
                double e2e = -1;
                if (!(dt == ATTN_F32 && p.method == ATTN_EXACT && N > 16384)) {
                    attn_backend_compute(g, &hp, &stt);
                    double t0 = now();
                    int r2 = attn_backend_compute(g, &hp, &stt);
                    e2e = r2 == 0 ? (now() - t0) * 1e3 : -1;
                } else {
                    stt.density = 1.0;
                }
                double dens = p.method == ATTN_EXACT ? 1.0 : stt.density;
                printf("%-5s %7u %-16s %10.3f %9.2f %9.4f %11.3f\n", dtn[di], N,
                       ms[mi].name, kms, fl / (kms * 1e-3) / 1e12, dens, e2e);
                fflush(stdout);
                if (jf)
                    fprintf(
                        jf,
                        "{\"dtype\":\"%s\",\"B\":1,\"H\":%u,\"N\":%u,\"D\":%u,"
                        "\"method\":\"%s\",\"kernel_ms\":%.4f,\"tflops\":%.3f,"
                        "\"density\":%.5f,\"e2e_ms\":%.3f,\"reps\":%d}\n",
                        dtn[di], H, N, D, ms[mi].name, kms,
                        fl / (kms * 1e-3) / 1e12, dens, e2e, reps);
            }
            cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout);
            data_free(&h);
        }
    }
    if (jf)
        fclose(jf);
    printf("bench health: %d\n", attn_backend_health(g));
    attn_backend_free(g);
    return nfail ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s check|contain|bench [options]\n", argv[0]);
        return 2;
    }
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--gpu") && i + 1 < argc)
            gpu_name = argv[i + 1];
    int small = 0;
    for (int i = 2; i < argc; i++)
        small |= !strcmp(argv[i], "--small");
    small_run = small;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(argv[1], "check"))
        return run_check(small);
    if (!strcmp(argv[1], "contain"))
        return run_contain();
    if (!strcmp(argv[1], "bench"))
        return run_bench(argc - 2, argv + 2);
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
