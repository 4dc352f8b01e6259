/*
 * test-mraclient-kv.c - the calls of the C client library on sessions
 * (clients/c/kv.c) against a live daemon: the test starts
 * $MRAD_BIN_DIR/mrad (bin/mrad without it) on a free loopback port with a
 * small session budget, and checks a session's round trip (create with a
 * mask, append, attend with appended tokens equal to a float64 reference
 * over the whole keys and values, for f32, f16, grouped heads, causal and
 * not, msgpack and JSON), what info says after each step, delete and the
 * 404 after it (MRAC_EKVNOTFOUND), a create over the budget (507,
 * MRAC_EKVFULL), the arguments refused before anything is sent, and
 * session handles (clients/c/session.c) that keep their context and make
 * a lost session again.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clients/c/mraclient.h"

/* --- the daemon ------------------------------------------------------- */

/* A session budget the tests fill on purpose (4 MiB). */
#define KV_BUDGET (4u << 20)

static struct {
    pid_t pid;
    char log[64];
    char url[64];
    struct mrac_client *c;
} d = {.pid = -1};

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The port of mrad's "listening on HOST:PORT" log line, or 0. */
static unsigned logged_port(void)
{
    FILE *f = fopen(d.log, "r");
    char line[512];
    unsigned port = 0;
    while (f && !port && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "listening on ");
        const char *colon = p ? strchr(p + 13, ':') : NULL;
        if (colon)
            port = (unsigned)strtoul(colon + 1, NULL, 10);
    }
    if (f)
        fclose(f);
    return port;
}

static void print_log(void)
{
    FILE *f = fopen(d.log, "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        fputs(line, stderr);
    if (f)
        fclose(f);
}

static int start_daemon(void **state)
{
    (void)state;
    const char *dir = getenv("MRAD_BIN_DIR");
    char bin[1024], budget[32];
    snprintf(bin, sizeof bin, "%s/mrad", dir && *dir ? dir : "bin");
    snprintf(budget, sizeof budget, "%u", KV_BUDGET);
    snprintf(d.log, sizeof d.log, "/tmp/mraclient-kv-XXXXXX");
    int fd = mkstemp(d.log);
    if (fd < 0)
        return -1;
    d.pid = fork();
    if (d.pid == 0) {
        dup2(fd, STDERR_FILENO);
        char *argv[] = {bin, "--host",           "127.0.0.1", "--port",
                        "0", "--backend",        "cpu",       "--threads",
                        "2", "--kv-cache-bytes", budget,      NULL};
        execv(bin, argv);
        fprintf(stderr, "cannot run %s\n", bin);
        _exit(127);
    }
    close(fd);
    if (d.pid < 0)
        return -1;
    unsigned port = 0;
    for (int i = 0; i < 600 && !(port = logged_port()); i++) {
        if (waitpid(d.pid, NULL, WNOHANG) == d.pid) {
            d.pid = -1;
            break;
        }
        sleep_ms(50);
    }
    if (!port) {
        print_log();
        return -1;
    }
    snprintf(d.url, sizeof d.url, "http://127.0.0.1:%u", port);
    if (mrac_global_init() != MRAC_OK)
        return -1;
    struct mrac_options opt = {.url = d.url, .timeout_ms = 60000};
    if (mrac_client_new(&opt, &d.c, NULL) != MRAC_OK)
        return -1;
    for (int i = 0; i < 200; i++) {
        char *text = NULL;
        int rc = mrac_health(d.c, &text, NULL);
        free(text);
        if (rc == MRAC_OK)
            return 0;
        sleep_ms(50);
    }
    print_log();
    return -1;
}

static int stop_daemon(void **state)
{
    (void)state;
    mrac_client_free(d.c);
    d.c = NULL;
    if (d.pid > 0) {
        kill(d.pid, SIGTERM);
        waitpid(d.pid, NULL, 0);
        d.pid = -1;
    }
    mrac_global_cleanup();
    unlink(d.log);
    return 0;
}

/* --- problems and their float64 reference ------------------------------ */

/* The whole sequence of one test: q [B, H, Nq, D], k and v [B, Hkv, N,
 * D] as float (their values once in the dtype), mask [B, N]. */
struct seq {
    uint32_t B, H, Hkv, Nq, N, D;
    enum attn_dtype dtype;
    float *q, *k, *v; /* exactly representable in dtype */
    uint8_t *mask;
    /* the same in dtype, for the wire */
    void *qd, *kd, *vd;
};

static uint64_t rng_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

static float *fill(size_t n, uint64_t *s, enum attn_dtype dt, void **wire)
{
    float *x = malloc(n * sizeof *x);
    *wire = aligned_alloc(64, (n * attn_dtype_size(dt) + 63) & ~(size_t)63);
    assert_non_null(x);
    assert_non_null(*wire);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)rng_next(s) / (float)(1u << 31) * 2.0f - 1.0f;
    attn_from_f32(dt, x, *wire, n);
    attn_to_f32(dt, *wire, x, n); /* what the service sees */
    return x;
}

