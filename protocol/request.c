/*
 * request.c - decodes and validates the body of POST /v1/attention into a
 * struct attn_problem (proto_request_decode).
 *
 * The body is first read into a msgpack_object tree (msgpack or JSON, see
 * internal.h), then checked field by field against the schema of
 * protocol/SPEC.md.  Every rejection names the field and what was wrong
 * (a shape that does not fit the others is shown next to the shape it
 * should have), because the message goes back to whoever wrote the
 * request.  Sizes are checked against the limits (413) before anything is
 * allocated, and all size arithmetic is overflow-checked.  Tensor data from
 * a msgpack body is used in place when it is aligned to its element size;
 * only misaligned data and JSON number arrays are copied.
 */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/internal.h"

enum rkey {
    K_Q, /* the tensors first, in the order of enum tkind */
    K_K,
    K_V,
    K_MASK,
    K_Q_MASK,
    K_K_APPEND,
    K_V_APPEND,
    K_MASK_APPEND,
    K_KV,
    K_CAUSAL,
    K_METHOD,
    K_BLOCK_PER_ROW,
    K_NUM_BLOCKS,
    K_PRIOR_FIRST,
    K_PRIOR_DIAGONAL,
    K_SCALE,
    K_TIMEOUT_MS,
    K_ID,
    K_MIN_BLOCKS_PER_ROW,
    K_ERROR_SAMPLES,
    K_TARGET_ERROR,
    K_PER_HEAD_STATS,
    K_COUNT
};

static const char *const rkey_names[K_COUNT] = {
    "q",
    "k",
    "v",
    "mask",
    "q_mask",
    "k_append",
    "v_append",
    "mask_append",
    "kv",
    "causal",
    "method",
    "block_per_row",
    "num_blocks",
    "prior_first",
    "prior_diagonal",
    "scale",
    "timeout_ms",
    "id",
    "min_blocks_per_row",
    "error_samples",
    "target_error",
    "per_head_stats",
};

/* The tensors of a request, in the order of their keys, and where their
 * data goes in struct proto_request.owned (OWN_OUT: the answer's). */
enum tkind { T_Q, T_K, T_V, T_MASK, T_QMASK, T_KA, T_VA, T_MA, T_COUNT };
enum { OWN_OUT = T_COUNT };
_Static_assert(K_Q_MASK == (int)T_QMASK && K_MASK == (int)T_MASK &&
                   K_MASK_APPEND == (int)T_MA,
               "the tensor keys come first, in the order of enum tkind");
_Static_assert(OWN_OUT + 1 ==
                   sizeof((struct proto_request *)0)->owned / sizeof(void *),
               "one owned buffer per tensor and one for the answer");

/* What each tensor's shape must be: its rank and dimension names, which
 * messages use.  q and the output are [B, H, Nq, D], k and v [B, Hkv, Nk,
 * D], the key mask [B, Nk] and the query mask [B, Nq]. */
static const struct tshape {
    int rank;
    const char *dims[4];
    const char *text; /* "[B,H,Nq,D]" */
} tshapes[T_COUNT] = {
    {4, {"B", "H", "Nq", "D"}, "[B,H,Nq,D]"},
    {4, {"B", "Hkv", "Nk", "D"}, "[B,Hkv,Nk,D]"},
    {4, {"B", "Hkv", "Nk", "D"}, "[B,Hkv,Nk,D]"},
    {2, {"B", "Nk"}, "[B,Nk]"},
    {2, {"B", "Nq"}, "[B,Nq]"},
    {4, {"B", "Hkv", "n", "D"}, "[B,Hkv,n,D]"},
    {4, {"B", "Hkv", "n", "D"}, "[B,Hkv,n,D]"},
    {2, {"B", "n"}, "[B,n]"},
};

/* A tensor as found in the body, before it is checked against the others. */
struct tview {
    const char *name; /* "q", "k", "v", "mask", "q_mask", "k_append", ... */
    enum tkind kind;
    int dtype; /* enum attn_dtype, or -1 for u8 */
    int rank;
    uint64_t shape[4];
    uint64_t elements; /* product of shape */
    const msgpack_object *data;
};

static int is_mask(enum tkind kind)
{
    return kind == T_MASK || kind == T_QMASK || kind == T_MA;
}

/* A printable, bounded rendering of a key for messages: non-printable
 * bytes become '?', long keys are cut. */
static void key_repr(const msgpack_object *k, char *out, size_t n)
{
    size_t len = k->via.str.size, i, o = 0;
    for (i = 0; i < len && o + 4 < n && i < 40; i++) {
        unsigned char c = (unsigned char)k->via.str.ptr[i];
        out[o++] = (c >= 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
    }
    if (i < len && o + 4 < n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/*
 * Walks a map whose keys must all be among `names`: fills vals[i] with the
 * value of names[i] (NULL when absent).  Rejects non-maps, non-string keys,
 * unknown and duplicate keys; `where` prefixes messages ("" for the body).
 */
static int map_fields(const msgpack_object *m, const char *where,
                      const char *const *names, size_t count,
                      const msgpack_object **vals, char *err, size_t errlen)
{
    const char *w = *where ? where : "body";
    if (m->type != MSGPACK_OBJECT_MAP)
        return perr(err, errlen, PROTO_EBADREQ, "%s: must be a map (got %s)", w,
                    proto_type_name(m));
    for (size_t i = 0; i < count; i++)
        vals[i] = NULL;
    for (uint32_t e = 0; e < m->via.map.size; e++) {
        const msgpack_object *key = &m->via.map.ptr[e].key;
        if (key->type != MSGPACK_OBJECT_STR)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s: key #%" PRIu32 " must be a string (got %s)", w, e,
                        proto_type_name(key));
        size_t i;
        for (i = 0; i < count; i++)
            if (proto_str_eq(key, names[i]))
                break;
        char rep[64];
        if (i == count) {
            key_repr(key, rep, sizeof rep);
            return perr(err, errlen, PROTO_EBADREQ, "%s%s%s: unknown key",
                        where, *where ? "." : "", rep);
        }
        if (vals[i] != NULL)
            return perr(err, errlen, PROTO_EBADREQ, "%s%s%s: duplicate key",
                        where, *where ? "." : "", names[i]);
        vals[i] = &m->via.map.ptr[e].val;
    }
    return PROTO_OK;
}

static int parse_dtype(const msgpack_object *o, const char *name, int mask,
                       int *dtype, char *err, size_t errlen)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s.dtype: must be a string (got %s)", name,
                    proto_type_name(o));
    if (mask) {
        if (proto_str_eq(o, "u8")) {
            *dtype = -1;
            return PROTO_OK;
        }
    } else {
        for (int d = ATTN_F32; d <= ATTN_BF16; d++) {
            if (proto_str_eq(o, attn_dtype_name((enum attn_dtype)d))) {
                *dtype = d;
                return PROTO_OK;
            }
        }
    }
    char rep[64];
    key_repr(o, rep, sizeof rep);
    return perr(err, errlen, PROTO_EBADREQ, "%s.dtype: must be %s (got \"%s\")",
                name, mask ? "\"u8\"" : "\"f32\", \"f16\" or \"bf16\"", rep);
}

