/*
 * call.c - a request answered after a job (server/call.h).
 */
#include "server/call.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "server/bufcache.h"

/* ---- the job's callbacks ------------------------------------------------ */

void mrad_call_done(struct mrad_job *job)
{
    struct mrad_call *c = job->owner;
    /* Under the lock: the request cannot end before this returns (its end
     * takes the lock), and no probe of the client crosses the answer. */
    pthread_mutex_lock(&c->lock);
    c->woken = 1;
    if (c->r)
        mrad_req_resume(c->r);
    pthread_mutex_unlock(&c->lock);
}

int mrad_call_cancelled(struct mrad_job *job)
{
    struct mrad_call *c = job->owner;
    pthread_mutex_lock(&c->lock);
    int gone = !c->r || (!c->woken && mrad_req_peer_closed(c->r));
    pthread_mutex_unlock(&c->lock);
    return gone;
}

void mrad_call_release(struct mrad_job *job)
{
    struct mrad_call *c = job->owner;
    if (c->cleanup)
        c->cleanup(c);
    if (c->kv)
        mrad_kv_release(c->srv->kv, c->kv);
    mrad_bufcache_put(c->body);
    mrad_server_release(c->srv, c->body_reserved + c->out_reserved);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* The request's reference to its call, dropped when the request ends. */
static void call_unref(void *data)
{
    struct mrad_call *c = data;
    pthread_mutex_lock(&c->lock);
    c->r = NULL;
    pthread_mutex_unlock(&c->lock);
    mrad_job_unref(&c->job);
}

/* ---- the request's side ----------------------------------------------------
 */

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

struct mrad_call *mrad_call_begin(struct mrad_req *r, size_t size,
                                  const struct mrad_job_ops *ops,
                                  unsigned flags, int *rc)
{
    struct mrad_server *srv = mrad_req_server(r);
    const struct mrad_config *cfg = srv->cfg;
    *rc = 0;
    if (atomic_load(&srv->draining)) {
        *rc = mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                             "the server is draining");
        return NULL;
    }
    struct mrad_call *c = calloc(1, size);
    if (!c) {
        *rc = mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                             "out of memory for the request");
        return NULL;
    }
    mrad_job_init(&c->job, ops, c);
    pthread_mutex_init(&c->lock, NULL);
    c->r = r;
    c->srv = srv;
    mrad_req_set_data(r, c, call_unref);
    const char *ctype = mrad_req_header(r, "Content-Type");
    if (flags & MRAD_CALL_ANY_MEDIA) {
        c->fmt = PROTO_MSGPACK; /* the msgpack body limit */
    } else if (media_type(ctype, &c->fmt)) {
        /* The header's value is not echoed: error messages name fields,
         * never request bytes. */
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "Content-Type %s: use application/msgpack or "
                 "application/json",
                 ctype ? "not supported" : "missing");
        *rc = mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EMEDIA, msg);
        return NULL;
    }
    uint64_t limit = cfg->max_body_bytes;
    if (c->fmt == PROTO_JSON && cfg->max_json_bytes < limit)
        limit = cfg->max_json_bytes;
    if (mrad_req_set_body_limit(r, limit))
        return NULL; /* 413 sent */
    /* Refuse early when the queue is already full: the body need not be
     * kept.  The authoritative check is at submit. */
    struct mrad_sched_status st;
    mrad_sched_status(srv->sched, &st);
    if (st.queue_depth >= st.max_queue) {
        *rc = mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EOVERLOAD,
                             "the request queue is full");
        return NULL;
    }
#ifdef MRAD_TEST_HOOKS
    const char *f = mrad_req_header(r, "X-Mrad-Inject-Fault");
    c->inject_fault = f && !strcmp(f, "1");
#endif
    return c;
}

void mrad_call_take_body(struct mrad_req *r, struct mrad_call *c)
{
    c->body = mrad_req_take_body(r, &c->body_len, &c->body_reserved);
    c->body_pad = mrad_req_body_pad(r);
}

const char *mrad_call_body(const struct mrad_call *c)
{
    return c->body ? (const char *)c->body + c->body_pad : "";
}

/* ---- problems ------------------------------------------------------- */

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

