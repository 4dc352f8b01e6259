/*
 * kv.c - the calls of libmraclient on sessions: create, append, attend,
 * inspect and delete keys and values kept in the service
 * (protocol/SPEC.md, "Sessions").  Bodies are encoded with the codec
 * (proto_kv_body_encode, proto_request_encode_opts) and the session answer
 * read with proto_kv_info_parse; the HTTP exchange is client.c's.
 *
 * The two answers a caller acts on, 404 kv_not_found and 507
 * kv_cache_full, come back as their own codes (MRAC_EKVNOTFOUND,
 * MRAC_EKVFULL) with *err filled as for any HTTP error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/c/internal.h"

/* "/v1/kv/" + id + the longest suffix, "/attention", and a NUL. */
#define KV_PATH_MAX (sizeof "/v1/kv/" + PROTO_KV_ID_MAX + sizeof "/attention")

/* Writes "/v1/kv/{id}{suffix}" into path.  Returns MRAC_OK, or MRAC_EINVAL
 * for an id the service could not have made. */
static int kv_path(char *path, const char *id, const char *suffix,
                   struct mrac_error *err)
{
    if (!id || !proto_kv_id_valid(id, strlen(id)))
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "a session id is 1 to 64 of A-Z, a-z, 0-9, - and _");
    snprintf(path, KV_PATH_MAX, "/v1/kv/%s%s", id, suffix);
    return MRAC_OK;
}

/* MRAC_EHTTP for the two answers about sessions becomes their own code. */
static int kv_http_error(const struct mrac_answer *a, long status,
                         struct mrac_error *err)
{
    int rc = mrac_http_error(a, status, err);
    if (status == 404 && strcmp(err->code, "kv_not_found") == 0)
        rc = MRAC_EKVNOTFOUND;
    else if (status == 507)
        rc = MRAC_EKVFULL;
    err->err = rc;
    return rc;
}

/* Sends a request whose answer is a session (create, append, GET) and
 * reads it into *info (NULL: not kept). */
static int kv_exchange(struct mrac_client *c, const char *method,
                       const char *path, const char *body, size_t len,
                       struct proto_kv_info *info, struct mrac_error *err)
{
    struct mrac_answer a;
    long st = 0;
    int rc =
        mrac_perform(c, method, path, body, len, PROTO_MSGPACK, &a, &st, err);
    if (rc != MRAC_OK)
        return rc;
    struct proto_kv_info tmp;
    if (st < 200 || st > 299)
        rc = kv_http_error(&a, st, err);
    else if (proto_kv_info_parse(a.body.data, a.body.len, info ? info : &tmp) !=
             PROTO_OK)
        rc = mrac_fail(err, MRAC_EPROTO, st, "bad_response", "%s",
                       "the answer is not a session");
    free(a.body.data);
    return rc;
}

/* Encodes a create (ttl_ms may be nonzero) or append body. */
static int kv_body(const struct attn_kv_shape *shape,
                   const struct attn_kv_tokens *t, uint64_t ttl_ms, char **body,
                   size_t *len, struct mrac_error *err)
{
    if (!shape || !t || !t->k || !t->v || t->n == 0)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "a session's tokens need a shape, k, v and n >= 1");
    /* The check of a problem over the tokens: the dtype, the dimensions,
     * H % Hkv and the sizes, with messages naming the field. */
    static _Alignas(64) char stand_in[64];
    struct attn_problem chk = {
        .dtype = shape->dtype,
        .B = shape->B,
        .H = shape->Hkv,
        .Hkv = shape->Hkv,
        .Nq = 1,
        .Nk = t->n,
        .D = shape->D,
        .q = stand_in,
        .k = t->k,
        .v = t->v,
        .out = stand_in,
    };
    char msg[256];
    if (attn_problem_check(&chk, msg, sizeof msg) != ATTN_OK)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s", msg);
    int rc = proto_kv_body_encode(shape, t, ttl_ms, PROTO_MSGPACK, body, len);
    if (rc == PROTO_ENOMEM)
        return mrac_fail(err, MRAC_ENOMEM, 0, "out_of_memory", "%s",
                         "request body");
    if (rc != PROTO_OK)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "the tokens do not make a body");
    return MRAC_OK;
}

int mrac_kv_create(struct mrac_client *c, const struct attn_kv_shape *shape,
                   const struct attn_kv_tokens *t, uint64_t ttl_ms,
                   struct proto_kv_info *info, struct mrac_error *err)
{
    struct mrac_error local;
    if (!err)
        err = &local;
    mrac_err_clear(err);
    if (info)
        memset(info, 0, sizeof *info);
    if (!c || !info)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "mrac_kv_create needs a client and *info");
    char *body;
    size_t len;
    int rc = kv_body(shape, t, ttl_ms, &body, &len, err);
    if (rc != MRAC_OK)
        return rc;
    rc = kv_exchange(c, "POST", "/v1/kv", body, len, info, err);
    free(body);
    return rc;
}

