/*
 * http.c - the libmicrohttpd plumbing: connections, routing, body intake,
 * the API key, suspend/resume, answers, the access log.
 *
 * libmicrohttpd runs a pool of epoll threads (--http-threads) with
 * suspend/resume.  The access handler is called several times per
 * request: once with the headers (framing checks, route, key, connection
 * budget, the route's begin()), then once per received chunk of the body
 * (appended, the limit checked as bytes arrive), then once with no data
 * (the route's handle(), which answers or suspends), and once more after
 * a suspended request was resumed (the route's resume()).  Per-request
 * state lives in struct mrad_req, created on the first call and freed by
 * the completion callback, which also writes the access log line and the
 * request metrics.  What the routes are and do is server/route.h's
 * business; this file knows no endpoint.  What a route can do with its
 * request is in server/http-req.c; both share server/http-impl.h.
 *
 * Answers that cannot wait for the body (a refusal found in the headers)
 * go out at once; libmicrohttpd then closes the connection, and the
 * guard (server/guard.c) keeps the socket open a while to read and drop
 * the rest of the body, so the client, still sending, does not see a
 * reset before it reads the answer.  libmicrohttpd cannot answer in the
 * middle of a body: a body that turns out too large while arriving gets
 * its 413 written to the socket here, then the same lingering close.
 */
#include "server/http.h"

#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "protocol/proto.h"
#include "server/bufcache.h"
#include "server/http-impl.h"
#include "server/log.h"

static enum MHD_Result rc_mhd(int rc)
{
    return rc ? MHD_NO : MHD_YES;
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

/* The route of (method, path) and its surface; NULL with *path_known set
 * when the path exists with other methods.  Without a route, *out is the
 * surface whose key prefix the path is under (its errors' form), or NULL. */
static const struct mrad_route *find_route(const char *method, const char *path,
                                           int *path_known,
                                           const struct mrad_api **out)
{
    *path_known = 0;
    *out = NULL;
    size_t best = 0;
    for (const struct mrad_api *const *api = mrad_apis; *api; api++) {
        const char *p = (*api)->key_prefix;
        if (p && strlen(p) > best && !strncmp(path, p, strlen(p))) {
            best = strlen(p);
            *out = *api;
        }
        for (size_t i = 0; i < (*api)->nroutes; i++) {
            const struct mrad_route *rt = &(*api)->routes[i];
            if (!path_matches(rt->path, path))
                continue;
            if (method_matches(rt->method, method)) {
                *out = *api;
                return rt;
            }
            *path_known = 1;
        }
    }
    return NULL;
}

void mrad_http_allowed_methods(const char *path, char *buf, size_t len)
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
 * does not carry a key; the key's identity goes to r->key_id. */
static int needs_key(struct mrad_req *r)
{
    struct mrad_http *h = r->h;
    int guarded = 0;
    for (const struct mrad_api *const *api = mrad_apis; *api; api++) {
        const char *p = (*api)->key_prefix;
        if (p && !strncmp(r->path, p, strlen(p)))
            guarded = 1;
    }
    pthread_rwlock_rdlock(&h->keys_lock);
    int ok = !h->keys ||
             mrad_keyring_check(h->keys, mrad_req_header(r, "Authorization"),
                                &r->key_id);
    pthread_rwlock_unlock(&h->keys_lock);
    return guarded && !ok;
}

int mrad_req_set_body_skew(struct mrad_req *r, uint64_t skew)
{
    if (r->body)
        return -1; /* too late: the buffer exists */
    r->pad = (size_t)((64 - skew % 64) % 64);
    return 0;
}

size_t mrad_req_body_pad(const struct mrad_req *r)
{
    return r->pad;
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
        mrad_req_error(r, MRAD_SRC_SERVER, MRAD_ETOOBIG, msg);
        return -1;
    }
    return 0;
}

