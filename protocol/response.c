/*
 * response.c - the client side of the wire: decodes a 200 answer
 * (proto_response_decode) and a JSON error body (proto_error_parse).
 *
 * Unlike requests, answers are read leniently about keys: a newer server
 * may add fields to the answer or to "stats", and an older client should
 * still read what it knows.  The fields it knows are type-checked.
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/internal.h"

/* The value of key `name` in map m, or NULL (first match wins). */
static const msgpack_object *lookup(const msgpack_object *m, const char *name)
{
    if (m == NULL || m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (proto_str_eq(&m->via.map.ptr[i].key, name))
            return &m->via.map.ptr[i].val;
    return NULL;
}

/* Copies a string field into buf (truncated to bufsize - 1 bytes). */
static int get_str(const msgpack_object *m, const char *where, const char *name,
                   char *buf, size_t bufsize, char *err, size_t errlen)
{
    const msgpack_object *o = lookup(m, name);
    if (o == NULL)
        return perr(err, errlen, PROTO_EBADREQ, "%s%s: missing", where, name);
    if (o->type != MSGPACK_OBJECT_STR)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s%s: must be a string (got %s)", where, name,
                    proto_type_name(o));
    size_t n = o->via.str.size < bufsize - 1 ? o->via.str.size : bufsize - 1;
    memcpy(buf, o->via.str.ptr, n);
    buf[n] = '\0';
    return PROTO_OK;
}

static int get_u64(const msgpack_object *m, const char *name, uint64_t *v,
                   char *err, size_t errlen)
{
    const msgpack_object *o = lookup(m, name);
    if (o == NULL)
        return perr(err, errlen, PROTO_EBADREQ, "stats.%s: missing", name);
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return perr(err, errlen, PROTO_EBADREQ,
                    "stats.%s: must be an integer >= 0 (got %s)", name,
                    proto_type_name(o));
    *v = o->via.u64;
    return PROTO_OK;
}

static int get_number(const msgpack_object *m, const char *name, double *v,
                      char *err, size_t errlen)
{
    const msgpack_object *o = lookup(m, name);
    if (o == NULL)
        return perr(err, errlen, PROTO_EBADREQ, "stats.%s: missing", name);
    if (proto_get_number(o, v) != 0)
        return perr(err, errlen, PROTO_EBADREQ,
                    "stats.%s: must be a number (got %s)", name,
                    proto_type_name(o));
    return PROTO_OK;
}

/* Reads "out": dtype, shape [B, H, Nq, D] and data (bin in place when
 * aligned, else copied; a JSON array converted, null read as NaN). */