int mrac_kv_append(struct mrac_client *c, const char *id,
                   const struct attn_kv_shape *shape,
                   const struct attn_kv_tokens *t, struct proto_kv_info *info,
                   struct mrac_error *err)
{
    struct mrac_error local;
    if (!err)
        err = &local;
    mrac_err_clear(err);
    if (info)
        memset(info, 0, sizeof *info);
    char path[KV_PATH_MAX];
    if (!c)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "mrac_kv_append needs a client");
    int rc = kv_path(path, id, "/append", err);
    if (rc != MRAC_OK)
        return rc;
    char *body;
    size_t len;
    if ((rc = kv_body(shape, t, 0, &body, &len, err)) != MRAC_OK)
        return rc;
    rc = kv_exchange(c, "POST", path, body, len, info, err);
    free(body);
    return rc;
}

int mrac_kv_info(struct mrac_client *c, const char *id,
                 struct proto_kv_info *info, struct mrac_error *err)
{
    struct mrac_error local;
    if (!err)
        err = &local;
    mrac_err_clear(err);
    if (info)
        memset(info, 0, sizeof *info);
    char path[KV_PATH_MAX];
    if (!c || !info)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "mrac_kv_info needs a client and *info");
    int rc = kv_path(path, id, "", err);
    if (rc != MRAC_OK)
        return rc;
    return kv_exchange(c, "GET", path, NULL, 0, info, err);
}

int mrac_kv_free(struct mrac_client *c, const char *id, struct mrac_error *err)
{
    struct mrac_error local;
    if (!err)
        err = &local;
    mrac_err_clear(err);
    char path[KV_PATH_MAX];
    if (!c)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "mrac_kv_free needs a client");
    int rc = kv_path(path, id, "", err);
    if (rc != MRAC_OK)
        return rc;
    struct mrac_answer a;
    long st = 0;
    rc = mrac_perform(c, "DELETE", path, NULL, 0, PROTO_JSON, &a, &st, err);
    if (rc != MRAC_OK)
        return rc;
    if (st < 200 || st > 299)
        rc = kv_http_error(&a, st, err);
    free(a.body.data);
    return rc;
}

int mrac_kv_attend(struct mrac_client *c, const char *id,
                   const struct attn_problem *p, const struct mrac_call *call,
                   struct mrac_result *res, struct mrac_error *err)
{
    static const struct mrac_call no_call = {0};
    struct mrac_error local;
    if (!err)
        err = &local;
    mrac_err_clear(err);
    if (res)
        memset(res, 0, sizeof *res);
    char path[KV_PATH_MAX];
    if (!c || !p || !res)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "mrac_kv_attend needs a client, a problem and a "
                         "result");
    int rc = kv_path(path, id, "/attention", err);
    if (rc != MRAC_OK)
        return rc;
    if (!call)
        call = &no_call;
    if (call->id && strlen(call->id) > PROTO_ID_MAX)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "the id is longer than 128 bytes");

    /* The problem's own check, with the appended tokens (or stand-ins)
     * as its keys: the session's length is the server's to know. */
    static _Alignas(64) char stand_in[64];
    const struct attn_kv_tokens *ap = &p->append;
    struct attn_problem chk = *p;
    memset(&chk.append, 0, sizeof chk.append);
    chk.kv = NULL;
    chk.mask = NULL;
    chk.Nk = ap->n ? ap->n : 1;
    chk.k = ap->n ? ap->k : stand_in;
    chk.v = ap->n ? ap->v : stand_in;
    if (!ap->n && !chk.Hkv)
        chk.Hkv = chk.H; /* the session's: unknown here, and not sent */
    if (!chk.out)
        chk.out = stand_in;
    char msg[256];
    if (attn_problem_check(&chk, msg, sizeof msg) != ATTN_OK)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s", msg);

    struct proto_encode_opts o = {
        .id = call->id,
        .timeout_ms = call->timeout_ms,
        .kv = id,
        .kv_in_path = 1,
    };
    char *body = NULL;
    size_t blen = 0;
    rc = proto_request_encode_opts(p, call->format, &o, &body, &blen);
    if (rc != PROTO_OK)
        return mrac_fail(err, rc == PROTO_ENOMEM ? MRAC_ENOMEM : MRAC_EINVAL, 0,
                         rc == PROTO_ENOMEM ? "out_of_memory"
                                            : "invalid_argument",
                         "%s", "request body");

    struct mrac_answer a;
    long st = 0;
    rc = mrac_perform(c, "POST", path, body, blen, call->format, &a, &st, err);
    free(body);
    if (rc != MRAC_OK)
        return rc;
    if (st < 200 || st > 299) {
        rc = kv_http_error(&a, st, err);
        free(a.body.data);
        return rc;
    }
    return mrac_answer_result(p, call->format, &a, st, res, err);
}