/* Counts the request's headers named `name` (any case). */
struct count_arg {
    const char *name;
    unsigned n;
};

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind,
                                    const char *key, const char *value)
{
    (void)kind, (void)value;
    struct count_arg *a = cls;
    a->n += !strcasecmp(key, a->name);
    return MHD_YES;
}

static unsigned header_count(struct mrad_req *r, const char *name)
{
    struct count_arg a = {name, 0};
    MHD_get_connection_values(r->mc, MHD_HEADER_KIND, count_header, &a);
    return a.n;
}

/* The framing of the request, before anything else: a body has one
 * length, given one way (two would let a proxy and mrad disagree on where
 * the request ends), and HTTP/1.1 names its host.  Returns 0, or -1 with
 * the error answered (the connection then closes). */
static int check_framing(struct mrad_req *r, const char *version)
{
    const char *te = mrad_req_header(r, "Transfer-Encoding");
    unsigned ncl = header_count(r, "Content-Length");
    const char *why = NULL;
    int err = MRAD_EBADREQ;
    if (ncl > 1)
        why = "more than one Content-Length header";
    else if (te && ncl)
        why = "both Content-Length and Transfer-Encoding";
    else if (te && (header_count(r, "Transfer-Encoding") > 1 ||
                    strcasecmp(te, "chunked")))
        why = "Transfer-Encoding other than chunked is not supported",
        err = MRAD_ENOTIMPL;
    else if (!strcmp(version, MHD_HTTP_VERSION_1_1) && !header_count(r, "Host"))
        why = "HTTP/1.1 request without a Host header";
    if (!why)
        return 0;
    r->close_after = 1; /* whatever follows is not read */
    mrad_req_error(r, MRAD_SRC_SERVER, err, why);
    return -1;
}

/* The headers of a request: framing, route, key, connection budget, the
 * route's begin().  Errors found here are answered at once.  Returns 0, or
 * -1 to close the connection. */
static int route_headers(struct mrad_req *r, const char *version)
{
    int path_known;
    struct mrad_http *h = r->h;
    if (check_framing(r, version))
        return 0;
    if (needs_key(r))
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EUNAUTH,
                              "missing or wrong API key (Authorization: "
                              "Bearer)");
    r->route = find_route(r->method, r->path, &path_known, &r->api);
    /* The admin port serves the probes and /metrics only. */
    if (r->admin && r->route && !(r->route->flags & MRAD_ROUTE_OPS))
        r->route = NULL, path_known = 0;
    if (!r->route && path_known) {
        char allow[64], msg[96];
        mrad_http_allowed_methods(r->path, allow, sizeof(allow));
        snprintf(msg, sizeof(msg), "use %s for this endpoint", allow);
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EMETHOD, msg);
    }
    /* The path is not echoed (request bytes stay out of messages). */
    if (!r->route)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_ENOTFOUND,
                              "no such endpoint (see GET /v1/info for the "
                              "API)");
    /* The connections past --max-connections are kept for probes and
     * scrapes: anything else there is refused and its connection closed. */
    if (!(r->route->flags & MRAD_ROUTE_OPS) &&
        atomic_load(&h->open_connections) > h->srv.cfg->max_connections) {
        atomic_fetch_add(&h->refused_connections, 1);
        r->close_after = 1;
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EOVERLOAD,
                              "too many open connections");
    }
    if (!(r->route->flags & MRAD_ROUTE_BODY)) {
        /* A body nobody reads: answered at once (and the body dropped by
         * the lingering close) rather than read to its end. */
        return r->has_body ? r->route->handle(r) : 0;
    }
    r->limit = h->srv.cfg->max_body_bytes;
    if (r->route->begin && r->route->begin(r))
        return -1;
    if (r->state != ST_HEADERS || r->pend_err)
        return 0; /* answered or refused */
    /* With a Content-Length, the whole body in one allocation (no copies
     * while it grows), counted against --max-inflight-bytes before a byte
     * of it is read. */
    int64_t n = mrad_req_content_length(r);
    if (n > 0) {
        if (mrad_server_reserve(&h->srv, (uint64_t)n)) {
            char msg[160];
            snprintf(msg, sizeof(msg),
                     "the service holds too many request bytes now (limit "
                     "%" PRIu64 " bytes); retry later",
                     h->srv.max_inflight_bytes);
            return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EOVERLOAD, msg);
        }
        r->reserved = (uint64_t)n;
        r->body = mrad_bufcache_get((size_t)n + r->pad, &r->cap);
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

