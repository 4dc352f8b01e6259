/*
 * v2.c - the KServe v2 / Open Inference Protocol inference request and
 * answer (proto_v2_*; protocol/SPEC.md, "KServe v2").
 *
 * The JSON header is read into a msgpack_object tree like a /v1 JSON body.
 * Each input becomes a /v1 tensor: its data is a BIN object over its bytes
 * (in the body after the header, or in a shared-memory region the caller
 * resolves) or the header's numbers, flattened when nested; the request's
 * parameters become the /v1 scalar keys.  request.c then checks and loads
 * them exactly as a /v1 body (proto_request_from_parts), so both protocols
 * accept the same problems with the same messages.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/internal.h"

/* The input names, their /v1 keys, and which are masks. */
static const char *const input_names[] = {
    "q", "k", "v", "mask", "q_mask", "k_append", "v_append", "mask_append"};
#define NINPUTS (sizeof input_names / sizeof input_names[0])

static int input_is_mask(const char *name)
{
    return !strcmp(name, "mask") || !strcmp(name, "q_mask") ||
           !strcmp(name, "mask_append");
}

const char *proto_v2_datatype(enum attn_dtype dt)
{
    switch (dt) {
    case ATTN_F32:
        return "FP32";
    case ATTN_F16:
        return "FP16";
    case ATTN_BF16:
        return "BF16";
    }
    return "";
}

/* A map's fields by name (NULL when absent); unknown and duplicate keys
 * are refused, named with `where`. */
static int fields_of(const msgpack_object *m, const char *where,
                     const char *const *names, size_t n,
                     const msgpack_object **vals, char *err, size_t errlen)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s: must be an object (got %s)", where,
                    proto_type_name(m));
    for (size_t i = 0; i < n; i++)
        vals[i] = NULL;
    for (uint32_t e = 0; e < m->via.map.size; e++) {
        const msgpack_object *k = &m->via.map.ptr[e].key;
        size_t i;
        for (i = 0; i < n; i++)
            if (proto_str_eq(k, names[i]))
                break;
        if (i == n) {
            char rep[48];
            size_t len = k->via.str.size < 40 ? k->via.str.size : 40;
            for (size_t c = 0; c < len; c++) {
                unsigned char ch = (unsigned char)k->via.str.ptr[c];
                rep[c] = ch >= 0x20 && ch < 0x7f && ch != '"' ? (char)ch : '?';
            }
            rep[len] = '\0';
            return perr(err, errlen, PROTO_EBADREQ, "%s.%s: unknown key", where,
                        rep);
        }
        if (vals[i] != NULL)
            return perr(err, errlen, PROTO_EBADREQ, "%s.%s: duplicate key",
                        where, names[i]);
        vals[i] = &m->via.map.ptr[e].val;
    }
    return PROTO_OK;
}

/* A string of at most PROTO_V2_NAME_MAX bytes into out. */
static int get_name(const msgpack_object *o, const char *what, char *out,
                    char *err, size_t errlen)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return perr(err, errlen, PROTO_EBADREQ, "%s: must be a string (got %s)",
                    what, proto_type_name(o));
    if (o->via.str.size > PROTO_V2_NAME_MAX ||
        !proto_utf8_valid(o->via.str.ptr, o->via.str.size, 0))
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s: must be UTF-8 text of at most %d bytes", what,
                    PROTO_V2_NAME_MAX);
    memcpy(out, o->via.str.ptr, o->via.str.size);
    out[o->via.str.size] = '\0';
    return PROTO_OK;
}

static int get_u64(const msgpack_object *o, const char *what, uint64_t *v,
                   char *err, size_t errlen)
{
    int64_t x;
    int too_big;
    if (proto_get_int(o, &x, &too_big) != 0 || x < 0)
        return perr(err, errlen, PROTO_EBADREQ, "%s: must be an integer >= 0",
                    what);
    *v = (uint64_t)x;
    return PROTO_OK;
}