/* Reads the map of one tensor: dtype, shape (rank and positive integer
 * dimensions), and where its data is; sizes are checked later. */
static int parse_tensor(const msgpack_object *o, enum tkind kind,
                        enum proto_format fmt, struct tview *t, char *err,
                        size_t errlen)
{
    static const char *const tkeys[3] = {"dtype", "shape", "data"};
    const char *name = rkey_names[kind];
    const struct tshape *ts = &tshapes[kind];
    const msgpack_object *f[3];
    int rc = map_fields(o, name, tkeys, 3, f, err, errlen);
    if (rc != PROTO_OK)
        return rc;
    for (int i = 0; i < 3; i++)
        if (f[i] == NULL)
            return perr(err, errlen, PROTO_EBADREQ, "%s.%s: missing", name,
                        tkeys[i]);
    t->name = name;
    t->kind = kind;
    rc = parse_dtype(f[0], name, is_mask(kind), &t->dtype, err, errlen);
    if (rc != PROTO_OK)
        return rc;

    if (f[1]->type != MSGPACK_OBJECT_ARRAY)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s.shape: must be an array %s (got %s)", name, ts->text,
                    proto_type_name(f[1]));
    if (f[1]->via.array.size != (uint32_t)ts->rank)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s.shape: must have %d dimensions %s (got %" PRIu32 ")",
                    name, ts->rank, ts->text, f[1]->via.array.size);
    t->rank = ts->rank;
    for (int i = 0; i < ts->rank; i++) {
        const msgpack_object *d = &f[1]->via.array.ptr[i];
        const char *dn = ts->dims[i];
        if (d->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.shape[%d]: %s must be >= 1 (got %" PRId64 ")", name,
                        i, dn, d->via.i64);
        if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.shape[%d]: %s must be an integer (got %s)", name, i,
                        dn, proto_type_name(d));
        if (d->via.u64 == 0)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.shape[%d]: %s must be >= 1 (got 0)", name, i, dn);
        t->shape[i] = d->via.u64;
    }

    int want_bin = fmt == PROTO_MSGPACK;
    if (f[2]->type != (want_bin ? MSGPACK_OBJECT_BIN : MSGPACK_OBJECT_ARRAY))
        return perr(err, errlen, PROTO_EBADREQ, "%s.data: must be %s (got %s)",
                    name, want_bin ? "binary data" : "an array of numbers",
                    proto_type_name(f[2]));
    t->data = f[2];
    return PROTO_OK;
}

/* Checks a tensor's dimensions and element count against the limits (413)
 * and against 32-bit and 64-bit arithmetic: max_tokens bounds Nq and Nk
 * alike, max_elements every tensor (q and the output, k and v). */
static int check_size(struct tview *t, const struct proto_limits *lim,
                      char *err, size_t errlen)
{
    const char *const *dn = tshapes[t->kind].dims;
    for (int i = 0; i < t->rank; i++) {
        uint64_t v = t->shape[i], max;
        const char *d = dn[i];
        if (d[0] == 'B')
            max = lim->max_batch;
        else if (d[0] == 'H')
            max = lim->max_heads;
        else if (d[0] == 'N' || d[0] == 'n')
            max = lim->max_tokens;
        else
            max = lim->max_head_dim && lim->max_head_dim < ATTN_MAX_HEAD_DIM
                      ? lim->max_head_dim
                      : ATTN_MAX_HEAD_DIM; /* what the library computes */
        if (max != 0 && v > max)
            return perr(err, errlen, PROTO_ETOOBIG,
                        "%s.shape[%d]: %s = %" PRIu64
                        " exceeds the limit of %" PRIu64,
                        t->name, i, d, v, max);
        if (v > UINT32_MAX)
            return perr(err, errlen, PROTO_ETOOBIG,
                        "%s.shape[%d]: %s = %" PRIu64
                        " exceeds the largest supported size %" PRIu32,
                        t->name, i, d, v, UINT32_MAX);
    }
    uint64_t n = 1;
    for (int i = 0; i < t->rank; i++) {
        uint64_t v = t->shape[i];
        if (n > UINT64_MAX / v)
            return perr(err, errlen, PROTO_ETOOBIG,
                        "%s.shape: the element count overflows 64 bits",
                        t->name);
        n *= v;
    }
    if (lim->max_elements != 0 && n > lim->max_elements)
        return perr(err, errlen, PROTO_ETOOBIG,
                    "%s.shape: %" PRIu64
                    " elements exceed the limit of %" PRIu64,
                    t->name, n, lim->max_elements);
    t->elements = n;
    return PROTO_OK;
}

