/*
 * bench-cpu.c - the measuring side of bench/30-cpu.sh: times the CPU
 * backend's exact and MRA-2 attention through the public C API and
 * measures how far MRA-2 lands from exact attention.
 *
 *   bench-cpu --n N [--heads 12] [--dim 64] [--threads T] [--bpr 1,4,16,32|none]
 *             [--exact] [--ref-rows R] [--budget S] [--min-reps R]
 *             [--max-reps R] [--inputs local,gauss] [--seed X]
 *             [--dtype f32|bf16|f16] [--isa auto|amx|avx512|avx2|portable]
 *
 * One problem per configuration: B = 1, H query heads (= KV heads), N
 * tokens, head dimension D, no mask, in --dtype (f32 by default; bf16 and
 * f16 inputs are the f32 ones rounded, and the float64 reference rows are
 * computed from the rounded values).  --isa names the CPU kernel path
 * (attn_config.isa; default: the backend's choice).  Two kinds of inputs:
 *   local  queries and keys follow a smooth curve through R^D (a sum of
 *          sinusoids of random low frequencies, as random Fourier features
 *          of a Gaussian kernel with a 64-token length scale) plus Gaussian
 *          noise, so that a token attends mostly to its neighbours, as in
 *          trained models;
 *   gauss  every element of Q, K, V drawn from N(0, 1): no locality at all.
 * The first kind listed is the one timed: a warm-up call, then as many
 * repetitions as fit in --budget seconds, between --min-reps (1) and
 * --max-reps (7), and the median is reported; with --min-reps 1, a call
 * longer than the whole budget is timed once without a warm-up.  The
 * other kinds are computed once, for their errors.
 *
 * Errors are relative Frobenius norms ||out - ref|| / ||ref||, against
 * the backend's exact output (--exact) and, with --ref-rows R, against a
 * float64 exact attention of R rows per head spread over the sequence, the
 * check that still works where a full exact pass is too slow.
 *
 * Prints one JSON object per line: a "backend" record, then one "result"
 * record per method and block_per_row.  Exit status 0, or 1 on a bad
 * argument or when the backend cannot be created.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attention/attn.h"

#define MAX_BPR 16
#define MAX_KINDS 2
#define LOCAL_SCALE 64.0 /* length scale of the smooth inputs, in tokens */
#define LOCAL_GAIN 9.0   /* gain of the smooth part: peak logit ~ 9^2/8 */
#define LOCAL_NOISE 0.5  /* standard deviation of the added noise */

enum kind { KIND_LOCAL, KIND_GAUSS };
static const char *const kind_names[] = {"local", "gauss"};

struct opts {
    uint32_t n, heads, dim;
    int threads;
    uint32_t bpr[MAX_BPR];
    int nbpr;
    int exact;
    uint32_t ref_rows;
    double budget;
    int min_reps, max_reps;
    enum kind kinds[MAX_KINDS];
    int nkinds;
    uint64_t seed;
    enum attn_dtype dtype;
    const char *isa; /* NULL: the backend's choice */
};

