/*
 * bench-http.c - throughput of the same requests computed in-process and
 * served by mrad over loopback HTTP, side by side.
 *
 *   bench-http --port P [--shape B,H,N,D] [--method mra2] [--seconds S]
 *              [--concurrency C] [--threads T] [--label NAME]
 *
 * In-process: one CPU backend computes the problem back to back for S
 * seconds in all, half before and half after the HTTP run.  Over HTTP: C client
 * threads, each on its own keep-alive connection, POST the msgpack-encoded
 * problem to mrad on 127.0.0.1:P for S seconds.  The first served answer is
 * checked bitwise against the in-process one.  Prints one line per mode and a
 * JSON object on the last line (what bench/20-http.sh collects into
 * bench-out/http.json).
 *
 * The HTTP client is a plain blocking socket client: it should cost as
 * little as possible next to the server it measures.
 */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "attention/attn.h"
#include "bench/loopback.h"
#include "protocol/proto.h"

struct opts {
    uint16_t port;
    uint32_t B, H, N, D;
    enum attn_method method;
    double seconds;
    int concurrency, threads;
    const char *label;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_double);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

/* ---- HTTP worker threads ------------------------------------------------ */

struct shared {
    const struct opts *o;
    const char *body;
    size_t body_len;
    const void *expect; /* in-process output, compared once */
    size_t out_bytes;
    double t_end;
    pthread_mutex_t lock;
    double *lat;
    size_t nlat, caplat;
    int failures, checked, mismatch;
};

static void *http_thread(void *arg)
{
    struct shared *s = arg;
    struct client c = {0};
    if (client_connect(&c, s->o->port)) {
        perror("bench-http: connect");
        pthread_mutex_lock(&s->lock);
        s->failures++;
        pthread_mutex_unlock(&s->lock);
        return NULL;
    }
    while (now_s() < s->t_end) {
        const char *resp;
        size_t rlen;
        double t0 = now_s();
        int st = client_request(&c, "POST", "/v1/attention", s->body, s->body_len,
                                &resp, &rlen);
        double dt = now_s() - t0;
        pthread_mutex_lock(&s->lock);
        if (st != 200) {
            s->failures++;
            pthread_mutex_unlock(&s->lock);
            if (st < 0)
                break;
            continue;
        }
        int check = !s->checked;
        s->checked = 1;
        if (s->nlat == s->caplat) {
            s->caplat = s->caplat ? s->caplat * 2 : 1024;
            s->lat = realloc(s->lat, s->caplat * sizeof(*s->lat));
        }
        s->lat[s->nlat++] = dt;
        pthread_mutex_unlock(&s->lock);
        if (check) {
            struct proto_response r;
            char err[128];
            int ok = proto_response_decode(resp, rlen, PROTO_MSGPACK, &r, err,
                                           sizeof(err)) == PROTO_OK;
            ok = ok && r.out_bytes == s->out_bytes &&
                 !memcmp(r.out, s->expect, s->out_bytes);
            if (!ok)
                s->mismatch = 1;
            proto_response_release(&r);
        }
    }
    client_close(&c);
    return NULL;
}

/* ---- CPU time ------------------------------------------------------------ */

/* CPU seconds (user + system) this process has used. */
static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* process_cpu_seconds_total of the server, from its /metrics; -1 when it
 * cannot be read. */
static double server_cpu_s(uint16_t port)
{
    struct client c = {0};
    const char *resp;
    size_t rlen;
    double v = -1;
    if (!client_connect(&c, port) &&
        client_request(&c, "GET", "/metrics", NULL, 0, &resp, &rlen) == 200) {
        static const char key[] = "\nprocess_cpu_seconds_total ";
        char *text = strndup(resp, rlen);
        char *p = text ? strstr(text, key) : NULL;
        if (p)
            v = strtod(p + sizeof(key) - 1, NULL);
        free(text);
    }
    if (c.fd > 0)
        close(c.fd);
    free(c.buf);
    return v;
}

