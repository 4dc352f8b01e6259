/*
 * http.c - the libmicrohttpd plumbing: connections, routing, body intake,
 * the API key, suspend/resume, answers, the access log.
 *
 * libmicrohttpd runs a pool of epoll threads (--http-threads) with
 * suspend/resume.  The access handler is called several times per
 * request: once with the headers (route, authenticate, the route's
 * begin()), then once per received chunk of the body (appended, the limit
 * checked as bytes arrive), then once with no data (the route's handle(),
 * which answers or suspends), and once more after a suspended request was
 * resumed (the route's resume()).  Per-request state lives in struct
 * mrad_req, created on the first call and freed by the completion
 * callback, which also writes the access log line and the request
 * metrics.  What the routes are and do is server/route.h's business; this
 * file knows no endpoint.
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

#include "protocol/proto.h"
#include "server/auth.h"
#include "server/bufcache.h"
#include "server/log.h"

struct mrad_http {
    struct mrad_server srv; /* what handlers see */
    struct MHD_Daemon *d;
    uint16_t port;
    atomic_uint_fast64_t pending_answers;
    char *tls_cert, *tls_key; /* PEM text; libmicrohttpd keeps pointers */
};

enum req_state {
    ST_HEADERS, /* routed; the answer waits for the end of the request */
    ST_BODY,    /* reading the body of a body route */
    ST_TOOBIG,  /* the body passed the limit: discarding it, then 413 */
    ST_WAIT,    /* suspended: the route answers on resume */
    ST_DONE,    /* a response is queued */
};

#define MAX_HEADERS 4 /* extra headers of one answer */

struct mrad_req {
    struct mrad_http *h;
    struct MHD_Connection *mc;
    const struct mrad_route *route;
    uint64_t t0;
    char method[16], path[128];
    enum req_state state;
    char *body;
    size_t len, cap, limit;
    int fd;
    int in_begin;  /* routing the headers: errors wait for the body */
    int suspended; /* counted in pending_answers */
    int pend_err;  /* error to answer in ST_HEADERS, or 0 */
    int pend_src;  /* its enum mrad_err_source */
    char pend_msg[200];
    uint64_t discarded; /* body bytes dropped after the limit */
    void *data;
    void (*free_data)(void *data);
    char *hdr_name[MAX_HEADERS], *hdr_value[MAX_HEADERS];
    size_t nhdr;
    /* For the access log. */
    unsigned status;
    uint64_t bytes_out;
    const char *err_code;
    uint64_t queue_us, compute_us;
    const char *id;
};

static enum MHD_Result rc_mhd(int rc)
{
    return rc ? MHD_NO : MHD_YES;
}

/* ---- reading the request ------------------------------------------------ */

const struct mrad_server *mrad_req_server(const struct mrad_req *r)
{
    return &r->h->srv;
}

const char *mrad_req_method(const struct mrad_req *r)
{
    return r->method;
}

const char *mrad_req_path(const struct mrad_req *r)
{
    return r->path;
}

const char *mrad_req_header(const struct mrad_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->mc, MHD_HEADER_KIND, name);
}

uint64_t mrad_req_start_ns(const struct mrad_req *r)
{
    return r->t0;
}

int64_t mrad_req_content_length(const struct mrad_req *r)
{
    const char *clen = mrad_req_header(r, "Content-Length");
    if (!clen)
        return -1;
    unsigned long long n = strtoull(clen, NULL, 10);
    return n > INT64_MAX ? INT64_MAX : (int64_t)n;
}

const char *mrad_req_body(const struct mrad_req *r, size_t *len)
{
    *len = r->len;
    return r->body;
}

void *mrad_req_take_body(struct mrad_req *r, size_t *len)
{
    void *b = r->body;
    *len = r->len;
    r->body = NULL;
    return b;
}

void mrad_req_set_data(struct mrad_req *r, void *data,
                       void (*free_data)(void *data))
{
    r->data = data;
    r->free_data = free_data;
}

void *mrad_req_data(const struct mrad_req *r)
{
    return r->data;
}

void mrad_req_set_log(struct mrad_req *r, uint64_t queue_us,
                      uint64_t compute_us, const char *id)
{
    r->queue_us = queue_us;
    r->compute_us = compute_us;
    r->id = id;
}

/* ---- suspending -------------------------------------------------------- */

void mrad_req_suspend(struct mrad_req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    r->state = ST_WAIT;
    if (!r->suspended) {
        /* Counted from the suspend, so that a drain never sees a gap
         * between "queued" and "answer pending". */
        r->suspended = 1;
        atomic_fetch_add(&r->h->pending_answers, 1);
    }
    MHD_suspend_connection(r->mc);
}