/* What one configuration (exact, or mra2 at one block_per_row) measured. */
struct result {
    double times[64];
    int nreps;
    int warmed; /* 0: the one call was longer than the budget, no warm-up */
    double median;
    double cpu_share; /* CPU time / (wall time * threads) while timed */
    double flops;
    double density;
    int err;
    double err_exact[MAX_KINDS]; /* vs the backend's exact; NAN if none */
    double err_rows[MAX_KINDS];  /* vs the float64 rows; NAN if none */
};

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_s(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

/* CPU time of all threads of this process: with the wall time it tells
 * how much of the cores the backend really had while it was timed. */
static double cpu_s(void)
{
    return clock_s(CLOCK_PROCESS_CPUTIME_ID);
}

/* splitmix64: small, fast, and good enough to fill benchmark inputs. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *s) /* in (0, 1) */
{
    return ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
}

/* Fills x[0..n) with N(0, 1) samples (Box-Muller, two at a time). */
static void fill_gauss(float *x, size_t n, uint64_t *s)
{
    for (size_t i = 0; i < n; i += 2) {
        double r = sqrt(-2.0 * log(rng_uniform(s)));
        double t = 2.0 * M_PI * rng_uniform(s);
        x[i] = (float)(r * cos(t));
        if (i + 1 < n)
            x[i + 1] = (float)(r * sin(t));
    }
}

/* Smooth queries and keys: per head, D/2 frequencies w ~ N(0, 1/l^2) and
 * phases p; token i gets the point (cos(w i + p), sin(w i + p)) * sqrt(2/D)
 * of unit norm, so x_i . x_j = mean cos(w (i - j)) decays with |i - j|
 * like a Gaussian kernel.  Q and K share the curve, each with its own
 * noise; V stays Gaussian. */
static void fill_local(float *q, float *k, float *v, uint32_t H, uint32_t N,
                       uint32_t D, uint64_t *s)
{
    size_t per_head = (size_t)N * D;
    double amp = LOCAL_GAIN * sqrt(2.0 / D);
    fill_gauss(q, per_head * H, s);
    fill_gauss(k, per_head * H, s);
    fill_gauss(v, per_head * H, s);
    for (uint32_t h = 0; h < H; h++) {
        double w[ATTN_MAX_HEAD_DIM / 2], p[ATTN_MAX_HEAD_DIM / 2];
        for (uint32_t m = 0; m < D / 2; m++) {
            double r = sqrt(-2.0 * log(rng_uniform(s)));
            w[m] = r * cos(2.0 * M_PI * rng_uniform(s)) / LOCAL_SCALE;
            p[m] = 2.0 * M_PI * rng_uniform(s);
        }
        for (uint32_t i = 0; i < N; i++) {
            float *qi = q + h * per_head + (size_t)i * D;
            float *ki = k + h * per_head + (size_t)i * D;
            for (uint32_t m = 0; m < D / 2; m++) {
                double a = w[m] * i + p[m];
                float c = (float)(amp * cos(a)), sn = (float)(amp * sin(a));
                qi[2 * m] = c + (float)LOCAL_NOISE * qi[2 * m];
                qi[2 * m + 1] = sn + (float)LOCAL_NOISE * qi[2 * m + 1];
                ki[2 * m] = c + (float)LOCAL_NOISE * ki[2 * m];
                ki[2 * m + 1] = sn + (float)LOCAL_NOISE * ki[2 * m + 1];
            }
        }
    }
}

/* The rows of head h checked against float64: R rows spread evenly, shifted
 * per head so that different heads look at different block offsets. */
static uint32_t ref_row(uint32_t N, uint32_t R, uint32_t h, uint32_t r)
{
    uint64_t step = N / R ? N / R : 1;
    return (uint32_t)(((uint64_t)r * N / R + (h * 7u) % step) % N);
}

struct ref_job {
    const float *q, *k, *v;
    double *out; /* [H][R][D] */
    uint32_t H, N, D, R;
    double scale;
    int tid, nthreads;
};

/* Exact softmax attention of the chosen rows in float64. */
static void *ref_worker(void *arg)
{
    struct ref_job *j = arg;
    double *logit = malloc(sizeof(double) * j->N);
    if (!logit)
        return (void *)1;
    size_t per_head = (size_t)j->N * j->D;
    for (uint32_t t = (uint32_t)j->tid; t < j->H * j->R;
         t += (uint32_t)j->nthreads) {
        uint32_t h = t / j->R, r = t % j->R;
        const float *qi =
            j->q + h * per_head + (size_t)ref_row(j->N, j->R, h, r) * j->D;
        const float *kh = j->k + h * per_head, *vh = j->v + h * per_head;
        double mx = -INFINITY;
        for (uint32_t c = 0; c < j->N; c++) {
            const float *kc = kh + (size_t)c * j->D;
            double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            uint32_t d = 0;
            for (; d + 4 <= j->D; d += 4) {
                a0 += (double)qi[d] * kc[d];
                a1 += (double)qi[d + 1] * kc[d + 1];
                a2 += (double)qi[d + 2] * kc[d + 2];
                a3 += (double)qi[d + 3] * kc[d + 3];
            }
            for (; d < j->D; d++)
                a0 += (double)qi[d] * kc[d];
            logit[c] = j->scale * (a0 + a1 + a2 + a3);
            if (logit[c] > mx)
                mx = logit[c];
        }
        double *o = j->out + (size_t)t * j->D, sum = 0;
        memset(o, 0, sizeof(double) * j->D);
        for (uint32_t c = 0; c < j->N; c++) {
            double w = exp(logit[c] - mx);
            const float *vc = vh + (size_t)c * j->D;
            sum += w;
            for (uint32_t d = 0; d < j->D; d++)
                o[d] += w * vc[d];
        }
        for (uint32_t d = 0; d < j->D; d++)
            o[d] /= sum;
    }
    free(logit);
    return NULL;
}

static int reference_rows(const float *q, const float *k, const float *v,
                          uint32_t H, uint32_t N, uint32_t D, uint32_t R,
                          double scale, int nthreads, double *out)
{
    pthread_t th[64];
    struct ref_job jobs[64];
    if (nthreads < 1)
        nthreads = 1;
    if (nthreads > 64)
        nthreads = 64;
    int started = 0, bad = 0;
    for (int t = 0; t < nthreads; t++) {
        jobs[t] =
            (struct ref_job){q, k, v, out, H, N, D, R, scale, t, nthreads};
        if (pthread_create(&th[t], NULL, ref_worker, &jobs[t]) != 0) {
            bad = 1;
            break;
        }
        started++;
    }
    for (int t = 0; t < started; t++) {
        void *rv = NULL;
        pthread_join(th[t], &rv);
        bad |= rv != NULL;
    }
    return bad ? -1 : 0;
}

/* ||a - b||_F / ||b||_F over all elements. */
static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : NAN;
}

