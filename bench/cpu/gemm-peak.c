/*
 * gemm-peak.c - measures this machine's single-precision GEMM rate through
 * OpenBLAS (cblas_sgemm), the yardstick the attention kernels are judged
 * against in bench/30-cpu.sh.
 *
 *   gemm-peak [n] [reps]      C = A * B with n x n f32 matrices
 *
 * Prints one JSON object: {"n":..,"threads":..,"gflops_best":..,
 * "gflops_median":..,"cpu_share":..,"core":".."}; cpu_share is the
 * process's CPU time over wall time x threads (1.0 on a quiet machine).  The
 * thread count is OpenBLAS's own (OPENBLAS_NUM_THREADS); the best of the
 * repetitions is the peak, the median is printed beside it so a noisy machine
 * shows.
 */
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Not declared by every cblas.h; both are exported by libopenblas. */
extern int openblas_get_num_threads(void);
extern char *openblas_get_corename(void);

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

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 4096;
    long reps = argc > 2 ? strtol(argv[2], NULL, 10) : 5;
    if (n < 64 || n > 32768 || reps < 1 || reps > 1000) {
        fprintf(stderr, "usage: gemm-peak [n 64..32768] [reps 1..1000]\n");
        return 2;
    }
    size_t nn = (size_t)n * (size_t)n; /* n <= 32768: no overflow below */
    float *a = aligned_alloc(64, nn * sizeof(float));
    float *b = aligned_alloc(64, nn * sizeof(float));
    float *c = aligned_alloc(64, nn * sizeof(float));
    double *gf = calloc((size_t)reps, sizeof(double));
    if (!a || !b || !c || !gf) {
        fprintf(stderr, "gemm-peak: out of memory\n");
        return 1;
    }
    /* Values in [-1, 1): nothing denormal, nothing overflows. */
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < nn; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        a[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        b[i] = (float)((double)((s * 2654435761u) >> 40) / 16777216.0 - 0.5);
    }
    memset(c, 0, nn * sizeof(float));

    /* Warm-up: spins up the thread pool and faults the pages in. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n,
                (int)n, 1.0f, a, (int)n, b, (int)n, 0.0f, c, (int)n);
    double flop = 2.0 * (double)n * (double)n * (double)n, wall = 0;
    double c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (long r = 0; r < reps; r++) {
        double t0 = clock_s(CLOCK_MONOTONIC);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n,
                    (int)n, 1.0f, a, (int)n, b, (int)n, 0.0f, c, (int)n);
        double dt = clock_s(CLOCK_MONOTONIC) - t0;
        wall += dt;
        gf[r] = flop / dt * 1e-9;
    }
    /* How much of the cores the library had: other processes skew it. */
    double share = (clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0) /
                   (wall * openblas_get_num_threads());
    qsort(gf, (size_t)reps, sizeof(double), cmp_double);
    printf("{\"n\": %ld, \"threads\": %d, \"gflops_best\": %.2f, "
           "\"gflops_median\": %.2f, \"cpu_share\": %.3f, \"core\": \"%s\", "
           "\"check\": %.6g}\n",
           n, openblas_get_num_threads(), gf[reps - 1], gf[reps / 2], share,
           openblas_get_corename(), (double)c[nn / 2 + 7]);
    free(a), free(b), free(c), free(gf);
    return 0;
}
