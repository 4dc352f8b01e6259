/*
 * bench-attn.c - speed of the attention library on this machine: time per
 * head of exact and mra2 (block_per_row 16) for D = 64 and N in {1024,
 * 4096, 16384}, with GFLOP/s as attn_flops() counts them.  Prints a table
 * and writes JSON (default bench-out/attn.json).
 *
 *   bench-attn [--backend cpu|cuda|auto] [--threads T] [--isa NAME]
 *              [--dtype f32|f16|bf16] [--out FILE] [--quick]
 *
 * --quick stops at N = 4096 (for smoke runs).
 *
 * It also measures the latency of one tiny call (N = 128, one head, D =
 * 64): what a short request pays on top of its arithmetic, such as waking
 * worker threads.  Median and 10th/90th percentiles of 1001 calls.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention/attn.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fill(void *buf, size_t n, enum attn_dtype dt, uint64_t *st)
{
    for (size_t i = 0; i < n; i++) {
        *st = *st * 6364136223846793005ull + 1442695040888963407ull;
        float x =
            (float)((double)(*st >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
        if (dt == ATTN_F32)
            ((float *)buf)[i] = x;
        else if (dt == ATTN_F16)
            ((uint16_t *)buf)[i] = attn_f32_to_f16(x);
        else
            ((uint16_t *)buf)[i] = attn_f32_to_bf16(x);
    }
}

struct result {
    const char *method;
    uint32_t N;
    double sec_per_head, gflops, density;
};

/* Latency of one small call, in seconds. */
struct latency {
    const char *method;
    double p10, median, p90;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The problems timed here: B = 1, H heads (as many KV heads), block_per_row
 * 16 for MRA. */
static struct attn_problem bench_problem(enum attn_method method,
                                         enum attn_dtype dt, uint32_t H,
                                         uint32_t N, uint32_t D, void *q,
                                         void *k, void *v, void *o)
{
    return (struct attn_problem){
        .method = method,
        .dtype = dt,
        .B = 1,
        .H = H,
        .Hkv = H,
        .Nq = N,
        .Nk = N,
        .D = D,
        .q = q,
        .k = k,
        .v = v,
        .out = o,
        .block_per_row = 16,
    };
}

#define LAT_N 128
#define LAT_CALLS 1001

/* Times LAT_CALLS calls of a one-head N = LAT_N problem of `method`.
 * Returns ATTN_OK or the first error. */
static int measure_latency(struct attn_backend *be, enum attn_method method,
                           enum attn_dtype dt, struct latency *out)
{
    const uint32_t N = LAT_N, D = 64;
    size_t n = (size_t)N * D, es = attn_dtype_size(dt);
    void *q = malloc(n * es), *k = malloc(n * es), *v = malloc(n * es);
    void *o = malloc(n * es);
    double *t = malloc(LAT_CALLS * sizeof *t);
    int rc = ATTN_ENOMEM;
    if (q && k && v && o && t) {
        uint64_t st = 7;
        fill(q, n, dt, &st);
        fill(k, n, dt, &st);
        fill(v, n, dt, &st);
        struct attn_problem p = bench_problem(method, dt, 1, N, D, q, k, v, o);
        rc = attn_backend_compute(be, &p, NULL); /* warm-up */
        for (int i = 0; i < LAT_CALLS && rc == ATTN_OK; i++) {
            double t0 = now();
            rc = attn_backend_compute(be, &p, NULL);
            t[i] = now() - t0;
        }
        if (rc == ATTN_OK) {
            qsort(t, LAT_CALLS, sizeof *t, cmp_double);
            out->method = attn_method_name(method);
            out->p10 = t[LAT_CALLS / 10];
            out->median = t[LAT_CALLS / 2];
            out->p90 = t[LAT_CALLS * 9 / 10];
        }
    }
    free(q), free(k), free(v), free(o), free(t);
    return rc;
}

int main(int argc, char **argv)
{
    const char *backend = "cpu", *out_path = "bench-out/attn.json";
    struct attn_config cfg = {0};
    enum attn_dtype dt = ATTN_F32;
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--backend") && v)
            backend = v, i++;
        else if (!strcmp(a, "--threads") && v)
            cfg.threads = atoi(v), i++;
        else if (!strcmp(a, "--isa") && v)
            cfg.isa = v, i++;
        else if (!strcmp(a, "--out") && v)
            out_path = v, i++;
        else if (!strcmp(a, "--dtype") && v) {
            dt = !strcmp(v, "f16")    ? ATTN_F16
                 : !strcmp(v, "bf16") ? ATTN_BF16
                                      : ATTN_F32;
            i++;
        } else if (!strcmp(a, "--quick"))
            quick = 1;
        else {
            fprintf(stderr,
                    "usage: %s [--backend NAME] [--threads T] [--isa NAME] "
                    "[--dtype f32|f16|bf16] [--out FILE] [--quick]\n",
                    argv[0]);
            return 2;
        }
    }
    struct attn_backend *be;
    int rc = attn_backend_new(backend, &cfg, &be);
    if (rc != ATTN_OK) {
        fprintf(stderr, "bench-attn: backend %s: %s\n", backend,
                attn_strerror(rc));
        return 1;
    }
    printf("backend %s: %s\n", attn_backend_name(be), attn_backend_device(be));
    printf("%-6s %7s %12s %10s %8s\n", "method", "N", "ms/head", "GFLOP/s",
           "density");

