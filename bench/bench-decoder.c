/*
 * bench-decoder.c - decoder shapes on the CPU backend: what causal masking
 * saves, and how fast a few queries run against a long context (a KV-cache
 * decoding step), measured side by side in one run.
 *
 *   bench-decoder [--threads T] [--reps R] [--quick] [--part NAME]
 *                 [--out FILE]
 *
 * Three parts, each printed as a table and written as JSON lines:
 *   causal  B=1, H=12, D=64, N=16384 f32: exact and mra2 (block_per_row
 *           16), non-causal and causal, in alternation; the ratios
 *           causal / non-causal;
 *   decode  H=32, Hkv=8, D=128 f16: Nq in {1, 8, 32} against Nk in {4096,
 *           16384, 65536, 131072}, causal: exact and mra2 (bpr 16) times
 *           and the rate at which exact reads K and V;
 *   layer   Nq=1, Nk=65536, H=32, Hkv=8, D=128 (one GQA decoder layer's
 *           step), f32 and f16: mra2 (bpr 16) against exact, and exact's
 *           K/V read rate against this machine's copy and read rates
 *           measured in the same run;
 *   session the same step on keys and values kept in a store (a session
 *           of the daemon), whose block sums spare mra2 reading every
 *           key: exact and mra2 (bpr 16) on the store, the mra2 / exact
 *           speedup against the 5x target, the relative error of mra2
 *           against exact on structured inputs (keys drawn around a few
 *           topics that change every few blocks, a query near one topic)
 *           and on uniform ones, and the time of one token's append.
 * Each time is the fastest of R calls (default 5) after a warm-up, calls
 * of the compared configurations interleaved so that a drifting machine
 * affects both alike.  Inputs are uniform in [-1, 1] from a fixed seed.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attention/attn.h"

struct opts {
    int threads, reps, quick;
    const char *out;
    const char *part; /* only this part; NULL: all */
};

static FILE *json;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float uniform(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) * 0x1p-53 * 2.0 - 1.0);
}

/* A buffer of n elements of dt, uniform in [-1, 1]. */
static void *random_tensor(enum attn_dtype dt, size_t n)
{
    size_t es = attn_dtype_size(dt);
    char *buf = malloc(n * es);
    float chunk[4096];
    if (!buf) {
        fprintf(stderr, "bench-decoder: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i += 4096) {
        size_t m = n - i < 4096 ? n - i : 4096;
        for (size_t j = 0; j < m; j++)
            chunk[j] = uniform();
        attn_from_f32(dt, chunk, buf + i * es, m);
    }
    return buf;
}

struct prob {
    struct attn_problem p;
    void *q, *k, *v, *out;
};

static void prob_init(struct prob *pr, enum attn_method m, enum attn_dtype dt,
                      uint32_t H, uint32_t Hkv, uint32_t Nq, uint32_t Nk,
                      uint32_t D, int causal)
{
    size_t nq = (size_t)H * Nq * D, nk = (size_t)Hkv * Nk * D;
    pr->q = random_tensor(dt, nq);
    pr->k = random_tensor(dt, nk);
    pr->v = random_tensor(dt, nk);
    pr->out = malloc(nq * attn_dtype_size(dt));
    if (!pr->out)
        exit(1);
    pr->p = (struct attn_problem){
        .method = m, .dtype = dt, .B = 1, .H = H, .Hkv = Hkv, .Nq = Nq,
        .Nk = Nk, .D = D, .q = pr->q, .k = pr->k, .v = pr->v, .out = pr->out,
        .causal = causal, .block_per_row = 16};
}

static void prob_free(struct prob *pr)
{
    free(pr->q), free(pr->k), free(pr->v), free(pr->out);
}

static double call(struct attn_backend *be, const struct attn_problem *p)
{
    double t0 = now_s();
    int rc = attn_backend_compute(be, p, NULL);
    if (rc != ATTN_OK) {
        fprintf(stderr, "bench-decoder: %s\n", attn_strerror(rc));
        exit(1);
    }
    return now_s() - t0;
}

/* The fastest of `reps` calls of each of n problems, interleaved, after a
 * warm-up call of each. */
static void time_all(struct attn_backend *be, const struct attn_problem **p,
                     int n, int reps, double *best)
{
    for (int i = 0; i < n; i++) {
        call(be, p[i]);
        best[i] = INFINITY;
    }
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < n; i++) {
            double t = call(be, p[i]);
            best[i] = t < best[i] ? t : best[i];
        }
}