void mrad_req_resume(struct mrad_req *r)
{
    MHD_resume_connection(r->mc);
}

int mrad_req_peer_closed(const struct mrad_req *r)
{
    char ch;
    if (r->fd < 0)
        return 0;
    ssize_t n = recv(r->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 ||
           (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* ---- answers --------------------------------------------------------- */

int mrad_req_add_header(struct mrad_req *r, const char *name, const char *value)
{
    if (r->nhdr == MAX_HEADERS)
        return -1;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v) {
        free(n), free(v);
        return -1;
    }
    r->hdr_name[r->nhdr] = n;
    r->hdr_value[r->nhdr++] = v;
    return 0;
}

/* Adds the route's extra headers and queues the response. */
static int queue(struct mrad_req *r, unsigned status, const char *ctype,
                 struct MHD_Response *resp, uint64_t len)
{
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    for (size_t i = 0; i < r->nhdr; i++)
        MHD_add_response_header(resp, r->hdr_name[i], r->hdr_value[i]);
    enum MHD_Result ret = MHD_queue_response(r->mc, status, resp);
    MHD_destroy_response(resp);
    r->state = ST_DONE;
    if (ret != MHD_YES)
        return -1;
    r->status = status;
    r->bytes_out = len;
    return 0;
}

int mrad_req_send(struct mrad_req *r, unsigned status, const char *ctype,
                  char *body, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return -1;
    }
    return queue(r, status, ctype, resp, len);
}

int mrad_req_send_json(struct mrad_req *r, unsigned status, const char *fmt,
                       ...)
{
    va_list ap;
    char *buf = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    return mrad_req_send(r, status, "application/json", buf, (size_t)n);
}

int mrad_req_send_pieces(struct mrad_req *r, unsigned status, const char *ctype,
                         const struct mrad_req_piece *p, size_t n,
                         void (*release)(void *cls), void *cls)
{
#if MHD_VERSION >= 0x00097400 /* MHD_create_response_from_iovec() */
    struct MHD_IoVec iov[8];
    uint64_t len = 0;
    if (n > 8) {
        release(cls);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        iov[i] = (struct MHD_IoVec){p[i].data, p[i].len};
        len += p[i].len;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_iovec(iov, (unsigned)n, release, cls);
    if (!resp) {
        /* libmicrohttpd calls the free callback only for a response it
         * created. */
        release(cls);
        return -1;
    }
    return queue(r, status, ctype, resp, len);
#else
    /* Without iovec responses: one copy. */
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += p[i].len;
    char *buf = malloc(len ? len : 1);
    for (size_t i = 0, at = 0; buf && i < n; at += p[i].len, i++)
        memcpy(buf + at, p[i].data, p[i].len);
    release(cls);
    return buf ? mrad_req_send(r, status, ctype, buf, len) : -1;
#endif
}

/* The Allow header of a 405: the methods of the routes of this path. */
static void allowed_methods(const char *path, char *buf, size_t len);

static int send_error_now(struct mrad_req *r, enum mrad_err_source src, int err,
                          const char *message)
{
    struct mrad_http_error he = mrad_error_http(src, err);
    size_t len = 0;
    char *body = proto_error_body(he.code, message, &len);
    if (!body)
        return -1;
    r->err_code = he.code;
    if (src == MRAD_SRC_SERVER && err == MRAD_EOVERLOAD)
        mrad_req_add_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    else if (src == MRAD_SRC_SERVER && err == MRAD_EMETHOD) {
        char allow[64];
        allowed_methods(r->path, allow, sizeof(allow));
        mrad_req_add_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    }
    return mrad_req_send(r, he.status, "application/json", body, len);
}

int mrad_req_error(struct mrad_req *r, enum mrad_err_source src, int err,
                   const char *message)
{
    if (!r->in_begin)
        return send_error_now(r, src, err, message);
    /* A client that sent "Expect: 100-continue" waits for a go-ahead
     * before its body: answer now and spare it the upload.  Otherwise the
     * answer waits for the end of the body: answering before that would
     * make libmicrohttpd close the connection, and a client still sending
     * could see a reset instead of the answer. */
    const char *expect = mrad_req_header(r, "Expect");
    if (expect && !strcasecmp(expect, "100-continue"))
        return send_error_now(r, src, err, message);
    r->pend_err = err;
    r->pend_src = src;
    snprintf(r->pend_msg, sizeof(r->pend_msg), "%s", message);
    r->state = ST_HEADERS;
    return 0;
}

/* ---- routing ------------------------------------------------------------ */

/* Nonzero when `path` matches the route pattern (a "*" segment matches any
 * one non-empty segment). */
static int path_matches(const char *pattern, const char *path)
{
    while (*pattern && *path) {
        if (pattern[0] == '*' && (pattern[1] == '/' || !pattern[1])) {
            size_t seg = strcspn(path, "/");
            if (!seg)
                return 0;
            pattern++, path += seg;
        } else if (*pattern++ != *path++) {
            return 0;
        }
    }
    return !*pattern && !*path;
}

static int method_matches(const char *want, const char *method)
{
    return !strcmp(want, method) ||
           (!strcmp(want, "GET") && !strcmp(method, "HEAD"));
}

/* The route of (method, path); NULL with *path_known set when the path
 * exists with other methods. */
static const struct mrad_route *find_route(const char *method, const char *path,
                                           int *path_known)
{
    *path_known = 0;
    for (const struct mrad_api *const *api = mrad_apis; *api; api++)
        for (size_t i = 0; i < (*api)->nroutes; i++) {
            const struct mrad_route *rt = &(*api)->routes[i];
            if (!path_matches(rt->path, path))
                continue;
            if (method_matches(rt->method, method))
                return rt;
            *path_known = 1;
        }
    return NULL;
}

static void allowed_methods(const char *path, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    for (const struct mrad_api *const *api = mrad_apis; *api; api++)
        for (size_t i = 0; i < (*api)->nroutes; i++) {
            const struct mrad_route *rt = &(*api)->routes[i];
            if (!path_matches(rt->path, path) || n >= len)
                continue;
            n += (size_t)snprintf(buf + n, len - n, "%s%s%s", n ? ", " : "",
                                  rt->method,
                                  strcmp(rt->method, "GET") ? "" : ", HEAD");
        }
}

/* Nonzero when the path is under a surface's key prefix and the request
 * does not carry the key. */
static int needs_key(const struct mrad_req *r)
{
    const struct mrad_config *cfg = r->h->srv.cfg;
    if (!cfg->api_key_len)
        return 0;
    int guarded = 0;
    for (const struct mrad_api *const *api = mrad_apis; *api; api++) {
        const char *p = (*api)->key_prefix;
        if (p && !strncmp(r->path, p, strlen(p)))
            guarded = 1;
    }
    return guarded && !mrad_key_matches(cfg->api_key, cfg->api_key_len,
                                        mrad_req_header(r, "Authorization"));
}

int mrad_req_set_body_limit(struct mrad_req *r, uint64_t limit)
{
    r->limit = limit > SIZE_MAX ? SIZE_MAX : (size_t)limit;
    int64_t n = mrad_req_content_length(r);
    if (n >= 0 && (uint64_t)n > limit) {
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "body of %" PRId64 " bytes is over the limit of %zu bytes", n,
                 r->limit);
        send_error_now(r, MRAD_SRC_SERVER, MRAD_ETOOBIG, msg);
        return -1;
    }
    return 0;
}

/* The headers of a request: route, key, the route's begin().  Errors
 * found here are answered once the body has been read (mrad_req_error).
 * Returns 0, or -1 to close the connection. */
static int route_headers(struct mrad_req *r)
{
    int path_known;
    if (needs_key(r))
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EUNAUTH,
                              "missing or wrong API key (Authorization: "
                              "Bearer)");
    r->route = find_route(r->method, r->path, &path_known);
    if (!r->route && path_known) {
        char allow[64], msg[96];
        allowed_methods(r->path, allow, sizeof(allow));
        snprintf(msg, sizeof(msg), "use %s for this endpoint", allow);
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EMETHOD, msg);
    }
    /* The path is not echoed (request bytes stay out of messages). */
    if (!r->route)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_ENOTFOUND,
                              "no such endpoint (see GET /v1/info for the "
                              "API)");
    if (!(r->route->flags & MRAD_ROUTE_BODY))
        return 0;
    r->limit = r->h->srv.cfg->max_body_bytes;
    if (r->route->begin && r->route->begin(r))
        return -1;
    if (r->state != ST_HEADERS || r->pend_err)
        return 0; /* answered or refused */
    /* With a Content-Length, the whole body in one allocation: no copies
     * while it grows. */
    int64_t n = mrad_req_content_length(r);
    if (n > 0) {
        r->body = mrad_bufcache_get((size_t)n, &r->cap);
        if (!r->body)
            return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                                  "out of memory for the request body");
    }
    r->state = ST_BODY;
    return 0;
}

