/*
 * fuzz-proto.c - libFuzzer target for the wire codec (`make fuzz`).
 *
 * Feeds each input to every decoder a peer can reach: the request decoder
 * in both formats (with tight limits, so large shapes take the 413 path
 * instead of allocating), the session bodies (create and append), the
 * answer decoders and the error-body parser.  A request that decodes must
 * also encode to an answer and a request that decode again to the same
 * problem (shapes, masks, causality, data, session and appended tokens),
 * and a session body must encode to one that decodes to the same tokens,
 * which checks the encoders on whatever shapes the fuzzer finds.
 * The KServe v2 inference request is fed the same input, as JSON alone
 * and with binary data after a header.  Sanitizers turn any bad read into
 * a crash.
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
    struct proto_encode_opts o = {
        .id = req->has_id ? req->id : NULL,
        .timeout_ms = req->timeout_ms,
        .kv = req->has_kv ? req->kv : NULL,
        .per_head_stats = req->per_head_stats,
    };
    if (proto_request_encode_opts(p, req->format, &o, &body, &blen) ==
        PROTO_OK) {
        struct proto_request again;
        if (proto_request_decode(body, blen, req->format, NULL, &again, err,
                                 sizeof err) != PROTO_OK)
            abort();
        const struct attn_problem *a = &again.prob;
        if (a->Nq != p->Nq || a->Nk != p->Nk || a->D != p->D ||
            a->Hkv != p->Hkv || a->causal != p->causal ||
            a->method != p->method || a->scale != p->scale ||
            a->min_blocks_per_row != p->min_blocks_per_row ||
            a->error_samples != p->error_samples ||
            a->target_error != p->target_error ||
            again.per_head_stats != req->per_head_stats ||
            again.has_kv != req->has_kv || strcmp(again.kv, req->kv) != 0 ||
            memcmp(a->q, p->q, nq * es) != 0 ||
            !same_mask(a->q_mask, p->q_mask, (size_t)p->B * p->Nq))
            abort();
        if (!req->has_kv &&
            (memcmp(a->v, p->v, nk * es) != 0 ||
             !same_mask(a->mask, p->mask, (size_t)p->B * p->Nk)))
            abort();
        size_t na = (size_t)p->B * p->Hkv * p->append.n * p->D;
        if (req->has_kv &&
            (a->append.n != p->append.n ||
             (na && memcmp(a->append.k, p->append.k, na * es) != 0) ||
             !same_mask(a->append.mask, p->append.mask,
                        (size_t)p->B * p->append.n)))
            abort();
        proto_request_release(&again);
        free(body);
    }
}

/* A decoded session body encodes to one that decodes to the same tokens. */
static void kv_roundtrip(const struct proto_kv_body *kb, int create)
{
    const struct attn_kv_shape *sh = &kb->shape;
    char *body, err[256];
    size_t blen;
    if (proto_kv_body_encode(sh, &kb->tokens, kb->ttl_ms, kb->format, &body,
                             &blen) != PROTO_OK)
        return;
    struct proto_kv_body again;
    if (proto_kv_body_decode(body, blen, kb->format, NULL, create, &again, err,
                             sizeof err) != PROTO_OK)
        abort();
    size_t n = (size_t)sh->B * sh->Hkv * kb->tokens.n * sh->D *
               attn_dtype_size(sh->dtype);
    if (again.shape.dtype != sh->dtype || again.shape.B != sh->B ||
        again.shape.Hkv != sh->Hkv || again.shape.D != sh->D ||
        again.tokens.n != kb->tokens.n || again.ttl_ms != kb->ttl_ms ||
        memcmp(again.tokens.k, kb->tokens.k, n) != 0 ||
        memcmp(again.tokens.v, kb->tokens.v, n) != 0 ||
        !same_mask(again.tokens.mask, kb->tokens.mask,
                   (size_t)sh->B * kb->tokens.n))
        abort();
    proto_kv_body_release(&again);
    free(body);
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
        for (int create = 0; create <= 1; create++) {
            struct proto_kv_body kb;
            if (proto_kv_body_decode(data, size, (enum proto_format)fmt, &lim,
                                     create, &kb, err,
                                     sizeof err) == PROTO_OK) {
                kv_roundtrip(&kb, create);
                proto_kv_body_release(&kb);
            } else if (err[0] == '\0') {
                abort();
            }
        }
        struct proto_response r;
        if (proto_response_decode(data, size, (enum proto_format)fmt, &r, err,
                                  sizeof err) == PROTO_OK)
            proto_response_release(&r);
    }
    /* The v2 inference request: all JSON, and a header that ends where
     * the input's first byte says, binary data after it. */
    for (int split = 0; split <= 1; split++) {
        size_t jl = split && size ? data[0] % (size + 1) : size;
        struct proto_v2_request v2;
        if (proto_v2_request_decode(data, size, jl, "mra2", NULL, &v2, err,
                                    sizeof err) == PROTO_OK) {
            const struct attn_problem *p = &v2.req.prob;
            memset(p->out, 0,
                   (size_t)p->B * p->H * p->Nq * p->D *
                       attn_dtype_size(p->dtype));
            struct proto_stats st = {.backend = "cpu", .batch_requests = 1};
            char *ans;
            size_t alen;
            if (proto_v2_response_encode(&v2, &st, &ans, &alen) == PROTO_OK)
                free(ans);
            proto_v2_request_release(&v2);
        } else if (err[0] == '\0') {
            abort();
        }
    }
    char code[64], msg[256];
    proto_error_parse(data, size, code, sizeof code, msg, sizeof msg);
    struct proto_kv_info info;
    proto_kv_info_parse(data, size, &info);
    return 0;
}
