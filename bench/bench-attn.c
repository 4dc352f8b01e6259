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
            struct attn_problem p = {
                .method = methods[mi],
                .dtype = dt,
                .B = 1,
                .H = H,
                .Hkv = H,
                .N = N,
                .D = D,
                .q = q,
                .k = k,
                .v = v,
                .out = o,
                .block_per_row = 16,
            };
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
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("wrote %s\n", out_path);
    attn_backend_free(be);
    return 0;
}