/* ---- body intake -------------------------------------------------------- */

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
 * out of memory. */
static int body_append(struct mrad_req *r, const char *data, size_t n)
{
    if (n > r->limit - r->len)
        return -1;
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 65536;
        while (cap < r->len + n)
            cap = cap > r->limit / 2 ? r->limit : cap * 2;
        char *b = mrad_bufcache_get(cap, &cap);
        if (!b)
            return -1;
        if (r->len)
            memcpy(b, r->body, r->len);
        mrad_bufcache_put(r->body);
        r->body = b;
        r->cap = cap;
    }
    if (r->cap >= STREAM_BODY_BYTES)
        copy_stream(r->body + r->len, data, n);
    else
        memcpy(r->body + r->len, data, n);
    r->len += n;
    return 0;
}

/* A body must arrive within --conn-timeout-s of the request's start.
 * libmicrohttpd's timeout only bounds silence, so a client trickling a
 * byte now and then would hold its connection forever; this closes it
 * (logged as 408). */
static int read_too_slow(struct mrad_req *r)
{
    uint64_t limit = (uint64_t)r->h->srv.cfg->conn_timeout_s * 1000000000ull;
    if (!limit || mrad_now_ns() - r->t0 <= limit)
        return 0;
    r->status = 408;
    r->err_code = "request_timeout";
    return 1;
}