/* Writes a shape as "[1,2,40,8]" into buf; `free_dims` (a bit per
 * dimension) writes those as their names instead ("[1,Hkv,Nk,8]"). */
static void shape_text(const uint64_t *shape, int rank, const char *const *dims,
                       unsigned free_dims, char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < rank && o < n; i++) {
        int w = (free_dims >> i) & 1
                    ? snprintf(buf + o, n - o, "%s%s", i ? "," : "[", dims[i])
                    : snprintf(buf + o, n - o, "%s%" PRIu64, i ? "," : "[",
                               shape[i]);
        o += w > 0 ? (size_t)w : 0;
    }
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

/*
 * Checks that tensor t has the shape `want` (the dimensions whose bit is
 * set in free_dims may be anything), which comes from tensor `from`; the
 * message shows both shapes with t's dimension names:
 *   "q_mask: shape [1,7] does not match q's [B,Nq] = [1,8]".
 * `hint` (or NULL) is added in parentheses.
 */
static int same_shape(const struct tview *t, const uint64_t *want,
                      unsigned free_dims, const char *from, const char *hint,
                      char *err, size_t errlen)
{
    int same = 1;
    for (int i = 0; i < t->rank; i++)
        same = same && (((free_dims >> i) & 1) || t->shape[i] == want[i]);
    if (same)
        return PROTO_OK;
    const struct tshape *ts = &tshapes[t->kind];
    char got[96], exp[96];
    shape_text(t->shape, t->rank, ts->dims, 0, got, sizeof got);
    shape_text(want, t->rank, ts->dims, free_dims, exp, sizeof exp);
    return perr(err, errlen, PROTO_EBADREQ,
                "%s: shape %s does not match %s's %s = %s%s%s%s", t->name, got,
                from, ts->text, exp, hint ? " (" : "", hint ? hint : "",
                hint ? ")" : "");
}

/* Checks the data length and makes the tensor's data available as an
 * aligned buffer: in place when possible, else an owned copy in *owned. */
static int load_data(const struct tview *t, size_t esize, const void **ptr,
                     void **owned, char *err, size_t errlen)
{
    const msgpack_object *d = t->data;
    *owned = NULL;
    if (t->elements > SIZE_MAX / esize)
        return perr(err, errlen, PROTO_ETOOBIG,
                    "%s.data: too large for this machine", t->name);
    size_t bytes = (size_t)t->elements * esize;
    const char *dname = t->dtype < 0 ? "u8" : attn_dtype_name(t->dtype);

    if (d->type == MSGPACK_OBJECT_BIN) {
        if (d->via.bin.size != bytes)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.data: length %" PRIu32
                        " bytes does not match the shape (%" PRIu64
                        " %s elements = %zu bytes)",
                        t->name, d->via.bin.size, t->elements, dname, bytes);
        if (proto_bin_aligned(d, esize, ptr, owned) != PROTO_OK)
            return perr(err, errlen, PROTO_ENOMEM, "%s.data: out of memory",
                        t->name);
        return PROTO_OK;
    }

    /* A JSON array of numbers, converted to the dtype element by element. */
    if (d->via.array.size != t->elements)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s.data: %" PRIu32
                    " numbers do not match the shape (%" PRIu64 " expected)",
                    t->name, d->via.array.size, t->elements);
    unsigned char *buf = proto_aligned_alloc(bytes);
    if (buf == NULL)
        return perr(err, errlen, PROTO_ENOMEM, "%s.data: out of memory",
                    t->name);
    for (uint32_t i = 0; i < d->via.array.size; i++) {
        const msgpack_object *e = &d->via.array.ptr[i];
        double x;
        if (proto_get_number(e, &x) != 0) {
            free(buf);
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.data[%" PRIu32 "]: must be a number (got %s)",
                        t->name, i, proto_type_name(e));
        }
        if (t->dtype < 0) {
            if (x != 0 && x != 1) {
                free(buf);
                return perr(err, errlen, PROTO_EBADREQ,
                            "%s.data[%" PRIu32 "]: must be 0 or 1 (got %g)",
                            t->name, i, x);
            }
            buf[i] = (unsigned char)x;
            continue;
        }
        float f = (float)x;
        int ok = fabs(x) <= FLT_MAX;
        if (t->dtype == ATTN_F32) {
            memcpy(buf + (size_t)i * 4, &f, 4);
        } else {
            uint16_t h =
                t->dtype == ATTN_F16 ? attn_f32_to_f16(f) : attn_f32_to_bf16(f);
            float back =
                t->dtype == ATTN_F16 ? attn_f16_to_f32(h) : attn_bf16_to_f32(h);
            ok = ok && isfinite(back);
            memcpy(buf + (size_t)i * 2, &h, 2);
        }
        if (!ok) {
            free(buf);
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.data[%" PRIu32 "]: %g is out of the range of %s",
                        t->name, i, x, dname);
        }
    }
    *ptr = *owned = buf;
    return PROTO_OK;
}

/* Reads an integer parameter within [lo, hi]. */
static int get_param(const msgpack_object *o, const char *name, int64_t lo,
                     uint64_t hi, uint64_t *out, char *err, size_t errlen)
{
    int64_t v;
    int too_big;
    if (proto_get_int(o, &v, &too_big) != 0) {
        if (too_big)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s: must be at most %" PRIu64 " (got %" PRIu64 ")",
                        name, hi, o->via.u64);
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s: must be an integer (got %s)", name,
                    proto_type_name(o));
    }
    if (v < lo)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s: must be >= %" PRId64 " (got %" PRId64 ")", name, lo,
                    v);
    if ((uint64_t)v > hi)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s: must be at most %" PRIu64 " (got %" PRId64 ")", name,
                    hi, v);
    *out = (uint64_t)v;
    return PROTO_OK;
}

