/*
 * http-req.c - what server/route.h offers a route: reading the request,
 * suspending and resuming it, watching for a client that left, and
 * answering (whole bodies, bodies in pieces sent without a copy, errors
 * in the contract's JSON shape, early answers with a lingering close).
 * The counters of --max-inflight-bytes live here too.
 */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "protocol/proto.h"
#include "server/http-impl.h"
#include "server/log.h"

/* ---- the server's shared counters --------------------------------------- */

int mrad_server_reserve(struct mrad_server *srv, uint64_t bytes)
{
    uint64_t cur = atomic_load(&srv->inflight_bytes);
    do {
        if (bytes > srv->max_inflight_bytes ||
            cur > srv->max_inflight_bytes - bytes)
            return -1;
    } while (
        !atomic_compare_exchange_weak(&srv->inflight_bytes, &cur, cur + bytes));
    return 0;
}

void mrad_server_release(struct mrad_server *srv, uint64_t bytes)
{
    atomic_fetch_sub(&srv->inflight_bytes, bytes);
}

void mrad_server_stats(struct mrad_server *srv, struct mrad_server_stats *st)
{
    struct mrad_http *h = (struct mrad_http *)srv;
    struct mrad_guard_stats gs;
    mrad_guard_stats(h->guard, &gs);
    st->open_connections = atomic_load(&h->open_connections);
    st->head_timeouts = gs.head_timeouts;
    st->slow_uploads = gs.slow_uploads;
    st->lingering_closes = gs.lingered;
    st->refused_connections = atomic_load(&h->refused_connections);
}

/* ---- reading the request ------------------------------------------------ */

struct mrad_server *mrad_req_server(const struct mrad_req *r)
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

int mrad_req_path_segment(const struct mrad_req *r, int i, char *buf,
                          size_t len)
{
    const char *p = r->path;
    for (;;) {
        if (*p != '/')
            return -1;
        p++;
        size_t n = strcspn(p, "/");
        if (i-- == 0) {
            if (n >= len)
                return -1;
            memcpy(buf, p, n);
            buf[n] = '\0';
            return (int)n;
        }
        p += n;
    }
}

const char *mrad_req_header(const struct mrad_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->mc, MHD_HEADER_KIND, name);
}

uint64_t mrad_req_key_id(const struct mrad_req *r)
{
    return r->key_id;
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
    return r->body ? r->body + r->pad : NULL;
}

void *mrad_req_take_body(struct mrad_req *r, size_t *len, uint64_t *reserved)
{
    void *b = r->body;
    *len = r->len;
    *reserved = r->reserved;
    r->body = NULL;
    r->reserved = 0;
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

void mrad_req_set_method(struct mrad_req *r, const char *method)
{
    r->attn_method = method;
}

const char *mrad_req_rid(const struct mrad_req *r)
{
    return r->rid;
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
    r->state = ST_WAIT;
    if (!r->suspended) {
        /* Counted from the suspend, so that a drain never sees a gap
         * between "queued" and "answer pending". */
        r->suspended = 1;
        atomic_fetch_add(&r->h->pending_answers, 1);
    }
    mrad_guard_head_done(r->gc); /* no deadline of the guard while queued */
    MHD_suspend_connection(r->mc);
}

void mrad_req_resume(struct mrad_req *r)
{
    /* The request may complete (and be freed) on an HTTP thread as soon
     * as this returns: nothing of it is touched after. */
    MHD_resume_connection(r->mc);
}

/* TCP state of the socket (TCP_CLOSE once reset), or -1. */
static int tcp_state(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len))
        return -1;
    return ti.tcpi_state;
}

int mrad_req_peer_closed(struct mrad_req *r)
{
    char ch;
    if (r->fd < 0)
        return 0;
    ssize_t n = recv(r->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0 ||
        (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)))
        return 0; /* nothing, or the next request: still there */
    if (n < 0)
        return 1; /* reset */
    /* The client will send nothing more: gone, or only half-closed.  A
     * TLS stream or an HTTP/1.0 client cannot take an interim answer, so
     * the end of its data counts as gone. */
    if (r->h->tls || r->http10)
        return 1;
    if (!r->probed) {
        static const char probe[] = "HTTP/1.1 100 Continue\r\n\r\n";
        r->probed = 1;
        return send(r->fd, probe, sizeof(probe) - 1,
                    MSG_DONTWAIT | MSG_NOSIGNAL) < 0 &&
               errno != EAGAIN && errno != EWOULDBLOCK;
    }
    /* A closed client answered the probe with a reset. */
    return tcp_state(r->fd) == TCP_CLOSE;
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