const struct proto_out_alloc mrad_call_out_alloc = {out_get, out_put, NULL};

size_t mrad_call_out_bytes(const struct attn_problem *p)
{
    /* The count fits: the decoder checked it. */
    return (size_t)p->B * p->H * p->Nq * p->D * attn_dtype_size(p->dtype);
}

/* The session's shape against the problem's: a message, or "". */
static void session_mismatch(const struct attn_problem *p,
                             const struct attn_kv_shape *sh, char *msg,
                             size_t len)
{
    if (p->dtype != sh->dtype)
        snprintf(msg, len, "q.dtype: %s, the session's is %s",
                 attn_dtype_name(p->dtype), attn_dtype_name(sh->dtype));
    else if (p->B != sh->B || p->D != sh->D)
        snprintf(msg, len,
                 "q.shape: B = %" PRIu32 " and D = %" PRIu32
                 " must be the session's (B = %" PRIu32 ", D = %" PRIu32 ")",
                 p->B, p->D, sh->B, sh->D);
    else if (p->append.n && p->Hkv != sh->Hkv)
        snprintf(msg, len,
                 "k_append.shape[1]: Hkv = %" PRIu32
                 " must be the session's (%" PRIu32 ")",
                 p->Hkv, sh->Hkv);
    else if (p->H % sh->Hkv)
        snprintf(msg, len,
                 "q.shape[1]: H = %" PRIu32
                 " is not a multiple of the session's Hkv = %" PRIu32,
                 p->H, sh->Hkv);
    else
        msg[0] = '\0';
}

int mrad_call_bind_session(struct mrad_req *r, struct mrad_call *c,
                           struct proto_request *req, int kv_in_path)
{
    struct mrad_kv_table *t = c->srv->kv;
    struct attn_problem *p = &req->prob;
    char msg[256];
    if (!kv_in_path)
        mrad_req_add_header(r, MRAD_KV_HEADER, req->kv);
    if (mrad_kv_acquire(t, req->kv, strlen(req->kv), mrad_req_key_id(r),
                        &c->kv)) {
        mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EKVNOTFOUND,
                       "kv: no such session (unknown, expired, evicted or "
                       "deleted): create it again");
        return -1;
    }
    session_mismatch(p, mrad_kv_shape(c->kv), msg, sizeof msg);
    int rc = msg[0] ? MRAD_EBADREQ : 0;
    if (!rc) {
        p->Hkv = mrad_kv_shape(c->kv)->Hkv;
        if (p->append.n)
            rc = mrad_kv_reserve(t, c->kv, p->append.n, msg, sizeof msg);
    }
    if (!rc) {
        /* Nk: the count planned after the append, for the checks and the
         * cost; the problem then reads what the store holds in its turn
         * (mrad_call_admit sets Nk 0). */
        struct mrad_kv_view v;
        mrad_kv_view(t, c->kv, &v);
        p->kv = mrad_kv_store(c->kv);
        p->Nk = (uint32_t)v.tokens; /* at most max_tokens */
        if (attn_problem_check(p, msg, sizeof msg) != ATTN_OK)
            rc = MRAD_EBADREQ;
    }
    if (rc) {
        mrad_req_error(r, MRAD_SRC_SERVER, rc, msg);
        return -1;
    }
    c->job.worker = mrad_kv_worker(c->kv);
    c->job.order = c->kv;
    return 0;
}