static int get_out(const msgpack_object *o, struct proto_response *r, char *err,
                   size_t errlen)
{
    if (o == NULL)
        return perr(err, errlen, PROTO_EBADREQ, "out: missing");
    if (o->type != MSGPACK_OBJECT_MAP)
        return perr(err, errlen, PROTO_EBADREQ, "out: must be a map (got %s)",
                    proto_type_name(o));
    const msgpack_object *dt = lookup(o, "dtype");
    const msgpack_object *sh = lookup(o, "shape");
    const msgpack_object *data = lookup(o, "data");
    int found = 0;
    for (int d = ATTN_F32; dt != NULL && d <= ATTN_BF16; d++) {
        if (proto_str_eq(dt, attn_dtype_name((enum attn_dtype)d))) {
            r->dtype = (enum attn_dtype)d;
            found = 1;
        }
    }
    if (!found)
        return perr(err, errlen, PROTO_EBADREQ,
                    "out.dtype: must be \"f32\", \"f16\" or \"bf16\"");
    if (sh == NULL || sh->type != MSGPACK_OBJECT_ARRAY ||
        sh->via.array.size != 4)
        return perr(err, errlen, PROTO_EBADREQ,
                    "out.shape: must be an array of 4 integers");
    size_t elems = 1, es = attn_dtype_size(r->dtype), bytes;
    for (int i = 0; i < 4; i++) {
        const msgpack_object *d = &sh->via.array.ptr[i];
        if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER || d->via.u64 == 0 ||
            d->via.u64 > UINT32_MAX)
            return perr(err, errlen, PROTO_EBADREQ,
                        "out.shape[%d]: must be an integer in [1, 2^32)", i);
        r->shape[i] = (uint32_t)d->via.u64;
        if (proto_mul_size(elems, r->shape[i], &elems) != 0)
            return perr(err, errlen, PROTO_EBADREQ,
                        "out.shape: the element count overflows");
    }
    if (proto_mul_size(elems, es, &bytes) != 0)
        return perr(err, errlen, PROTO_EBADREQ,
                    "out.shape: the byte count overflows");
    r->out_bytes = bytes;
    if (data != NULL && data->type == MSGPACK_OBJECT_BIN) {
        if (data->via.bin.size != bytes)
            return perr(err, errlen, PROTO_EBADREQ,
                        "out.data: length %" PRIu32
                        " bytes does not match the shape (%zu bytes)",
                        data->via.bin.size, bytes);
        if (proto_bin_aligned(data, es, &r->out, &r->owned) != PROTO_OK)
            return perr(err, errlen, PROTO_ENOMEM, "out.data: out of memory");
        return PROTO_OK;
    }
    if (data == NULL || data->type != MSGPACK_OBJECT_ARRAY)
        return perr(err, errlen, PROTO_EBADREQ,
                    "out.data: must be binary data or an array of numbers");
    if (data->via.array.size != elems)
        return perr(err, errlen, PROTO_EBADREQ,
                    "out.data: %" PRIu32 " numbers do not match the shape "
                    "(%zu expected)",
                    data->via.array.size, elems);
    unsigned char *buf = proto_aligned_alloc(bytes);
    if (buf == NULL)
        return perr(err, errlen, PROTO_ENOMEM, "out.data: out of memory");
    for (size_t i = 0; i < elems; i++) {
        const msgpack_object *e = &data->via.array.ptr[i];
        float f;
        if (e->type == MSGPACK_OBJECT_FLOAT64 ||
            e->type == MSGPACK_OBJECT_FLOAT32)
            f = (float)e->via.f64;
        else if (e->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            f = (float)e->via.u64;
        else if (e->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            f = (float)e->via.i64;
        else if (e->type == MSGPACK_OBJECT_NIL)
            f = NAN; /* what the encoder writes for NaN and infinities */
        else {
            free(buf);
            return perr(err, errlen, PROTO_EBADREQ,
                        "out.data[%zu]: must be a number or null (got %s)", i,
                        proto_type_name(e));
        }
        attn_from_f32(r->dtype, &f, buf + i * es, 1);
    }
    r->out = r->owned = buf;
    return PROTO_OK;
}

/* stats.heads: an array of per-head statistics. */
static int get_heads(const msgpack_object *a, struct proto_response *r,
                     char *err, size_t errlen)
{
    if (a->type != MSGPACK_OBJECT_ARRAY)
        return perr(err, errlen, PROTO_EBADREQ,
                    "stats.heads: must be an array (got %s)",
                    proto_type_name(a));
    size_t n = a->via.array.size;
    r->heads = calloc(n ? n : 1, sizeof *r->heads);
    if (r->heads == NULL)
        return perr(err, errlen, PROTO_ENOMEM, "stats.heads: out of memory");
    r->nheads = n;
    for (size_t h = 0; h < n; h++) {
        const msgpack_object *m = &a->via.array.ptr[h];
        struct attn_head_stats *hs = &r->heads[h];
        int rc = m->type == MSGPACK_OBJECT_MAP
                     ? PROTO_OK
                     : perr(err, errlen, PROTO_EBADREQ,
                            "stats.heads[%zu]: must be a map", h);
        if (rc == PROTO_OK)
            rc = get_u64(m, "budget", &hs->budget, err, errlen);
        if (rc == PROTO_OK)
            rc = get_u64(m, "blocks_selected", &hs->blocks_selected, err,
                         errlen);
        if (rc == PROTO_OK)
            rc = get_u64(m, "blocks_total", &hs->blocks_total, err, errlen);
        if (rc == PROTO_OK)
            rc = get_number(m, "density", &hs->density, err, errlen);
        hs->est_rel_err = -1.0;
        if (rc == PROTO_OK && lookup(m, "est_rel_err") != NULL)
            rc = get_number(m, "est_rel_err", &hs->est_rel_err, err, errlen);
        if (rc != PROTO_OK)
            return rc;
    }
    return PROTO_OK;
}

int proto_response_decode(const void *body, size_t len, enum proto_format fmt,
                          struct proto_response *resp, char *err, size_t errlen)
{
    memset(resp, 0, sizeof *resp);
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    msgpack_zone *zone = NULL;
    msgpack_object root;
    int rc = proto_tree_read(body, len, fmt, &zone, &root, err, errlen);
    if (rc != PROTO_OK)
        return rc;
    const msgpack_object *st = lookup(&root, "stats");
    const msgpack_object *id = lookup(&root, "id");
    uint64_t batch = 0;
    if (root.type != MSGPACK_OBJECT_MAP)
        rc = perr(err, errlen, PROTO_EBADREQ, "body: must be a map (got %s)",
                  proto_type_name(&root));
    else if (st == NULL || st->type != MSGPACK_OBJECT_MAP)
        rc = perr(err, errlen, PROTO_EBADREQ, "stats: missing or not a map");
    if (rc == PROTO_OK && id != NULL) {
        if (id->type != MSGPACK_OBJECT_STR || id->via.str.size > PROTO_ID_MAX)
            rc = perr(err, errlen, PROTO_EBADREQ,
                      "id: must be a string of at most %d bytes", PROTO_ID_MAX);
        else
            rc = get_str(&root, "", "id", resp->id, sizeof resp->id, err,
                         errlen);
        resp->has_id = rc == PROTO_OK;
    }
    struct proto_stats *s = &resp->stats;
    if (rc == PROTO_OK)
        rc = get_str(st, "stats.", "method", resp->method, sizeof resp->method,
                     err, errlen);
    if (rc == PROTO_OK)
        rc = get_str(st, "stats.", "backend", resp->backend,
                     sizeof resp->backend, err, errlen);
    if (rc == PROTO_OK)
        rc = get_u64(st, "blocks_selected", &s->attn.blocks_selected, err,
                     errlen);
    if (rc == PROTO_OK)
        rc = get_u64(st, "blocks_total", &s->attn.blocks_total, err, errlen);
    if (rc == PROTO_OK)
        rc = get_number(st, "density", &s->attn.density, err, errlen);
    if (rc == PROTO_OK)
        rc = get_u64(st, "queue_us", &s->queue_us, err, errlen);
    if (rc == PROTO_OK)
        rc = get_u64(st, "compute_us", &s->compute_us, err, errlen);
    if (rc == PROTO_OK)
        rc = get_u64(st, "batch_requests", &batch, err, errlen);
    if (rc == PROTO_OK && batch > UINT32_MAX)
        rc = perr(err, errlen, PROTO_EBADREQ,
                  "stats.batch_requests: out of range");
    s->attn.est_rel_err = -1.0;
    if (rc == PROTO_OK && lookup(st, "est_rel_err") != NULL)
        rc = get_number(st, "est_rel_err", &s->attn.est_rel_err, err, errlen);
    if (rc == PROTO_OK && lookup(st, "heads") != NULL)
        rc = get_heads(lookup(st, "heads"), resp, err, errlen);
    if (rc == PROTO_OK)
        rc = get_out(lookup(&root, "out"), resp, err, errlen);
    msgpack_zone_free(zone);
    if (rc != PROTO_OK) {
        proto_response_release(resp);
        memset(resp, 0, sizeof *resp);
        return rc;
    }
    s->batch_requests = (uint32_t)batch;
    s->backend = resp->backend;
    return PROTO_OK;
}

void proto_response_release(struct proto_response *resp)
{
    if (resp == NULL)
        return;
    free(resp->owned);
    resp->owned = NULL;
    resp->out = NULL;
    free(resp->heads);
    resp->heads = NULL;
    resp->nheads = 0;
}

int proto_error_parse(const void *body, size_t len, char *code, size_t codelen,
                      char *message, size_t msglen)
{
    msgpack_zone *zone = NULL;
    msgpack_object root;
    char err[8];
    if (codelen == 0 || msglen == 0)
        return PROTO_EBADREQ;
    int rc = proto_json_read(body, len, &zone, &root, err, sizeof err);
    if (rc != PROTO_OK)
        return PROTO_EBADREQ;
    const msgpack_object *e = lookup(&root, "error");
    rc = get_str(e, "", "code", code, codelen, err, sizeof err);
    if (rc == PROTO_OK)
        rc = get_str(e, "", "message", message, msglen, err, sizeof err);
    msgpack_zone_free(zone);
    return rc == PROTO_OK ? PROTO_OK : PROTO_EBADREQ;
}
