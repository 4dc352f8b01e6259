/*
 * errors.h - the one table that turns an error value into an HTTP answer.
 *
 * Errors of the codec (enum proto_err), of the attention library
 * (enum attn_err) and of the daemon itself (enum mrad_err) all end up as an
 * HTTP status and a wire code of the contract (bad_request, overloaded,
 * ...).  Pure functions, thread-safe.
 */
#ifndef MRAD_SERVER_ERRORS_H
#define MRAD_SERVER_ERRORS_H

/* Outcomes the daemon decides on its own, beyond the codec and the
 * library. */
enum mrad_err {
    MRAD_OK = 0,
    MRAD_EBADREQ = -100,   /* 400 bad_request */
    MRAD_EUNAUTH = -101,   /* 401 unauthorized */
    MRAD_ENOTFOUND = -102, /* 404 not_found */
    MRAD_EMETHOD = -103,   /* 405 method_not_allowed */
    MRAD_ETOOBIG = -104,   /* 413 payload_too_large */
    MRAD_EMEDIA = -105,    /* 415 unsupported_media_type */
    MRAD_EOVERLOAD = -106, /* 503 overloaded, with Retry-After */
    MRAD_EUNAVAIL = -107,  /* 503 unavailable (draining, backend down) */
    MRAD_ETIMEOUT = -108,  /* 504 timeout */
    MRAD_EINTERNAL = -109, /* 500 internal */
    MRAD_EGONE = -110,     /* the client went away: nothing is sent; 499
                              in the access log and the metrics */
    MRAD_ENOTIMPL = -111,  /* 501 not_implemented (a transfer coding) */
    MRAD_EKVNOTFOUND = -112, /* 404 kv_not_found: no such session */
    MRAD_EKVFULL = -113,     /* 507 kv_cache_full: sessions over budget */
};

/* Where an error value comes from: the values of the three enums overlap,
 * so the caller says which one it holds. */
enum mrad_err_source {
    MRAD_SRC_SERVER = 0,
    MRAD_SRC_PROTO = 1,
    MRAD_SRC_ATTN = 2,
};

struct mrad_http_error {
    unsigned status;  /* HTTP status */
    const char *code; /* wire code, e.g. "bad_request" */
};

/* Maps an error value of `src` to its HTTP status and wire code.  Unknown
 * values map to 500 internal. */
struct mrad_http_error mrad_error_http(enum mrad_err_source src, int err);

#endif /* MRAD_SERVER_ERRORS_H */
