/*
 * route.h - what an API surface sees of an HTTP request.
 *
 * server/http.c owns the libmicrohttpd plumbing: connections, suspend and
 * resume, body intake within a limit, the API key, the access log and the
 * request metrics.  An API surface (server/api-*.c) is a table of routes
 * with their handlers, and server/routes.c lists the tables: adding an
 * endpoint adds a route and a handler and never touches the plumbing.
 *
 * The life of a request.  The plumbing checks the framing (one
 * Content-Length or chunked, a Host in HTTP/1.1), matches the method and
 * path against the routes (404, or 405 with Allow, when none matches),
 * checks the API key when the path is under a surface's key prefix (401),
 * and keeps the last connections for the routes flagged MRAD_ROUTE_OPS.
 * Then, on an HTTP thread each:
 *   begin(r)   (optional) with the headers, before any byte of the body:
 *              may set the body limit, refuse the request (mrad_req_error:
 *              answered at once, the rest of the body read and dropped by a
 *              lingering close) or keep state (mrad_req_set_data);
 *   handle(r)  once the whole body is in (mrad_req_body): answers with one
 *              mrad_req_send_*() or mrad_req_error() call, or suspends the
 *              request (mrad_req_suspend) to answer later;
 *   resume(r)  after mrad_req_resume() (called from any thread): answers.
 * A route without a body flag gets its body discarded.  Each callback
 * returns 0, or -1 to close the connection without an answer (the access
 * log then shows the status the callback set, or 499).
 *
 * Ownership: the request and everything it hands out (headers, path,
 * body) live until the request completes; the data set with
 * mrad_req_set_data() is freed by its free function then, on an HTTP
 * thread, after the access log line was written.
 */
#ifndef MRAD_SERVER_ROUTE_H
#define MRAD_SERVER_ROUTE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "server/config.h"
#include "server/errors.h"
#include "server/kv.h"
#include "server/shm.h"
#include "server/sched.h"

/* What /v1/info and the response stats say about the compute side. */
struct mrad_http_info {
    const char *backend; /* "cpu", "cuda" */
    const char *device;  /* description of the first device */
    uint32_t workers;
};

/* What handlers read of the server; shared by every thread. */
struct mrad_server {
    const struct mrad_config *cfg;
    struct mrad_sched *sched;
    struct mrad_http_info info;
    int auth;            /* API keys are required under key prefixes */
    atomic_int ready;    /* startup is over */
    atomic_int draining; /* SIGTERM: new work is refused */
    /* Bytes of request bodies and answers held now, and the limit
     * (--max-inflight-bytes): see mrad_server_reserve(). */
    atomic_uint_fast64_t inflight_bytes;
    uint64_t max_inflight_bytes;
    uint64_t max_problem_flops; /* resolved --max-problem-flops */
    struct mrad_kv_table *kv;   /* the sessions */
    struct mrad_shm_table *shm; /* shared-memory regions; NULL: off */
};

/* The header that names the session of an answer, for proxies. */
#define MRAD_KV_HEADER "X-Mrad-KV"

/* Counts a buffer of `bytes` against --max-inflight-bytes.  Returns 0, or
 * -1 when it does not fit (nothing counted): the caller answers 503
 * overloaded.  Any thread. */
int mrad_server_reserve(struct mrad_server *srv, uint64_t bytes);
/* Gives back what mrad_server_reserve() counted.  Any thread. */
void mrad_server_release(struct mrad_server *srv, uint64_t bytes);

/* The connections' side, for the metrics. */
struct mrad_server_stats {
    uint64_t open_connections;
    uint64_t head_timeouts, slow_uploads, lingering_closes;
    uint64_t refused_connections; /* over --max-connections */
};
void mrad_server_stats(struct mrad_server *srv, struct mrad_server_stats *st);

struct mrad_req; /* one HTTP request, owned by the plumbing */

enum mrad_route_flags {
    MRAD_ROUTE_BODY = 1, /* reads a request body (handle gets it) */
    MRAD_ROUTE_OPS = 2,  /* a probe or /metrics: may use the connections
                            kept beyond --max-connections */
};

struct mrad_route {
    const char *method; /* "GET" (HEAD too), "POST", "DELETE" */
    const char *path;   /* exact path; a segment "*" matches one segment */
    unsigned flags;     /* enum mrad_route_flags */
    int (*begin)(struct mrad_req *r);  /* optional */
    int (*handle)(struct mrad_req *r); /* required */
    int (*resume)(struct mrad_req *r); /* required if handle suspends */
};

/* One API surface: its routes, and the path prefix under which every path
 * (known or not) needs the API key when one is configured (NULL: none). */
struct mrad_api {
    const char *name; /* the `api` label of the request metrics */
    const char *key_prefix;
    const struct mrad_route *routes;
    size_t nroutes;
    /* The error body of its answers (and of unknown paths under its
     * prefix): a malloc'd text; NULL: the /v1 form {"error": {"code",
     * "message"}}. */
    char *(*error_body)(const char *code, const char *message, size_t *len);
};

/* Every surface the daemon serves (server/routes.c), NULL-terminated. */
extern const struct mrad_api *const mrad_apis[];

/* ---- reading the request -------------------------------------------- */

struct mrad_server *mrad_req_server(const struct mrad_req *r);
const char *mrad_req_method(const struct mrad_req *r);
const char *mrad_req_path(const struct mrad_req *r);
/* Segment i (from 0) of the path into buf ("/v1/kv/ab/append": segment 2
 * is "ab"), terminated.  Returns its length, or -1 when the path has no
 * such segment or it does not fit in len bytes. */