/* ---- the machine's memory rates ------------------------------------------ */

#define RATE_BYTES ((size_t)256 << 20)

struct reader {
    const float *p;
    size_t n;
    double sum;
};

static void *read_part(void *arg)
{
    struct reader *r = arg;
    float acc[16] = {0};
    for (size_t i = 0; i + 16 <= r->n; i += 16)
        for (int j = 0; j < 16; j++)
            acc[j] += r->p[i + j];
    for (int j = 0; j < 16; j++)
        r->sum += acc[j];
    return NULL;
}

/* Bytes per second of memcpy (counted once) and of reading with
 * `threads` threads, the best of 5. */
static void memory_rates(int threads, double *copy, double *read)
{
    float *a = malloc(RATE_BYTES), *b = malloc(RATE_BYTES);
    if (!a || !b)
        exit(1);
    memset(a, 1, RATE_BYTES);
    memset(b, 2, RATE_BYTES);
    *copy = *read = 0.0;
    for (int r = 0; r < 5; r++) {
        double t0 = now_s();
        memcpy(b, a, RATE_BYTES);
        double t = now_s() - t0;
        *copy = RATE_BYTES / t > *copy ? RATE_BYTES / t : *copy;
        struct reader rd[64];
        pthread_t th[64];
        int n = threads < 64 ? threads : 64;
        size_t part = RATE_BYTES / sizeof(float) / (size_t)n;
        t0 = now_s();
        for (int i = 0; i < n; i++) {
            rd[i] = (struct reader){a + (size_t)i * part, part, 0.0};
            pthread_create(&th[i], NULL, read_part, &rd[i]);
        }
        for (int i = 0; i < n; i++)
            pthread_join(th[i], NULL);
        t = now_s() - t0;
        *read = RATE_BYTES / t > *read ? RATE_BYTES / t : *read;
    }
    free(a), free(b);
}

/* ---- the three parts ------------------------------------------------------ */

static void part_causal(struct attn_backend *be, const struct opts *o)
{
    uint32_t N = o->quick ? 4096 : 16384;
    struct prob pr[4];
    prob_init(&pr[0], ATTN_EXACT, ATTN_F32, 12, 12, N, N, 64, 0);
    prob_init(&pr[1], ATTN_EXACT, ATTN_F32, 12, 12, N, N, 64, 1);
    prob_init(&pr[2], ATTN_MRA2, ATTN_F32, 12, 12, N, N, 64, 0);
    prob_init(&pr[3], ATTN_MRA2, ATTN_F32, 12, 12, N, N, 64, 1);
    const struct attn_problem *p[4] = {&pr[0].p, &pr[1].p, &pr[2].p, &pr[3].p};
    double t[4];
    int reps = o->reps < 3 ? o->reps : 3; /* exact takes seconds */
    time_all(be, p, 4, reps, t);
    printf("causal masking, B=1 H=12 D=64 N=%u f32 (fastest of %d)\n", N,
           reps);
    printf("  %-18s %12s %12s %8s\n", "method", "non-causal", "causal",
           "ratio");
    const char *names[2] = {"exact", "mra2 (bpr 16)"};
    for (int m = 0; m < 2; m++) {
        double ratio = t[2 * m + 1] / t[2 * m];
        printf("  %-18s %9.1f ms %9.1f ms %8.2f\n", names[m], t[2 * m] * 1e3,
               t[2 * m + 1] * 1e3, ratio);
        fprintf(json,
                "{\"part\":\"causal\",\"method\":\"%s\",\"N\":%u,"
                "\"noncausal_s\":%.6f,\"causal_s\":%.6f,\"ratio\":%.4f}\n",
                m ? "mra2" : "exact", N, t[2 * m], t[2 * m + 1], ratio);
    }
    for (int i = 0; i < 4; i++)
        prob_free(&pr[i]);
}