/* The same over the float64 reference rows. */
static double rel_err_rows(const float *out, const double *ref, uint32_t H,
                           uint32_t N, uint32_t D, uint32_t R)
{
    double num = 0, den = 0;
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t r = 0; r < R; r++) {
            const float *o =
                out + (size_t)h * N * D + (size_t)ref_row(N, R, h, r) * D;
            const double *e = ref + ((size_t)h * R + r) * D;
            for (uint32_t d = 0; d < D; d++) {
                num += (o[d] - e[d]) * (o[d] - e[d]);
                den += e[d] * e[d];
            }
        }
    return den > 0 ? sqrt(num / den) : NAN;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs one problem: timed (warm-up plus repetitions) or once. */
static void run(struct attn_backend *be, struct attn_problem *p,
                const struct opts *o, int timed, struct result *res)
{
    struct attn_stats st = {0};
    int nthreads = o->threads ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nthreads < 1)
        nthreads = 1;
    double c0 = cpu_s(), t0 = now_s();
    res->err = attn_backend_compute(be, p, &st);
    double first = now_s() - t0;
    double first_cpu = cpu_s() - c0;
    res->flops = attn_flops(p);
    res->density = st.density;
    if (res->err != ATTN_OK)
        return;
    if (!timed) {
        if (res->nreps == 0) { /* keep a time for configurations not timed */
            res->times[0] = res->median = first;
            res->nreps = 1;
        }
        return;
    }
    /* A call longer than the whole budget is timed once, as it is: the
     * warm-up's page faults and thread start are lost in its length, and a
     * second call would only double a long run. */
    if (first >= o->budget && o->min_reps <= 1) {
        res->times[0] = res->median = first;
        res->nreps = 1;
        res->cpu_share = first_cpu / (first * nthreads);
        return;
    }
    res->warmed = 1;
    int reps = first > 0 ? (int)(o->budget / first) : o->max_reps;
    if (reps < o->min_reps)
        reps = o->min_reps;
    if (reps > o->max_reps)
        reps = o->max_reps;
    double wall = 0;
    c0 = cpu_s();
    for (int r = 0; r < reps; r++) {
        t0 = now_s();
        res->err = attn_backend_compute(be, p, NULL);
        res->times[r] = now_s() - t0;
        wall += res->times[r];
        if (res->err != ATTN_OK)
            return;
    }
    res->cpu_share = wall > 0 ? (cpu_s() - c0) / (wall * nthreads) : NAN;
    res->nreps = reps;
    double sorted[64];
    memcpy(sorted, res->times, sizeof(double) * (size_t)reps);
    qsort(sorted, (size_t)reps, sizeof(double), cmp_double);
    res->median = reps % 2 ? sorted[reps / 2]
                           : 0.5 * (sorted[reps / 2 - 1] + sorted[reps / 2]);
}

