/*
 * api-v1.c - the /v1 surface: POST /v1/attention and GET /v1/info.
 *
 * POST /v1/attention decodes the body with the wire codec (protocol/),
 * submits the problem to the scheduler as a job and suspends the request;
 * the job's completion resumes it and the answer is encoded here, on an
 * HTTP thread.  The job is embedded in a struct v1_call that also holds
 * what only this surface knows: the decoded request, the body its tensors
 * point into, the encoded answer.  protocol/SPEC.md is the contract.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "protocol/proto.h"
#include "server/bufcache.h"
#include "server/route.h"

/* One POST /v1/attention: the job and what the answer needs. */
struct v1_call {
    struct mrad_job job; /* first: the job's owner is the call */
    /* The request, until it ends (the job may outlive it: a worker still
     * computing a job answered 504).  `lock` guards it and `woken` against
     * the scheduler's thread, which asks whether the client left. */
    pthread_mutex_t lock;
    struct mrad_req *r;
    int woken;
    struct mrad_server *srv;
    /* Bytes counted against --max-inflight-bytes for the body and for
     * the answer. */
    uint64_t body_reserved, out_reserved;
    struct proto_request req; /* the problem; prob.out gets the answer */
    enum proto_format fmt;
    void *body;   /* from mrad_bufcache_get(), the tensors point into it */
    char *answer; /* the encoded answer around prob.out, when sent in
                     pieces */
    int refused;  /* the mrad_err of a refused submit, or 0 */
#ifdef MRAD_TEST_HOOKS
    int inject_fault;
#endif
};

/* ---- the job's callbacks ------------------------------------------------ */

static void call_done(struct mrad_job *job)
{
    struct v1_call *call = job->owner;
    /* Under the lock: the request cannot end before this returns (its
     * end takes the lock), and no probe of the client crosses the
     * answer. */
    pthread_mutex_lock(&call->lock);
    call->woken = 1;
    if (call->r)
        mrad_req_resume(call->r);
    pthread_mutex_unlock(&call->lock);
}

static int call_cancelled(struct mrad_job *job)
{
    struct v1_call *call = job->owner;
    pthread_mutex_lock(&call->lock);
    int gone = !call->r || (!call->woken && mrad_req_peer_closed(call->r));
    pthread_mutex_unlock(&call->lock);
    return gone;
}

static void call_release(struct mrad_job *job)
{
    struct v1_call *call = job->owner;
    proto_request_release(&call->req);
    mrad_bufcache_put(call->body);
    mrad_server_release(call->srv, call->body_reserved + call->out_reserved);
    free(call->answer);
    pthread_mutex_destroy(&call->lock);
    free(call);
}

static const struct mrad_job_ops call_ops = {.done = call_done, .cancelled = call_cancelled,
                                             .release = call_release};

/* The request's reference to its call, dropped when the request ends. */
static void call_unref(void *data)
{
    struct v1_call *call = data;
    pthread_mutex_lock(&call->lock);
    call->r = NULL;
    pthread_mutex_unlock(&call->lock);
    mrad_job_unref(&call->job);
}

/* ---- POST /v1/attention ------------------------------------------------ */

/* Media type of the body, ignoring parameters and case.  Returns 0 and sets
 * *fmt, or -1 for anything else. */
static int media_type(const char *ctype, enum proto_format *fmt)
{
    if (!ctype)
        return -1;
    while (*ctype == ' ' || *ctype == '\t')
        ctype++;
    size_t n = strcspn(ctype, "; \t");
    if ((n == 19 && !strncasecmp(ctype, "application/msgpack", n)) ||
        (n == 21 && !strncasecmp(ctype, "application/x-msgpack", n))) {
        *fmt = PROTO_MSGPACK;
        return 0;
    }
    if (n == 16 && !strncasecmp(ctype, "application/json", n)) {
        *fmt = PROTO_JSON;
        return 0;
    }
    return -1;
}