/* The shared-memory parameters of an input or output, when given. */
static int parse_shm(const msgpack_object *region, const msgpack_object *size,
                     const msgpack_object *offset, const char *what,
                     struct proto_v2_shm *shm, char *err, size_t errlen)
{
    char w[96];
    snprintf(w, sizeof w, "%s.parameters.shared_memory_region", what);
    int rc = get_name(region, w, shm->region, err, errlen);
    if (rc != PROTO_OK)
        return rc;
    if (size == NULL)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s.parameters.shared_memory_byte_size: missing", what);
    snprintf(w, sizeof w, "%s.parameters.shared_memory_byte_size", what);
    if ((rc = get_u64(size, w, &shm->byte_size, err, errlen)) != PROTO_OK)
        return rc;
    shm->offset = 0;
    snprintf(w, sizeof w, "%s.parameters.shared_memory_offset", what);
    if (offset && (rc = get_u64(offset, w, &shm->offset, err, errlen)))
        return rc;
    return PROTO_OK;
}

/* Appends the numbers (and booleans) of a nested array to out, depth
 * first; `mask` turns booleans into 0/1. */
static int flatten(const msgpack_object *o, int depth, int mask,
                   msgpack_object *out, uint32_t cap, uint32_t *n,
                   const char *what, char *err, size_t errlen)
{
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        if (depth >= PROTO_MAX_DEPTH)
            return perr(err, errlen, PROTO_EBADREQ, "%s.data: nested too deep",
                        what);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            int rc = flatten(&o->via.array.ptr[i], depth + 1, mask, out, cap, n,
                             what, err, errlen);
            if (rc != PROTO_OK)
                return rc;
        }
        return PROTO_OK;
    }
    if (*n == cap)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s.data: more numbers than the shape holds", what);
    msgpack_object v = *o;
    if (o->type == MSGPACK_OBJECT_BOOLEAN) {
        if (!mask)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.data: booleans only for a BOOL tensor", what);
        v.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        v.via.u64 = o->via.boolean ? 1 : 0;
    }
    out[(*n)++] = v;
    return PROTO_OK;
}

/* Counts the leaves of a nested array (bounded by `cap`). */
static uint64_t leaves(const msgpack_object *o, int depth)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || depth >= PROTO_MAX_DEPTH)
        return 1;
    uint64_t n = 0;
    for (uint32_t i = 0; i < o->via.array.size; i++)
        n += leaves(&o->via.array.ptr[i], depth + 1);
    return n;
}

/* The decoding state of one request. */
struct v2dec {
    const char *body;
    size_t len, at; /* the binary data: [at, len) of body */
    msgpack_zone *zone;
    const struct proto_v2_opts *o;
    struct proto_part parts[NINPUTS];
    msgpack_object data[NINPUTS]; /* BIN or flattened ARRAY objects */
    size_t nparts;
    char *err;
    size_t errlen;
};