static void seq_make(struct seq *s, uint32_t B, uint32_t H, uint32_t Hkv,
                     uint32_t Nq, uint32_t N, uint32_t D, enum attn_dtype dt,
                     uint64_t seed)
{
    *s = (struct seq){.B = B, .H = H, .Hkv = Hkv, .Nq = Nq, .N = N, .D = D};
    s->dtype = dt;
    s->q = fill((size_t)B * H * Nq * D, &seed, dt, &s->qd);
    s->k = fill((size_t)B * Hkv * N * D, &seed, dt, &s->kd);
    s->v = fill((size_t)B * Hkv * N * D, &seed, dt, &s->vd);
    s->mask = malloc((size_t)B * N);
    assert_non_null(s->mask);
    for (size_t i = 0; i < (size_t)B * N; i++)
        s->mask[i] = rng_next(&seed) % 5 != 0; /* a fifth padded */
    s->mask[0] = 1;
}

static void seq_free(struct seq *s)
{
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->qd);
    free(s->kd);
    free(s->vd);
    free(s->mask);
}

/* Tokens [from, to) of the sequence, copied into owned buffers. */
struct slice {
    struct attn_kv_tokens t;
    void *k, *v;
    uint8_t *mask;
};

static void slice_make(const struct seq *s, uint32_t from, uint32_t to,
                       struct slice *sl)
{
    size_t es = attn_dtype_size(s->dtype), n = to - from;
    size_t row = (size_t)s->D * es;
    sl->k = aligned_alloc(64, (s->B * s->Hkv * n * row + 63) & ~(size_t)63);
    sl->v = aligned_alloc(64, (s->B * s->Hkv * n * row + 63) & ~(size_t)63);
    sl->mask = malloc(s->B * n);
    assert_true(sl->k && sl->v && sl->mask);
    for (size_t bh = 0; bh < (size_t)s->B * s->Hkv; bh++) {
        memcpy((char *)sl->k + bh * n * row,
               (char *)s->kd + (bh * s->N + from) * row, n * row);
        memcpy((char *)sl->v + bh * n * row,
               (char *)s->vd + (bh * s->N + from) * row, n * row);
    }
    for (size_t b = 0; b < s->B; b++)
        memcpy(sl->mask + b * n, s->mask + b * s->N + from, n);
    sl->t = (struct attn_kv_tokens){sl->k, sl->v, sl->mask, (uint32_t)n};
}

static void slice_free(struct slice *sl)
{
    free(sl->k);
    free(sl->v);
    free(sl->mask);
}

/* Exact attention of q over every key, in float64: query i sees key j
 * when the mask says so and, with causal, when j <= i + N - Nq. */
