/*
 * api-v1.c - the /v1 attention surface: POST /v1/attention (and the same
 * call on the session of the path, POST /v1/kv/{id}/attention),
 * GET /v1/info and GET /v1/openapi.yaml.
 *
 * POST /v1/attention decodes the body with the wire codec (protocol/),
 * binds a request on a session to it (server/kv.h), submits the problem
 * to the scheduler as a job and suspends the request (server/call.h); the
 * job's completion resumes it and the answer is encoded here, on an HTTP
 * thread.  protocol/SPEC.md is the contract.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/proto.h"
#include "server/bufcache.h"
#include "server/call.h"
#include "server/route.h"

/* One POST /v1/attention: the call and what the answer needs. */
struct v1_call {
    struct mrad_call c; /* first */
    struct proto_request req; /* the problem; prob.out gets the answer */
    char *answer; /* the encoded answer around prob.out, when sent in
                     pieces */
};

static void v1_cleanup(struct mrad_call *c)
{
    struct v1_call *call = (struct v1_call *)c;
    proto_request_release(&call->req);
    free(call->answer);
}

static const struct mrad_job_ops v1_ops = {.done = mrad_call_done,
                                           .cancelled = mrad_call_cancelled,
                                           .release = mrad_call_release};

/* ---- POST /v1/attention ------------------------------------------------ */

/* The headers: draining, media type, body limit, queue room. */
static int attention_begin(struct mrad_req *r)
{
    int rc;
    struct mrad_call *c = mrad_call_begin(r, sizeof(struct v1_call), &v1_ops, 0,
                                          &rc);
    if (c)
        c->cleanup = v1_cleanup;
    return rc;
}

/* The whole body is here: decode, bind to a session, admit, submit. */
static int attention_handle(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    struct v1_call *call = mrad_req_data(r);
    struct mrad_call *c = &call->c;
    char err[256], path_kv[PROTO_KV_ID_MAX + 2];
    /* POST /v1/kv/{id}/attention names its session in the path. */
    const char *kv = NULL;
    if (strcmp(mrad_req_path(r), "/v1/attention") != 0) {
        int n = mrad_req_path_segment(r, 2, path_kv, sizeof path_kv);
        if (n < 0 || !proto_kv_id_valid(path_kv, (size_t)n))
            return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EKVNOTFOUND,
                                  "kv: no such session (the path's id is "
                                  "not a session id)");
        kv = path_kv;
        mrad_req_add_header(r, MRAD_KV_HEADER, kv);
    }
    mrad_call_take_body(r, c);
    struct proto_decode_opts o = {&srv->cfg->limits, &mrad_call_out_alloc,
                                  kv};
    int rc = proto_request_decode_opts(mrad_call_body(c), c->body_len,
                                       c->fmt, &o, &call->req, err,
                                       sizeof(err));
    if (rc != PROTO_OK)
        return mrad_req_error(r, MRAD_SRC_PROTO, rc, err);
    if (call->req.has_kv &&
        mrad_call_bind_session(r, c, &call->req, kv != NULL))
        return 0;
    if (mrad_call_admit(r, c, &call->req.prob, 1))
        return 0;
    return mrad_call_submit(r, c, call->req.timeout_ms);
}

/* The free callback of an answer sent from the call's buffers. */
static void release_call(void *cls)
{
    struct v1_call *call = cls;
    mrad_job_unref(&call->c.job);
}

/*
 * Answers a computed msgpack request without copying its output: the body
 * goes out as three pieces, the encoded head of the answer, the output
 * tensor where the backend wrote it (req.prob.out) and the encoded tail,
 * byte for byte what proto_response_encode() would have written.  The
 * answer holds a reference to the call until its last byte is sent or the
 * connection closes first (client gone, drain, shutdown).
 */
static int send_pieces(struct mrad_req *r, struct v1_call *call,
                       const struct proto_stats *st)
{
    size_t head, out, tail;
    if (proto_response_encode_split(&call->req, st, &call->answer, &head, &out,
                                    &tail) != PROTO_OK)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                              "out of memory encoding the answer");
    const struct mrad_req_piece pieces[3] = {
        {call->answer, head},
        {call->req.prob.out, out},
        {call->answer + head, tail},
    };
    mrad_job_ref(&call->c.job);
    return mrad_req_send_pieces(r, 200, "application/msgpack", pieces, 3,
                                release_call, call);
}

/* Answers from this size of output on are sent without a copy.  Smaller
 * ones are cheaper to copy: libmicrohttpd sends a single buffer with its
 * headers in one call, and pieces in two calls and a socket option more. */
#define ZERO_COPY_BYTES (64u << 10)