/* One element of "inputs". */
static int parse_input(struct v2dec *d, const msgpack_object *in, uint32_t i)
{
    static const char *const keys[5] = {"name", "shape", "datatype",
                                        "parameters", "data"};
    static const char *const pkeys[4] = {
        "binary_data_size", "shared_memory_region", "shared_memory_byte_size",
        "shared_memory_offset"};
    char *err = d->err;
    size_t errlen = d->errlen;
    char what[32], w[96];
    snprintf(what, sizeof what, "inputs[%" PRIu32 "]", i);
    const msgpack_object *f[5], *p[4] = {0};
    int rc = fields_of(in, what, keys, 5, f, err, errlen);
    if (rc != PROTO_OK)
        return rc;
    for (int k = 0; k < 3; k++)
        if (f[k] == NULL)
            return perr(err, errlen, PROTO_EBADREQ, "%s.%s: missing", what,
                        keys[k]);
    char name[PROTO_V2_NAME_MAX + 1];
    snprintf(w, sizeof w, "%s.name", what);
    if ((rc = get_name(f[0], w, name, err, errlen)) != PROTO_OK)
        return rc;
    size_t slot;
    for (slot = 0; slot < NINPUTS; slot++)
        if (!strcmp(name, input_names[slot]))
            break;
    if (slot == NINPUTS)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s.name: unknown input \"%s\" (q, k, v, mask, q_mask, "
                    "k_append, v_append, mask_append)",
                    what, name);
    if (d->nparts == NINPUTS)
        return perr(err, errlen, PROTO_EBADREQ, "inputs: too many");
    struct proto_part *pt = &d->parts[d->nparts];
    msgpack_object *data = &d->data[d->nparts];
    pt->name = input_names[slot];
    /* datatype */
    int mask = input_is_mask(pt->name), dt = -2;
    if (f[2]->type == MSGPACK_OBJECT_STR) {
        if (mask && (proto_str_eq(f[2], "UINT8") || proto_str_eq(f[2], "BOOL")))
            dt = -1;
        for (int t = ATTN_F32; !mask && t <= ATTN_BF16; t++)
            if (proto_str_eq(f[2], proto_v2_datatype((enum attn_dtype)t)))
                dt = t;
    }
    if (dt == -2)
        return perr(err, errlen, PROTO_EBADREQ, "%s.datatype: must be %s (%s)",
                    what, mask ? "UINT8 or BOOL" : "FP32, FP16 or BF16",
                    pt->name);
    pt->dtype = dt;
    /* shape */
    if (f[1]->type != MSGPACK_OBJECT_ARRAY || f[1]->via.array.size < 1 ||
        f[1]->via.array.size > 4)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s.shape: must be an array of %d integers", what,
                    mask ? 2 : 4);
    pt->rank = (int)f[1]->via.array.size;
    uint64_t elems = 1;
    for (int k = 0; k < pt->rank; k++) {
        snprintf(w, sizeof w, "%s.shape[%d]", what, k);
        if ((rc = get_u64(&f[1]->via.array.ptr[k], w, &pt->shape[k], err,
                          errlen)) != PROTO_OK)
            return rc;
        if (pt->shape[k] && elems > UINT64_MAX / pt->shape[k])
            return perr(err, errlen, PROTO_ETOOBIG,
                        "%s.shape: the element count overflows 64 bits", what);
        elems *= pt->shape[k];
    }
    size_t es = dt < 0 ? 1 : attn_dtype_size((enum attn_dtype)dt);
    if (elems > UINT32_MAX / es)
        return perr(err, errlen, PROTO_ETOOBIG,
                    "%s.shape: %" PRIu64 " elements exceed what one tensor may "
                    "hold",
                    what, elems);
    uint64_t bytes = elems * es;
    /* where the data is */
    if (f[3] != NULL) {
        snprintf(w, sizeof w, "%s.parameters", what);
        if ((rc = fields_of(f[3], w, pkeys, 4, p, err, errlen)) != PROTO_OK)
            return rc;
    }
    int sources = (f[4] != NULL) + (p[0] != NULL) + (p[1] != NULL);
    if (sources != 1)
        return perr(
            err, errlen, PROTO_EBADREQ,
            "%s: needs exactly one of data, parameters.binary_data_size "
            "and parameters.shared_memory_region",
            what);
    if (p[0] != NULL) {
        uint64_t size = 0;
        snprintf(w, sizeof w, "%s.parameters.binary_data_size", what);
        if ((rc = get_u64(p[0], w, &size, err, errlen)) != PROTO_OK)
            return rc;
        if (size != bytes)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.parameters.binary_data_size: %" PRIu64
                        " bytes, the shape and datatype make %" PRIu64,
                        what, size, bytes);
        if (size > d->len - d->at)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s: %" PRIu64 " bytes of binary data, %zu left in the "
                        "body",
                        what, size, d->len - d->at);
        data->type = MSGPACK_OBJECT_BIN;
        data->via.bin.ptr = d->body + d->at;
        data->via.bin.size = (uint32_t)size;
        d->at += size;
    } else if (p[1] != NULL) {
        struct proto_v2_shm ref;
        if ((rc = parse_shm(p[1], p[2], p[3], what, &ref, err, errlen)))
            return rc;
        if (ref.byte_size != bytes)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.parameters.shared_memory_byte_size: %" PRIu64
                        " bytes, the shape and datatype make %" PRIu64,
                        what, ref.byte_size, bytes);
        if (d->o == NULL || d->o->shm == NULL)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s: shared memory is not enabled on this server "
                        "(mrad --allow-shm)",
                        what);
        void *ptr;
        if ((rc = d->o->shm(d->o->shm_ctx, &ref, what, bytes, &ptr, err,
                            errlen)) != PROTO_OK)
            return rc;
        data->type = MSGPACK_OBJECT_BIN;
        data->via.bin.ptr = ptr;
        data->via.bin.size = (uint32_t)bytes;
    } else {
        if (f[4]->type != MSGPACK_OBJECT_ARRAY)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.data: must be an array of numbers (got %s)", what,
                        proto_type_name(f[4]));
        uint64_t n = leaves(f[4], 0);
        if (n != elems)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.data: %" PRIu64
                        " numbers do not match the shape (%" PRIu64
                        " expected)",
                        what, n, elems);
        msgpack_object *flat =
            msgpack_zone_malloc(d->zone, (size_t)(n ? n : 1) * sizeof *flat);
        if (flat == NULL)
            return perr(err, errlen, PROTO_ENOMEM, "%s.data: out of memory",
                        what);
        uint32_t got = 0;
        if ((rc = flatten(f[4], 0, dt < 0, flat, (uint32_t)n, &got, what, err,
                          errlen)) != PROTO_OK)
            return rc;
        data->type = MSGPACK_OBJECT_ARRAY;
        data->via.array.ptr = flat;
        data->via.array.size = got;
    }
    pt->data = data;
    d->nparts++;
    return PROTO_OK;
}