static int parse_scalars(const msgpack_object *const *f,
                         struct proto_request *req, char *err, size_t errlen)
{
    struct attn_problem *p = &req->prob;

    p->method = ATTN_MRA2;
    if (f[K_METHOD] != NULL) {
        const msgpack_object *m = f[K_METHOD];
        if (m->type != MSGPACK_OBJECT_STR)
            return perr(err, errlen, PROTO_EBADREQ,
                        "method: must be a string (got %s)",
                        proto_type_name(m));
        int found = 0;
        for (int i = ATTN_EXACT; i <= ATTN_MRA2_SPARSE; i++) {
            if (proto_str_eq(m, attn_method_name((enum attn_method)i))) {
                p->method = (enum attn_method)i;
                found = 1;
            }
        }
        if (!found) {
            char rep[64];
            key_repr(m, rep, sizeof rep);
            return perr(err, errlen, PROTO_EBADREQ,
                        "method: must be \"mra2\", \"mra2_sparse\" or "
                        "\"exact\" (got \"%s\")",
                        rep);
        }
    }
    /* The integer parameters, checked in this order, and their ranges. */
    static const struct {
        enum rkey key;
        int64_t lo;
        uint64_t hi;
    } ints[] = {
        {K_BLOCK_PER_ROW, 1, UINT32_MAX},
        {K_NUM_BLOCKS, 1, INT64_MAX},
        {K_PRIOR_FIRST, 0, UINT32_MAX},
        {K_PRIOR_DIAGONAL, 0, UINT32_MAX},
        {K_TIMEOUT_MS, 1, INT64_MAX},
        {K_MIN_BLOCKS_PER_ROW, 0, UINT32_MAX},
        {K_ERROR_SAMPLES, 0, ATTN_MAX_ERROR_SAMPLES},
    };
    uint64_t iv[K_COUNT] = {0}; /* 0 when absent, as req was zeroed */
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        enum rkey k = ints[i].key;
        if (f[k] == NULL)
            continue;
        int rc = get_param(f[k], rkey_names[k], ints[i].lo, ints[i].hi, &iv[k],
                           err, errlen);
        if (rc != PROTO_OK)
            return rc;
    }
    p->block_per_row = (uint32_t)iv[K_BLOCK_PER_ROW];
    p->num_blocks = iv[K_NUM_BLOCKS];
    p->prior_first = (uint32_t)iv[K_PRIOR_FIRST];
    p->prior_diagonal = (uint32_t)iv[K_PRIOR_DIAGONAL];
    req->timeout_ms = iv[K_TIMEOUT_MS];
    p->min_blocks_per_row = (uint32_t)iv[K_MIN_BLOCKS_PER_ROW];
    p->error_samples = (uint32_t)iv[K_ERROR_SAMPLES];
    if (f[K_TARGET_ERROR] != NULL) {
        const msgpack_object *t = f[K_TARGET_ERROR];
        double d;
        if (proto_get_number(t, &d) != 0)
            return perr(err, errlen, PROTO_EBADREQ,
                        "target_error: must be a number (got %s)",
                        proto_type_name(t));
        if (!isfinite(d) || !(d > 0) || d > FLT_MAX || (float)d <= 0.0f)
            return perr(err, errlen, PROTO_EBADREQ,
                        "target_error: must be a finite number > 0 (got %g)",
                        d);
        p->target_error = (float)d;
    }
    if (f[K_PER_HEAD_STATS] != NULL) {
        const msgpack_object *c = f[K_PER_HEAD_STATS];
        if (c->type != MSGPACK_OBJECT_BOOLEAN)
            return perr(err, errlen, PROTO_EBADREQ,
                        "per_head_stats: must be a boolean, true or false "
                        "(got %s)",
                        proto_type_name(c));
        req->per_head_stats = c->via.boolean ? 1 : 0;
    }
    if (f[K_SCALE] != NULL) {
        const msgpack_object *s = f[K_SCALE];
        double d;
        if (proto_get_number(s, &d) != 0)
            return perr(err, errlen, PROTO_EBADREQ,
                        "scale: must be a number (got %s)", proto_type_name(s));
        if (!isfinite(d) || !(d > 0))
            return perr(err, errlen, PROTO_EBADREQ,
                        "scale: must be a finite number > 0 (got %g)", d);
        float fs = (float)d;
        if (!isfinite(fs) || fs <= 0)
            return perr(err, errlen, PROTO_EBADREQ,
                        "scale: %g is outside the range of float32", d);
        p->scale = fs;
    }
    if (f[K_CAUSAL] != NULL) {
        const msgpack_object *c = f[K_CAUSAL];
        if (c->type != MSGPACK_OBJECT_BOOLEAN)
            return perr(err, errlen, PROTO_EBADREQ,
                        "causal: must be a boolean, true or false (got %s)",
                        proto_type_name(c));
        p->causal = c->via.boolean ? 1 : 0;
    }
    if (f[K_ID] != NULL) {
        const msgpack_object *id = f[K_ID];
        if (id->type != MSGPACK_OBJECT_STR)
            return perr(err, errlen, PROTO_EBADREQ,
                        "id: must be a string (got %s)", proto_type_name(id));
        if (id->via.str.size > PROTO_ID_MAX)
            return perr(err, errlen, PROTO_EBADREQ,
                        "id: must be at most %d bytes (got %" PRIu32 ")",
                        PROTO_ID_MAX, id->via.str.size);
        if (!proto_utf8_valid(id->via.str.ptr, id->via.str.size, 0))
            return perr(err, errlen, PROTO_EBADREQ,
                        "id: must be UTF-8 text without NUL bytes");
        memcpy(req->id, id->via.str.ptr, id->via.str.size);
        req->id[id->via.str.size] = '\0';
        req->has_id = 1;
    }
    return PROTO_OK;
}

