/*
 * bench-decoder.c - decoder shapes on the CPU backend: what causal masking
 * saves, and how fast a few queries run against a long context (a KV-cache
 * decoding step), measured side by side in one run.
 *
 *   bench-decoder [--threads T] [--reps R] [--quick] [--out FILE]
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
 *           measured in the same run.
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

int main(int argc, char **argv)
{
    struct opts o = {0, 5, 0, "bench-out/decoder.json"};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            o.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            o.reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            o.quick = 1;
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            o.out = argv[++i];
        else {
            fprintf(stderr, "usage: bench-decoder [--threads T] [--reps R] "
                            "[--quick] [--out FILE]\n");
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
    part_causal(be, &o);
    part_decode(be, &o);
    part_layer(be, &o);
    attn_backend_free(be);
    fclose(json);
    return 0;
}