static double *reference(const struct seq *s, int causal)
{
    size_t D = s->D, N = s->N;
    double *out = calloc((size_t)s->B * s->H * s->Nq * D, sizeof *out);
    double *w = malloc(N * sizeof *w);
    assert_true(out && w);
    double scale = 1.0 / sqrt((double)D);
    for (size_t b = 0; b < s->B; b++)
        for (size_t h = 0; h < s->H; h++) {
            size_t hk = h / (s->H / s->Hkv);
            const float *K = s->k + (b * s->Hkv + hk) * N * D;
            const float *V = s->v + (b * s->Hkv + hk) * N * D;
            for (size_t i = 0; i < s->Nq; i++) {
                const float *q = s->q + ((b * s->H + h) * s->Nq + i) * D;
                double *o = out + ((b * s->H + h) * s->Nq + i) * D;
                double mx = -INFINITY, sum = 0;
                for (size_t j = 0; j < N; j++) {
                    int seen =
                        s->mask[b * N + j] && (!causal || j + s->Nq <= i + N);
                    w[j] = -INFINITY;
                    if (!seen)
                        continue;
                    double dot = 0;
                    for (size_t e = 0; e < D; e++)
                        dot += (double)q[e] * K[j * D + e];
                    w[j] = dot * scale;
                    mx = w[j] > mx ? w[j] : mx;
                }
                if (mx == -INFINITY)
                    continue; /* sees no key: a zero row */
                for (size_t j = 0; j < N; j++) {
                    w[j] = w[j] == -INFINITY ? 0 : exp(w[j] - mx);
                    sum += w[j];
                }
                for (size_t j = 0; j < N; j++)
                    for (size_t e = 0; e < D; e++)
                        o[e] += w[j] / sum * V[j * D + e];
            }
        }
    free(w);
    return out;
}

/* The largest difference between an answer (in dtype) and the reference,
 * relative to the reference's largest magnitude. */
static double rel_err(const struct seq *s, const void *out, const double *ref)
{
    size_t n = (size_t)s->B * s->H * s->Nq * s->D;
    float *got = malloc(n * sizeof *got);
    assert_non_null(got);
    attn_to_f32(s->dtype, out, got, n);
    double worst = 0, big = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double dlt = fabs(got[i] - ref[i]);
        worst = dlt > worst ? dlt : worst;
        big = fabs(ref[i]) > big ? fabs(ref[i]) : big;
    }
    free(got);
    return worst / big;
}

/* --- the tests -------------------------------------------------------- */

/* One whole session: create tokens [0, a), append [a, b), then attend
 * with [b, N) appended, against the reference over [0, N). */
static void round_trip(enum attn_dtype dt, uint32_t H, uint32_t Hkv,
                       uint32_t Nq, int causal, enum attn_method method,
                       enum proto_format fmt, double tol)
{
    const uint32_t B = 2, D = 16, a = 40, b = 60, N = 70;
    struct seq s;
    seq_make(&s, B, H, Hkv, Nq, N, D, dt, 1000u * H + 10u * Nq + dt);
    struct slice first, second, third;
    slice_make(&s, 0, a, &first);
    slice_make(&s, a, b, &second);
    slice_make(&s, b, N, &third);
    struct attn_kv_shape shape = {dt, B, Hkv, D};
    struct proto_kv_info info;
    struct mrac_error err;

    int rc = mrac_kv_create(d.c, &shape, &first.t, 60000, &info, &err);
    assert_int_equal(rc, MRAC_OK);
    assert_int_equal(info.tokens, a);
    assert_int_equal(info.shape.dtype, dt);
    assert_int_equal(info.shape.B, B);
    assert_int_equal(info.shape.Hkv, Hkv);
    assert_int_equal(info.shape.D, D);
    assert_int_equal(info.ttl_ms, 60000);
    assert_true(info.bytes > 0);
    assert_int_equal(strlen(info.kv), 32);
    char id[PROTO_KV_ID_MAX + 1];
    memcpy(id, info.kv, sizeof id);

    rc = mrac_kv_append(d.c, id, &shape, &second.t, &info, &err);
    assert_int_equal(rc, MRAC_OK);
    assert_string_equal(info.kv, id);
    assert_int_equal(info.tokens, b);