/* Loads a u8 mask's data and checks that every byte is 0 or 1. */
static int load_mask(const struct tview *m, const uint8_t **out, void **owned,
                     char *err, size_t errlen)
{
    const void *mp;
    int rc = load_data(m, 1, &mp, owned, err, errlen);
    if (rc != PROTO_OK)
        return rc;
    const uint8_t *mb = mp;
    for (uint64_t i = 0; i < m->elements; i++)
        if (mb[i] > 1)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.data[%" PRIu64 "]: must be 0 or 1 (got %u)",
                        m->name, i, mb[i]);
    *out = mb;
    return PROTO_OK;
}

/* Allocates the answer's buffer [B, H, Nq, D] (q's size). */
static int alloc_out(const struct tview *q, struct proto_request *req,
                     char *err, size_t errlen)
{
    size_t out_bytes = (size_t)q->elements * attn_dtype_size(req->prob.dtype);
    void *out = req->out_alloc.alloc
                    ? req->out_alloc.alloc(out_bytes, req->out_alloc.ctx)
                    : proto_aligned_alloc(out_bytes);
    if (out == NULL)
        return perr(err, errlen, PROTO_ENOMEM, "out: out of memory");
    req->owned[OWN_OUT] = req->prob.out = out;
    return PROTO_OK;
}

/*
 * A request on a session (req->kv): its keys and values are the session's,
 * so k, v and mask are refused; k_append and v_append (both or neither,
 * [B,Hkv,n,D] with q's B, D and dtype) and mask_append ([B,n]) carry the
 * new tokens.  What the session holds (its Hkv, Nk, dtype) is checked by
 * the caller, who fills prob.kv and prob.Nk.
 */
static int build_session_problem(struct tview *t, unsigned have,
                                 struct proto_request *req, char *err,
                                 size_t errlen)
{
    struct tview *q = &t[T_Q], *ka = &t[T_KA], *va = &t[T_VA];
    struct tview *ma = &t[T_MA], *qm = &t[T_QMASK];
    struct attn_problem *p = &req->prob;
    int rc;
    static const enum tkind refused[3] = {T_K, T_V, T_MASK};
    for (int i = 0; i < 3; i++)
        if ((have >> refused[i]) & 1)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s: not with kv (the session holds the keys; send new "
                        "tokens as k_append, v_append, mask_append)",
                        rkey_names[refused[i]]);
    int has_ka = (have >> T_KA) & 1, has_va = (have >> T_VA) & 1;
    if (has_ka != has_va)
        return perr(err, errlen, PROTO_EBADREQ,
                    "%s: missing (k_append and "
                    "v_append go together)",
                    has_ka ? "v_append" : "k_append");
    if (((have >> T_MA) & 1) && !has_ka)
        return perr(err, errlen, PROTO_EBADREQ,
                    "mask_append: only with k_append and v_append");
    p->dtype = (enum attn_dtype)q->dtype;
    p->B = (uint32_t)q->shape[0];
    p->H = (uint32_t)q->shape[1];
    p->Nq = (uint32_t)q->shape[2];
    p->D = (uint32_t)q->shape[3];
    if (has_ka) {
        const uint64_t kwant[4] = {q->shape[0], 0, 0, q->shape[3]};
        if ((rc = same_shape(ka, kwant, 6u, "q", NULL, err, errlen)) != 0 ||
            (rc = same_shape(va, ka->shape, 0, "k_append", NULL, err,
                             errlen)) != 0)
            return rc;
        if (ka->dtype != q->dtype || va->dtype != q->dtype)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.dtype: must match q.dtype (%s)",
                        ka->dtype != q->dtype ? "k_append" : "v_append",
                        attn_dtype_name(q->dtype));
        if ((have >> T_MA) & 1) {
            const uint64_t mwant[2] = {q->shape[0], ka->shape[2]};
            if ((rc = same_shape(ma, mwant, 0, "k_append", NULL, err,
                                 errlen)) != 0)
                return rc;
        }
        p->Hkv = (uint32_t)ka->shape[1];
        p->append.n = (uint32_t)ka->shape[2];
    }
    if ((have >> T_QMASK) & 1) {
        const uint64_t qmwant[2] = {q->shape[0], q->shape[2]};
        if ((rc = same_shape(qm, qmwant, 0, "q", NULL, err, errlen)) != 0)
            return rc;
    }
    size_t es = attn_dtype_size(p->dtype);
    if ((rc = load_data(q, es, &p->q, &req->owned[T_Q], err, errlen)) != 0)
        return rc;
    if (has_ka && ((rc = load_data(ka, es, &p->append.k, &req->owned[T_KA], err,
                                   errlen)) != 0 ||
                   (rc = load_data(va, es, &p->append.v, &req->owned[T_VA], err,
                                   errlen)) != 0))
        return rc;
    if (((have >> T_MA) & 1) &&
        (rc = load_mask(ma, &p->append.mask, &req->owned[T_MA], err, errlen)) !=
            0)
        return rc;
    if (((have >> T_QMASK) & 1) &&
        (rc = load_mask(qm, &p->q_mask, &req->owned[T_QMASK], err, errlen)) !=
            0)
        return rc;
    return alloc_out(q, req, err, errlen);
}

/*
 * Checks the tensors against each other, then loads their data.  `have`
 * has a bit per enum tkind for the tensors the body holds.  q fixes B, H,
 * Nq and D; k fixes Hkv and Nk; every other shape follows from those two.
 */
static int build_problem(struct tview *t, unsigned have,
                         const struct proto_limits *lim,
                         struct proto_request *req, char *err, size_t errlen)
{
    struct tview *q = &t[T_Q], *k = &t[T_K], *v = &t[T_V];
    struct tview *m = &t[T_MASK], *qm = &t[T_QMASK];
    struct attn_problem *p = &req->prob;
    int rc;

