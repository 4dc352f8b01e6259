/*
 * fuzz-proto.c - libFuzzer target for the wire codec (`make fuzz`).
 *
 * Feeds each input to every decoder a peer can reach: the request decoder
 * in both formats (with tight limits, so large shapes take the 413 path
 * instead of allocating), the answer decoder and the error-body parser.
 * A request that decodes must also encode to an answer and a request that
 * decode again to the same problem (shapes, masks, causality, data),
 * which checks the encoders on whatever shapes the fuzzer finds.  Sanitizers
 * turn any bad read into a crash.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/proto.h"

/* Two masks of n bytes hold the same tokens (a problem counts any nonzero
 * byte as real; the wire carries 0 and 1); NULL only equals NULL. */
static int same_mask(const uint8_t *a, const uint8_t *b, size_t n)
{
    if (a == NULL || b == NULL)
        return a == b;
    for (size_t i = 0; i < n; i++)
        if ((a[i] != 0) != (b[i] != 0))
            return 0;
    return 1;
}

static void roundtrip(const struct proto_request *req)
{
    const struct attn_problem *p = &req->prob;
    size_t es = attn_dtype_size(p->dtype);
    size_t nq = (size_t)p->B * p->H * p->Nq * p->D;
    size_t nk = (size_t)p->B * p->Hkv * p->Nk * p->D;
    memset(p->out, 0, nq * es);
    struct proto_stats st = {.backend = "cpu", .batch_requests = 1};
    char *ans, *body, err[256];
    size_t alen, blen;
    if (proto_response_encode(req, &st, &ans, &alen) == PROTO_OK) {
        struct proto_response r;
        if (proto_response_decode(ans, alen, req->format, &r, err,
                                  sizeof err) != PROTO_OK)
            abort();
        if (r.out_bytes != nq * es)
            abort();
        proto_response_release(&r);
        free(ans);
    }
    if (proto_request_encode(p, req->format, req->has_id ? req->id : NULL,
                             req->timeout_ms, &body, &blen) == PROTO_OK) {
        struct proto_request again;
        if (proto_request_decode(body, blen, req->format, NULL, &again, err,
                                 sizeof err) != PROTO_OK)
            abort();
        const struct attn_problem *a = &again.prob;
        if (a->Nq != p->Nq || a->Nk != p->Nk || a->D != p->D ||
            a->Hkv != p->Hkv || a->causal != p->causal ||
            a->method != p->method || a->scale != p->scale ||
            memcmp(a->q, p->q, nq * es) != 0 ||
            memcmp(a->v, p->v, nk * es) != 0 ||
            !same_mask(a->mask, p->mask, (size_t)p->B * p->Nk) ||
            !same_mask(a->q_mask, p->q_mask, (size_t)p->B * p->Nq))
            abort();
        proto_request_release(&again);
        free(body);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_limits lim;
    proto_limits_default(&lim);
    lim.max_elements = 1 << 16;
    char err[256];
    for (int fmt = PROTO_MSGPACK; fmt <= PROTO_JSON; fmt++) {
        struct proto_request req;
        if (proto_request_decode(data, size, (enum proto_format)fmt, &lim, &req,
                                 err, sizeof err) == PROTO_OK) {
            roundtrip(&req);
            proto_request_release(&req);
        } else if (err[0] == '\0') {
            abort(); /* every refusal must say why */
        }
        struct proto_response r;
        if (proto_response_decode(data, size, (enum proto_format)fmt, &r, err,
                                  sizeof err) == PROTO_OK)
            proto_response_release(&r);
    }
    char code[64], msg[256];
    proto_error_parse(data, size, code, sizeof code, msg, sizeof msg);
    return 0;
}
