/*
 * http.c - request routing, body intake, answers (libmicrohttpd).
 *
 * libmicrohttpd runs a pool of epoll threads (--http-threads) with
 * suspend/resume.  The access handler is called several times per
 * request: once with the headers (route, authenticate, check media type
 * and Content-Length), then once per received chunk of the body (appended,
 * the limit checked as bytes arrive), then once with no data (decode,
 * submit, suspend), and once more after the job's completion resumed the
 * connection (encode and send).  Per-request state lives in struct conn,
 * created on the first call and freed by the completion callback, which
 * also writes the access log line and the request metrics.
 */
#include "server/http.h"

#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "server/auth.h"
#include "server/bufcache.h"
#include "server/log.h"

struct mrad_http {
    const struct mrad_config *cfg;
    struct mrad_sched *sched;
    struct mrad_http_info info;
    struct MHD_Daemon *d;
    uint16_t port;
    atomic_int ready, draining;
    atomic_uint_fast64_t pending_answers;
    char *tls_cert, *tls_key; /* PEM text; libmicrohttpd keeps pointers */
};

enum conn_state {
    ST_HEADERS, /* routed; the answer waits for the end of the request */
    ST_BODY,    /* reading the body of POST /v1/attention */
    ST_TOOBIG,  /* the body passed the limit: discarding it, then 413 */
    ST_WAIT,    /* submitted (or refused) and suspended */
    ST_DONE,    /* a response is queued */
};

struct conn {
    struct mrad_http *h;
    struct MHD_Connection *mc;
    uint64_t t0;
    char method[16], path[128];
    enum conn_state state;
    enum proto_format fmt;
    char *body;
    size_t len, cap, limit;
    int fd;
    int inject_fault;
    struct mrad_job *job; /* one reference, dropped on completion */
    int refused;          /* mrad_err from submit, answered on resume */
    int submitted;        /* the scheduler accepted the job */
    int endpoint;         /* GET endpoint to answer in ST_HEADERS, or -1 */
    int pend_err;         /* error to answer in ST_HEADERS, or 0 */
    char pend_msg[200];
    uint64_t discarded; /* body bytes dropped after the limit */
    /* For the access log. */
    unsigned status;
    uint64_t bytes_out;
    const char *err_code;
};

/* ---- answers --------------------------------------------------------- */

static enum MHD_Result send_buffer(struct conn *c, unsigned status,
                                   const char *ctype, char *buf, size_t len,
                                   const char *hname, const char *hvalue)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(buf);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (hname)
        MHD_add_response_header(r, hname, hvalue);
    enum MHD_Result ret = MHD_queue_response(c->mc, status, r);
    MHD_destroy_response(r);
    c->state = ST_DONE;
    if (ret == MHD_YES) {
        c->status = status;
        c->bytes_out = len;
    }
    return ret;
}

/* Answers an error of `src` with the contract's JSON body. */
static enum MHD_Result send_error(struct conn *c, enum mrad_err_source src,
                                  int err, const char *message)
{
    struct mrad_http_error he = mrad_error_http(src, err);
    size_t len = 0;
    char *body = proto_error_body(he.code, message, &len);
    if (!body)
        return MHD_NO;
    c->err_code = he.code;
    const char *hname = NULL, *hvalue = NULL;
    if (src == MRAD_SRC_SERVER && err == MRAD_EOVERLOAD)
        hname = MHD_HTTP_HEADER_RETRY_AFTER, hvalue = "1";
    else if (src == MRAD_SRC_SERVER && err == MRAD_EMETHOD)
        hname = MHD_HTTP_HEADER_ALLOW,
        hvalue = !strcmp(c->path, "/v1/attention") ? "POST" : "GET, HEAD";
    return send_buffer(c, he.status, "application/json", body, len, hname,
                       hvalue);
}

#if MHD_VERSION >= 0x00097400 /* MHD_create_response_from_iovec() */
/* Answers from this size of output on are sent without a copy.  Smaller
 * ones are cheaper to copy: libmicrohttpd sends a single buffer with its
 * headers in one call, and pieces in two calls and a socket option more. */
#define ZERO_COPY_BYTES (64u << 10)

/* Bytes of a decoded problem's output (their count fits: it was checked
 * by the decoder). */
static size_t out_bytes(const struct attn_problem *p)
{
    return (size_t)p->B * p->H * p->N * p->D * attn_dtype_size(p->dtype);
}