/* The headers: draining, media type, body limit, queue room. */
static int attention_begin(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    const struct mrad_config *cfg = srv->cfg;
    if (atomic_load(&srv->draining))
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                              "the server is draining");
    struct v1_call *call = calloc(1, sizeof(*call));
    if (!call)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                              "out of memory for the request");
    mrad_job_init(&call->job, &call_ops, call);
    pthread_mutex_init(&call->lock, NULL);
    call->r = r;
    call->srv = mrad_req_server(r);
    mrad_req_set_data(r, call, call_unref);
    const char *ctype = mrad_req_header(r, "Content-Type");
    if (media_type(ctype, &call->fmt)) {
        /* The header's value is not echoed: error messages name fields,
         * never request bytes. */
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "Content-Type %s: use application/msgpack or "
                 "application/json",
                 ctype ? "not supported" : "missing");
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EMEDIA, msg);
    }
    uint64_t limit = cfg->max_body_bytes;
    if (call->fmt == PROTO_JSON && cfg->max_json_bytes < limit)
        limit = cfg->max_json_bytes;
    if (mrad_req_set_body_limit(r, limit))
        return 0; /* 413 sent */
    /* Refuse early when the queue is already full: the body need not be
     * kept.  The authoritative check is at submit. */
    struct mrad_sched_status st;
    mrad_sched_status(srv->sched, &st);
    if (st.queue_depth >= st.max_queue)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EOVERLOAD,
                              "the request queue is full");
#ifdef MRAD_TEST_HOOKS
    const char *f = mrad_req_header(r, "X-Mrad-Inject-Fault");
    call->inject_fault = f && !strcmp(f, "1");
#endif
    return 0;
}

/* The output tensor is computed into a cached buffer too: a fresh one
 * would be faulted in page by page as the backend writes it. */
static void *out_get(size_t bytes, void *ctx)
{
    (void)ctx;
    size_t cap;
    return mrad_bufcache_get(bytes, &cap);
}

static void out_put(void *buf, void *ctx)
{
    (void)ctx;
    mrad_bufcache_put(buf);
}

static const struct proto_out_alloc out_alloc = {out_get, out_put, NULL};

/* Bytes of a decoded problem's output [B, H, Nq, D] (their count fits: it
 * was checked by the decoder). */
static size_t out_bytes(const struct attn_problem *p)
{
    return (size_t)p->B * p->H * p->Nq * p->D * attn_dtype_size(p->dtype);
}

/* The admission checks of a decoded problem: its estimated cost, and
 * room for its answer.  Returns 0, or -1 with the error answered. */
static int admit(struct mrad_req *r, struct v1_call *call)
{
    struct mrad_server *srv = call->srv;
    const struct attn_problem *p = &call->req.prob;
    char msg[256];
    double cost = attn_cost(p);
    if (cost > (double)srv->max_problem_flops) {
        snprintf(msg, sizeof(msg),
                 "problem too costly: about %.3g flop-equivalents estimated "
                 "(method %s), over the limit of %.3g (--max-problem-flops)",
                 cost, attn_method_name(p->method),
                 (double)srv->max_problem_flops);
        mrad_req_error(r, MRAD_SRC_SERVER, MRAD_ETOOBIG, msg);
        return -1;
    }
    uint64_t out = out_bytes(p);
    if (mrad_server_reserve(srv, out)) {
        snprintf(msg, sizeof(msg),
                 "the service holds too many bytes now for an answer of "
                 "%" PRIu64 " bytes (limit %" PRIu64 "); retry later",
                 out, srv->max_inflight_bytes);
        mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EOVERLOAD, msg);
        return -1;
    }
    call->out_reserved = out;
    return 0;
}