/* ---- libmicrohttpd callbacks ------------------------------------------ */

/* The request has been read: answer what route() decided, or run the
 * route's handler. */
static enum MHD_Result answer_routed(struct mrad_req *r)
{
    if (r->pend_err)
        return rc_mhd(send_error_now(r, r->pend_src, r->pend_err, r->pend_msg));
    return rc_mhd(r->route->handle(r));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)version;
    struct mrad_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof(*r));
        if (!r)
            return MHD_NO;
        r->h = cls;
        r->mc = mc;
        r->t0 = mrad_now_ns();
        r->fd = -1;
        snprintf(r->method, sizeof(r->method), "%s", method);
        snprintf(r->path, sizeof(r->path), "%s", url);
        *con_cls = r;
        r->state = ST_HEADERS;
        r->in_begin = 1;
        int rc = route_headers(r);
        r->in_begin = 0;
        return rc_mhd(rc);
    }
    switch (r->state) {
    case ST_HEADERS:
        if (*upload_size) {
            /* A body nobody will read: discard it. */
            *upload_size = 0;
            return MHD_YES;
        }
        return answer_routed(r);
    case ST_BODY:
        if (*upload_size && read_too_slow(r))
            return MHD_NO;
        if (*upload_size) {
            if (body_append(r, upload, *upload_size)) {
                /* libmicrohttpd cannot answer in the middle of a body:
                 * drop what was read, discard the rest and answer 413 at
                 * its end, or close if it goes on much longer. */
                mrad_bufcache_put(r->body);
                r->body = NULL;
                r->discarded = r->len + *upload_size;
                r->len = 0;
                r->state = ST_TOOBIG;
            }
            *upload_size = 0;
            return MHD_YES;
        }
        return answer_routed(r);
    case ST_TOOBIG:
        if (*upload_size && read_too_slow(r))
            return MHD_NO;
        if (*upload_size) {
            r->discarded += *upload_size;
            *upload_size = 0;
            if (r->discarded / 2 <= r->limit)
                return MHD_YES;
            r->status = 413; /* for the log: the answer is a close */
            r->err_code = "payload_too_large";
            return MHD_NO;
        } else {
            char msg[128];
            snprintf(msg, sizeof(msg), "body is over the limit of %zu bytes",
                     r->limit);
            return rc_mhd(
                send_error_now(r, MRAD_SRC_SERVER, MRAD_ETOOBIG, msg));
        }
    case ST_WAIT:
        return rc_mhd(r->route->resume(r));
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
    struct mrad_req *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    uint64_t total_us = (mrad_now_ns() - r->t0) / 1000;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->status == 0)
        r->status = 499, r->err_code = "client_closed_request";
    if (r->suspended)
        atomic_fetch_sub(&h->pending_answers, 1);
    struct mrad_access a = {
        .method = r->method,
        .path = r->path,
        .status = r->status,
        .bytes_in = r->len + r->discarded,
        .bytes_out = r->bytes_out,
        .queue_us = r->queue_us,
        .compute_us = r->compute_us,
        .total_us = total_us,
        .id = r->id,
        .error_code = r->err_code,
    };
    mrad_log_access(&a);
    mrad_metrics_request(r->status, (double)total_us / 1e6);
    if (r->free_data)
        r->free_data(r->data);
    mrad_bufcache_put(r->body);
    for (size_t i = 0; i < r->nhdr; i++)
        free(r->hdr_name[i]), free(r->hdr_value[i]);
    free(r);
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
    h->srv.cfg = cfg;
    h->srv.sched = s;
    h->srv.info = *info;
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
    atomic_store(&h->srv.ready, ready);
}

void mrad_http_drain(struct mrad_http *h)
{
    atomic_store(&h->srv.draining, 1);
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