    for (int i = 0; i < T_COUNT; i++)
        if ((have >> i) & 1)
            if ((rc = check_size(&t[i], lim, err, errlen)) != PROTO_OK)
                return rc;
    if (req->has_kv)
        return build_session_problem(t, have, req, err, errlen);
    for (int i = T_KA; i <= T_MA; i++)
        if ((have >> i) & 1)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s: only with kv (a session to append to)",
                        rkey_names[i]);
    /* k: B and D of q (bits 1 and 2 free: Hkv and Nk); v: k's shape. */
    const uint64_t kwant[4] = {q->shape[0], 0, 0, q->shape[3]};
    if ((rc = same_shape(k, kwant, 6u, "q", NULL, err, errlen)) != 0 ||
        (rc = same_shape(v, k->shape, 0, "k", NULL, err, errlen)) != 0)
        return rc;
    if (k->shape[1] > q->shape[1] || q->shape[1] % k->shape[1] != 0)
        return perr(err, errlen, PROTO_EBADREQ,
                    "k.shape[1]: Hkv = %" PRIu64
                    " must divide q.shape[1] H = %" PRIu64,
                    k->shape[1], q->shape[1]);
    if (k->dtype != q->dtype)
        return perr(err, errlen, PROTO_EBADREQ,
                    "k.dtype: must match q.dtype (%s vs %s)",
                    attn_dtype_name(k->dtype), attn_dtype_name(q->dtype));
    if (v->dtype != q->dtype)
        return perr(err, errlen, PROTO_EBADREQ,
                    "v.dtype: must match q.dtype (%s vs %s)",
                    attn_dtype_name(v->dtype), attn_dtype_name(q->dtype));
    /* The masks: the one over the keys and the one over the queries are
     * easy to swap when Nq != Nk, so the message says which is which. */
    uint64_t Nq = q->shape[2], Nk = k->shape[2];
    const uint64_t mwant[2] = {q->shape[0], Nk}, qmwant[2] = {q->shape[0], Nq};
    if ((have >> T_MASK) & 1) {
        const char *hint = m->shape[1] == Nq && Nq != Nk
                               ? "mask is over the keys; q_mask is over the "
                                 "queries"
                               : NULL;
        if ((rc = same_shape(m, mwant, 0, "k", hint, err, errlen)) != 0)
            return rc;
    }
    if ((have >> T_QMASK) & 1) {
        const char *hint = qm->shape[1] == Nk && Nq != Nk
                               ? "q_mask is over the queries; mask is over "
                                 "the keys"
                               : NULL;
        if ((rc = same_shape(qm, qmwant, 0, "q", hint, err, errlen)) != 0)
            return rc;
    }

    p->dtype = (enum attn_dtype)q->dtype;
    p->B = (uint32_t)q->shape[0];
    p->H = (uint32_t)q->shape[1];
    p->Hkv = (uint32_t)k->shape[1];
    p->Nq = (uint32_t)Nq;
    p->Nk = (uint32_t)Nk;
    p->D = (uint32_t)q->shape[3];
    size_t es = attn_dtype_size(p->dtype);

    if ((rc = load_data(q, es, &p->q, &req->owned[T_Q], err, errlen)) ||
        (rc = load_data(k, es, &p->k, &req->owned[T_K], err, errlen)) ||
        (rc = load_data(v, es, &p->v, &req->owned[T_V], err, errlen)))
        return rc;
    if (((have >> T_MASK) & 1) &&
        (rc = load_mask(m, &p->mask, &req->owned[T_MASK], err, errlen)) != 0)
        return rc;
    if (((have >> T_QMASK) & 1) &&
        (rc = load_mask(qm, &p->q_mask, &req->owned[T_QMASK], err, errlen)) !=
            0)
        return rc;
    /* The output [B, H, Nq, D], q's size: checked against size_t in
     * load_data. */
    return alloc_out(q, req, err, errlen);
}

int proto_request_decode(const void *body, size_t len, enum proto_format fmt,
                         const struct proto_limits *lim,
                         struct proto_request *req, char *err, size_t errlen)
{
    return proto_request_decode_with(body, len, fmt, lim, NULL, req, err,
                                     errlen);
}

int proto_request_decode_with(const void *body, size_t len,
                              enum proto_format fmt,
                              const struct proto_limits *lim,
                              const struct proto_out_alloc *oa,
                              struct proto_request *req, char *err,
                              size_t errlen)
{
    struct proto_decode_opts o = {lim, oa, NULL};
    return proto_request_decode_opts(body, len, fmt, &o, req, err, errlen);
}