/* An answer sent before the body was read: the connection closes after
 * it, and the guard reads what the client still sends for a while. */
static void linger_after(struct mrad_req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci && !r->h->tls)
        mrad_guard_linger(r->h->guard, ci->connect_fd);
}

/* Adds the route's extra headers and queues the response.  An answer
 * queued with the headers (the body, if any, unread) closes the
 * connection after it. */
static int queue(struct mrad_req *r, unsigned status, const char *ctype,
                 struct MHD_Response *resp, uint64_t len)
{
    int early = r->in_begin;
    if (ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (r->rid[0])
        MHD_add_response_header(resp, "X-Request-Id", r->rid);
    r->t_answer = mrad_now_ns();
    for (size_t i = 0; i < r->nhdr; i++)
        MHD_add_response_header(resp, r->hdr_name[i], r->hdr_value[i]);
    if (early)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(r->mc, status, resp);
    MHD_destroy_response(resp);
    r->state = ST_DONE;
    if (ret != MHD_YES)
        return -1;
    r->status = status;
    r->bytes_out = len;
    if (early)
        linger_after(r);
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

/* The headers of an error answer, on the request. */
static void error_headers(struct mrad_req *r, enum mrad_err_source src, int err)
{
    if (src != MRAD_SRC_SERVER)
        return;
    if (err == MRAD_EOVERLOAD)
        mrad_req_add_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    else if (err == MRAD_EUNAUTH)
        mrad_req_add_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    else if (err == MRAD_EMETHOD) {
        char allow[64];
        mrad_http_allowed_methods(r->path, allow, sizeof(allow));
        mrad_req_add_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    }
}

/* The error body in the form of the request's surface. */
static char *error_body(const struct mrad_req *r, const char *code,
                        const char *message, size_t *len)
{
    if (r->api && r->api->error_body)
        return r->api->error_body(code, message, len);
    return proto_error_body(code, message, len);
}

int mrad_req_error(struct mrad_req *r, enum mrad_err_source src, int err,
                   const char *message)
{
    if (r->in_begin && !r->has_body && !r->close_after &&
        src == MRAD_SRC_SERVER) {
        /* Nothing to read: answered at the end of the request, which is
         * now, and the connection is kept. */
        r->pend_err = err;
        snprintf(r->pend_msg, sizeof(r->pend_msg), "%s", message);
        return 0;
    }
    struct mrad_http_error he = mrad_error_http(src, err);
    size_t len = 0;
    char *body = error_body(r, he.code, message, &len);
    if (!body)
        return -1;
    r->err_code = he.code;
    error_headers(r, src, err);
    return mrad_req_send(r, he.status, "application/json", body, len);
}

/*
 * An error found in the middle of a body, which libmicrohttpd cannot
 * answer: the answer is written to the socket here (it is small, and the
 * socket has sent nothing yet), the guard lingers on the socket, and the
 * caller returns MHD_NO so that libmicrohttpd closes its end.  Over TLS
 * nothing can be written past the library: the connection just closes.
 */
enum MHD_Result mrad_http_fail_mid_body(struct mrad_req *r,
                                        enum mrad_err_source src, int err,
                                        const char *message)
{
    struct mrad_http_error he = mrad_error_http(src, err);
    r->status = he.status;
    r->err_code = he.code;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    size_t blen = 0;
    char *body = error_body(r, he.code, message, &blen);
    if (!ci || r->h->tls || !body) {
        free(body);
        return MHD_NO;
    }
    char *head = NULL;
    int hlen = asprintf(&head,
                        "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\nConnection: close\r\n%s\r\n",
                        he.status, MHD_get_reason_phrase_for(he.status), blen,
                        err == MRAD_EOVERLOAD ? "Retry-After: 1\r\n" : "");
    if (hlen > 0) {
        struct iovec iov[2] = {{head, (size_t)hlen}, {body, blen}};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
        ssize_t w = sendmsg(ci->connect_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w == (ssize_t)(hlen + (ssize_t)blen)) {
            r->bytes_out = (uint64_t)w;
            mrad_guard_linger(r->h->guard, ci->connect_fd);
        }
    }
    free(head);
    free(body);
    return MHD_NO;
}