/* The free callback of a response sent from a job's buffers. */
static void release_job(void *cls)
{
    mrad_job_unref(cls);
}

/*
 * Answers a computed msgpack request without copying its output: the body
 * goes out as three pieces, the encoded head of the answer, the output
 * tensor where the backend wrote it (job->req.prob.out) and the encoded
 * tail, byte for byte what proto_response_encode() would have written.
 * The response holds a reference to the job, dropped by libmicrohttpd when
 * it destroys the response: after the last byte is sent, or when the
 * connection closes first (client gone, drain, shutdown).
 */
static enum MHD_Result send_answer(struct conn *c, const struct proto_stats *st)
{
    struct mrad_job *job = c->job;
    size_t head, out, tail;
    if (proto_response_encode_split(&job->req, st, &job->answer, &head, &out,
                                    &tail) != PROTO_OK)
        return send_error(c, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                          "out of memory encoding the answer");
    const struct MHD_IoVec iov[3] = {
        {job->answer, head},
        {job->req.prob.out, out},
        {job->answer + head, tail},
    };
    atomic_fetch_add(&job->refs, 1);
    struct MHD_Response *r =
        MHD_create_response_from_iovec(iov, 3, release_job, job);
    if (!r) {
        /* libmicrohttpd calls the free callback only for a response it
         * created. */
        mrad_job_unref(job);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "application/msgpack");
    enum MHD_Result ret = MHD_queue_response(c->mc, 200, r);
    MHD_destroy_response(r);
    c->state = ST_DONE;
    if (ret == MHD_YES) {
        c->status = 200;
        c->bytes_out = head + out + tail;
    }
    return ret;
}
#endif

/* Remembers an error found in the headers; it is answered once the request
 * has been read to its end.  Answering before that would make
 * libmicrohttpd close the connection, and a client still sending its body
 * could see a reset instead of the answer. */
static enum MHD_Result defer_error(struct conn *c, int err, const char *msg)
{
    /* A client that sent "Expect: 100-continue" waits for a go-ahead
     * before its body: answer now and spare it the upload. */
    const char *expect =
        MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, "Expect");
    if (expect && !strcasecmp(expect, "100-continue"))
        return send_error(c, MRAD_SRC_SERVER, err, msg);
    c->pend_err = err;
    snprintf(c->pend_msg, sizeof(c->pend_msg), "%s", msg);
    c->state = ST_HEADERS;
    return MHD_YES;
}

static enum MHD_Result send_json(struct conn *c, unsigned status,
                                 const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum MHD_Result send_json(struct conn *c, unsigned status,
                                 const char *fmt, ...)
{
    va_list ap;
    char *buf = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return MHD_NO;
    return send_buffer(c, status, "application/json", buf, (size_t)n, NULL,
                       NULL);
}

/* ---- GET endpoints ----------------------------------------------------- */

static enum MHD_Result get_healthz(struct conn *c)
{
    struct mrad_sched_status st;
    mrad_sched_status(c->h->sched, &st);
    if (atomic_load(&c->h->draining) || st.draining)
        return send_error(c, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                          "the server is draining");
    if (!st.healthy)
        return send_error(c, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                          "a compute backend reports a device fault");
    return send_json(c, 200, "{\"status\":\"ok\"}");
}

static enum MHD_Result get_readyz(struct conn *c)
{
    struct mrad_sched_status st;
    mrad_sched_status(c->h->sched, &st);
    if (!atomic_load(&c->h->ready))
        return send_error(c, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                          "the server is starting");
    if (atomic_load(&c->h->draining) || st.draining)
        return send_error(c, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                          "the server is draining");
    if (!st.healthy)
        return send_error(c, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                          "a compute backend reports a device fault");
    if (st.queue_depth >= st.max_queue)
        return send_error(c, MRAD_SRC_SERVER, MRAD_EOVERLOAD,
                          "the request queue is full");
    return send_json(c, 200, "{\"status\":\"ready\"}");
}

static enum MHD_Result get_metrics(struct conn *c)
{
    struct mrad_sched_status st;
    struct mrad_metrics_device devs[MRAD_MAX_DEVICES];
    mrad_sched_status(c->h->sched, &st);
    struct mrad_metrics_gauges g = {
        .queue_depth = st.queue_depth,
        .inflight = st.inflight,
        .queue_capacity = st.max_queue,
        .devices = devs,
        .ndevices = mrad_sched_devices(c->h->sched, devs, MRAD_MAX_DEVICES),
    };
    size_t len;
    char *text = mrad_metrics_render(&g, &len);
    if (!text)
        return send_error(c, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                          "out of memory rendering the metrics");
    return send_buffer(c, 200, "text/plain; version=0.0.4; charset=utf-8", text,
                       len, NULL, NULL);
}

/* Writes `s` as a JSON string (with quotes) into buf. */
static void json_string(char *buf, size_t len, const char *s)
{
    size_t n = 0;
    buf[n++] = '"';
    for (; *s && n + 8 < len; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)snprintf(buf + n, len - n, "\\u%04x", ch);
        } else {
            buf[n++] = (char)ch;
        }
    }
    buf[n++] = '"';
    buf[n] = '\0';
}