/* The one output, "out", and how it goes back. */
static int parse_outputs(struct v2dec *d, const msgpack_object *outs,
                         struct proto_v2_request *r)
{
    static const char *const keys[2] = {"name", "parameters"};
    static const char *const pkeys[4] = {"binary_data", "shared_memory_region",
                                         "shared_memory_byte_size",
                                         "shared_memory_offset"};
    char *err = d->err;
    size_t errlen = d->errlen;
    if (outs->type != MSGPACK_OBJECT_ARRAY)
        return perr(err, errlen, PROTO_EBADREQ,
                    "outputs: must be an array (got %s)",
                    proto_type_name(outs));
    if (outs->via.array.size > 1)
        return perr(err, errlen, PROTO_EBADREQ,
                    "outputs: the model has one output, \"out\"");
    for (uint32_t i = 0; i < outs->via.array.size; i++) {
        char what[32], name[PROTO_V2_NAME_MAX + 1], w[96];
        snprintf(what, sizeof what, "outputs[%" PRIu32 "]", i);
        const msgpack_object *f[2], *p[4] = {0};
        int rc =
            fields_of(&outs->via.array.ptr[i], what, keys, 2, f, err, errlen);
        if (rc != PROTO_OK)
            return rc;
        if (f[0] == NULL)
            return perr(err, errlen, PROTO_EBADREQ, "%s.name: missing", what);
        snprintf(w, sizeof w, "%s.name", what);
        if ((rc = get_name(f[0], w, name, err, errlen)) != PROTO_OK)
            return rc;
        if (strcmp(name, "out") != 0)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.name: unknown output \"%s\" (out)", what, name);
        if (f[1] == NULL)
            continue;
        snprintf(w, sizeof w, "%s.parameters", what);
        if ((rc = fields_of(f[1], w, pkeys, 4, p, err, errlen)) != PROTO_OK)
            return rc;
        if (p[0] != NULL) {
            if (p[0]->type != MSGPACK_OBJECT_BOOLEAN)
                return perr(err, errlen, PROTO_EBADREQ,
                            "%s.parameters.binary_data: must be a boolean",
                            what);
            r->binary_out = p[0]->via.boolean;
        }
        if (p[1] != NULL) {
            if ((rc = parse_shm(p[1], p[2], p[3], what, &r->out_shm, err,
                                errlen)) != PROTO_OK)
                return rc;
            if (d->o == NULL || d->o->shm == NULL)
                return perr(err, errlen, PROTO_EBADREQ,
                            "%s: shared memory is not enabled on this server "
                            "(mrad --allow-shm)",
                            what);
            r->shm_out = 1;
        } else if (p[2] != NULL || p[3] != NULL) {
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.parameters.shared_memory_region: missing", what);
        }
    }
    return PROTO_OK;
}

/* Where the output goes when it goes into shared memory. */
struct shm_out {
    void *ptr;
};

static void *shm_out_alloc(size_t bytes, void *ctx)
{
    (void)bytes; /* checked against the region when it was resolved */
    return ((struct shm_out *)ctx)->ptr;
}

static void shm_out_release(void *buf, void *ctx)
{
    (void)buf, (void)ctx; /* the region is the client's */
}

/* The request's parameters: the /v1 scalar keys, binary_data_output and
 * Triton's timeout in microseconds (made milliseconds). */
#define MAX_FIELDS 16