/* The whole body is here: decode, admit, submit, suspend. */
static int attention_handle(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    const struct mrad_config *cfg = srv->cfg;
    struct v1_call *call = mrad_req_data(r);
    struct mrad_job *job = &call->job;
    char err[256];
    size_t len;
    /* The call owns the body (and its count) from here on. */
    call->body = mrad_req_take_body(r, &len, &call->body_reserved);
    int rc = proto_request_decode_with(call->body ? call->body : "", len,
                                       call->fmt, &cfg->limits, &out_alloc,
                                       &call->req, err, sizeof(err));
    if (rc != PROTO_OK)
        return mrad_req_error(r, MRAD_SRC_PROTO, rc, err);
    if (admit(r, call))
        return 0;
    struct attn_problem *p = &call->req.prob;
    uint64_t timeout_ms = cfg->request_timeout_ms;
    if (call->req.timeout_ms && call->req.timeout_ms < timeout_ms)
        timeout_ms = call->req.timeout_ms;
    p->cancel = &job->cancel;
    job->prob = p;
    job->deadline_ns = mrad_req_start_ns(r) + timeout_ms * 1000000ull;
    /* What --max-batch-tokens counts: B*N in self-attention, and in
     * general the longer side (a decode step of one query over a long
     * context weighs its context). */
    job->tokens = (uint64_t)p->B * (p->Nq > p->Nk ? p->Nq : p->Nk);
    job->bytes = len + out_bytes(p);
#ifdef MRAD_TEST_HOOKS
    job->inject_fault = call->inject_fault;
#endif
    /* Suspend before submitting: the job may finish (and resume the
     * request) before this function returns. */
    mrad_req_suspend(r);
    rc = mrad_sched_submit(srv->sched, job);
    if (rc != MRAD_OK) {
        call->refused = rc;
        mrad_req_resume(r);
    }
    return 0;
}

static void format_job_error(const struct mrad_job *job, char *msg, size_t len,
                             uint64_t waited_ms)
{
    if (job->err_src == MRAD_SRC_ATTN) {
        snprintf(msg, len, "compute failed: %s", attn_strerror(job->err));
        return;
    }
    switch (job->err) {
    case MRAD_ETIMEOUT:
        snprintf(msg, len,
                 "deadline passed before the result was ready (after %" PRIu64
                 " ms)",
                 waited_ms);
        break;
    case MRAD_EUNAVAIL:
        snprintf(msg, len, "the server is shutting down");
        break;
    default:
        snprintf(msg, len, "the request could not be served");
    }
}

/* The free callback of an answer sent from the call's buffers. */
static void release_call(void *cls)
{
    struct v1_call *call = cls;
    mrad_job_unref(&call->job);
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
    mrad_job_ref(&call->job);
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
    const struct mrad_job *job = &call->job;
    char msg[256];
    mrad_req_set_log(r, job->queue_us, job->compute_us,
                     call->req.has_id ? call->req.id : NULL);
    if (call->refused)
        return mrad_req_error(r, MRAD_SRC_SERVER, call->refused,
                              call->refused == MRAD_EOVERLOAD
                                  ? "the request queue is full"
                                  : "the server is draining");
    if (job->err_src == MRAD_SRC_SERVER && job->err == MRAD_EGONE)
        return -1; /* nobody to answer: close (499 in the log) */
    if (job->err != 0) {
        format_job_error(job, msg, sizeof(msg),
                         (mrad_now_ns() - mrad_req_start_ns(r)) / 1000000);
        return mrad_req_error(r, job->err_src, job->err, msg);
    }
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
    mrad_bufcache_put(call->body);
    call->body = NULL;
    mrad_server_release(call->srv, call->body_reserved);
    call->body_reserved = 0;
    if (call->req.format == PROTO_MSGPACK &&
        out_bytes(&call->req.prob) >= ZERO_COPY_BYTES)
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
        ",\"batch_window_us\":%" PRIu64 "}}",
        MRAD_VERSION, srv->info.backend, device, srv->info.workers,
        srv->auth ? "true" : "false", l->max_batch, l->max_heads, l->max_tokens,
        l->max_head_dim ? l->max_head_dim : ATTN_MAX_HEAD_DIM, l->max_elements,
        cfg->max_body_bytes, cfg->max_json_bytes, srv->max_problem_flops,
        srv->max_inflight_bytes, cfg->max_connections,
        ATTN_DEFAULT_BLOCK_PER_ROW, cfg->request_timeout_ms, cfg->max_queue,
        cfg->max_batch_requests, cfg->max_batch_tokens, cfg->batch_window_us);
}

static const struct mrad_route routes[] = {
    {"POST", "/v1/attention", MRAD_ROUTE_BODY, attention_begin,
     attention_handle, attention_resume},
    {"GET", "/v1/info", 0, NULL, get_info, NULL},
};

const struct mrad_api mrad_api_v1 = {"v1", "/v1/", routes,
                                     sizeof(routes) / sizeof(routes[0])};