static void part_decode(struct attn_backend *be, const struct opts *o)
{
    static const uint32_t nqs[3] = {1, 8, 32};
    static const uint32_t nks[4] = {4096, 16384, 65536, 131072};
    int nnk = o->quick ? 2 : 4;
    printf("decode shapes, H=32 Hkv=8 D=128 f16 causal (fastest of %d)\n",
           o->reps);
    printf("  %4s %7s %11s %11s %8s %12s\n", "Nq", "Nk", "exact", "mra2",
           "speedup", "exact K,V");
    for (int a = 0; a < 3; a++)
        for (int c = 0; c < nnk; c++) {
            struct prob pr[2];
            prob_init(&pr[0], ATTN_EXACT, ATTN_F16, 32, 8, nqs[a], nks[c], 128,
                      1);
            prob_init(&pr[1], ATTN_MRA2, ATTN_F16, 32, 8, nqs[a], nks[c], 128,
                      1);
            pr[1].p.k = pr[0].p.k, pr[1].p.v = pr[0].p.v;
            const struct attn_problem *p[2] = {&pr[0].p, &pr[1].p};
            double t[2];
            time_all(be, p, 2, o->reps, t);
            double kv = 2.0 * 8 * nks[c] * 128 * 2; /* bytes of K and V */
            printf("  %4u %7u %8.2f ms %8.2f ms %7.2fx %7.1f GB/s\n", nqs[a],
                   nks[c], t[0] * 1e3, t[1] * 1e3, t[0] / t[1], kv / t[0] / 1e9);
            fprintf(json,
                    "{\"part\":\"decode\",\"Nq\":%u,\"Nk\":%u,\"exact_s\":%.6f,"
                    "\"mra2_s\":%.6f,\"exact_kv_gbps\":%.3f}\n",
                    nqs[a], nks[c], t[0], t[1], kv / t[0] / 1e9);
            free(pr[1].q), free(pr[1].out);
            prob_free(&pr[0]);
        }
}

static void part_layer(struct attn_backend *be, const struct opts *o)
{
    double copy, read;
    memory_rates(o->threads, &copy, &read);
    printf("a GQA decoder layer's step: Nq=1 Nk=65536 H=32 Hkv=8 D=128 causal "
           "(fastest of %d)\n",
           o->reps);
    printf("  this machine: memcpy %.1f GB/s, read with %d threads %.1f GB/s\n",
           copy / 1e9, o->threads, read / 1e9);
    printf("  %-5s %11s %11s %11s %12s %14s\n", "dtype", "exact", "mra2",
           "mra2_sparse", "exact/mra2", "exact K,V read");
    for (int dt = ATTN_F32; dt <= ATTN_F16; dt++) {
        struct prob pr[3];
        prob_init(&pr[0], ATTN_EXACT, (enum attn_dtype)dt, 32, 8, 1, 65536, 128,
                  1);
        prob_init(&pr[1], ATTN_MRA2, (enum attn_dtype)dt, 32, 8, 1, 65536, 128,
                  1);
        prob_init(&pr[2], ATTN_MRA2_SPARSE, (enum attn_dtype)dt, 32, 8, 1,
                  65536, 128, 1);
        for (int i = 1; i < 3; i++)
            pr[i].p.k = pr[0].p.k, pr[i].p.v = pr[0].p.v;
        const struct attn_problem *p[3] = {&pr[0].p, &pr[1].p, &pr[2].p};
        double t[3];
        time_all(be, p, 3, o->reps, t);
        double kv = 2.0 * 8 * 65536 * 128 * attn_dtype_size((enum attn_dtype)dt);
        double rate = kv / t[0];
        printf("  %-5s %8.2f ms %8.2f ms %8.2f ms %11.2fx %7.1f GB/s = %3.0f%% "
               "of read\n",
               attn_dtype_name((enum attn_dtype)dt), t[0] * 1e3, t[1] * 1e3,
               t[2] * 1e3, t[0] / t[1], rate / 1e9, 100.0 * rate / read);
        fprintf(json,
                "{\"part\":\"layer\",\"dtype\":\"%s\",\"exact_s\":%.6f,"
                "\"mra2_s\":%.6f,\"mra2_sparse_s\":%.6f,\"speedup\":%.4f,"
                "\"exact_kv_gbps\":%.3f,\"memcpy_gbps\":%.3f,"
                "\"read_gbps\":%.3f}\n",
                attn_dtype_name((enum attn_dtype)dt), t[0], t[1], t[2],
                t[0] / t[1], rate / 1e9, copy / 1e9, read / 1e9);
        for (int i = 1; i < 3; i++)
            free(pr[i].q), free(pr[i].out);
        prob_free(&pr[0]);
    }
}