int proto_kv_id_valid(const char *s, size_t n)
{
    if (n == 0 || n > PROTO_KV_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
              (c >= 'A' && c <= 'Z') || c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

/* The session a request names: "kv" in the body, or the path's (`path`,
 * then "kv" must be absent). */
static int parse_kv(const msgpack_object *o, const char *path,
                    struct proto_request *req, char *err, size_t errlen)
{
    if (path) {
        if (o != NULL)
            return perr(err, errlen, PROTO_EBADREQ,
                        "kv: not in the body when the path names the session");
        size_t n = strlen(path);
        if (!proto_kv_id_valid(path, n))
            return perr(err, errlen, PROTO_EBADREQ,
                        "kv: the path's session id is not valid");
        memcpy(req->kv, path, n + 1);
        req->has_kv = 1;
        return PROTO_OK;
    }
    if (o == NULL)
        return PROTO_OK;
    if (o->type != MSGPACK_OBJECT_STR)
        return perr(err, errlen, PROTO_EBADREQ,
                    "kv: must be a string, a session id (got %s)",
                    proto_type_name(o));
    if (!proto_kv_id_valid(o->via.str.ptr, o->via.str.size))
        return perr(err, errlen, PROTO_EBADREQ,
                    "kv: must be a session id: 1 to %d letters, digits, - or _",
                    PROTO_KV_ID_MAX);
    memcpy(req->kv, o->via.str.ptr, o->via.str.size);
    req->kv[o->via.str.size] = '\0';
    req->has_kv = 1;
    return PROTO_OK;
}

/* Sets up a request before decoding: zeroed, its format and answer
 * allocator; the limits to use in *lim. */
static void request_begin(enum proto_format fmt,
                          const struct proto_decode_opts *opts,
                          struct proto_request *req,
                          const struct proto_limits **lim,
                          struct proto_limits *dflt, char *err, size_t errlen)
{
    const struct proto_out_alloc *oa = opts ? opts->out : NULL;
    *lim = opts ? opts->lim : NULL;
    if (*lim == NULL) {
        proto_limits_default(dflt);
        *lim = dflt;
    }
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    memset(req, 0, sizeof *req);
    req->format = fmt;
    if (oa != NULL && oa->alloc != NULL && oa->release != NULL)
        req->out_alloc = *oa;
}

/*
 * The checks and loads shared by every envelope, once its fields are
 * found (f[k]: the value of key k, or NULL) and its tensors read (t[i] for
 * each bit i of `have`): the session, the required tensors, the scalars,
 * the problem, the library's own check.  On error the request is released
 * and zeroed.
 */
static int decode_fields(const msgpack_object *const *f, struct tview *t,
                         unsigned have, const struct proto_decode_opts *opts,
                         const struct proto_limits *lim,
                         struct proto_request *req, char *err, size_t errlen)
{
    int rc = parse_kv(f[K_KV], opts ? opts->kv : NULL, req, err, errlen);
    /* q always; k and v unless a session holds them */
    for (int i = T_Q; rc == PROTO_OK && i <= T_V; i++)
        if (!((have >> i) & 1) && (i == T_Q || !req->has_kv))
            rc = perr(err, errlen, PROTO_EBADREQ, "%s: missing", rkey_names[i]);
    if (rc == PROTO_OK)
        rc = parse_scalars(f, req, err, errlen);
    if (rc == PROTO_OK)
        rc = build_problem(t, have, lim, req, err, errlen);
    if (rc == PROTO_OK && req->per_head_stats) {
        /* the backend writes each head's statistics here */
        req->heads =
            calloc((size_t)req->prob.B * req->prob.H, sizeof *req->heads);
        if (req->heads == NULL)
            rc = perr(err, errlen, PROTO_ENOMEM, "out of memory");
        req->prob.head_stats = req->heads;
    }
    /* A session's problem is finished (and checked) by the caller. */
    if (rc == PROTO_OK && !req->has_kv) {
        /* The attention library's own check of the finished problem. */
        char msg[256];
        if (attn_problem_check(&req->prob, msg, sizeof msg) != ATTN_OK)
            rc = perr(err, errlen, PROTO_EBADREQ, "%s", msg);
    }
    if (rc != PROTO_OK) {
        proto_request_release(req);
        memset(req, 0, sizeof *req);
    }
    return rc;
}

int proto_request_decode_opts(const void *body, size_t len,
                              enum proto_format fmt,
                              const struct proto_decode_opts *opts,
                              struct proto_request *req, char *err,
                              size_t errlen)
{
    const struct proto_limits *lim;
    struct proto_limits dflt;
    request_begin(fmt, opts, req, &lim, &dflt, err, errlen);
    msgpack_zone *zone = NULL;
    msgpack_object root;
    int rc = proto_tree_read(body, len, fmt, &zone, &root, err, errlen);
    if (rc != PROTO_OK)
        return rc;

    const msgpack_object *f[K_COUNT];
    rc = map_fields(&root, "", rkey_names, K_COUNT, f, err, errlen);
    struct tview t[T_COUNT];
    unsigned have = 0;
    memset(t, 0, sizeof t);
    for (int i = 0; rc == PROTO_OK && i < T_COUNT; i++) {
        if (f[i] == NULL)
            continue;
        rc = parse_tensor(f[i], (enum tkind)i, fmt, &t[i], err, errlen);
        have |= 1u << i;
    }
    if (rc == PROTO_OK)
        rc = decode_fields(f, t, have, opts, lim, req, err, errlen);
    msgpack_zone_free(zone);
    return rc;
}

int proto_request_from_parts(const struct proto_part *tensors, size_t ntensors,
                             const struct proto_field *fields, size_t nfields,
                             enum proto_format fmt,
                             const struct proto_decode_opts *opts,
                             struct proto_request *req, char *err,
                             size_t errlen)
{
    const struct proto_limits *lim;
    struct proto_limits dflt;
    request_begin(fmt, opts, req, &lim, &dflt, err, errlen);
    const msgpack_object *f[K_COUNT] = {0};
    struct tview t[T_COUNT];
    unsigned have = 0;
    memset(t, 0, sizeof t);
    for (size_t i = 0; i < nfields; i++) {
        int k = -1;
        for (int j = T_COUNT; j < K_COUNT && k < 0; j++)
            if (!strcmp(fields[i].name, rkey_names[j]))
                k = j;
        if (k < 0)
            return perr(err, errlen, PROTO_EBADREQ, "%s: unknown parameter",
                        fields[i].name);
        if (f[k] != NULL)
            return perr(err, errlen, PROTO_EBADREQ, "%s: given twice",
                        fields[i].name);
        f[k] = fields[i].value;
    }
    for (size_t i = 0; i < ntensors; i++) {
        const struct proto_part *pt = &tensors[i];
        int k = -1;
        for (int j = 0; j < T_COUNT && k < 0; j++)
            if (!strcmp(pt->name, rkey_names[j]))
                k = j;
        if (k < 0)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s: unknown tensor (q, k, v, mask, q_mask, k_append, "
                        "v_append, mask_append)",
                        pt->name);
        if ((have >> k) & 1)
            return perr(err, errlen, PROTO_EBADREQ, "%s: given twice",
                        pt->name);
        const struct tshape *ts = &tshapes[k];
        struct tview *tv = &t[k];
        if ((is_mask((enum tkind)k) != 0) != (pt->dtype < 0))
            return perr(err, errlen, PROTO_EBADREQ, "%s: must be %s", pt->name,
                        is_mask((enum tkind)k) ? "a mask of 0/1 bytes"
                                               : "a float tensor");
        if (pt->rank != ts->rank)
            return perr(err, errlen, PROTO_EBADREQ,
                        "%s.shape: must have %d dimensions %s (got %d)",
                        pt->name, ts->rank, ts->text, pt->rank);
        for (int d = 0; d < ts->rank; d++)
            if (pt->shape[d] == 0)
                return perr(err, errlen, PROTO_EBADREQ,
                            "%s.shape[%d]: %s must be >= 1 (got 0)", pt->name,
                            d, ts->dims[d]);
        tv->name = rkey_names[k];
        tv->kind = (enum tkind)k;
        tv->dtype = pt->dtype;
        tv->rank = pt->rank;
        memcpy(tv->shape, pt->shape, sizeof tv->shape);
        tv->data = pt->data;
        have |= 1u << k;
    }
    return decode_fields(f, t, have, opts, lim, req, err, errlen);
}

/* ---- bodies of POST /v1/kv and POST /v1/kv/{id}/append ------------------ */

int proto_kv_body_decode(const void *body, size_t len, enum proto_format fmt,
                         const struct proto_limits *lim, int create,
                         struct proto_kv_body *kb, char *err, size_t errlen)
{
    /* The keys of a create body; an append body has the first three. */
    static const char *const names[4] = {"k", "v", "mask", "ttl_ms"};
    static const enum tkind kinds[3] = {T_K, T_V, T_MASK};
    struct proto_limits dflt;
    if (lim == NULL) {
        proto_limits_default(&dflt);
        lim = &dflt;
    }
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    memset(kb, 0, sizeof *kb);
    kb->format = fmt;
    msgpack_zone *zone = NULL;
    msgpack_object root;
    int rc = proto_tree_read(body, len, fmt, &zone, &root, err, errlen);
    if (rc != PROTO_OK)
        return rc;
    const msgpack_object *f[4];
    struct tview t[3];
    memset(t, 0, sizeof t);
    rc = map_fields(&root, "", names, create ? 4 : 3, f, err, errlen);
    if (!create)
        f[3] = NULL;
    for (int i = 0; rc == PROTO_OK && i < 2; i++)
        if (f[i] == NULL)
            rc = perr(err, errlen, PROTO_EBADREQ, "%s: missing", names[i]);
    for (int i = 0; rc == PROTO_OK && i < 3; i++)
        if (f[i] != NULL && (rc = parse_tensor(f[i], kinds[i], fmt, &t[i], err,
                                               errlen)) == PROTO_OK)
            rc = check_size(&t[i], lim, err, errlen);
    /* v: k's shape and dtype; mask: [B, N] of k's. */
    if (rc == PROTO_OK)
        rc = same_shape(&t[1], t[0].shape, 0, "k", NULL, err, errlen);
    if (rc == PROTO_OK && t[1].dtype != t[0].dtype)
        rc =
            perr(err, errlen, PROTO_EBADREQ, "v.dtype: must match k.dtype (%s)",
                 attn_dtype_name(t[0].dtype));
    if (rc == PROTO_OK && f[2] != NULL) {
        const uint64_t mwant[2] = {t[0].shape[0], t[0].shape[2]};
        rc = same_shape(&t[2], mwant, 0, "k", NULL, err, errlen);
    }
    if (rc == PROTO_OK && f[3] != NULL)
        rc = get_param(f[3], "ttl_ms", 1, INT64_MAX, &kb->ttl_ms, err, errlen);
    if (rc == PROTO_OK) {
        kb->shape.dtype = (enum attn_dtype)t[0].dtype;
        kb->shape.B = (uint32_t)t[0].shape[0];
        kb->shape.Hkv = (uint32_t)t[0].shape[1];
        kb->shape.D = (uint32_t)t[0].shape[3];
        kb->tokens.n = (uint32_t)t[0].shape[2];
        size_t es = attn_dtype_size(kb->shape.dtype);
        rc = load_data(&t[0], es, &kb->tokens.k, &kb->owned[0], err, errlen);
        if (rc == PROTO_OK)
            rc =
                load_data(&t[1], es, &kb->tokens.v, &kb->owned[1], err, errlen);
        if (rc == PROTO_OK && f[2] != NULL)
            rc = load_mask(&t[2], &kb->tokens.mask, &kb->owned[2], err, errlen);
    }
    msgpack_zone_free(zone);
    if (rc != PROTO_OK) {
        proto_kv_body_release(kb);
        memset(kb, 0, sizeof *kb);
    }
    return rc;
}

void proto_kv_body_release(struct proto_kv_body *kb)
{
    if (kb == NULL)
        return;
    for (size_t i = 0; i < sizeof kb->owned / sizeof kb->owned[0]; i++) {
        free(kb->owned[i]);
        kb->owned[i] = NULL;
    }
}

void proto_request_release(struct proto_request *req)
{
    if (req == NULL)
        return;
    if (req->owned[OWN_OUT] != NULL && req->out_alloc.release != NULL) {
        req->out_alloc.release(req->owned[OWN_OUT], req->out_alloc.ctx);
        req->owned[OWN_OUT] = NULL;
    }
    for (size_t i = 0; i < sizeof req->owned / sizeof req->owned[0]; i++) {
        free(req->owned[i]);
        req->owned[i] = NULL;
    }
    free(req->heads);
    req->heads = NULL;
    req->prob.head_stats = NULL;
}