static enum MHD_Result get_info(struct conn *c)
{
    const struct mrad_config *cfg = c->h->cfg;
    const struct proto_limits *l = &cfg->limits;
    char device[600];
    json_string(device, sizeof(device), c->h->info.device);
    return send_json(
        c, 200,
        "{\"version\":\"%s\",\"backend\":\"%s\",\"device\":%s,"
        "\"workers\":%" PRIu32 ",\"auth\":%s,"
        "\"limits\":{\"max_batch\":%" PRIu64 ",\"max_heads\":%" PRIu64
        ",\"max_tokens\":%" PRIu64 ",\"max_head_dim\":%" PRIu64
        ",\"max_elements\":%" PRIu64 ",\"max_body_bytes\":%" PRIu64
        ",\"max_json_bytes\":%" PRIu64 "},"
        "\"defaults\":{\"method\":\"mra2\",\"block_per_row\":%d,"
        "\"timeout_ms\":%" PRIu64 "},"
        "\"batching\":{\"max_queue\":%" PRIu64
        ",\"max_batch_requests\":%" PRIu64 ",\"max_batch_tokens\":%" PRIu64
        ",\"batch_window_us\":%" PRIu64 "}}",
        MRAD_VERSION, c->h->info.backend, device, c->h->info.workers,
        cfg->api_key_len ? "true" : "false", l->max_batch, l->max_heads,
        l->max_tokens, l->max_head_dim ? l->max_head_dim : ATTN_MAX_HEAD_DIM,
        l->max_elements, cfg->max_body_bytes, cfg->max_json_bytes,
        ATTN_DEFAULT_BLOCK_PER_ROW, cfg->request_timeout_ms, cfg->max_queue,
        cfg->max_batch_requests, cfg->max_batch_tokens, cfg->batch_window_us);
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

/* The headers of a POST: returns MHD_YES to go on reading the body, or
 * the result of queueing an error. */
static enum MHD_Result post_begin(struct conn *c)
{
    struct mrad_http *h = c->h;
    const struct mrad_config *cfg = h->cfg;
    struct MHD_Connection *mc = c->mc;
    char msg[160];