    static const uint32_t Ns[] = {1024, 4096, 16384};
    static const enum attn_method methods[] = {ATTN_EXACT, ATTN_MRA2};
    struct result res[6];
    int nres = 0;
    const uint32_t D = 64;
    for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++) {
        uint32_t N = Ns[ni];
        if (quick && N > 4096)
            break;
        /* enough heads that the small sizes are measured over many tiles */
        uint32_t H = N <= 1024 ? 8 : N <= 4096 ? 2 : 1;
        size_t n = (size_t)H * N * D, es = attn_dtype_size(dt);
        void *q = malloc(n * es), *k = malloc(n * es), *v = malloc(n * es);
        void *o = malloc(n * es);
        if (!q || !k || !v || !o) {
            fprintf(stderr, "bench-attn: out of memory\n");
            return 1;
        }
        uint64_t st = 42;
        fill(q, n, dt, &st);
        fill(k, n, dt, &st);
        fill(v, n, dt, &st);
        for (size_t mi = 0; mi < 2; mi++) {
            struct attn_problem p =
                bench_problem(methods[mi], dt, H, N, D, q, k, v, o);
            struct attn_stats stats;
            /* warm-up (pool, arena), then repeat until 0.5 s or 3 runs */
            rc = attn_backend_compute(be, &p, &stats);
            if (rc != ATTN_OK) {
                fprintf(stderr, "bench-attn: %s\n", attn_strerror(rc));
                return 1;
            }
            int runs = 0;
            double t0 = now(), t;
            do {
                attn_backend_compute(be, &p, &stats);
                runs++;
                t = now() - t0;
            } while (t < 0.5 && runs < 50);
            double per_call = t / runs;
            struct result *r = &res[nres++];
            r->method = attn_method_name(p.method);
            r->N = N;
            r->sec_per_head = per_call / H;
            r->gflops = attn_flops(&p) / per_call * 1e-9;
            r->density = stats.density;
            printf("%-6s %7u %12.3f %10.2f %8.4f\n", r->method, N,
                   r->sec_per_head * 1e3, r->gflops, r->density);
            fflush(stdout);
        }
        free(q), free(k), free(v), free(o);
    }

    struct latency lat[2];
    printf("one call, N = %d, one head: %7s %10s %10s %10s\n", LAT_N, "method",
           "p10 us", "median us", "p90 us");
    for (size_t mi = 0; mi < 2; mi++) {
        rc = measure_latency(be, methods[mi], dt, &lat[mi]);
        if (rc != ATTN_OK) {
            fprintf(stderr, "bench-attn: %s\n", attn_strerror(rc));
            return 1;
        }
        printf("%34s %10.1f %10.1f %10.1f\n", lat[mi].method, lat[mi].p10 * 1e6,
               lat[mi].median * 1e6, lat[mi].p90 * 1e6);
    }

    FILE *f = fopen(out_path, "w");
    if (!f) {
        perror(out_path);
        attn_backend_free(be);
        return 1;
    }
    fprintf(f, "{\n  \"backend\": \"%s\",\n  \"device\": \"%s\",\n",
            attn_backend_name(be), attn_backend_device(be));
    fprintf(f, "  \"dtype\": \"%s\",\n  \"D\": %u,\n  \"block_per_row\": 16,\n",
            attn_dtype_name(dt), D);
    fprintf(f, "  \"results\": [\n");
    for (int i = 0; i < nres; i++)
        fprintf(f,
                "    {\"method\": \"%s\", \"N\": %u, \"sec_per_head\": %.6g, "
                "\"gflops\": %.4g, \"density\": %.6g}%s\n",
                res[i].method, res[i].N, res[i].sec_per_head, res[i].gflops,
                res[i].density, i + 1 < nres ? "," : "");
    fprintf(f, "  ],\n  \"latency\": [\n");
    for (int i = 0; i < 2; i++)
        fprintf(f,
                "    {\"method\": \"%s\", \"N\": %d, \"H\": 1, "
                "\"p10_s\": %.4g, \"median_s\": %.4g, \"p90_s\": %.4g}%s\n",
                lat[i].method, LAT_N, lat[i].p10, lat[i].median, lat[i].p90,
                i + 1 < 2 ? "," : "");
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("wrote %s\n", out_path);
    attn_backend_free(be);
    return 0;
}