static int parse_params(struct v2dec *d, const msgpack_object *params,
                        struct proto_field *fields, size_t *nfields,
                        msgpack_object *timeout_ms, struct proto_v2_request *r)
{
    static const char *const v1keys[] = {
        "block_per_row",  "num_blocks",   "prior_first",
        "prior_diagonal", "scale",        "causal",
        "timeout_ms",     "kv",           "min_blocks_per_row",
        "error_samples",  "target_error", "per_head_stats"};
    char *err = d->err;
    size_t errlen = d->errlen;
    if (params->type != MSGPACK_OBJECT_MAP)
        return perr(err, errlen, PROTO_EBADREQ,
                    "parameters: must be an object (got %s)",
                    proto_type_name(params));
    for (uint32_t e = 0; e < params->via.map.size; e++) {
        const msgpack_object *k = &params->via.map.ptr[e].key;
        const msgpack_object *v = &params->via.map.ptr[e].val;
        /* Each key at most once (request.c names a repeated one). */
        if (*nfields == MAX_FIELDS)
            return perr(err, errlen, PROTO_EBADREQ,
                        "parameters: a parameter is given more than once");
        if (proto_str_eq(k, "binary_data_output")) {
            if (v->type != MSGPACK_OBJECT_BOOLEAN)
                return perr(err, errlen, PROTO_EBADREQ,
                            "parameters.binary_data_output: must be a boolean");
            r->binary_out |= v->via.boolean;
            continue;
        }
        if (proto_str_eq(k, "timeout")) {
            uint64_t us = 0;
            int rc = get_u64(v, "parameters.timeout", &us, err, errlen);
            if (rc != PROTO_OK)
                return rc;
            timeout_ms->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            timeout_ms->via.u64 = us ? (us + 999) / 1000 : 0;
            fields[(*nfields)++] =
                (struct proto_field){"timeout_ms", timeout_ms};
            continue;
        }
        size_t i;
        for (i = 0; i < sizeof v1keys / sizeof v1keys[0]; i++)
            if (proto_str_eq(k, v1keys[i]))
                break;
        if (i == sizeof v1keys / sizeof v1keys[0]) {
            char rep[48];
            size_t len = k->type == MSGPACK_OBJECT_STR && k->via.str.size < 40
                             ? k->via.str.size
                             : 0;
            for (size_t c = 0; c < len; c++) {
                unsigned char ch = (unsigned char)k->via.str.ptr[c];
                rep[c] = ch >= 0x20 && ch < 0x7f && ch != '"' ? (char)ch : '?';
            }
            rep[len] = '\0';
            return perr(err, errlen, PROTO_EBADREQ,
                        "parameters.%s: unknown parameter", rep);
        }
        fields[(*nfields)++] = (struct proto_field){v1keys[i], v};
    }
    return PROTO_OK;
}