    struct attn_problem p = {
        .method = method,
        .dtype = dt,
        .B = B,
        .H = H,
        .Hkv = Hkv,
        .Nq = Nq,
        .D = D,
        .q = s.qd,
        .causal = causal,
        .num_blocks = 1000, /* every block: mra2 computes exactly */
        .append = third.t,
    };
    struct mrac_call call = {.id = "step-1", .format = fmt};
    struct mrac_result res;
    rc = mrac_kv_attend(d.c, id, &p, &call, &res, &err);
    if (rc != MRAC_OK)
        fail_msg("attend: %s: %s", err.code, err.message);
    assert_true(res.out_owned);
    assert_string_equal(res.id, "step-1");
    assert_string_equal(res.method, attn_method_name(method));
    double *ref = reference(&s, causal);
    double e = rel_err(&s, res.out, ref);
    if (e > tol)
        fail_msg("relative error %g over %g", e, tol);
    mrac_result_release(&res);

    rc = mrac_kv_info(d.c, id, &info, &err);
    assert_int_equal(rc, MRAC_OK);
    assert_int_equal(info.tokens, N);
    assert_int_equal(info.shape.Hkv, Hkv);

    /* Again without appending: the same keys, the same answer. */
    p.append = (struct attn_kv_tokens){0};
    p.Hkv = 0; /* the session's: not needed without appended tokens */
    rc = mrac_kv_attend(d.c, id, &p, NULL, &res, &err);
    assert_int_equal(rc, MRAC_OK);
    assert_true(rel_err(&s, res.out, ref) <= tol);
    assert_false(res.has_id);
    mrac_result_release(&res);
    free(ref);

    assert_int_equal(mrac_kv_free(d.c, id, &err), MRAC_OK);
    rc = mrac_kv_info(d.c, id, &info, &err);
    assert_int_equal(rc, MRAC_EKVNOTFOUND);
    assert_int_equal(err.err, MRAC_EKVNOTFOUND);
    assert_int_equal(err.status, 404);
    assert_string_equal(err.code, "kv_not_found");
    assert_true(strlen(err.message) > 0);
    rc = mrac_kv_attend(d.c, id, &p, NULL, &res, &err);
    assert_int_equal(rc, MRAC_EKVNOTFOUND);
    rc = mrac_kv_append(d.c, id, &shape, &second.t, NULL, &err);
    assert_int_equal(rc, MRAC_EKVNOTFOUND);
    assert_int_equal(mrac_kv_free(d.c, id, NULL), MRAC_EKVNOTFOUND);

    slice_free(&first);
    slice_free(&second);
    slice_free(&third);
    seq_free(&s);
}

static void test_round_trip_f32(void **state)
{
    (void)state;
    round_trip(ATTN_F32, 2, 2, 5, 0, ATTN_EXACT, PROTO_MSGPACK, 1e-5);
}

static void test_round_trip_gqa_causal(void **state)
{
    (void)state;
    round_trip(ATTN_F32, 4, 2, 5, 1, ATTN_EXACT, PROTO_MSGPACK, 1e-5);
    round_trip(ATTN_F32, 4, 1, 1, 1, ATTN_MRA2, PROTO_MSGPACK, 1e-5);
}

static void test_round_trip_f16_json(void **state)
{
    (void)state;
    /* f16 answers round to 2^-11 of their magnitude. */
    round_trip(ATTN_F16, 4, 2, 3, 1, ATTN_EXACT, PROTO_MSGPACK, 2e-3);
    round_trip(ATTN_F32, 2, 1, 3, 1, ATTN_MRA2_SPARSE, PROTO_JSON, 1e-5);
}

