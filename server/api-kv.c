/*
 * api-kv.c - the sessions surface: POST /v1/kv (create), POST
 * /v1/kv/{id}/append, GET /v1/kv/{id}, DELETE /v1/kv/{id}.  Requests on a
 * session are in server/api-v1.c; the table in server/kv.c.
 *
 * A create and an append are calls on the backend that holds the session
 * (jobs without a problem, pinned to its worker and ordered with the
 * session's other requests): the store is made and filled on that
 * worker's thread, as the attention library wants.  GET and DELETE are
 * answered from the table at once.  Every answer names its session in the
 * X-Mrad-KV header.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/proto.h"
#include "server/call.h"
#include "server/route.h"

/* One create or append. */
struct kv_call {
    struct mrad_call c; /* first */
    struct proto_kv_body kb;
    /* Written by the job on the worker: the store's count after it. */
    uint64_t tokens, bytes;
};

static void kv_cleanup(struct mrad_call *c)
{
    proto_kv_body_release(&((struct kv_call *)c)->kb);
}

/* ---- the calls on the backend ---------------------------------------- */

/* Makes the store and appends the first tokens. */
static int create_run(struct mrad_job *job, struct attn_backend *be)
{
    struct kv_call *call = job->owner;
    struct mrad_call *c = &call->c;
    if (job->cancel)
        return ATTN_ECANCELED;
    struct attn_kv *store;
    int rc = attn_kv_new(be, &call->kb.shape, &store);
    if (rc != ATTN_OK)
        return rc;
    mrad_kv_attach(c->srv->kv, c->kv, store);
    rc = attn_kv_append(store, &call->kb.tokens);
    call->tokens = attn_kv_tokens(store);
    call->bytes = attn_kv_bytes(store);
    return rc;
}

/* A created session becomes visible before its id is answered. */
static void create_done(struct mrad_job *job)
{
    struct mrad_call *c = job->owner;
    if (job->err == 0)
        mrad_kv_publish(c->srv->kv, c->kv);
    mrad_call_done(job);
}

static int append_run(struct mrad_job *job, struct attn_backend *be)
{
    (void)be;
    struct kv_call *call = job->owner;
    struct attn_kv *store = mrad_kv_store(call->c.kv);
    if (job->cancel)
        return ATTN_ECANCELED;
    int rc = attn_kv_append(store, &call->kb.tokens);
    call->tokens = attn_kv_tokens(store);
    call->bytes = attn_kv_bytes(store);
    return rc;
}

static const struct mrad_job_ops create_ops = {
    .done = create_done,
    .cancelled = mrad_call_cancelled,
    .release = mrad_call_release,
    .run = create_run,
};

static const struct mrad_job_ops append_ops = {
    .done = mrad_call_done,
    .cancelled = mrad_call_cancelled,
    .release = mrad_call_release,
    .run = append_run,
};

/* ---- answers -------------------------------------------------------------- */

/* The session answer (JSON); its X-Mrad-KV header was set with the id. */
static int send_view(struct mrad_req *r, unsigned status,
                     const struct mrad_kv_view *v)
{
    struct proto_kv_info in;
    snprintf(in.kv, sizeof in.kv, "%s", v->id);
    in.shape = v->shape;
    in.tokens = v->tokens;
    in.bytes = v->bytes;
    in.ttl_ms = v->ttl_ms;
    in.idle_ms = v->idle_ms;
    size_t len;
    char *body = proto_kv_info_json(&in, &len);
    if (!body)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                              "out of memory encoding the answer");
    return mrad_req_send(r, status, "application/json", body, len);
}

static int not_found(struct mrad_req *r)
{
    return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EKVNOTFOUND,
                          "kv: no such session (unknown, expired, evicted or "
                          "deleted): create it again");
}

/* The session id of the path (segment 2), with the X-Mrad-KV header set.
 * Returns its length, or -1 with a 404 answered. */
static int path_id(struct mrad_req *r, char *id, size_t len, int *rc)
{
    int n = mrad_req_path_segment(r, 2, id, len);
    if (n < 0 || !proto_kv_id_valid(id, (size_t)n)) {
        *rc = not_found(r);
        return -1;
    }
    mrad_req_add_header(r, MRAD_KV_HEADER, id);
    return n;
}

/* ---- POST /v1/kv and POST /v1/kv/{id}/append ----------------------------- */

static int create_begin(struct mrad_req *r)
{
    int rc;
    struct mrad_call *c =
        mrad_call_begin(r, sizeof(struct kv_call), &create_ops, 0, &rc);
    if (c)
        c->cleanup = kv_cleanup;
    return rc;
}

static int append_begin(struct mrad_req *r)
{
    int rc;
    struct mrad_call *c =
        mrad_call_begin(r, sizeof(struct kv_call), &append_ops, 0, &rc);
    if (c)
        c->cleanup = kv_cleanup;
    return rc;
}

/* Decodes a create or append body.  Returns 0, or -1 with the error
 * answered (*rc). */
static int decode(struct mrad_req *r, struct kv_call *call, int create,
                  int *rc)
{
    struct mrad_call *c = &call->c;
    char err[256];
    mrad_call_take_body(r, c);
    int prc = proto_kv_body_decode(mrad_call_body(c), c->body_len, c->fmt,
                                   &c->srv->cfg->limits, create, &call->kb,
                                   err, sizeof err);
    if (prc != PROTO_OK) {
        *rc = mrad_req_error(r, MRAD_SRC_PROTO, prc, err);
        return -1;
    }
    return 0;
}