/* Appends a chunk of the body.  Returns 0, MRAD_ETOOBIG over the limit,
 * MRAD_EOVERLOAD past --max-inflight-bytes or MRAD_EINTERNAL out of
 * memory. */
static int body_append(struct mrad_req *r, const char *data, size_t n)
{
    if (n > r->limit - r->len)
        return MRAD_ETOOBIG;
    /* The body starts r->pad bytes into its buffer (see
     * mrad_req_set_body_skew). */
    size_t pad = r->pad;
    if (pad + r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 65536;
        while (cap < pad + r->len + n)
            cap = cap > (r->limit + pad) / 2 ? r->limit + pad : cap * 2;
        /* A body of unknown length is counted as it grows. */
        if (cap > r->reserved) {
            if (mrad_server_reserve(&r->h->srv, cap - r->reserved))
                return MRAD_EOVERLOAD;
            r->reserved = cap;
        }
        char *b = mrad_bufcache_get(cap, &cap);
        if (!b)
            return MRAD_EINTERNAL;
        if (r->len)
            memcpy(b + pad, r->body + pad, r->len);
        mrad_bufcache_put(r->body);
        r->body = b;
        r->cap = cap;
    }
    if (r->cap >= STREAM_BODY_BYTES)
        copy_stream(r->body + pad + r->len, data, n);
    else
        memcpy(r->body + pad + r->len, data, n);
    r->len += n;
    mrad_guard_body(r->gc, r->len);
    return 0;
}

/* A body must arrive within --conn-timeout-s of the request's start.
 * libmicrohttpd's timeout only bounds silence; the guard bounds the rate;
 * this bounds the whole (logged as 408). */
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

/* A chunk of a body route's body. */
static enum MHD_Result take_chunk(struct mrad_req *r, const char *upload,
                                  size_t *upload_size)
{
    if (read_too_slow(r))
        return MHD_NO;
    int err = body_append(r, upload, *upload_size);
    *upload_size = 0;
    if (!err)
        return MHD_YES;
    char msg[160];
    r->discarded = r->len;
    if (err == MRAD_ETOOBIG)
        snprintf(msg, sizeof(msg), "body is over the limit of %zu bytes",
                 r->limit);
    else if (err == MRAD_EOVERLOAD)
        snprintf(msg, sizeof(msg),
                 "the service holds too many request bytes now (limit "
                 "%" PRIu64 " bytes); retry later",
                 r->h->srv.max_inflight_bytes);
    else
        snprintf(msg, sizeof(msg), "out of memory for the request body");
    return mrad_http_fail_mid_body(r, MRAD_SRC_SERVER, err, msg);
}

/* 1 to 64 bytes of [A-Za-z0-9._:-]: an id we repeat in a header and log
 * lines as it came. */
static int id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
              (c >= 'A' && c <= 'Z') || c == '.' || c == '_' || c == ':' ||
              c == '-'))
            return 0;
    }
    return 1;
}

/* The request's id: its X-Request-Id when it is a plain token, else the
 * trace id of a W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>"), else 16
 * random hex digits. */