/* ---- steps on a store ---------------------------------------------------- */

/* Normal deviate (Box-Muller) from the bench's generator. */
static float normal(void)
{
    double u1 = (uniform() + 1.0) * 0.5, u2 = (uniform() + 1.0) * 0.5;
    if (u1 < 1e-300)
        u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/*
 * Structured keys and values [Hkv, N, D] and a query [H, 1, D] (f32):
 * 8 topic directions; each run of 8 blocks (256 tokens) of a KV head
 * takes one topic, and its keys are that direction plus noise; values
 * are noise around a per-topic mean.  The query is near topic 3, so
 * attention concentrates on the eighth of the blocks of that topic.
 */
static void structured(uint32_t H, uint32_t Hkv, uint32_t N, uint32_t D,
                       float *q, float *k, float *v)
{
    enum { TOPICS = 8 };
    float *dir = malloc(sizeof(float) * TOPICS * D);
    float *mean = malloc(sizeof(float) * TOPICS * D);
    if (!dir || !mean)
        exit(1);
    for (uint32_t i = 0; i < TOPICS * D; i++)
        dir[i] = normal() * 0.3f, mean[i] = normal();
    for (uint32_t h = 0; h < Hkv; h++)
        for (uint32_t t = 0; t < N; t += 256) {
            uint32_t topic = (uint32_t)((uniform() + 1.0f) * 4.0f) % TOPICS;
            for (uint32_t i = t; i < N && i < t + 256; i++)
                for (uint32_t d = 0; d < D; d++) {
                    size_t at = ((size_t)h * N + i) * D + d;
                    k[at] = dir[topic * D + d] + 0.3f * normal();
                    v[at] = mean[topic * D + d] + 0.5f * normal();
                }
        }
    for (uint32_t i = 0; i < H * D; i++)
        q[i] = 1.5f * dir[3 * D + i % D] + 0.3f * normal();
    free(dir);
    free(mean);
}

static double rel_err(const float *x, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void part_session(struct attn_backend *be, const struct opts *o)
{
    const uint32_t H = 32, Hkv = 8, D = 128, N = o->quick ? 16384 : 65536;
    printf("a decoding step on a session (keys and values in a store): "
           "Nq=1 Nk=%u H=32 Hkv=8 D=128 causal (fastest of %d)\n",
           N, o->reps);
    printf("  %-5s %-10s %10s %10s %11s %8s %13s\n", "dtype", "inputs",
           "exact", "mra2", "exact/mra2", "target", "mra2 rel.err");
    size_t nq = (size_t)H * D, nk = (size_t)Hkv * N * D;
    float *q32 = malloc(nq * 4), *k32 = malloc(nk * 4), *v32 = malloc(nk * 4);
    float *o32[2] = {malloc(nq * 4), malloc(nq * 4)};
    void *q = malloc(nq * 4), *out[2] = {malloc(nq * 4), malloc(nq * 4)};
    void *kb = malloc(nk * 4), *vb = malloc(nk * 4);
    if (!q32 || !k32 || !v32 || !o32[0] || !o32[1] || !q || !out[0] ||
        !out[1] || !kb || !vb)
        exit(1);
    for (int dt = ATTN_F32; dt <= ATTN_F16; dt++)
        for (int st = 1; st >= 0; st--) {
            enum attn_dtype t = (enum attn_dtype)dt;
            if (st) {
                structured(H, Hkv, N, D, q32, k32, v32);
            } else {
                for (size_t i = 0; i < nq; i++)
                    q32[i] = uniform();
                for (size_t i = 0; i < nk; i++)
                    k32[i] = uniform(), v32[i] = uniform();
            }
            attn_from_f32(t, q32, q, nq);
            attn_from_f32(t, k32, kb, nk);
            attn_from_f32(t, v32, vb, nk);
            struct attn_kv_shape sh = {t, 1, Hkv, D};
            struct attn_kv *kv;
            struct attn_kv_tokens all = {kb, vb, NULL, N};
            if (attn_kv_new(be, &sh, &kv) != ATTN_OK ||
                attn_kv_append(kv, &all) != ATTN_OK) {
                fprintf(stderr, "bench-decoder: no store\n");
                exit(1);
            }
            struct attn_problem p[2];
            for (int i = 0; i < 2; i++)
                p[i] = (struct attn_problem){
                    .method = i ? ATTN_MRA2 : ATTN_EXACT, .dtype = t, .B = 1,
                    .H = H, .Hkv = Hkv, .Nq = 1, .Nk = N, .D = D, .q = q,
                    .out = out[i], .causal = 1, .block_per_row = 16, .kv = kv};
            const struct attn_problem *pp[2] = {&p[0], &p[1]};
            double tm[2];
            time_all(be, pp, 2, o->reps, tm);
            for (int i = 0; i < 2; i++)
                attn_to_f32(t, out[i], o32[i], nq);
            double err = rel_err(o32[1], o32[0], nq);
            const char *inputs = st ? "structured" : "uniform";
            printf("  %-5s %-10s %7.2f ms %7.2f ms %10.2fx %8s %13.4f\n",
                   attn_dtype_name(t), inputs, tm[0] * 1e3, tm[1] * 1e3,
                   tm[0] / tm[1], tm[0] / tm[1] >= 5 ? ">=5x met" : ">=5x MISSED",
                   err);
            fprintf(json,
                    "{\"part\":\"session\",\"dtype\":\"%s\",\"inputs\":\"%s\","
                    "\"Nk\":%u,\"exact_s\":%.6f,\"mra2_s\":%.6f,"
                    "\"speedup\":%.4f,\"mra2_rel_err\":%.6f}\n",
                    attn_dtype_name(t), inputs, N, tm[0], tm[1], tm[0] / tm[1],
                    err);
            if (st && dt == ATTN_F16) {
                /* One token appended at a time, as a decoding step does. */
                struct attn_kv_tokens one = {kb, vb, NULL, 1};
                int reps = 2000;
                double t0 = now_s();
                for (int i = 0; i < reps; i++)
                    if (attn_kv_append(kv, &one) != ATTN_OK)
                        exit(1);
                double per = (now_s() - t0) / reps;
                printf("  appending one token (f16, %u KV heads): %.2f us\n",
                       Hkv, per * 1e6);
                fprintf(json,
                        "{\"part\":\"session_append\",\"dtype\":\"f16\","
                        "\"append_one_s\":%.9f}\n",
                        per);
            }
            attn_kv_free(kv);
        }
    free(q32), free(k32), free(v32), free(o32[0]), free(o32[1]);
    free(q), free(out[0]), free(out[1]), free(kb), free(vb);
}

int main(int argc, char **argv)
{
    struct opts o = {0, 5, 0, "bench-out/decoder.json", NULL};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            o.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            o.reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            o.quick = 1;
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            o.out = argv[++i];
        else if (!strcmp(argv[i], "--part") && i + 1 < argc)
            o.part = argv[++i];
        else {
            fprintf(stderr, "usage: bench-decoder [--threads T] [--reps R] "
                            "[--quick] [--part causal|decode|layer|session] "
                            "[--out FILE]\n");
            return 1;
        }
    }
    if (o.reps < 1)
        o.reps = 1;
    json = fopen(o.out, "w");
    if (!json) {
        perror(o.out);
        return 1;
    }
    struct attn_config cfg = {.threads = o.threads};
    struct attn_backend *be;
    if (attn_backend_new("cpu", &cfg, &be) != ATTN_OK) {
        fprintf(stderr, "bench-decoder: no CPU backend\n");
        return 1;
    }
    if (!o.threads)
        o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    printf("backend: %s\n", attn_backend_device(be));
    static const struct {
        const char *name;
        void (*run)(struct attn_backend *, const struct opts *);
    } parts[] = {{"causal", part_causal},
                 {"decode", part_decode},
                 {"layer", part_layer},
                 {"session", part_session}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (!o.part || !strcmp(o.part, parts[i].name))
            parts[i].run(be, &o);
    attn_backend_free(be);
    fclose(json);
    return 0;
}