/* After the job's completion (or a refused submit) resumed the request. */
static int attention_resume(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    struct v1_call *call = mrad_req_data(r);
    const struct mrad_job *job = &call->c.job;
    int rc;
    int failed = mrad_call_failed(
        r, &call->c, call->req.has_id ? call->req.id : NULL, &rc);
    mrad_call_end_session(&call->c);
    if (failed)
        return rc;
    struct proto_stats st = {
        .attn = job->stats,
        .backend = srv->info.backend,
        .queue_us = job->queue_us,
        .compute_us = job->compute_us,
        .batch_requests = job->batch_requests,
    };
    /* The computation is over (a job answered with its result is no
     * longer in a worker's hands): the request body, which the input
     * tensors point into, goes back to the cache now rather than when the
     * answer has been sent. */
    mrad_call_drop_body(&call->c);
    if (call->req.format == PROTO_MSGPACK &&
        mrad_call_out_bytes(&call->req.prob) >= ZERO_COPY_BYTES)
        return send_pieces(r, call, &st);
    char *buf;
    size_t len;
    if (proto_response_encode(&call->req, &st, &buf, &len) != PROTO_OK)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                              "out of memory encoding the answer");
    return mrad_req_send(r, 200,
                         call->req.format == PROTO_JSON ? "application/json"
                                                        : "application/msgpack",
                         buf, len);
}

/* ---- GET /v1/info -------------------------------------------------------- */

static int get_info(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    const struct mrad_config *cfg = srv->cfg;
    const struct proto_limits *l = &cfg->limits;
    char device[600];
    struct mrad_kv_stats kv;
    mrad_kv_stats(srv->kv, &kv);
    proto_json_escape(device, sizeof(device), srv->info.device,
                      strlen(srv->info.device));
    return mrad_req_send_json(
        r, 200,
        "{\"version\":\"%s\",\"backend\":\"%s\",\"device\":\"%s\","
        "\"workers\":%" PRIu32 ",\"auth\":%s,"
        "\"limits\":{\"max_batch\":%" PRIu64 ",\"max_heads\":%" PRIu64
        ",\"max_tokens\":%" PRIu64 ",\"max_head_dim\":%" PRIu64
        ",\"max_elements\":%" PRIu64 ",\"max_body_bytes\":%" PRIu64
        ",\"max_json_bytes\":%" PRIu64 ",\"max_problem_flops\":%" PRIu64
        ",\"max_inflight_bytes\":%" PRIu64 ",\"max_connections\":%" PRIu32 "},"
        "\"defaults\":{\"method\":\"mra2\",\"block_per_row\":%d,"
        "\"timeout_ms\":%" PRIu64 "},"
        "\"batching\":{\"max_queue\":%" PRIu64
        ",\"max_batch_requests\":%" PRIu64 ",\"max_batch_tokens\":%" PRIu64
        ",\"batch_window_us\":%" PRIu64 "},"
        "\"kv\":{\"budget_bytes\":%" PRIu64 ",\"bytes\":%" PRIu64
        ",\"sessions\":%" PRIu64 ",\"max_sessions\":%" PRIu64
        ",\"ttl_ms\":%" PRIu64 ",\"max_ttl_ms\":%" PRIu64 "}}",
        MRAD_VERSION, srv->info.backend, device, srv->info.workers,
        srv->auth ? "true" : "false", l->max_batch, l->max_heads, l->max_tokens,
        l->max_head_dim ? l->max_head_dim : ATTN_MAX_HEAD_DIM, l->max_elements,
        cfg->max_body_bytes, cfg->max_json_bytes, srv->max_problem_flops,
        srv->max_inflight_bytes, cfg->max_connections,
        ATTN_DEFAULT_BLOCK_PER_ROW, cfg->request_timeout_ms, cfg->max_queue,
        cfg->max_batch_requests, cfg->max_batch_tokens, cfg->batch_window_us,
        kv.budget_bytes, kv.bytes, kv.sessions, kv.max_sessions,
        cfg->kv_ttl_ms, cfg->kv_max_ttl_ms);
}

/* ---- GET /v1/openapi.yaml ----------------------------------------------- */

/* protocol/openapi.yaml, compiled in by server/module.mk: the daemon
 * serves its API description without reading a file at run time. */
extern const unsigned char mrad_openapi_yaml[];
extern const size_t mrad_openapi_yaml_len;

/* The document is static: nothing to release once it is sent. */
static void release_nothing(void *cls)
{
    (void)cls;
}

static int get_openapi(struct mrad_req *r)
{
    const struct mrad_req_piece doc = {mrad_openapi_yaml,
                                       mrad_openapi_yaml_len};
    return mrad_req_send_pieces(r, 200, "application/yaml", &doc, 1,
                                release_nothing, NULL);
}

static const struct mrad_route routes[] = {
    {"POST", "/v1/attention", MRAD_ROUTE_BODY, attention_begin,
     attention_handle, attention_resume},
    {"POST", "/v1/kv/*/attention", MRAD_ROUTE_BODY, attention_begin,
     attention_handle, attention_resume},
    {"GET", "/v1/info", 0, NULL, get_info, NULL},
    {"GET", "/v1/openapi.yaml", 0, NULL, get_openapi, NULL},
};

const struct mrad_api mrad_api_v1 = {
    .name = "v1",
    .key_prefix = "/v1/",
    .routes = routes,
    .nroutes = sizeof(routes) / sizeof(routes[0]),
};