static void request_id(struct mrad_req *r)
{
    const char *x = mrad_req_header(r, "X-Request-Id");
    if (x && id_ok(x)) {
        snprintf(r->rid, sizeof r->rid, "%s", x);
        return;
    }
    const char *tp = mrad_req_header(r, "traceparent");
    if (tp && strlen(tp) == 55 && tp[2] == '-' && tp[35] == '-' &&
        tp[52] == '-' && strspn(tp + 3, "0123456789abcdef") == 32 &&
        strspn(tp + 3, "0") != 32) {
        memcpy(r->rid, tp + 3, 32);
        r->rid[32] = '\0';
        return;
    }
    static _Atomic uint64_t seq, seed_once;
    uint64_t seed = atomic_load(&seed_once);
    if (!seed) {
        uint64_t s = 0;
        if (getrandom(&s, sizeof s, GRND_NONBLOCK) != sizeof s)
            s = mrad_now_ns();
        uint64_t none = 0;
        seed = s | 1;
        if (!atomic_compare_exchange_strong(&seed_once, &none, seed))
            seed = none; /* another thread set it first */
    }
    /* splitmix64 over a counter: unique per process, unpredictable
     * enough for an id (not a secret). */
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * atomic_fetch_add(&seq, 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    snprintf(r->rid, sizeof r->rid, "%016" PRIx64, z);
}

/* The first call of a request: its headers. */
static enum MHD_Result first_call(struct mrad_listener *l,
                                  struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version,
                                  void **con_cls)
{
    struct mrad_http *h = l->h;
    struct mrad_req *r = calloc(1, sizeof(*r));
    if (!r)
        return MHD_NO;
    r->h = h;
    r->admin = l->admin;
    r->mc = mc;
    r->t0 = mrad_now_ns();
    r->fd = -1;
    snprintf(r->method, sizeof(r->method), "%s", method);
    snprintf(r->path, sizeof(r->path), "%s", url);
    r->http10 = !strcmp(version, MHD_HTTP_VERSION_1_0);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    r->gc = ci ? ci->socket_context : NULL;
    ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    mrad_guard_head_done(r->gc);
    atomic_fetch_add(&h->live_requests, 1);
    *con_cls = r;
    int64_t clen = mrad_req_content_length(r);
    r->has_body = clen > 0 || mrad_req_header(r, "Transfer-Encoding");
    request_id(r);
    r->state = ST_HEADERS;
    r->in_begin = 1;
    int rc = route_headers(r, version);
    r->in_begin = 0;
    return rc_mhd(rc);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct mrad_req *r = *con_cls;
    if (!r)
        return first_call(cls, mc, url, method, version, con_cls);
    switch (r->state) {
    case ST_HEADERS:
        if (*upload_size) {
            /* Cannot happen: a request with a body to a route without one
             * is answered with its headers.  Dropped all the same. */
            r->discarded += *upload_size;
            *upload_size = 0;
            return MHD_YES;
        }
        if (r->pend_err)
            return rc_mhd(
                mrad_req_error(r, MRAD_SRC_SERVER, r->pend_err, r->pend_msg));
        return rc_mhd(r->route->handle(r));
    case ST_BODY:
        if (*upload_size)
            return take_chunk(r, upload, upload_size);
        mrad_guard_head_done(r->gc); /* the body is in: no rate now */
        r->t_body = mrad_now_ns();
        return rc_mhd(r->route->handle(r));
    case ST_WAIT:
        return rc_mhd(r->route->resume(r));
    case ST_DONE:
        /* Body bytes after an early answer: discard them. */
        r->discarded += *upload_size;
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
    /* one instant ends the request and its sending alike */
    uint64_t now = mrad_now_ns();
    uint64_t total_us = (now - r->t0) / 1000;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->status == 0)
        r->status = 499, r->err_code = "client_closed_request";
    if (r->suspended)
        atomic_fetch_sub(&h->pending_answers, 1);
    int probe = r->route && (r->route->flags & MRAD_ROUTE_OPS);
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
        .rid = r->rid,
        .error_code = r->err_code,
        .debug = probe,
    };
    mrad_log_access(&a);
    char route[80];
    if (r->route)
        snprintf(route, sizeof route, "%s %s", r->route->method,
                 r->route->path);
    struct mrad_metrics_req q = {
        .probe = probe,
        .api = r->api ? r->api->name : NULL,
        .route = r->route ? route : NULL,
        .method = r->attn_method,
        .status = r->status,
        .seconds = (double)total_us / 1e6,
        .receive_seconds = r->t_body ? (double)(r->t_body - r->t0) / 1e9 : -1.0,
        .send_seconds = r->t_answer && now > r->t_answer
                            ? (double)(now - r->t_answer) / 1e9
                            : -1.0,
        .bytes_in = r->len + r->discarded,
        .bytes_out = r->bytes_out,
    };
    mrad_metrics_request(&q);
    if (r->free_data)
        r->free_data(r->data);
    mrad_bufcache_put(r->body);
    mrad_server_release(&h->srv, r->reserved);
    mrad_guard_request_done(r->gc);
    for (size_t i = 0; i < r->nhdr; i++)
        free(r->hdr_name[i]), free(r->hdr_value[i]);
    atomic_fetch_sub(&h->live_requests, 1);
    free(r);
}