    if (atomic_load(&h->draining))
        return defer_error(c, MRAD_EUNAVAIL, "the server is draining");
    const char *ctype =
        MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Type");
    if (media_type(ctype, &c->fmt)) {
        /* The header's value is not echoed: error messages name fields,
         * never request bytes. */
        snprintf(msg, sizeof(msg),
                 "Content-Type %s: use application/msgpack or "
                 "application/json",
                 ctype ? "not supported" : "missing");
        return defer_error(c, MRAD_EMEDIA, msg);
    }
    c->limit = cfg->max_body_bytes;
    if (c->fmt == PROTO_JSON && cfg->max_json_bytes < c->limit)
        c->limit = cfg->max_json_bytes;
    const char *clen =
        MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Length");
    unsigned long long n = clen ? strtoull(clen, NULL, 10) : 0;
    if (n > c->limit) {
        snprintf(msg, sizeof(msg),
                 "body of %llu bytes is over the limit of %zu bytes", n,
                 c->limit);
        return send_error(c, MRAD_SRC_SERVER, MRAD_ETOOBIG, msg);
    }
    /* Refuse early when the queue is already full: the body need not be
     * kept.  The authoritative check is at submit. */
    struct mrad_sched_status st;
    mrad_sched_status(h->sched, &st);
    if (st.queue_depth >= st.max_queue)
        return defer_error(c, MRAD_EOVERLOAD, "the request queue is full");
    /* With a Content-Length, the whole body in one allocation: no copies
     * while it grows. */
    if (n > 0) {
        c->body = mrad_bufcache_get((size_t)n, &c->cap);
        if (!c->body)
            return defer_error(c, MRAD_EINTERNAL,
                               "out of memory for the request body");
    }
    if (cfg->test_faults) {
        const char *f = MHD_lookup_connection_value(mc, MHD_HEADER_KIND,
                                                    "X-Mrad-Inject-Fault");
        c->inject_fault = f && !strcmp(f, "1");
    }
    c->state = ST_BODY;
    return MHD_YES;
}

/* Bodies from this size on are copied in with non-temporal stores. */
#define STREAM_BODY_BYTES (4u << 20)

/*
 * Copies an upload chunk into the body with non-temporal stores.  The
 * body of a large request is tens of megabytes, far more than the caches
 * keep until the backend reads it: ordinary stores first read every
 * destination line they write, non-temporal ones do not.  On the
 * 1x12x4096x64 f32 benchmark this saves about 1 ms of the HTTP thread's
 * 15 ms of CPU per request.  The fence orders the stores before the body
 * is handed to another thread.
 */
static void copy_stream(char *dst, const char *src, size_t n)
{
#if defined(__SSE2__)
    size_t head = (16 - ((uintptr_t)dst & 15)) & 15;
    if (head > n)
        head = n;
    memcpy(dst, src, head);
    dst += head, src += head, n -= head;
    for (; n >= 64; n -= 64, dst += 64, src += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)src);
        __m128i b = _mm_loadu_si128((const __m128i *)(src + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + 48));
        _mm_stream_si128((__m128i *)dst, a);
        _mm_stream_si128((__m128i *)(dst + 16), b);
        _mm_stream_si128((__m128i *)(dst + 32), c);
        _mm_stream_si128((__m128i *)(dst + 48), d);
    }
    memcpy(dst, src, n);
    _mm_sfence();
#else
    memcpy(dst, src, n);
#endif
}

/* Appends a chunk of the body.  Returns 0, or -1 when over the limit or
 * out of memory (the error is queued or the connection closed). */
static int post_append(struct conn *c, const char *data, size_t n)
{
    if (n > c->limit - c->len)
        return -1;
    if (c->len + n > c->cap) {
        size_t cap = c->cap ? c->cap : 65536;
        while (cap < c->len + n)
            cap = cap > c->limit / 2 ? c->limit : cap * 2;
        char *b = mrad_bufcache_get(cap, &cap);
        if (!b)
            return -1;
        if (c->len)
            memcpy(b, c->body, c->len);
        mrad_bufcache_put(c->body);
        c->body = b;
        c->cap = cap;
    }
    if (c->cap >= STREAM_BODY_BYTES)
        copy_stream(c->body + c->len, data, n);
    else
        memcpy(c->body + c->len, data, n);
    c->len += n;
    return 0;
}

static void job_done(struct mrad_job *job)
{
    struct conn *c = job->owner;
    MHD_resume_connection(c->mc);
}

/* Nonzero when the peer closed its end: a suspended connection is not
 * watched by libmicrohttpd, so the scheduler asks the socket itself. */
