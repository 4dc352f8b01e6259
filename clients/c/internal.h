/*
 * internal.h - what the sources of libmraclient share and callers never
 * see: the client handle, the HTTP exchange on its easy handle (client.c),
 * and the decoding of a 200 attention answer, used by the plain calls
 * (client.c) and the calls on a session (kv.c).  mraclient.h never
 * includes this file.
 */
#ifndef MRAD_MRACLIENT_INTERNAL_H
#define MRAD_MRACLIENT_INTERNAL_H

#include <curl/curl.h>

#include "clients/c/mraclient.h"

struct mrac_client {
    CURL *curl;
    char *base;     /* base URL without a trailing slash */
    char *auth_hdr; /* "Authorization: Bearer ..." or NULL */
    uint32_t connect_timeout_ms;
    uint32_t timeout_ms;
    char curl_err[CURL_ERROR_SIZE];
};

/* A growing response buffer, always NUL-terminated once non-empty. */
struct mrac_buf {
    char *data;
    size_t len, cap;
    int oom;
};

/* An answer: its body and the headers of interest. */
struct mrac_answer {
    struct mrac_buf body;
    long retry_after_s;
};

/* Fills *err (when given) with a local failure: the return code, the
 * status (0 when no answer arrived), a code such as "invalid_argument" and
 * a message made of fmt with one %s for detail.  Returns code. */
int mrac_fail(struct mrac_error *err, int code, long status, const char *wire,
              const char *fmt, const char *detail);

/* Zeroes *err (when given), with no Retry-After. */
void mrac_err_clear(struct mrac_error *err);

/*
 * One HTTP exchange on the client's handle: `method` "GET", "POST" or
 * "DELETE" on base URL + path, with the body (POST only; its content type
 * from fmt).  On MRAC_OK, a->body.data holds the answer body (malloc'd,
 * NUL-terminated, "" when empty; the caller frees it) whatever its status,
 * and *status the HTTP status.  Otherwise a->body.data is NULL and *err
 * says why (MRAC_ENOMEM, MRAC_ETRANSPORT, MRAC_ETIMEDOUT).
 */
int mrac_perform(struct mrac_client *c, const char *method, const char *path,
                 const void *body, size_t len, enum proto_format fmt,
                 struct mrac_answer *a, long *status, struct mrac_error *err);

/* Turns a non-2xx answer into MRAC_EHTTP with the wire code and message
 * in *err (when given).  Returns MRAC_EHTTP. */
int mrac_http_error(const struct mrac_answer *a, long status,
                    struct mrac_error *err);

/*
 * The output of an attention answer: checks the status (a non-2xx answer
 * gives MRAC_EHTTP), decodes the body in `fmt` and checks that its output
 * is p's [B, H, Nq, D] in p->dtype, then copies it into p->out or a
 * malloc'd buffer and fills *res.  Frees a->body.data in every case.
 */
int mrac_answer_result(const struct attn_problem *p, enum proto_format fmt,
                       struct mrac_answer *a, long status,
                       struct mrac_result *res, struct mrac_error *err);

#endif /* MRAD_MRACLIENT_INTERNAL_H */