/* Connections: counted for the budget, watched by the guard. */
static void on_connection(void *cls, struct MHD_Connection *mc,
                          void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct mrad_http *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        atomic_fetch_add(&h->open_connections, 1);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context =
            ci ? mrad_guard_watch(h->guard, ci->connect_fd) : NULL;
    } else {
        atomic_fetch_sub(&h->open_connections, 1);
        mrad_guard_forget(h->guard, *socket_context);
        *socket_context = NULL;
    }
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

/* Opens the listening socket of host:port.  Returns it, or -1 (logged). */
static int listen_on(const char *host, uint32_t port, const char *what,
                     int *family)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char pbuf[8];
    snprintf(pbuf, sizeof(pbuf), "%" PRIu32, port);
    int gai = getaddrinfo(host, pbuf, &hints, &ai);
    if (gai) {
        mrad_log(MRAD_LOG_ERROR, "cannot resolve --host %s: %s", host,
                 gai_strerror(gai));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1024)) {
        mrad_log(MRAD_LOG_ERROR, "cannot listen on %s:%" PRIu32 " (%s): %s",
                 host, port, what, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    *family = ai->ai_family;
    freeaddrinfo(ai);
    return fd;
}

/* The port a listening socket is bound to. */
static uint16_t bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len))
        return 0;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Starts a daemon on `fd` (taken over).  NULL when it fails. */
static struct MHD_Daemon *start_daemon(struct mrad_http *h,
                                       struct mrad_listener *l, int fd,
                                       int family, unsigned threads,
                                       unsigned limit, unsigned per_ip)
{
    const struct mrad_config *cfg = h->srv.cfg;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* TLS (GnuTLS inside libmicrohttpd) when a certificate is given; the
     * options travel as an array so that they can be left out. */
    struct MHD_OptionItem tls[3] = {{MHD_OPTION_END, 0, NULL}};
    if (h->tls) {
        flags |= MHD_USE_TLS;
        tls[0] =
            (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, h->tls_cert};
        tls[1] =
            (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, h->tls_key};
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, l, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, h, MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
        MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        per_ip, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->conn_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
        MHD_OPTION_ARRAY, tls, MHD_OPTION_END);
    if (!d) {
        mrad_log(MRAD_LOG_ERROR, "cannot start serving%s",
                 h->tls ? " (is the TLS key/certificate bad?)" : "");
        close(fd);
    }
    return d;
}

static void http_free(struct mrad_http *h)
{
    if (h->admin_d)
        MHD_stop_daemon(h->admin_d);
    if (h->d)
        MHD_stop_daemon(h->d);
    mrad_guard_stop(h->guard);
    mrad_keyring_free(h->keys);
    pthread_rwlock_destroy(&h->keys_lock);
    free(h->tls_cert);
    free(h->tls_key);
    free(h);
}