static int job_client_gone(struct mrad_job *job)
{
    struct conn *c = job->owner;
    char ch;
    if (c->fd < 0)
        return 0;
    ssize_t r = recv(c->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 ||
           (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
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

/* The whole body is here: decode, submit, suspend. */
static enum MHD_Result post_submit(struct conn *c)
{
    struct mrad_http *h = c->h;
    const struct mrad_config *cfg = h->cfg;
    char err[256];
    struct mrad_job *job = mrad_job_new();
    if (!job)
        return send_error(c, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                          "out of memory for the request");
    /* The job owns the body from here on. */
    job->body = c->body;
    c->body = NULL;
    c->job = job;
    int rc = proto_request_decode_with(job->body ? job->body : "", c->len,
                                       c->fmt, &cfg->limits, &out_alloc,
                                       &job->req, err, sizeof(err));
    if (rc != PROTO_OK)
        return send_error(c, MRAD_SRC_PROTO, rc, err);
    const struct attn_problem *p = &job->req.prob;
    uint64_t timeout_ms = cfg->request_timeout_ms;
    if (job->req.timeout_ms && job->req.timeout_ms < timeout_ms)
        timeout_ms = job->req.timeout_ms;
    job->deadline_ns = c->t0 + timeout_ms * 1000000ull;
    job->tokens = (uint64_t)p->B * p->N;
    job->inject_fault = c->inject_fault;
    job->done = job_done;
    job->client_gone = job_client_gone;
    job->owner = c;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    c->fd = ci ? ci->connect_fd : -1;

    /* Suspend before submitting: the job may finish (and resume the
     * connection) before this function returns. */
    c->state = ST_WAIT;
    MHD_suspend_connection(c->mc);
    /* Counted before the submit so that a drain never sees a gap between
     * "queued" and "answer pending". */
    atomic_fetch_add(&h->pending_answers, 1);
    c->submitted = 1;
    rc = mrad_sched_submit(h->sched, job);
    if (rc != MRAD_OK) {
        c->submitted = 0;
        atomic_fetch_sub(&h->pending_answers, 1);
        c->refused = rc;
        MHD_resume_connection(c->mc);
    }
    return MHD_YES;
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

/* After the job's completion resumed the connection. */
static enum MHD_Result post_answer(struct conn *c)
{
    struct mrad_job *job = c->job;
    char msg[256];
    if (c->refused == MRAD_EOVERLOAD)
        return send_error(c, MRAD_SRC_SERVER, MRAD_EOVERLOAD,
                          "the request queue is full");
    if (c->refused)
        return send_error(c, MRAD_SRC_SERVER, c->refused,
                          "the server is draining");
    if (job->err_src == MRAD_SRC_SERVER && job->err == MRAD_EGONE) {
        c->status = 499;
        c->err_code = "client_closed_request";
        return MHD_NO; /* nobody to answer: close */
    }
    if (job->err != 0) {
        format_job_error(job, msg, sizeof(msg),
                         (mrad_now_ns() - c->t0) / 1000000);
        return send_error(c, job->err_src, job->err, msg);
    }
    struct proto_stats st = {
        .attn = job->stats,
        .backend = c->h->info.backend,
        .queue_us = job->queue_us,
        .compute_us = job->compute_us,
        .batch_requests = job->batch_requests,
    };
    /* The computation is over (a job answered with its result is no
     * longer in a worker's hands): the request body, which the input
     * tensors point into, goes back to the cache now rather than when the
     * answer has been sent. */
    mrad_bufcache_put(job->body);
    job->body = NULL;
#if MHD_VERSION >= 0x00097400
    if (job->req.format == PROTO_MSGPACK &&
        out_bytes(&job->req.prob) >= ZERO_COPY_BYTES)
        return send_answer(c, &st);
#endif
    char *buf;
    size_t len;
    if (proto_response_encode(&job->req, &st, &buf, &len) != PROTO_OK)
        return send_error(c, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                          "out of memory encoding the answer");
    return send_buffer(c, 200,
                       job->req.format == PROTO_JSON ? "application/json"
                                                     : "application/msgpack",
                       buf, len, NULL, NULL);
}

/* ---- libmicrohttpd callbacks ------------------------------------------ */

static enum MHD_Result route(struct conn *c)
{
    int get = !strcmp(c->method, "GET") || !strcmp(c->method, "HEAD");
    c->endpoint = -1;
    /* Everything under /v1/ needs the key; the probes and the metrics
     * stay open for orchestrators and scrapers. */
    const struct mrad_config *cfg = c->h->cfg;
    if (cfg->api_key_len && !strncmp(c->path, "/v1/", 4) &&
        !mrad_key_matches(cfg->api_key, cfg->api_key_len,
                          MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND,
                                                      "Authorization")))
        return defer_error(c, MRAD_EUNAUTH,
                           "missing or wrong API key (Authorization: Bearer)");
    if (!strcmp(c->path, "/v1/attention")) {
        if (strcmp(c->method, "POST"))
            return defer_error(c, MRAD_EMETHOD, "use POST for /v1/attention");
        return post_begin(c);
    }
    static const char *const gets[] = {"/healthz", "/readyz", "/metrics",
                                       "/v1/info"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(c->path, gets[i]))
            continue;
        if (!get)
            return defer_error(c, MRAD_EMETHOD, "use GET for this endpoint");
        c->endpoint = i;
        c->state = ST_HEADERS;
        return MHD_YES;
    }
    /* The path is not echoed (request bytes stay out of messages). */
    return defer_error(c, MRAD_ENOTFOUND,
                       "no such endpoint (see GET /v1/info for the API)");
}

/* The request has been read: answer what route() decided. */
static enum MHD_Result answer_routed(struct conn *c)
{
    if (c->pend_err)
        return send_error(c, MRAD_SRC_SERVER, c->pend_err, c->pend_msg);
    switch (c->endpoint) {
    case 0:
        return get_healthz(c);
    case 1:
        return get_readyz(c);
    case 2:
        return get_metrics(c);
    default:
        return get_info(c);
    }
}

/* A body must arrive within --conn-timeout-s of the request's start.
 * libmicrohttpd's timeout only bounds silence, so a client trickling a
 * byte now and then would hold its connection forever; this closes it
 * (logged as 408). */
static int read_too_slow(struct conn *c)
{
    uint64_t limit = (uint64_t)c->h->cfg->conn_timeout_s * 1000000000ull;
    if (!limit || mrad_now_ns() - c->t0 <= limit)
        return 0;
    c->status = 408;
    c->err_code = "request_timeout";
    return 1;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)version;
    struct conn *c = *con_cls;
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c)
            return MHD_NO;
        c->h = cls;
        c->mc = mc;
        c->t0 = mrad_now_ns();
        c->fd = -1;
        snprintf(c->method, sizeof(c->method), "%s", method);
        snprintf(c->path, sizeof(c->path), "%s", url);
        *con_cls = c;
        return route(c);
    }
    switch (c->state) {
    case ST_HEADERS:
        if (*upload_size) {
            /* A body nobody will read: discard it. */
            *upload_size = 0;
            return MHD_YES;
        }
        return answer_routed(c);
    case ST_BODY:
        if (*upload_size && read_too_slow(c))
            return MHD_NO;
        if (*upload_size) {
            if (post_append(c, upload, *upload_size)) {
                /* libmicrohttpd cannot answer in the middle of a body:
                 * drop what was read, discard the rest and answer 413 at
                 * its end, or close if it goes on much longer. */
                mrad_bufcache_put(c->body);
                c->body = NULL;
                c->discarded = c->len + *upload_size;
                c->len = 0;
                c->state = ST_TOOBIG;
            }
            *upload_size = 0;
            return MHD_YES;
        }
        return post_submit(c);
    case ST_TOOBIG:
        if (*upload_size && read_too_slow(c))
            return MHD_NO;
        if (*upload_size) {
            c->discarded += *upload_size;
            *upload_size = 0;
            if (c->discarded / 2 <= c->limit)
                return MHD_YES;
            c->status = 413; /* for the log: the answer is a close */
            c->err_code = "payload_too_large";
            return MHD_NO;
        } else {
            char msg[128];
            snprintf(msg, sizeof(msg), "body is over the limit of %zu bytes",
                     c->limit);
            return send_error(c, MRAD_SRC_SERVER, MRAD_ETOOBIG, msg);
        }
    case ST_WAIT:
        return post_answer(c);
    case ST_DONE:
        /* Body bytes after an early answer: discard them. */
        *upload_size = 0;
        return MHD_YES;
    }
    return MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)mc;
    struct mrad_http *h = cls;
    struct conn *c = *con_cls;
    if (!c)
        return;
    *con_cls = NULL;
    uint64_t total_us = (mrad_now_ns() - c->t0) / 1000;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && c->status == 0)
        c->status = 499, c->err_code = "client_closed_request";
    struct mrad_job *job = c->job;
    if (c->submitted)
        atomic_fetch_sub(&h->pending_answers, 1);
    struct mrad_access a = {
        .method = c->method,
        .path = c->path,
        .status = c->status,
        .bytes_in = c->len + c->discarded,
        .bytes_out = c->bytes_out,
        .queue_us = job ? job->queue_us : 0,
        .compute_us = job ? job->compute_us : 0,
        .total_us = total_us,
        .id = job && job->req.has_id ? job->req.id : NULL,
        .error_code = c->err_code,
    };
    mrad_log_access(&a);
    mrad_metrics_request(c->status, (double)total_us / 1e6);
    mrad_job_unref(job);
    mrad_bufcache_put(c->body);
    free(c);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    mrad_log(MRAD_LOG_WARN, "http: %s", msg);
}

