/*
 * bench-codec.c - times the wire codec on large bodies (`make
 * bench-codec`): encoding a request, decoding it with the body at an
 * aligned address (tensors read in place) and at a misaligned one (each
 * tensor copied), and encoding the answer, for self-attention and for a
 * decode step of a few queries over many keys; then the same for a small
 * JSON body.  Prints one line per case; the best of a few repetitions counts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "protocol/proto.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int bench(enum proto_format fmt, uint32_t H, uint32_t Hkv, uint32_t Nq,
                 uint32_t Nk, uint32_t D, int reps)
{
    struct attn_problem p = {.dtype = ATTN_F32, .method = ATTN_MRA2};
    p.B = 1, p.H = H, p.Hkv = Hkv, p.Nq = Nq, p.Nk = Nk, p.D = D;
    p.causal = Nq != Nk;
    size_t nq = (size_t)H * Nq * D, nk = (size_t)Hkv * Nk * D;
    float *q = malloc(nq * 4), *k = malloc(nk * 4);
    if (q == NULL || k == NULL)
        return 1;
    for (size_t i = 0; i < nq; i++)
        q[i] = (float)(i % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < nk; i++)
        k[i] = (float)(i % 997) * 1e-3f;
    p.q = q, p.k = k, p.v = k;

    char *body, *space, err[256];
    size_t len;
    double t0 = now();
    if (proto_request_encode(&p, fmt, "bench", 0, &body, &len) != PROTO_OK)
        return 1;
    double tenc = now() - t0;
    if (posix_memalign((void **)&space, 64, len + 64) != 0)
        return 1;
    /* Offset 0: aligned; 1: every tensor misaligned, so copied. */
    for (int off = 0; off < (fmt == PROTO_JSON ? 1 : 2); off++) {
        memcpy(space + off, body, len);
        struct proto_request r;
        double best = 1e30, best_ans = 1e30;
        size_t alen = 0;
        int copied = 0;
        for (int i = 0; i < reps; i++) {
            t0 = now();
            if (proto_request_decode(space + off, len, fmt, NULL, &r, err,
                                     sizeof err) != PROTO_OK) {
                fprintf(stderr, "decode: %s\n", err);
                return 1;
            }
            double t = now() - t0;
            best = t < best ? t : best;
            copied = r.owned[0] != NULL;
            struct proto_stats st = {.backend = "cpu", .batch_requests = 1};
            char *ans;
            t0 = now();
            if (proto_response_encode(&r, &st, &ans, &alen) != PROTO_OK)
                return 1;
            t = now() - t0;
            best_ans = t < best_ans ? t : best_ans;
            free(ans);
            proto_request_release(&r);
        }
        printf("%-7s q [1,%u,%u,%u] k,v [1,%u,%u,%u] f32, body %.1f MB: "
               "encode request %.1f ms; decode %.3f ms (%s); "
               "encode answer %.1f ms (%.1f MB)\n",
               fmt == PROTO_JSON ? "json" : "msgpack", H, Nq, D, Hkv, Nk, D,
               (double)len / 1e6, tenc * 1e3, best * 1e3,
               fmt == PROTO_JSON ? "parsed and converted"
               : copied          ? "misaligned body: tensors copied"
                                 : "aligned body: tensors in place",
               best_ans * 1e3, (double)alen / 1e6);
    }
    free(space);
    free(body);
    free(q);
    free(k);
    return 0;
}

int main(void)
{
    /* Self-attention, then a causal decode step of 16 queries over a
     * long context, whose body is mostly keys and values. */
    if (bench(PROTO_MSGPACK, 16, 4, 4096, 4096, 64, 5) ||
        bench(PROTO_MSGPACK, 16, 4, 16384, 16384, 128, 3) ||
        bench(PROTO_MSGPACK, 16, 4, 16, 16384, 128, 5) ||
        bench(PROTO_JSON, 2, 2, 256, 256, 64, 3))
        return 1;
    return 0;
}