int mrad_http_start(struct mrad_http **out, const struct mrad_config *cfg,
                    struct mrad_sched *s, struct mrad_kv_table *kv,
                    struct mrad_shm_table *shm,
                    const struct mrad_http_info *info)
{
    struct mrad_http *h = calloc(1, sizeof(*h));
    if (!h)
        return -1;
    h->srv.cfg = cfg;
    h->srv.sched = s;
    h->srv.kv = kv;
    h->srv.shm = shm;
    h->srv.info = *info;
    h->srv.auth = cfg->keys != NULL;
    h->srv.max_inflight_bytes = cfg->max_inflight_bytes;
    h->srv.max_problem_flops = cfg->max_problem_flops;
    h->main = (struct mrad_listener){h, 0};
    h->admin = (struct mrad_listener){h, 1};
    pthread_rwlock_init(&h->keys_lock, NULL);
    struct mrad_guard_config gcfg = {cfg->header_timeout_ms * 1000000ull,
                                     cfg->min_upload_rate};
    if (mrad_guard_start(&h->guard, &gcfg)) {
        mrad_log(MRAD_LOG_ERROR, "cannot start the connection guard");
        pthread_rwlock_destroy(&h->keys_lock);
        free(h);
        return -1;
    }
    if (cfg->tls_cert[0]) {
        h->tls_cert = read_pem("tls-cert", cfg->tls_cert);
        h->tls_key = h->tls_cert ? read_pem("tls-key", cfg->tls_key) : NULL;
        if (h->tls_key && !MHD_is_feature_supported(MHD_FEATURE_TLS))
            mrad_log(MRAD_LOG_ERROR,
                     "libmicrohttpd was built without TLS support");
        if (!h->tls_key || !MHD_is_feature_supported(MHD_FEATURE_TLS)) {
            http_free(h);
            return -1;
        }
        h->tls = 1;
    }
    int family;
    int fd = listen_on(cfg->host, cfg->port, "--port", &family);
    if (fd < 0) {
        http_free(h);
        return -1;
    }
    h->port = bound_port(fd);
    h->d =
        start_daemon(h, &h->main, fd, family, (unsigned)cfg->http_threads,
                     (unsigned)(cfg->max_connections + MRAD_PROBE_CONNECTIONS),
                     (unsigned)cfg->max_connections_per_ip);
    if (!h->d) {
        http_free(h);
        return -1;
    }
    if (cfg->admin_port) {
        fd = listen_on(cfg->host, cfg->admin_port, "--admin-port", &family);
        h->admin_port = fd >= 0 ? bound_port(fd) : 0;
        h->admin_d = fd >= 0 ? start_daemon(h, &h->admin, fd, family, 1,
                                            MRAD_PROBE_CONNECTIONS * 4, 0)
                             : NULL;
        if (!h->admin_d) {
            http_free(h);
            return -1;
        }
    }
    /* Owned from here on: a failed start leaves them to the caller. */
    h->keys = cfg->keys;
    *out = h;
    return 0;
}

uint16_t mrad_http_admin_port(const struct mrad_http *h)
{
    return h->admin_port;
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

int mrad_http_busy(const struct mrad_http *h)
{
    struct mrad_http *m = (struct mrad_http *)h;
    return atomic_load(&m->live_requests) > 0 ||
           atomic_load(&m->srv.inflight_bytes) > 0;
}

void mrad_http_set_keys(struct mrad_http *h, struct mrad_keyring *keys)
{
    pthread_rwlock_wrlock(&h->keys_lock);
    struct mrad_keyring *old = h->keys;
    h->keys = keys;
    pthread_rwlock_unlock(&h->keys_lock);
    mrad_keyring_free(old);
}

void mrad_http_stop(struct mrad_http *h)
{
    if (h)
        http_free(h);
}