int proto_v2_request_decode(const void *body, size_t len, size_t json_len,
                            const char *model, const struct proto_v2_opts *o,
                            struct proto_v2_request *r, char *err,
                            size_t errlen)
{
    static const char *const keys[4] = {"id", "parameters", "inputs",
                                        "outputs"};
    memset(r, 0, sizeof *r);
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (json_len > len)
        return perr(err, errlen, PROTO_EBADREQ,
                    "Inference-Header-Content-Length: %zu is past the body's "
                    "%zu bytes",
                    json_len, len);
    if (strlen(model) > PROTO_V2_NAME_MAX)
        return perr(err, errlen, PROTO_EBADREQ, "model: name too long");
    strcpy(r->model, model);
    strcpy(r->out_name, "out");
    struct v2dec d = {body,  len,   json_len, NULL, o,
                      {{0}}, {{0}}, 0,        err,  errlen};
    msgpack_object root;
    int rc = proto_tree_read(body, json_len, PROTO_JSON, &d.zone, &root, err,
                             errlen);
    if (rc != PROTO_OK)
        return rc;
    const msgpack_object *f[4];
    rc = fields_of(&root, "body", keys, 4, f, err, errlen);
    if (rc == PROTO_OK && f[0] != NULL) {
        rc = get_name(f[0], "id", r->v2_id, err, errlen);
        r->has_v2_id = rc == PROTO_OK && r->v2_id[0]; /* "" is no id */
    }
    if (rc == PROTO_OK && f[2] == NULL)
        rc = perr(err, errlen, PROTO_EBADREQ, "inputs: missing");
    if (rc == PROTO_OK && f[2]->type != MSGPACK_OBJECT_ARRAY)
        rc = perr(err, errlen, PROTO_EBADREQ,
                  "inputs: must be an array (got %s)", proto_type_name(f[2]));
    for (uint32_t i = 0; rc == PROTO_OK && i < f[2]->via.array.size; i++)
        rc = parse_input(&d, &f[2]->via.array.ptr[i], i);
    if (rc == PROTO_OK && d.at != len)
        rc = perr(err, errlen, PROTO_EBADREQ,
                  "body: %zu bytes after the last input's binary data",
                  len - d.at);
    if (rc == PROTO_OK && f[3] != NULL)
        rc = parse_outputs(&d, f[3], r);
    /* The /v1 fields: the method from the model, the parameters. */
    struct proto_field fields[MAX_FIELDS];
    size_t nfields = 0;
    msgpack_object method = {.type = MSGPACK_OBJECT_STR}, timeout_ms;
    method.via.str.ptr = r->model;
    method.via.str.size = (uint32_t)strlen(r->model);
    fields[nfields++] = (struct proto_field){"method", &method};
    if (rc == PROTO_OK && f[1] != NULL)
        rc = parse_params(&d, f[1], fields, &nfields, &timeout_ms, r);
    /* An output into shared memory: the region for q's size [B,H,Nq,D]. */
    struct shm_out so = {NULL};
    struct proto_out_alloc so_alloc = {shm_out_alloc, shm_out_release, &so};
    struct proto_v2_opts oo = o ? *o : (struct proto_v2_opts){{0}, NULL, NULL};
    if (rc == PROTO_OK && r->shm_out) {
        const struct proto_part *q = NULL;
        for (size_t i = 0; i < d.nparts; i++)
            if (!strcmp(d.parts[i].name, "q"))
                q = &d.parts[i];
        uint64_t bytes = 0;
        if (q && q->dtype >= 0 && q->rank == 4) {
            bytes = attn_dtype_size((enum attn_dtype)q->dtype);
            for (int k = 0; k < 4; k++)
                bytes = q->shape[k] && bytes <= UINT64_MAX / q->shape[k]
                            ? bytes * q->shape[k]
                            : 0;
        }
        if (bytes && r->out_shm.byte_size < bytes)
            rc = perr(err, errlen, PROTO_EBADREQ,
                      "outputs[0].parameters.shared_memory_byte_size: %" PRIu64
                      " bytes, the output needs %" PRIu64,
                      r->out_shm.byte_size, bytes);
        else if (bytes)
            rc = o->shm(o->shm_ctx, &r->out_shm, "outputs[0]", bytes, &so.ptr,
                        err, errlen);
        oo.base.out = &so_alloc;
    }
    if (rc == PROTO_OK)
        rc = proto_request_from_parts(d.parts, d.nparts, fields, nfields,
                                      PROTO_JSON, &oo.base, &r->req, err,
                                      errlen);
    msgpack_zone_free(d.zone);
    if (rc != PROTO_OK) {
        proto_request_release(&r->req);
        memset(r, 0, sizeof *r);
    }
    return rc;
}

void proto_v2_request_release(struct proto_v2_request *r)
{
    if (r != NULL)
        proto_request_release(&r->req);
}