static void print_num(const char *key, double x)
{
    if (isfinite(x))
        printf(", \"%s\": %.6g", key, x);
    else
        printf(", \"%s\": null", key);
}

static void print_result(const struct opts *o, const char *method, uint32_t bpr,
                         const struct result *r)
{
    printf("{\"record\": \"result\", \"method\": \"%s\", \"N\": %u, "
           "\"H\": %u, \"D\": %u, \"threads\": %d, \"bpr\": %u, "
           "\"dtype\": \"%s\"",
           method, o->n, o->heads, o->dim, o->threads, bpr,
           attn_dtype_name(o->dtype));
    if (o->isa) /* a forced path; else the backend's own choice */
        printf(", \"isa\": \"%s\"", o->isa);
    if (r->err != ATTN_OK) {
        printf(", \"error\": \"%s\"}\n", attn_strerror(r->err));
        return;
    }
    print_num("time_s", r->median);
    printf(", \"times\": [");
    for (int i = 0; i < r->nreps; i++)
        printf("%s%.6g", i ? ", " : "", r->times[i]);
    printf("], \"warm_up\": %s", r->warmed ? "true" : "false");
    print_num("flops", r->flops);
    print_num("gflops", r->flops / r->median * 1e-9);
    print_num("density", r->density);
    print_num("cpu_share", r->cpu_share > 0 ? r->cpu_share : NAN);
    printf(", \"timed_on\": \"%s\"", kind_names[o->kinds[0]]);
    for (int i = 0; i < o->nkinds; i++) {
        char key[64];
        snprintf(key, sizeof key, "err_exact_%s", kind_names[o->kinds[i]]);
        print_num(key, r->err_exact[i]);
        snprintf(key, sizeof key, "err_rows_%s", kind_names[o->kinds[i]]);
        print_num(key, r->err_rows[i]);
    }
    printf("}\n");
    fflush(stdout);
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.heads = 12,
                       .dim = 64,
                       .budget = 10.0,
                       .min_reps = 1,
                       .max_reps = 7,
                       .kinds = {KIND_LOCAL, KIND_GAUSS},
                       .nkinds = 2,
                       .seed = 20260101,
                       .dtype = ATTN_F32};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        uint32_t u;
        if (!strcmp(a, "--exact")) {
            o->exact = 1;
            continue;
        }
        if (!val)
            return -1;
        i++;
        if (!strcmp(a, "--n")) {
            if (parse_u32(val, 1, 1u << 22, &o->n))
                return -1;
        } else if (!strcmp(a, "--heads")) {
            if (parse_u32(val, 1, 1024, &o->heads))
                return -1;
        } else if (!strcmp(a, "--dim")) {
            if (parse_u32(val, 2, ATTN_MAX_HEAD_DIM, &o->dim) || o->dim % 2)
                return -1;
        } else if (!strcmp(a, "--threads")) {
            if (parse_u32(val, 0, 1024, &u))
                return -1;
            o->threads = (int)u;
        } else if (!strcmp(a, "--ref-rows")) {
            if (parse_u32(val, 0, 1u << 20, &o->ref_rows))
                return -1;
        } else if (!strcmp(a, "--min-reps")) {
            if (parse_u32(val, 1, 64, &u))
                return -1;
            o->min_reps = (int)u;
        } else if (!strcmp(a, "--max-reps")) {
            if (parse_u32(val, 1, 64, &u))
                return -1;
            o->max_reps = (int)u;
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(val, "f32"))
                o->dtype = ATTN_F32;
            else if (!strcmp(val, "bf16"))
                o->dtype = ATTN_BF16;
            else if (!strcmp(val, "f16"))
                o->dtype = ATTN_F16;
            else
                return -1;
        } else if (!strcmp(a, "--isa")) {
            o->isa = strcmp(val, "auto") ? val : NULL;
        } else if (!strcmp(a, "--seed")) {
            o->seed = strtoull(val, NULL, 10);
        } else if (!strcmp(a, "--budget")) {
            o->budget = strtod(val, NULL);
            if (!(o->budget >= 0 && o->budget < 1e5))
                return -1;
        } else if (!strcmp(a, "--bpr") || !strcmp(a, "--inputs")) {
            char buf[256];
            snprintf(buf, sizeof buf, "%s", val);
            int bpr = !strcmp(a, "--bpr");
            if (bpr)
                o->nbpr = 0;
            else
                o->nkinds = 0;
            if (bpr && !strcmp(val, "none")) /* exact alone */
                continue;
            for (char *save, *t = strtok_r(buf, ",", &save); t;
                 t = strtok_r(NULL, ",", &save)) {
                if (bpr) {
                    if (o->nbpr == MAX_BPR || parse_u32(t, 1, 1u << 20, &u))
                        return -1;
                    o->bpr[o->nbpr++] = u;
                } else if (o->nkinds < MAX_KINDS &&
                           (!strcmp(t, "local") || !strcmp(t, "gauss"))) {
                    o->kinds[o->nkinds++] =
                        !strcmp(t, "local") ? KIND_LOCAL : KIND_GAUSS;
                } else {
                    return -1;
                }
            }
        } else {
            return -1;
        }
    }
    return o->n && o->nkinds && o->min_reps <= o->max_reps ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct opts o;
    if (parse_args(argc, argv, &o)) {
        fprintf(stderr,
                "usage: bench-cpu --n N [--heads H] [--dim D] [--threads T] "
                "[--bpr 1,4,16,32|none] [--exact] [--ref-rows R] [--budget S] "
                "[--min-reps R] [--max-reps R] [--inputs local,gauss] "
                "[--seed X] [--dtype f32|bf16|f16] "
                "[--isa auto|amx|avx512|avx2|portable]\n");
        return 1;
    }
    struct attn_config cfg = {.threads = o.threads, .isa = o.isa};
    struct attn_backend *be = NULL;
    int rc = attn_backend_new("cpu", &cfg, &be);
    if (rc != ATTN_OK) {
        fprintf(stderr, "bench-cpu: cpu backend: %s\n", attn_strerror(rc));
        return 1;
    }
    printf("{\"record\": \"backend\", \"name\": \"%s\", \"device\": \"%s\", "
           "\"threads\": %d, \"dtype\": \"%s\"}\n",
           attn_backend_name(be), attn_backend_device(be), o.threads,
           attn_dtype_name(o.dtype));
    fflush(stdout);

    /* H, N, D and R are bounded by parse_args (H <= 1024, N <= 2^22,
     * D <= 256, R <= N), so these products stay far below SIZE_MAX on a
     * 64-bit size_t; the checks keep that true if the bounds ever move. */
    if (o.ref_rows > o.n)
        o.ref_rows = o.n;
    size_t n = (size_t)o.heads * o.n;
    size_t rows = (size_t)o.heads * o.ref_rows;
    if (n > SIZE_MAX / o.dim / sizeof(float) ||
        rows > SIZE_MAX / o.dim / sizeof(double)) {
        fprintf(stderr, "bench-cpu: problem too large\n");
        return 1;
    }
    n *= o.dim;
    size_t bytes = n * sizeof(float);
    float *q = malloc(bytes), *k = malloc(bytes), *v = malloc(bytes);
    float *out = malloc(bytes), *ref = o.exact ? malloc(bytes) : NULL;
    /* the problem's own tensors when its dtype is not f32 */
    size_t es = attn_dtype_size(o.dtype);
    int typed = o.dtype != ATTN_F32;
    void *qd = typed ? malloc(n * es) : q, *kd = typed ? malloc(n * es) : k;
    void *vd = typed ? malloc(n * es) : v;
    void *outd = typed ? malloc(n * es) : NULL;
    void *refd = typed && o.exact ? malloc(n * es) : NULL;
    rows *= o.dim;
    double *ref64 = o.ref_rows ? malloc(rows * sizeof(double)) : NULL;
    struct result *res = calloc((size_t)o.nbpr + 1, sizeof(*res));
    if (!q || !k || !v || !out || (o.exact && !ref) || (o.ref_rows && !ref64) ||
        !res || !qd || !kd || !vd || (typed && !outd) ||
        (typed && o.exact && !refd)) {
        fprintf(stderr, "bench-cpu: out of memory\n");
        return 1;
    }
    for (int c = 0; c <= o.nbpr; c++)
        for (int i = 0; i < MAX_KINDS; i++)
            res[c].err_exact[i] = res[c].err_rows[i] = NAN;

    struct attn_problem p = {.dtype = ATTN_F32,
                             .B = 1,
                             .H = o.heads,
                             .Hkv = o.heads,
                             .Nq = o.n,
                             .Nk = o.n,
                             .D = o.dim,
                             .q = qd,
                             .k = kd,
                             .v = vd};
    p.dtype = o.dtype;
    for (int ki = 0; ki < o.nkinds; ki++) {
        uint64_t s = o.seed + 1000003u * (uint64_t)o.kinds[ki] + o.n;
        if (o.kinds[ki] == KIND_LOCAL)
            fill_local(q, k, v, o.heads, o.n, o.dim, &s);
        else
            fill_gauss(q, n, &s), fill_gauss(k, n, &s), fill_gauss(v, n, &s);
        if (typed) { /* rounded: what the backend and the reference see */
            float *src[3] = {q, k, v};
            void *dst[3] = {qd, kd, vd};
            for (int t = 0; t < 3; t++) {
                attn_from_f32(o.dtype, src[t], dst[t], n);
                attn_to_f32(o.dtype, dst[t], src[t], n);
            }
        }
        p.scale = 0;
        double scale = attn_scale(&p);
        if (o.ref_rows &&
            reference_rows(q, k, v, o.heads, o.n, o.dim, o.ref_rows, scale,
                           o.threads ? o.threads : 2, ref64)) {
            fprintf(stderr, "bench-cpu: float64 reference failed\n");
            return 1;
        }
        if (o.exact) {
            p.method = ATTN_EXACT;
            p.out = typed ? refd : ref;
            run(be, &p, &o, ki == 0, &res[0]);
            if (typed)
                attn_to_f32(o.dtype, refd, ref, n);
            if (res[0].err == ATTN_OK && o.ref_rows)
                res[0].err_rows[ki] =
                    rel_err_rows(ref, ref64, o.heads, o.n, o.dim, o.ref_rows);
            if (res[0].err == ATTN_OK)
                res[0].err_exact[ki] = 0.0;
        }
        for (int b = 0; b < o.nbpr; b++) {
            struct result *r = &res[b + 1];
            p.method = ATTN_MRA2;
            p.block_per_row = o.bpr[b];
            p.out = typed ? outd : out;
            run(be, &p, &o, ki == 0, r);
            if (r->err != ATTN_OK)
                continue;
            if (typed)
                attn_to_f32(o.dtype, outd, out, n);
            if (o.exact && res[0].err == ATTN_OK)
                r->err_exact[ki] = rel_err(out, ref, n);
            if (o.ref_rows)
                r->err_rows[ki] =
                    rel_err_rows(out, ref64, o.heads, o.n, o.dim, o.ref_rows);
        }
    }
    if (o.exact)
        print_result(&o, "exact", 0, &res[0]);
    for (int b = 0; b < o.nbpr; b++)
        print_result(&o, "mra2", o.bpr[b], &res[b + 1]);

    free(q), free(k), free(v), free(out), free(ref), free(ref64), free(res);
    if (typed)
        free(qd), free(kd), free(vd), free(outd), free(refd);
    attn_backend_free(be);
    return 0;
}
