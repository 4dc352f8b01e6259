/*
 * fuzz-proto.c - libFuzzer target for the wire codec (`make fuzz`).
 *
 * Feeds each input to every decoder a peer can reach: the request decoder
 * in both formats (with tight limits, so large shapes take the 413 path
 * instead of allocating), the answer decoder and the error-body parser.
 * A request that decodes must also encode to an answer and a request that
 * decode again to the same problem, which checks the encoders on whatever
 * shapes the fuzzer finds.  Sanitizers turn any bad read into a crash.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/proto.h"

static void roundtrip(const struct proto_request *req)
{
    const struct attn_problem *p = &req->prob;
    size_t es = attn_dtype_size(p->dtype);
    size_t nq = (size_t)p->B * p->H * p->N * p->D;
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
        if (again.prob.N != p->N || again.prob.D != p->D ||
            again.prob.method != p->method || again.prob.scale != p->scale ||
            memcmp(again.prob.q, p->q, nq * es) != 0)
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