static void test_cache_full(void **state)
{
    (void)state;
    /* k and v of 8 MiB: more than the whole budget. */
    const uint32_t B = 1, Hkv = 4, N = 4096, D = 64;
    size_t n = (size_t)B * Hkv * N * D;
    float *k = calloc(n, sizeof *k), *v = calloc(n, sizeof *v);
    assert_true(k && v);
    struct attn_kv_shape shape = {ATTN_F32, B, Hkv, D};
    struct attn_kv_tokens t = {k, v, NULL, N};
    struct proto_kv_info info;
    struct mrac_error err;
    int rc = mrac_kv_create(d.c, &shape, &t, 0, &info, &err);
    assert_int_equal(rc, MRAC_EKVFULL);
    assert_int_equal(err.err, MRAC_EKVFULL);
    assert_int_equal(err.status, 507);
    assert_string_equal(err.code, "kv_cache_full");

    /* A session that fits, then an append that cannot. */
    t.n = 64;
    assert_int_equal(mrac_kv_create(d.c, &shape, &t, 0, &info, &err), MRAC_OK);
    t.n = N;
    rc = mrac_kv_append(d.c, info.kv, &shape, &t, NULL, &err);
    assert_int_equal(rc, MRAC_EKVFULL);
    assert_int_equal(err.status, 507);
    assert_int_equal(mrac_kv_free(d.c, info.kv, &err), MRAC_OK);
    free(k);
    free(v);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    static _Alignas(64) float x[64];
    struct attn_kv_shape shape = {ATTN_F32, 1, 1, 4};
    struct attn_kv_tokens t = {x, x, NULL, 2};
    struct proto_kv_info info;
    struct mrac_error err;
    struct mrac_result res;
    /* ids the service could not have made never leave the client */
    assert_int_equal(mrac_kv_info(d.c, "../metrics", &info, &err), MRAC_EINVAL);
    assert_int_equal(err.status, 0);
    assert_string_equal(err.code, "invalid_argument");
    assert_int_equal(mrac_kv_free(d.c, "", &err), MRAC_EINVAL);
    assert_int_equal(mrac_kv_append(d.c, NULL, &shape, &t, NULL, &err),
                     MRAC_EINVAL);
    /* shapes the problem check refuses */
    struct attn_kv_shape bad = {ATTN_F32, 1, 1, 0};
    assert_int_equal(mrac_kv_create(d.c, &bad, &t, 0, &info, &err),
                     MRAC_EINVAL);
    t.n = 0;
    assert_int_equal(mrac_kv_create(d.c, &shape, &t, 0, &info, &err),
                     MRAC_EINVAL);
    struct attn_problem p = {.dtype = ATTN_F32,
                             .B = 1,
                             .H = 3,
                             .Nq = 1,
                             .D = 4,
                             .q = x,
                             .append = {x, x, NULL, 1},
                             .Hkv = 2};
    assert_int_equal(mrac_kv_attend(d.c, "abc", &p, NULL, &res, &err),
                     MRAC_EINVAL);
    assert_non_null(strstr(err.message, "multiple"));
    /* an unknown id is the server's 404 */
    p.Hkv = 1;
    assert_int_equal(mrac_kv_attend(d.c, "abc", &p, NULL, &res, &err),
                     MRAC_EKVNOTFOUND);
    assert_string_equal(mrac_strerror(MRAC_EKVNOTFOUND),
                        "no such session (unknown, expired, evicted or "
                        "deleted)");
}

/* A handle that keeps its context: the session is deleted behind its back
 * before an append and before an attend; each call makes it again once
 * (the kept tokens: a masked create and an append without a mask), and
 * the answer is the reference's over every token.  Without keep_context
 * the loss is MRAC_EKVNOTFOUND. */