int mrad_req_path_segment(const struct mrad_req *r, int i, char *buf,
                          size_t len);
/* The value of a request header (case-insensitive name), or NULL. */
const char *mrad_req_header(const struct mrad_req *r, const char *name);
/* The identity of the API key the request presented (see
 * mrad_keyring_check), or 0 when the server needs none. */
uint64_t mrad_req_key_id(const struct mrad_req *r);
/* CLOCK_MONOTONIC time (mrad_now_ns) at which the request began. */
uint64_t mrad_req_start_ns(const struct mrad_req *r);
/* The Content-Length the client announced, or -1 without one. */
int64_t mrad_req_content_length(const struct mrad_req *r);

/* In begin(): the largest body accepted (the default is
 * --max-body-bytes).  When the announced Content-Length is over it, the
 * 413 answer is queued at once and -1 is returned: begin() then returns
 * 0. */
int mrad_req_set_body_limit(struct mrad_req *r, uint64_t limit);

/* In begin(): asks that byte `skew` of the body lands 64-byte aligned in
 * memory (say, binary data after a header of known length, so that it is
 * read in place).  The body then starts mrad_req_body_pad() bytes into the
 * buffer mrad_req_take_body() hands over.  Returns 0, or -1 once the
 * body's buffer exists. */
int mrad_req_set_body_skew(struct mrad_req *r, uint64_t skew);
size_t mrad_req_body_pad(const struct mrad_req *r);

/* In handle(): the body read (NULL when empty) and its length.  Owned by
 * the request, unless taken: mrad_req_take_body() hands its buffer over
 * (the body at mrad_req_body_pad() bytes into it) with the bytes counted
 * for it against --max-inflight-bytes (*reserved): the caller releases
 * the buffer with mrad_bufcache_put() and the count with
 * mrad_server_release(). */
const char *mrad_req_body(const struct mrad_req *r, size_t *len);
void *mrad_req_take_body(struct mrad_req *r, size_t *len, uint64_t *reserved);

/* Per-request state of the handler, freed by `free_data` (may be NULL)
 * when the request completes. */
void mrad_req_set_data(struct mrad_req *r, void *data,
                       void (*free_data)(void *data));
void *mrad_req_data(const struct mrad_req *r);

/* ---- suspending ------------------------------------------------------ */

/* Suspends the request: nothing more happens to it until
 * mrad_req_resume().  Counted in mrad_http_pending_answers() until the
 * request completes.  In handle() only. */
void mrad_req_suspend(struct mrad_req *r);
/* Wakes a suspended request: the route's resume() runs on an HTTP thread,
 * and the request may complete and be freed as soon as this returns.  Any
 * thread; once per suspend. */
void mrad_req_resume(struct mrad_req *r);
/* Nonzero when the client went away while the request is suspended
 * (libmicrohttpd does not watch suspended connections).  A client that
 * only shut down its sending side (a half-close) still gets its answer:
 * at the end of its data the plumbing sends an interim "100 Continue",
 * which a client that closed altogether answers with a reset, seen on the
 * next call.  The caller makes sure the request is suspended and not being
 * resumed meanwhile (the interim answer must not cross the answer), and
 * calls it from one thread at a time. */
int mrad_req_peer_closed(struct mrad_req *r);

/* ---- answering --------------------------------------------------------- */

/* Adds a header to the answer about to be sent (copied).  Returns 0, or -1
 * when the request holds too many. */
int mrad_req_add_header(struct mrad_req *r, const char *name,
                        const char *value);

/* Answers with a malloc'd body, which the request frees (ctype NULL: no
 * Content-Type, for a 204).  Returns 0 or -1. */
int mrad_req_send(struct mrad_req *r, unsigned status, const char *ctype,
                  char *body, size_t len);
/* Answers with a printf-formatted JSON body. */
int mrad_req_send_json(struct mrad_req *r, unsigned status, const char *fmt,
                       ...) __attribute__((format(printf, 3, 4)));

/* Answers with a body in pieces, sent without a copy.  `release(cls)` is
 * called once when the pieces are no longer needed: after the last byte is
 * sent, when the connection closes first, or at once when this fails. */
struct mrad_req_piece {
    const void *data;
    size_t len;
};
int mrad_req_send_pieces(struct mrad_req *r, unsigned status, const char *ctype,
                         const struct mrad_req_piece *p, size_t n,
                         void (*release)(void *cls), void *cls);

/* Answers an error with the contract's JSON body (status and code from
 * server/errors.c; Retry-After on overload, Allow on 405,
 * WWW-Authenticate on 401).  In begin() the answer goes out at once and
 * the connection closes after it; what the client still sends of its body
 * is read and dropped for a while first (a lingering close), so that a
 * client that sends its whole body before reading still reads the
 * answer. */
int mrad_req_error(struct mrad_req *r, enum mrad_err_source src, int err,
                   const char *message);

/* The attention method the request computes ("mra2", ...; a static
 * string), for the request metrics. */
void mrad_req_set_method(struct mrad_req *r, const char *method);
/* The request's id (X-Request-Id, the trace id of a W3C traceparent, or
 * one made up), sent back in X-Request-Id and written in its log lines. */
const char *mrad_req_rid(const struct mrad_req *r);

/* What the access log line says beyond the plumbing's own fields: the
 * time queued and computing, and the request's id (the string must live
 * until the request completes; NULL: none). */
void mrad_req_set_log(struct mrad_req *r, uint64_t queue_us,
                      uint64_t compute_us, const char *id);

#endif /* MRAD_SERVER_ROUTE_H */
