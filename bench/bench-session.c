/*
 * bench-session.c - a decoding step over loopback HTTP with a session
 * against the same step sending its keys and values in the body, side by
 * side against one running mrad.
 *
 *   bench-session --port P [--nk N] [--steps S] [--quick]
 *
 * The step: Nq = 1 query of H = 32 heads attending causally to Nk keys of
 * Hkv = 8 heads, D = 128, f16; its token's key and value are the last of
 * the Nk.  Without a session each step POSTs q, k and v [1,8,Nk,128] to
 * /v1/attention (encoded once: a client that must encode it each step pays
 * more).  With a session, the first Nk - 1 tokens are created once
 * (POST /v1/kv) and each step POSTs q and the step's token as k_append and
 * v_append to /v1/kv/{id}/attention; its session then grows by a token a
 * step, as decoding does.  Both, for exact and mra2 (block_per_row 16),
 * timed end to end (send, compute, receive) in alternation; the first
 * session step is checked bit for bit against the same step sent whole.
 * Prints the median step times, the body sizes, the speedup against the
 * 20x target and the body ratio against the 1% target, and one JSON line
 * last (what bench/50-session.sh writes to bench-out/session.json).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention/attn.h"
#include "bench/loopback.h"
#include "protocol/proto.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static float uniform(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static void *random_f16(size_t n)
{
    uint16_t *x = malloc(n * 2);
    if (!x) {
        fprintf(stderr, "bench-session: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        x[i] = attn_f32_to_f16(uniform());
    return x;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what)
{
    fprintf(stderr, "bench-session: %s\n", what);
    exit(1);
}

enum { H = 32, HKV = 8, D = 128 };

/* The output of a 200 answer, copied into out (H*D f16). */
static void answer_out(const char *resp, size_t len, void *out)
{
    struct proto_response r;
    char err[128];
    if (proto_response_decode(resp, len, PROTO_MSGPACK, &r, err, sizeof err) !=
            PROTO_OK ||
        r.out_bytes != (size_t)H * D * 2)
        die("an answer that does not decode");
    memcpy(out, r.out, r.out_bytes);
    proto_response_release(&r);
}

