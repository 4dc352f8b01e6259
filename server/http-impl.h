/*
 * http-impl.h - the state of the HTTP plumbing, shared by server/http.c
 * (libmicrohttpd's callbacks, routing, body intake, lifetime) and
 * server/http-req.c (what server/route.h offers a route: reading the
 * request, suspending it, answering it).  Never included by the API
 * surfaces.
 */
#ifndef MRAD_SERVER_HTTP_IMPL_H
#define MRAD_SERVER_HTTP_IMPL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "server/auth.h"
#include "server/guard.h"
#include "server/http.h"
#include "server/route.h"

/* What a daemon's callbacks get: the server, and which port. */
struct mrad_listener {
    struct mrad_http *h;
    int admin; /* --admin-port: probes and /metrics only */
};

struct mrad_http {
    struct mrad_server srv; /* what handlers see */
    struct mrad_listener main, admin;
    struct MHD_Daemon *admin_d; /* NULL without --admin-port */
    uint16_t admin_port;
    pthread_rwlock_t keys_lock;
    struct mrad_keyring *keys; /* NULL: no key needed; owned */
    struct MHD_Daemon *d;
    struct mrad_guard *guard;
    uint16_t port;
    int tls;
    atomic_uint_fast64_t pending_answers;
    atomic_uint_fast64_t open_connections, live_requests;
    atomic_uint_fast64_t refused_connections;
    char *tls_cert, *tls_key; /* PEM text; libmicrohttpd keeps pointers */
};

enum req_state {
    ST_HEADERS, /* routed; the handler runs at the end of the request */
    ST_BODY,    /* reading the body of a body route */
    ST_WAIT,    /* suspended: the route answers on resume */
    ST_DONE,    /* a response is queued */
};

#define MAX_HEADERS 6 /* extra headers of one answer */

struct mrad_req {
    struct mrad_http *h;
    struct MHD_Connection *mc;
    struct mrad_guard_conn *gc; /* the connection's watch, or NULL */
    const struct mrad_route *route;
    const struct mrad_api *api; /* the route's surface (or the path's) */
    uint64_t t0;
    uint64_t t_body;   /* the body was in (0: no body read) */
    uint64_t t_answer; /* the answer was queued (0: none) */
    char rid[72];      /* the request id: X-Request-Id, traceparent's trace
                          id, or made here */
    const char *attn_method; /* for the metrics, or NULL */
    char method[16], path[128];
    enum req_state state;
    char *body;
    size_t len, cap, limit;
    size_t pad; /* the body starts this far into its buffer */
    uint64_t reserved; /* bytes of the body counted in inflight_bytes */
    int fd;
    int has_body;    /* Content-Length > 0 or chunked */
    int close_after; /* the connection closes after the answer */
    int in_begin;    /* routing the headers: answers go out early */
    int admin;       /* arrived on --admin-port */
    int pend_err;    /* a refusal of a request without a body, answered
                        at its end (the connection stays open) */
    char pend_msg[160];
    int http10;    /* an HTTP/1.0 request: no interim answers */
    int suspended; /* counted in pending_answers */
    int probed;    /* the interim answer of mrad_req_peer_closed() sent */
    uint64_t key_id;
    void *data;
    void (*free_data)(void *data);
    char *hdr_name[MAX_HEADERS], *hdr_value[MAX_HEADERS];
    size_t nhdr;
    /* For the access log. */
    unsigned status;
    uint64_t bytes_out, discarded;
    const char *err_code;
    uint64_t queue_us, compute_us;
    const char *id;
};

/* The Allow header of a 405: the methods of the routes of this path
 * (server/http.c). */
void mrad_http_allowed_methods(const char *path, char *buf, size_t len);

/* An error found in the middle of a body, which libmicrohttpd cannot
 * answer (server/http-req.c): written to the socket, then a lingering
 * close.  Returns MHD_NO for the caller to return. */
enum MHD_Result mrad_http_fail_mid_body(struct mrad_req *r,
                                        enum mrad_err_source src, int err,
                                        const char *message);

#endif /* MRAD_SERVER_HTTP_IMPL_H */