static void test_session_recreated(void **state)
{
    (void)state;
    const uint32_t B = 2, H = 4, Hkv = 2, Nq = 2, D = 16, N = 70;
    struct seq s;
    seq_make(&s, B, H, Hkv, Nq, N, D, ATTN_F32, 77);
    for (size_t b = 0; b < B; b++)
        memset(s.mask + b * N + 40, 1, 20); /* the append has no mask */
    struct slice first, second, third;
    slice_make(&s, 0, 40, &first);
    slice_make(&s, 40, 60, &second);
    slice_make(&s, 60, N, &third);
    second.t.mask = NULL;
    struct attn_kv_shape shape = {ATTN_F32, B, Hkv, D};
    struct mrac_session_options opt = {.ttl_ms = 60000, .keep_context = 1};
    struct mrac_session *ss;
    struct proto_kv_info info;
    struct mrac_error err;
    assert_int_equal(mrac_session_new(d.c, &shape, &first.t, &opt, &ss, &err),
                     MRAC_OK);
    assert_int_equal(mrac_session_tokens(ss), 40);
    assert_int_equal(mrac_session_recreated(ss), 0);
    char id[PROTO_KV_ID_MAX + 1];
    snprintf(id, sizeof id, "%s", mrac_session_id(ss));

    assert_int_equal(mrac_kv_free(d.c, id, &err), MRAC_OK);
    assert_int_equal(mrac_session_append(ss, &second.t, &info, &err), MRAC_OK);
    assert_int_equal(mrac_session_recreated(ss), 1);
    assert_int_equal(info.tokens, 60);
    assert_int_equal(info.ttl_ms, 60000);
    assert_int_equal(mrac_session_tokens(ss), 60);
    assert_string_not_equal(mrac_session_id(ss), id);

    assert_int_equal(mrac_kv_free(d.c, mrac_session_id(ss), &err), MRAC_OK);
    struct attn_problem p = {
        .method = ATTN_EXACT,
        .dtype = ATTN_F32,
        .B = B,
        .H = H,
        .Hkv = Hkv,
        .Nq = Nq,
        .D = D,
        .q = s.qd,
        .causal = 1,
        .append = third.t,
    };
    struct mrac_result res;
    int rc = mrac_session_attend(ss, &p, NULL, &res, &err);
    if (rc != MRAC_OK)
        fail_msg("attend: %s: %s", err.code, err.message);
    assert_int_equal(mrac_session_recreated(ss), 2);
    assert_int_equal(mrac_session_tokens(ss), N);
    double *ref = reference(&s, 1);
    double e = rel_err(&s, res.out, ref);
    if (e > 1e-5)
        fail_msg("relative error %g", e);
    mrac_result_release(&res);
    free(ref);
    /* the attend's tokens went in once */
    assert_int_equal(mrac_kv_info(d.c, mrac_session_id(ss), &info, &err),
                     MRAC_OK);
    assert_int_equal(info.tokens, N);
    snprintf(id, sizeof id, "%s", mrac_session_id(ss));
    assert_int_equal(mrac_session_free(ss, &err), MRAC_OK);
    assert_int_equal(mrac_kv_info(d.c, id, &info, &err), MRAC_EKVNOTFOUND);

    /* without keep_context: the typed error, and nothing made again */
    assert_int_equal(mrac_session_new(d.c, &shape, &first.t, NULL, &ss, &err),
                     MRAC_OK);
    assert_int_equal(mrac_kv_free(d.c, mrac_session_id(ss), &err), MRAC_OK);
    rc = mrac_session_attend(ss, &p, NULL, &res, &err);
    assert_int_equal(rc, MRAC_EKVNOTFOUND);
    assert_int_equal(err.status, 404);
    assert_string_equal(err.code, "kv_not_found");
    assert_int_equal(mrac_session_append(ss, &second.t, NULL, &err),
                     MRAC_EKVNOTFOUND);
    assert_int_equal(mrac_session_recreated(ss), 0);
    assert_int_equal(mrac_session_tokens(ss), 40);
    assert_int_equal(mrac_session_free(ss, &err), MRAC_OK); /* gone: fine */
    assert_int_equal(mrac_session_free(NULL, NULL), MRAC_OK);

    slice_free(&first);
    slice_free(&second);
    slice_free(&third);
    seq_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_f32),
        cmocka_unit_test(test_round_trip_gqa_causal),
        cmocka_unit_test(test_round_trip_f16_json),
        cmocka_unit_test(test_cache_full),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_session_recreated),
    };
    return cmocka_run_group_tests(tests, start_daemon, stop_daemon);
}