int mrad_call_admit(struct mrad_req *r, struct mrad_call *c,
                    struct attn_problem *p, int answer)
{
    struct mrad_server *srv = c->srv;
    struct mrad_job *job = &c->job;
    mrad_req_set_method(r, attn_method_name(p->method));
    if (attn_problem_accuracy(p) && !attn_backend_accuracy(srv->info.backend)) {
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "error_samples, target_error and min_blocks_per_row are "
                 "computed by the cpu backend; this server runs %s",
                 srv->info.backend);
        mrad_req_error(r, MRAD_SRC_SERVER, MRAD_ENOTIMPL, msg);
        return -1;
    }
    double cost = attn_cost(p);
    if (cost > (double)srv->max_problem_flops) {
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "problem too costly: about %.3g flop-equivalents estimated "
                 "(method %s), over the limit of %.3g (--max-problem-flops)",
                 cost, attn_method_name(p->method),
                 (double)srv->max_problem_flops);
        mrad_req_error(r, MRAD_SRC_SERVER, MRAD_ETOOBIG, msg);
        return -1;
    }
    size_t out = mrad_call_out_bytes(p);
    if (answer && mrad_call_reserve_answer(r, c, out))
        return -1;
    p->cancel = &job->cancel;
    job->prob = p;
    /* What --max-batch-tokens counts: B*N in self-attention, and in
     * general the longer side (a decode step of one query over a long
     * context weighs its context). */
    job->tokens = (uint64_t)p->B * (p->Nq > p->Nk ? p->Nq : p->Nk);
    job->bytes = c->body_len + (answer ? out : 0);
    if (p->kv)
        p->Nk = 0; /* what the store holds in the job's turn */
    return 0;
}

int mrad_call_reserve_answer(struct mrad_req *r, struct mrad_call *c,
                             uint64_t bytes)
{
    struct mrad_server *srv = c->srv;
    if (mrad_server_reserve(srv, bytes)) {
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "the service holds too many bytes now for an answer of "
                 "%" PRIu64 " bytes (limit %" PRIu64 "); retry later",
                 bytes, srv->max_inflight_bytes);
        mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EOVERLOAD, msg);
        return -1;
    }
    c->out_reserved += bytes;
    return 0;
}

int mrad_call_submit(struct mrad_req *r, struct mrad_call *c,
                     uint64_t timeout_ms)
{
    struct mrad_job *job = &c->job;
    uint64_t limit = c->srv->cfg->request_timeout_ms;
    if (timeout_ms && timeout_ms < limit)
        limit = timeout_ms;
    job->deadline_ns = mrad_req_start_ns(r) + limit * 1000000ull;
    snprintf(job->rid, sizeof job->rid, "%s", mrad_req_rid(r));
#ifdef MRAD_TEST_HOOKS
    job->inject_fault = c->inject_fault;
#endif
    /* Suspend before submitting: the job may finish (and resume the
     * request) before this function returns. */
    mrad_req_suspend(r);
    int rc = mrad_sched_submit(c->srv->sched, job);
    if (rc != MRAD_OK) {
        c->refused = rc;
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

int mrad_call_failed(struct mrad_req *r, struct mrad_call *c, const char *id,
                     int *rc)
{
    const struct mrad_job *job = &c->job;
    char msg[256];
    mrad_req_set_log(r, job->queue_us, job->compute_us, id);
    if (c->refused) {
        *rc = mrad_req_error(
            r, MRAD_SRC_SERVER, c->refused,
            c->refused == MRAD_EOVERLOAD  ? "the request queue is full"
            : c->refused == MRAD_EUNAVAIL ? "the server is draining"
                                          : "the request could not be queued");
        return 1;
    }
    if (job->err_src == MRAD_SRC_SERVER && job->err == MRAD_EGONE) {
        *rc = -1; /* nobody to answer: close (499 in the log) */
        return 1;
    }
    if (job->err == 0)
        return 0;
    if (c->kv && job->err_src == MRAD_SRC_ATTN && job->err == ATTN_ENOMEM) {
        *rc = mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EKVFULL,
                             "the session cache is full: the backend has no "
                             "memory left for the session's tokens");
        return 1;
    }
    format_job_error(job, msg, sizeof(msg),
                     (mrad_now_ns() - mrad_req_start_ns(r)) / 1000000);
    *rc = mrad_req_error(r, job->err_src, job->err, msg);
    return 1;
}

void mrad_call_drop_body(struct mrad_call *c)
{
    mrad_bufcache_put(c->body);
    c->body = NULL;
    mrad_server_release(c->srv, c->body_reserved);
    c->body_reserved = 0;
}

void mrad_call_end_session(struct mrad_call *c)
{
    if (c->kv && (c->refused || c->job.err_src == MRAD_SRC_ATTN)) {
        mrad_kv_release(c->srv->kv, c->kv);
        c->kv = NULL;
    }
}