int main(int argc, char **argv)
{
    uint16_t port = 0;
    uint32_t nk = 32768;
    int steps = 9;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = (uint16_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--nk") && i + 1 < argc)
            nk = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            nk = 4096, steps = 3;
        else
            die("usage: bench-session --port P [--nk N] [--steps S] "
                "[--quick]");
    }
    if (!port || nk < 2 || steps < 1)
        die("usage: bench-session --port P [--nk N] [--steps S] [--quick]");
    /* The context, and a token and query per step: the whole-body step
     * sends the context's first nk - 1 tokens and the step's token. */
    size_t row = (size_t)D, ctx = (size_t)HKV * nk * D;
    uint16_t *k = random_f16(ctx), *v = random_f16(ctx);
    uint16_t *q = random_f16((size_t)H * D);
    void *out_whole = malloc((size_t)H * D * 2),
         *out_sess = malloc((size_t)H * D * 2);
    struct client c = {.fd = -1};
    if (client_connect(&c, port))
        die("cannot connect");
    static const enum attn_method methods[2] = {ATTN_EXACT, ATTN_MRA2};
    double med_whole[2], med_sess[2];
    size_t whole_bytes = 0, step_bytes = 0;
    int same[2];
    for (int m = 0; m < 2; m++) {
        /* Without a session: the whole body, encoded once. */
        struct attn_problem p = {.method = methods[m],
                                 .dtype = ATTN_F16,
                                 .B = 1,
                                 .H = H,
                                 .Hkv = HKV,
                                 .Nq = 1,
                                 .Nk = nk,
                                 .D = D,
                                 .q = q,
                                 .k = k,
                                 .v = v,
                                 .causal = 1,
                                 .block_per_row = 16};
        char *whole;
        if (proto_request_encode(&p, PROTO_MSGPACK, NULL, 0, &whole,
                                 &whole_bytes) != PROTO_OK)
            die("cannot encode");
        /* The session: the first nk - 1 tokens of every KV head. */
        uint16_t *k0 = malloc((ctx - (size_t)HKV * row) * 2);
        uint16_t *v0 = malloc((ctx - (size_t)HKV * row) * 2);
        uint16_t tk[HKV * D], tv[HKV * D]; /* the step's token */
        for (size_t h = 0; h < HKV; h++) {
            memcpy(k0 + h * (nk - 1) * row, k + h * nk * row,
                   (nk - 1) * row * 2);
            memcpy(v0 + h * (nk - 1) * row, v + h * nk * row,
                   (nk - 1) * row * 2);
            memcpy(tk + h * row, k + (h * nk + nk - 1) * row, row * 2);
            memcpy(tv + h * row, v + (h * nk + nk - 1) * row, row * 2);
        }
        struct attn_kv_shape sh = {ATTN_F16, 1, HKV, D};
        struct attn_kv_tokens first = {k0, v0, NULL, nk - 1};
        char *cbody;
        size_t clen;
        if (proto_kv_body_encode(&sh, &first, 0, PROTO_MSGPACK, &cbody,
                                 &clen) != PROTO_OK)
            die("cannot encode");
        const char *resp;
        size_t rlen;
        if (client_request(&c, "POST", "/v1/kv", cbody, clen, &resp, &rlen) !=
            201)
            die("the session was not created");
        struct proto_kv_info info;
        if (proto_kv_info_parse(resp, rlen, &info) != PROTO_OK)
            die("a session answer that does not decode");
        char path[128];
        snprintf(path, sizeof path, "/v1/kv/%s/attention", info.kv);
        free(cbody), free(k0), free(v0);

        /* Steps, in alternation; a warm-up of each first. */
        double *tw = calloc((size_t)steps, sizeof *tw),
               *ts = calloc((size_t)steps, sizeof *ts);
        for (int s = -1; s < steps; s++) {
            double t0 = now_s();
            if (client_request(&c, "POST", "/v1/attention", whole, whole_bytes,
                               &resp, &rlen) != 200)
                die("a whole step failed");
            if (s == -1)
                answer_out(resp, rlen, out_whole);
            double t1 = now_s();
            /* The session step: encoded within the timing, as a client
             * does each step. */
            struct attn_problem sp = p;
            sp.k = sp.v = NULL;
            sp.Nk = 0;
            /* the first step appends the context's last token; later ones
             * append it again, as decoding appends a token a step */
            sp.append = (struct attn_kv_tokens){tk, tv, NULL, 1};
            struct proto_encode_opts o = {.kv = info.kv, .kv_in_path = 1};
            char *sbody;
            if (proto_request_encode_opts(&sp, PROTO_MSGPACK, &o, &sbody,
                                          &step_bytes) != PROTO_OK)
                die("cannot encode");
            if (client_request(&c, "POST", path, sbody, step_bytes, &resp,
                               &rlen) != 200)
                die("a session step failed");
            if (s == -1)
                answer_out(resp, rlen, out_sess);
            free(sbody);
            double t2 = now_s();
            if (s >= 0)
                tw[s] = t1 - t0, ts[s] = t2 - t1;
        }
        same[m] = !memcmp(out_whole, out_sess, (size_t)H * D * 2);
        med_whole[m] = median(tw, steps);
        med_sess[m] = median(ts, steps);
        free(tw), free(ts), free(whole);
        snprintf(path, sizeof path, "/v1/kv/%s", info.kv);
        if (client_request(&c, "DELETE", path, NULL, 0, &resp, &rlen) != 204)
            die("cannot delete the session");
    }
    client_close(&c);

    double body_ratio = (double)step_bytes / (double)whole_bytes;
    printf("a decoding step over loopback HTTP: Nq=1 Nk=%u H=32 Hkv=8 D=128 "
           "f16 causal, median of %d steps\n",
           nk, steps);
    printf("  body: %zu bytes with K and V, %zu with a session: %.4f%% "
           "(target <= 1%%: %s)\n",
           whole_bytes, step_bytes, 100.0 * body_ratio,
           body_ratio <= 0.01 ? "met" : "MISSED");
    printf("  %-6s %14s %14s %9s %8s %10s\n", "method", "with K and V",
           "with session", "speedup", "target", "same bits");
    for (int m = 0; m < 2; m++) {
        double x = med_whole[m] / med_sess[m];
        printf("  %-6s %11.2f ms %11.2f ms %8.1fx %8s %10s\n",
               attn_method_name(methods[m]), med_whole[m] * 1e3,
               med_sess[m] * 1e3, x, x >= 20 ? "met" : "MISSED",
               same[m] ? "yes" : "NO");
    }
    printf("{\"nk\":%u,\"steps\":%d,\"whole_bytes\":%zu,\"step_bytes\":%zu,"
           "\"body_ratio\":%.6f,\"exact\":{\"whole_s\":%.6f,\"session_s\":"
           "%.6f,\"speedup\":%.3f,\"same\":%s},\"mra2\":{\"whole_s\":%.6f,"
           "\"session_s\":%.6f,\"speedup\":%.3f,\"same\":%s}}\n",
           nk, steps, whole_bytes, step_bytes, body_ratio, med_whole[0],
           med_sess[0], med_whole[0] / med_sess[0], same[0] ? "true" : "false",
           med_whole[1], med_sess[1], med_whole[1] / med_sess[1],
           same[1] ? "true" : "false");
    free(k), free(v), free(q), free(out_whole), free(out_sess);
    return same[0] && same[1] ? 0 : 1;
}