static int create_handle(struct mrad_req *r)
{
    struct kv_call *call = mrad_req_data(r);
    struct mrad_call *c = &call->c;
    char msg[256];
    int rc;
    if (decode(r, call, 1, &rc))
        return rc;
    rc = mrad_kv_create(c->srv->kv, mrad_req_key_id(r), &call->kb.shape,
                        call->kb.tokens.n, call->kb.ttl_ms, &c->kv, msg,
                        sizeof msg);
    if (rc)
        return mrad_req_error(r, MRAD_SRC_SERVER, rc, msg);
    struct mrad_kv_view v;
    mrad_kv_view(c->srv->kv, c->kv, &v);
    mrad_req_add_header(r, MRAD_KV_HEADER, v.id);
    c->job.worker = v.worker;
    c->job.order = c->kv;
    c->job.bytes = c->body_len;
    return mrad_call_submit(r, c, 0);
}

static int append_handle(struct mrad_req *r)
{
    struct kv_call *call = mrad_req_data(r);
    struct mrad_call *c = &call->c;
    struct mrad_kv_table *t = c->srv->kv;
    char id[PROTO_KV_ID_MAX + 2], msg[256];
    int rc, n = path_id(r, id, sizeof id, &rc);
    if (n < 0)
        return rc;
    if (decode(r, call, 0, &rc))
        return rc;
    if (mrad_kv_acquire(t, id, (size_t)n, mrad_req_key_id(r), &c->kv))
        return not_found(r);
    const struct attn_kv_shape *sh = mrad_kv_shape(c->kv);
    const struct attn_kv_shape *got = &call->kb.shape;
    if (got->dtype != sh->dtype) {
        snprintf(msg, sizeof msg, "k.dtype: %s, the session's is %s",
                 attn_dtype_name(got->dtype), attn_dtype_name(sh->dtype));
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ, msg);
    }
    if (got->B != sh->B || got->Hkv != sh->Hkv || got->D != sh->D) {
        snprintf(msg, sizeof msg,
                 "k: shape [%" PRIu32 ",%" PRIu32 ",n,%" PRIu32
                 "] does not match the session's [B,Hkv,n,D] = [%" PRIu32
                 ",%" PRIu32 ",n,%" PRIu32 "]",
                 got->B, got->Hkv, got->D, sh->B, sh->Hkv, sh->D);
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ, msg);
    }
    rc = mrad_kv_reserve(t, c->kv, call->kb.tokens.n, msg, sizeof msg);
    if (rc)
        return mrad_req_error(r, MRAD_SRC_SERVER, rc, msg);
    c->job.worker = mrad_kv_worker(c->kv);
    c->job.order = c->kv;
    c->job.bytes = c->body_len;
    return mrad_call_submit(r, c, 0);
}

/* After the create or append job, or a refused submit. */
static int kv_resume(struct mrad_req *r)
{
    struct kv_call *call = mrad_req_data(r);
    struct mrad_call *c = &call->c;
    int rc;
    int failed = mrad_call_failed(r, c, NULL, &rc);
    if (failed) {
        mrad_call_end_session(c);
        return rc;
    }
    mrad_call_drop_body(c);
    struct mrad_kv_view v;
    mrad_kv_view(c->srv->kv, c->kv, &v);
    mrad_call_end_session(c);
    /* The store's count right after this request, not what later ones
     * will have appended. */
    v.tokens = call->tokens;
    v.bytes = call->bytes;
    int created = c->job.ops == &create_ops;
    return send_view(r, created ? 201 : 200, &v);
}

/* ---- GET and DELETE /v1/kv/{id} ------------------------------------------ */

static int get_kv(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    char id[PROTO_KV_ID_MAX + 2];
    int rc, n = path_id(r, id, sizeof id, &rc);
    if (n < 0)
        return rc;
    struct mrad_kv_view v;
    if (mrad_kv_lookup(srv->kv, id, (size_t)n, mrad_req_key_id(r), &v))
        return not_found(r);
    return send_view(r, 200, &v);
}

static int delete_kv(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    char id[PROTO_KV_ID_MAX + 2];
    int rc, n = path_id(r, id, sizeof id, &rc);
    if (n < 0)
        return rc;
    if (mrad_kv_delete(srv->kv, id, (size_t)n, mrad_req_key_id(r)))
        return not_found(r);
    return mrad_req_send(r, 204, NULL, NULL, 0);
}

static const struct mrad_route routes[] = {
    {"POST", "/v1/kv", MRAD_ROUTE_BODY, create_begin, create_handle,
     kv_resume},
    {"POST", "/v1/kv/*/append", MRAD_ROUTE_BODY, append_begin, append_handle,
     kv_resume},
    {"GET", "/v1/kv/*", 0, NULL, get_kv, NULL},
    {"DELETE", "/v1/kv/*", 0, NULL, delete_kv, NULL},
};

const struct mrad_api mrad_api_kv = {
    .name = "v1",
    .key_prefix = "/v1/",
    .routes = routes,
    .nroutes = sizeof(routes) / sizeof(routes[0]),
};
