/*
 * amx-peak.c - the ceiling of this machine's matrix engine for bf16, beside
 * PyTorch's bf16 matrix product (oneDNN) in bench/30-cpu.sh: four
 * accumulator tiles multiplied over and over by operands already in the
 * tile registers (two tiles of A, two of B, random values: the engine
 * takes longer on random data than on zeros), so no memory traffic limits
 * it.  No whole matrix product reaches it; it bounds what any kernel on
 * the tiles can do, attention included.
 *
 *   amx-peak [n] [reps] [threads]
 *
 * Each repetition does as many products as an n x n x n matrix product
 * (2 n^3 flops) on every thread.  Prints one JSON object: {"source":
 * "amx-ceiling", "dtype": "bf16", "threads", "n", "gflops_best",
 * "gflops_median", "cpu_share"}.  Exit status 1 where the CPU or the
 * kernel offers no AMX-BF16.  Built by 30-cpu.sh with -mamx-tile
 * -mamx-bf16.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define MAX_THREADS 64

struct tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};
static const _Alignas(64) struct tilecfg cfg = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct job {
    const uint16_t *a, *b; /* two tiles each */
    float *c;
    long iters; /* rounds of 16 products */
};

static void *ceiling_worker(void *arg)
{
    struct job *j = arg;
    _tile_loadconfig(&cfg);
    _tile_loadd(4, j->a, 64);
    _tile_loadd(5, j->a + 512, 64);
    _tile_loadd(6, j->b, 64);
    _tile_loadd(7, j->b + 512, 64);
    for (long i = 0; i < j->iters; i++) {
        for (int r = 0; r < 4; r++) {
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, j->c, 64);
    _tile_release();
    return NULL;
}

/* Runs fn on `threads` threads (the caller is one) and returns the wall
 * time; *cpu gets the CPU time of the process meanwhile. */
static double run(void *(*fn)(void *), struct job *jobs, int threads,
                  double *cpu)
{
    pthread_t th[MAX_THREADS];
    double c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    double t0 = clock_s(CLOCK_MONOTONIC);
    for (int t = 1; t < threads; t++)
        if (pthread_create(&th[t], NULL, fn, &jobs[t]) != 0)
            return -1;
    fn(&jobs[0]);
    for (int t = 1; t < threads; t++)
        pthread_join(th[t], NULL);
    double dt = clock_s(CLOCK_MONOTONIC) - t0;
    *cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    return dt;
}

static void report(const char *source, int threads, int n, double flops,
                   double *times, int reps, double cpu, double wall)
{
    qsort(times, (size_t)reps, sizeof *times, cmp_double);
    double med = reps % 2 ? times[reps / 2]
                          : 0.5 * (times[reps / 2 - 1] + times[reps / 2]);
    printf("{\"source\": \"%s\", \"dtype\": \"bf16\", \"threads\": %d, "
           "\"n\": %d, \"gflops_best\": %.1f, \"gflops_median\": %.1f, "
           "\"cpu_share\": %.3f}\n",
           source, threads, n, flops / times[0] * 1e-9, flops / med * 1e-9,
           cpu / (wall * threads));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2048;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    if (n < 32 || n % 32 || reps < 1 || reps > 64 || threads < 1 ||
        threads > MAX_THREADS) {
        fprintf(stderr, "usage: amx-peak [n (multiple of 32)] [reps] "
                        "[threads]\n");
        return 1;
    }
    if (!__builtin_cpu_supports("amx-bf16") ||
        syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {
        fprintf(stderr, "amx-peak: no AMX-BF16 here\n");
        return 1;
    }
    _Alignas(64) uint16_t a[1024], b[1024];
    float *c = aligned_alloc(64, (size_t)threads * 1024); /* one tile each */
    if (!c)
        return 1;
    /* values in [-2, 2): random bf16 with exponents near 1 */
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < 1024; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        a[i] = (uint16_t)(0x3f00 | (s & 0x807f));
        b[i] = (uint16_t)(0x3f00 | (s >> 20 & 0x807f));
    }
    struct job jobs[MAX_THREADS];
    long iters = (long)(2.0 * n * n * (double)n / (16 * 2.0 * 16 * 16 * 32));
    for (int t = 0; t < threads; t++)
        jobs[t] = (struct job){a, b, c + 256 * t, iters > 0 ? iters : 1};
    double times[64], cpu = 0, wall = 0, cw;
    run(ceiling_worker, jobs, threads, &cw); /* warm-up */
    for (int r = 0; r < reps; r++) {
        times[r] = run(ceiling_worker, jobs, threads, &cw);
        cpu += cw;
        wall += times[r];
    }
    double flops = (double)jobs[0].iters * threads * 16 * 2.0 * 16 * 16 * 32;
    report("amx-ceiling", threads, n, flops, times, reps, cpu, wall);
    free(c);
    return 0;
}