/* ---- lifetime ---------------------------------------------------------- */

/* Per-connection memory of libmicrohttpd (headers and the read buffer that
 * body chunks arrive in).  libmicrohttpd clears it between requests, so a
 * large pool costs every small request a large memset; 64 KiB keeps that
 * cheap while large bodies still arrive in 32 KiB chunks.  A larger pool
 * does not pay: with 1 MiB, large bodies arrive in 512 KiB reads (15 times
 * fewer recv() calls), but the HTTP thread's CPU per 1x12x4096x64 request
 * fell by 1-2 ms of about 15 (the copies dominate, not the calls), while
 * the small 1x1x128x64 requests cost 0.15 instead of 0.06-0.08 ms of it
 * and their rate fell by a quarter to a third; 256 KiB was in between.  The
 * option is one value for every connection of the daemon. */
#define CONNECTION_MEMORY (64u << 10)

/* Reads a whole PEM file into a malloc'd, NUL-terminated string (at most
 * 1 MiB).  Returns NULL (logged) on failure. */
static char *read_pem(const char *what, const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 1u << 20;
    if (f && (buf = malloc(cap + 1)))
        n = fread(buf, 1, cap + 1, f);
    int bad = !f || !buf || ferror(f) || n == 0 || n > cap;
    if (f)
        fclose(f);
    if (bad) {
        mrad_log(MRAD_LOG_ERROR, "--%s %s: %s", what, path,
                 !f ? strerror(errno) : "empty, unreadable or over 1 MiB");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

int mrad_http_start(struct mrad_http **out, const struct mrad_config *cfg,
                    struct mrad_sched *s, const struct mrad_http_info *info)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char port[8];
    snprintf(port, sizeof(port), "%" PRIu32, cfg->port);
    int gai = getaddrinfo(cfg->host, port, &hints, &ai);
    if (gai) {
        mrad_log(MRAD_LOG_ERROR, "cannot resolve --host %s: %s", cfg->host,
                 gai_strerror(gai));
        return -1;
    }
    struct mrad_http *h = calloc(1, sizeof(*h));
    if (!h) {
        freeaddrinfo(ai);
        return -1;
    }
    h->cfg = cfg;
    h->sched = s;
    h->info = *info;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* TLS (GnuTLS inside libmicrohttpd) when a certificate is given; the
     * options travel as an array so that they can be left out. */
    struct MHD_OptionItem tls[3] = {{MHD_OPTION_END, 0, NULL}};
    if (cfg->tls_cert[0]) {
        h->tls_cert = read_pem("tls-cert", cfg->tls_cert);
        h->tls_key = h->tls_cert ? read_pem("tls-key", cfg->tls_key) : NULL;
        if (!h->tls_key || !MHD_is_feature_supported(MHD_FEATURE_TLS)) {
            if (h->tls_key)
                mrad_log(MRAD_LOG_ERROR,
                         "libmicrohttpd was built without TLS support");
            freeaddrinfo(ai);
            free(h->tls_cert), free(h->tls_key), free(h);
            return -1;
        }
        flags |= MHD_USE_TLS;
        tls[0] =
            (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, h->tls_cert};
        tls[1] =
            (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, h->tls_key};
        tls[2] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    }
    h->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->conn_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
        MHD_OPTION_ARRAY, tls, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        mrad_log(MRAD_LOG_ERROR, "cannot listen on %s:%" PRIu32 "%s", cfg->host,
                 cfg->port,
                 cfg->tls_cert[0] ? " (or the TLS key/certificate is bad)"
                                  : "");
        free(h->tls_cert), free(h->tls_key), free(h);
        return -1;
    }
    const union MHD_DaemonInfo *di =
        MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : (uint16_t)cfg->port;
    *out = h;
    return 0;
}

uint16_t mrad_http_port(const struct mrad_http *h)
{
    return h->port;
}

void mrad_http_set_ready(struct mrad_http *h, int ready)
{
    atomic_store(&h->ready, ready);
}

void mrad_http_drain(struct mrad_http *h)
{
    atomic_store(&h->draining, 1);
}

uint64_t mrad_http_pending_answers(const struct mrad_http *h)
{
    return atomic_load(&((struct mrad_http *)h)->pending_answers);
}

void mrad_http_stop(struct mrad_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h->tls_cert);
    free(h->tls_key);
    free(h);
}