/* ---- main --------------------------------------------------------------- */

/* Computes `p` back to back for `seconds` (at least twice); adds the
 * repetitions, the time taken and the CPU time used. */
static int inproc_run(struct attn_backend *be, const struct attn_problem *p,
                      double seconds, int *reps, double *elapsed, double *cpu)
{
    int n = 0;
    double t0 = now_s(), t1, c0 = self_cpu_s();
    do {
        if (attn_backend_compute(be, p, NULL) != ATTN_OK)
            return -1;
        n++;
        t1 = now_s();
    } while (t1 - t0 < seconds || n < 2);
    *reps += n;
    *elapsed += t1 - t0;
    *cpu += self_cpu_s() - c0;
    return 0;
}

static int parse_shape(const char *s, struct opts *o)
{
    return sscanf(s, "%" SCNu32 ",%" SCNu32 ",%" SCNu32 ",%" SCNu32, &o->B,
                  &o->H, &o->N, &o->D) == 4
               ? 0
               : -1;
}

int main(int argc, char **argv)
{
    struct opts o = {0, 1, 12, 4096, 64, ATTN_MRA2, 5.0, 2, 0, "large"};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--port"))
            o.port = (uint16_t)atoi(v);
        else if (!strcmp(k, "--shape") && !parse_shape(v, &o))
            ;
        else if (!strcmp(k, "--method"))
            o.method = !strcmp(v, "exact")         ? ATTN_EXACT
                       : !strcmp(v, "mra2_sparse") ? ATTN_MRA2_SPARSE
                                                   : ATTN_MRA2;
        else if (!strcmp(k, "--seconds"))
            o.seconds = atof(v);
        else if (!strcmp(k, "--concurrency"))
            o.concurrency = atoi(v);
        else if (!strcmp(k, "--threads"))
            o.threads = atoi(v);
        else if (!strcmp(k, "--label"))
            o.label = v;
        else {
            fprintf(stderr, "bench-http: bad argument %s\n", k);
            return 2;
        }
    }
    if (!o.port || o.concurrency < 1) {
        fprintf(stderr, "usage: bench-http --port P [--shape B,H,N,D] "
                        "[--method m] [--seconds S] [--concurrency C] "
                        "[--threads T] [--label L]\n");
        return 2;
    }

    /* The problem: random f32 tensors, Hkv = H. */
    size_t n = (size_t)o.B * o.H * o.N * o.D;
    if (n > SIZE_MAX / 4 / sizeof(float)) {
        fprintf(stderr, "bench-http: shape too large\n");
        return 2;
    }
    float *qkv = malloc(3 * n * sizeof(float));
    float *out = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!qkv || !out)
        return 1;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < 3 * n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        qkv[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    struct attn_problem p = {0};
    p.method = o.method;
    p.dtype = ATTN_F32;
    p.B = o.B, p.H = o.H, p.Hkv = o.H, p.Nq = p.Nk = o.N, p.D = o.D;
    p.q = qkv, p.k = qkv + n, p.v = qkv + 2 * n;
    p.out = out;

    /* In-process. */
    struct attn_config cfg = {0};
    cfg.threads = o.threads;
    struct attn_backend *be;
    int rc = attn_backend_new("cpu", &cfg, &be);
    if (rc != ATTN_OK) {
        fprintf(stderr, "bench-http: %s\n", attn_strerror(rc));
        return 1;
    }
    /* Half of the in-process time before the HTTP run and half after, so
     * that a drift in the machine's load weighs on both alike. */
    attn_backend_compute(be, &p, NULL); /* warm-up */
    int reps = 0;
    double busy = 0, inproc_cpu = 0;
    if (inproc_run(be, &p, o.seconds / 2, &reps, &busy, &inproc_cpu))
        return 1;

    /* Over HTTP. */
    char *body;
    size_t body_len;
    if (proto_request_encode(&p, PROTO_MSGPACK, NULL, 0, &body, &body_len))
        return 1;
    struct shared s = {0};
    s.o = &o;
    s.body = body;
    s.body_len = body_len;
    s.expect = out;
    s.out_bytes = n * sizeof(float);
    pthread_mutex_init(&s.lock, NULL);
    /* Warm-up: one request on its own (connection, first allocations). */
    s.t_end = 0;
    {
        struct client c = {0};
        const char *resp;
        size_t rlen;
        if (client_connect(&c, o.port) ||
            client_request(&c, "POST", "/v1/attention", body, body_len, &resp, &rlen) !=
                200) {
            fprintf(stderr, "bench-http: mrad on port %u did not answer 200\n",
                    o.port);
            return 1;
        }
        close(c.fd);
        free(c.buf);
    }
    pthread_t th[64];
    int nth = o.concurrency < 64 ? o.concurrency : 64;
    double scpu0 = server_cpu_s(o.port);
    double h0 = now_s();
    s.t_end = h0 + o.seconds;
    for (int i = 0; i < nth; i++)
        pthread_create(&th[i], NULL, http_thread, &s);
    for (int i = 0; i < nth; i++)
        pthread_join(th[i], NULL);
    double h1 = now_s();
    double scpu1 = server_cpu_s(o.port);
    if (inproc_run(be, &p, o.seconds / 2, &reps, &busy, &inproc_cpu))
        return 1;
    attn_backend_free(be);
    double inproc_rps = reps / busy;
    double http_rps = (double)s.nlat / (h1 - h0);
    double p50 = percentile(s.lat, s.nlat, 0.50) * 1e3;
    double p99 = percentile(s.lat, s.nlat, 0.99) * 1e3;
    /* CPU time per request does not depend on what else the machine runs:
     * the server's (compute + HTTP) against the library's (compute). */
    double inproc_cpu_ms = 1e3 * inproc_cpu / reps;
    double server_cpu_ms = scpu0 >= 0 && scpu1 >= 0 && s.nlat
                               ? 1e3 * (scpu1 - scpu0) / (double)s.nlat
                               : -1;

    printf("%-6s shape=%u,%u,%u,%u %s  in-process %.2f req/s  http %.2f "
           "req/s (%.1f%%)  p50 %.2f ms  p99 %.2f ms  concurrency %d  "
           "failures %d%s\n"
           "%-6s cpu per request: in-process %.2f ms, server %.2f ms "
           "(%.1f%%)\n",
           o.label, o.B, o.H, o.N, o.D, attn_method_name(o.method), inproc_rps,
           http_rps, 100.0 * http_rps / inproc_rps, p50, p99, nth, s.failures,
           s.mismatch ? "  ANSWER MISMATCH" : "", "", inproc_cpu_ms,
           server_cpu_ms, 100.0 * inproc_cpu_ms / server_cpu_ms);
    printf("{\"label\":\"%s\",\"shape\":[%u,%u,%u,%u],\"method\":\"%s\","
           "\"inproc_rps\":%.4f,\"http_rps\":%.4f,\"http_over_inproc\":%.4f,"
           "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"requests\":%zu,"
           "\"concurrency\":%d,\"failures\":%d,\"answers_match\":%s,"
           "\"inproc_cpu_ms_per_request\":%.3f,"
           "\"server_cpu_ms_per_request\":%.3f}\n",
           o.label, o.B, o.H, o.N, o.D, attn_method_name(o.method), inproc_rps,
           http_rps, http_rps / inproc_rps, p50, p99, s.nlat, nth, s.failures,
           s.mismatch ? "false" : "true", inproc_cpu_ms, server_cpu_ms);
    free(body);
    free(qkv);
    free(out);
    free(s.lat);
    return s.failures || s.mismatch ? 1 : 0;
}