int proto_v2_response_encode(const struct proto_v2_request *r,
                             const struct proto_stats *st, char **json,
                             size_t *json_len)
{
    const struct attn_problem *p = &r->req.prob;
    const char *method = attn_method_name(p->method);
    struct pbuf b = {0};
    *json = NULL;
    pbuf_puts(&b, "{\"model_name\":");
    pbuf_json_str(&b, r->model, strlen(r->model));
    pbuf_puts(&b, ",\"model_version\":\"1\"");
    if (r->has_v2_id) {
        pbuf_puts(&b, ",\"id\":");
        pbuf_json_str(&b, r->v2_id, strlen(r->v2_id));
    }
    pbuf_puts(&b, ",\"parameters\":{\"method\":");
    pbuf_json_str(&b, method ? method : "", method ? strlen(method) : 0);
    pbuf_puts(&b, ",\"backend\":");
    pbuf_json_str(&b, st->backend ? st->backend : "",
                  st->backend ? strlen(st->backend) : 0);
    pbuf_printf(&b,
                ",\"blocks_selected\":%" PRIu64 ",\"blocks_total\":%" PRIu64
                ",\"density\":",
                st->attn.blocks_selected, st->attn.blocks_total);
    pbuf_json_double(&b, st->attn.density);
    pbuf_printf(&b,
                ",\"queue_us\":%" PRIu64 ",\"compute_us\":%" PRIu64
                ",\"batch_requests\":%u",
                st->queue_us, st->compute_us, (unsigned)st->batch_requests);
    if (st->attn.est_rel_err >= 0.0) {
        pbuf_puts(&b, ",\"est_rel_err\":");
        pbuf_json_double(&b, st->attn.est_rel_err);
    }
    if (r->req.per_head_stats && r->req.heads) {
        /* a parameter's value is a scalar: the array as a JSON string */
        struct pbuf h = {0};
        proto_heads_json(&h, r->req.heads, (size_t)p->B * p->H);
        pbuf_puts(&b, ",\"heads\":");
        pbuf_json_str(&b, h.data ? h.data : "", h.len);
        b.failed |= h.failed;
        free(h.data);
    }
    pbuf_puts(&b, "}");
    size_t elems = (size_t)p->B * p->H * p->Nq * p->D;
    size_t bytes = elems * attn_dtype_size(p->dtype);
    pbuf_printf(&b,
                ",\"outputs\":[{\"name\":\"out\",\"datatype\":\"%s\","
                "\"shape\":[%" PRIu32 ",%" PRIu32 ",%" PRIu32 ",%" PRIu32 "]",
                proto_v2_datatype(p->dtype), p->B, p->H, p->Nq, p->D);
    if (r->shm_out) {
        /* Nothing more: the client knows where it asked for the output
         * (Triton's clients read "parameters" of an output as binary
         * data's). */
        pbuf_puts(&b, "}]}");
    } else if (r->binary_out) {
        pbuf_printf(&b, ",\"parameters\":{\"binary_data_size\":%zu}}]}", bytes);
    } else {
        pbuf_puts(&b, ",\"data\":[");
        if (elems && proto_mul_size(elems, 12, &bytes) == 0)
            pbuf_reserve(&b, bytes);
        for (size_t i = 0; i < elems && !b.failed; i++) {
            float f;
            if (p->dtype == ATTN_F32) {
                memcpy(&f, (const char *)p->out + i * 4, 4);
            } else {
                uint16_t h;
                memcpy(&h, (const char *)p->out + i * 2, 2);
                f = p->dtype == ATTN_F16 ? attn_f16_to_f32(h)
                                         : attn_bf16_to_f32(h);
            }
            if (i)
                pbuf_put(&b, ",", 1);
            pbuf_json_float(&b, f);
        }
        pbuf_puts(&b, "]}]}");
    }
    pbuf_put(&b, "", 1);
    if (b.failed) {
        free(b.data);
        return PROTO_ENOMEM;
    }
    *json = b.data;
    *json_len = b.len - 1;
    return PROTO_OK;
}

int proto_v2_shm_register_decode(const void *body, size_t len, char *key,
                                 size_t keylen, struct proto_v2_shm *ref,
                                 char *err, size_t errlen)
{
    static const char *const keys[3] = {"key", "offset", "byte_size"};
    memset(ref, 0, sizeof *ref);
    msgpack_zone *zone = NULL;
    msgpack_object root;
    int rc = proto_tree_read(body, len, PROTO_JSON, &zone, &root, err, errlen);
    if (rc != PROTO_OK)
        return rc;
    const msgpack_object *f[3];
    rc = fields_of(&root, "body", keys, 3, f, err, errlen);
    if (rc == PROTO_OK && (f[0] == NULL || f[2] == NULL))
        rc = perr(err, errlen, PROTO_EBADREQ, "%s: missing",
                  f[0] == NULL ? "key" : "byte_size");
    if (rc == PROTO_OK &&
        (f[0]->type != MSGPACK_OBJECT_STR || f[0]->via.str.size >= keylen))
        rc = perr(err, errlen, PROTO_EBADREQ,
                  "key: must be a string of at most %zu bytes", keylen - 1);
    if (rc == PROTO_OK)
        rc = get_u64(f[2], "byte_size", &ref->byte_size, err, errlen);
    if (rc == PROTO_OK && f[1] != NULL)
        rc = get_u64(f[1], "offset", &ref->offset, err, errlen);
    if (rc == PROTO_OK) {
        memcpy(key, f[0]->via.str.ptr, f[0]->via.str.size);
        key[f[0]->via.str.size] = '\0';
    }
    msgpack_zone_free(zone);
    return rc;
}

char *proto_v2_error_body(const char *message, size_t *len)
{
    struct pbuf b = {0};
    if (message == NULL)
        message = "";
    pbuf_puts(&b, "{\"error\":");
    pbuf_json_str(&b, message, strlen(message));
    pbuf_put(&b, "}", 2);
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    if (len != NULL)
        *len = b.len - 1;
    return b.data;
}
