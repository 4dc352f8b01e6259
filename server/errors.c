/*
 * errors.c - error value -> (HTTP status, wire code).
 *
 * Kept as data so that the mapping of the contract (protocol/SPEC.md,
 * "Errors") can be read in one place.  Backend failures are all 500: a
 * request with a valid problem that the backend could not compute is the
 * service's fault, never the client's (attn_problem_check ran in the codec,
 * so ATTN_EINVAL here means the service let a bad problem through).
 */
#include "server/errors.h"

#include <stddef.h>

#include "attention/attn.h"
#include "protocol/proto.h"

struct row {
    enum mrad_err_source src;
    int err;
    unsigned status;
    const char *code;
};

static const struct row table[] = {
    {MRAD_SRC_SERVER, MRAD_EBADREQ, 400, "bad_request"},
    {MRAD_SRC_SERVER, MRAD_EUNAUTH, 401, "unauthorized"},
    {MRAD_SRC_SERVER, MRAD_ENOTFOUND, 404, "not_found"},
    {MRAD_SRC_SERVER, MRAD_EMETHOD, 405, "method_not_allowed"},
    {MRAD_SRC_SERVER, MRAD_ETOOBIG, 413, "payload_too_large"},
    {MRAD_SRC_SERVER, MRAD_EMEDIA, 415, "unsupported_media_type"},
    {MRAD_SRC_SERVER, MRAD_EOVERLOAD, 503, "overloaded"},
    {MRAD_SRC_SERVER, MRAD_EUNAVAIL, 503, "unavailable"},
    {MRAD_SRC_SERVER, MRAD_ETIMEOUT, 504, "timeout"},
    {MRAD_SRC_SERVER, MRAD_EINTERNAL, 500, "internal"},
    {MRAD_SRC_SERVER, MRAD_EGONE, 499, "client_closed_request"},
    {MRAD_SRC_SERVER, MRAD_ENOTIMPL, 501, "not_implemented"},
    {MRAD_SRC_SERVER, MRAD_EKVNOTFOUND, 404, "kv_not_found"},
    {MRAD_SRC_SERVER, MRAD_EKVFULL, 507, "kv_cache_full"},
    {MRAD_SRC_PROTO, PROTO_EBADREQ, 400, "bad_request"},
    {MRAD_SRC_PROTO, PROTO_ETOOBIG, 413, "payload_too_large"},
    {MRAD_SRC_PROTO, PROTO_ENOMEM, 500, "internal"},
    {MRAD_SRC_ATTN, ATTN_EINVAL, 500, "internal"},
    {MRAD_SRC_ATTN, ATTN_ENOMEM, 500, "internal"},
    {MRAD_SRC_ATTN, ATTN_ENOTSUP, 500, "internal"},
    {MRAD_SRC_ATTN, ATTN_EBACKEND, 500, "internal"},
    {MRAD_SRC_ATTN, ATTN_ENODEV, 503, "unavailable"},
    {MRAD_SRC_ATTN, ATTN_EFAULT, 500, "internal"},
    /* A cancelled problem's answer is decided by whoever cancelled it
     * (504, 503, a gone client); this row only keeps the table whole. */
    {MRAD_SRC_ATTN, ATTN_ECANCELED, 503, "unavailable"},
};

struct mrad_http_error mrad_error_http(enum mrad_err_source src, int err)
{
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (table[i].src == src && table[i].err == err)
            return (struct mrad_http_error){table[i].status, table[i].code};
    return (struct mrad_http_error){500, "internal"};
}
