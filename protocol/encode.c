/*
 * encode.c - writes bodies: the 200 answer (proto_response_encode), a
 * request from a problem for clients and tools (proto_request_encode), and
 * the JSON error body (proto_error_body).
 *
 * msgpack goes through msgpack-c's packer into a struct pbuf that is sized
 * up front for the tensor bytes, so a large output is copied once.  JSON
 * writes tensor data as arrays of numbers with "%.9g" (enough digits for
 * float32 to read back exactly); JSON has no NaN or infinity, so those are
 * written as null, which protocol/SPEC.md documents.
 */
#include <stdlib.h>
#include <string.h>

#include "protocol/internal.h"

/* Bytes of a dense tensor with these dims, or -1 on overflow. */
static int tensor_bytes(const uint32_t *dims, int rank, size_t esize,
                        size_t *elems, size_t *bytes)
{
    size_t n = 1;
    for (int i = 0; i < rank; i++)
        if (proto_mul_size(n, dims[i], &n) != 0)
            return -1;
    *elems = n;
    return proto_mul_size(n, esize, bytes);
}

/* The value of element i of a float tensor, as a float. */
static float elem_f32(enum attn_dtype dt, const void *data, size_t i)
{
    float f;
    uint16_t h;
    if (dt == ATTN_F32) {
        memcpy(&f, (const char *)data + i * 4, 4);
        return f;
    }
    memcpy(&h, (const char *)data + i * 2, 2);
    return dt == ATTN_F16 ? attn_f16_to_f32(h) : attn_bf16_to_f32(h);
}

static void mp_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* Where a tensor's data should start, relative to the start of the body:
 * a receiver whose body buffer is this aligned (malloc gives 16) reads
 * every tensor in place. */
#define DATA_ALIGN 16

/* A string with `extra` bytes more than its shortest encoding: fixstr,
 * then str8 (+1), str16 (+2) or str32 (+4).  msgpack allows any of them,
 * and every reader accepts them. */
static void mp_str_wide(struct pbuf *b, const char *s, int extra)
{
    size_t n = strlen(s);
    unsigned char h[5];
    size_t hl;
    switch (extra) {
    case 1:
        h[0] = 0xd9, h[1] = (unsigned char)n, hl = 2;
        break;
    case 2:
        h[0] = 0xda, h[1] = 0, h[2] = (unsigned char)n, hl = 3;
        break;
    case 4:
        h[0] = 0xdb, h[1] = h[2] = h[3] = 0, h[4] = (unsigned char)n, hl = 5;
        break;
    default:
        h[0] = (unsigned char)(0xa0 | n), hl = 1;
    }
    pbuf_put(b, h, hl);
    pbuf_put(b, s, n);
}

/* A map (fix 0x80) or array (fix 0x90) header of n < 16 entries with
 * `extra` bytes more than fixmap/fixarray: 16-bit (+2) or 32-bit (+4). */
static void mp_container_wide(struct pbuf *b, unsigned fix, unsigned n,
                              int extra)
{
    unsigned char h[5] = {0};
    int is_map = fix == 0x80;
    if (extra == 2) {
        h[0] = is_map ? 0xde : 0xdc, h[2] = (unsigned char)n;
        pbuf_put(b, h, 3);
    } else if (extra == 4) {
        h[0] = is_map ? 0xdf : 0xdd, h[4] = (unsigned char)n;
        pbuf_put(b, h, 5);
    } else {
        h[0] = (unsigned char)(fix | n);
        pbuf_put(b, h, 1);
    }
}

/* Writes a tensor map's header up to the data payload with the given
 * widenings: [0] map, [1] array (0, 2, 4), [2..5] the four strings
 * (0, 1, 2, 4). */
static void mp_tensor_head(struct pbuf *b, msgpack_packer *pk,
                           const char *dname, const uint32_t *dims, int rank,
                           size_t bytes, const int *w)
{
    mp_container_wide(b, 0x80, 3, w[0]);
    mp_str_wide(b, "dtype", w[2]);
    mp_str_wide(b, dname, w[3]);
    mp_str_wide(b, "shape", w[4]);
    mp_container_wide(b, 0x90, (unsigned)rank, w[1]);
    for (int i = 0; i < rank; i++)
        msgpack_pack_uint32(pk, dims[i]);
    mp_str_wide(b, "data", w[5]);
    msgpack_pack_bin(pk, bytes);
}

/*
 * Writes one tensor {"dtype", "shape", "data"} as a map value.  dtype < 0
 * is a u8 mask, whose bytes are written as 0/1 (a problem's mask counts
 * any nonzero byte as a real token; the wire allows only 0 and 1).
 *
 * In msgpack the header is padded, by choosing wider but equally valid
 * encodings of its strings and containers, so that the data starts at a
 * multiple of DATA_ALIGN from the start of the body: the decoder then
 * reads it in place instead of copying it.
 */
static void put_tensor(struct pbuf *b, msgpack_packer *pk, int json, int dtype,
                       const uint32_t *dims, int rank, const void *data,
                       size_t elems, size_t bytes)
{
    const char *dname = dtype < 0 ? "u8" : attn_dtype_name(dtype);
    if (!json) {
        static const int sw[4] = {0, 1, 2, 4}, cw[3] = {0, 2, 4};
        int w[6] = {0};
        size_t start = b->len;
        mp_tensor_head(b, pk, dname, dims, rank, bytes, w);
        size_t pad = (DATA_ALIGN - b->len % DATA_ALIGN) % DATA_ALIGN;
        b->len = b->failed ? b->len : start;
        /* Find widenings that add up to pad: at most 3 * 4^4 tries. */
        for (int c = 0; pad > 0 && c < 3 * 256; c++) {
            int t[6] = {0,
                        cw[c / 256],
                        sw[c % 4],
                        sw[c / 4 % 4],
                        sw[c / 16 % 4],
                        sw[c / 64 % 4]};
            if ((size_t)(t[1] + t[2] + t[3] + t[4] + t[5]) == pad) {
                memcpy(w, t, sizeof w);
                break;
            }
        }
        if (!b->failed)
            mp_tensor_head(b, pk, dname, dims, rank, bytes, w);
        if (data == NULL) {
            /* The payload is left out: the caller sends it from where it
             * lies (proto_response_encode_split). */
        } else if (dtype >= 0) {
            pbuf_put(b, data, bytes);
        } else if (pbuf_reserve(b, bytes) == 0) {
            const uint8_t *m = data;
            for (size_t i = 0; i < bytes; i++)
                b->data[b->len + i] = m[i] != 0;
            b->len += bytes;
        }
        return;
    }
    pbuf_printf(b, "{\"dtype\":\"%s\",\"shape\":[", dname);
    for (int i = 0; i < rank; i++)
        pbuf_printf(b, "%s%u", i ? "," : "", (unsigned)dims[i]);
    pbuf_puts(b, "],\"data\":[");
    /* Reserve a typical width up front; pbuf grows if numbers are longer. */
    size_t guess;
    if (proto_mul_size(elems, dtype < 0 ? 2 : 12, &guess) == 0)
        pbuf_reserve(b, guess);
    for (size_t i = 0; i < elems && !b->failed; i++) {
        if (i)
            pbuf_put(b, ",", 1);
        if (dtype < 0)
            pbuf_put(b, ((const uint8_t *)data)[i] ? "1" : "0", 1);
        else
            pbuf_json_float(b, elem_f32(dtype, data, i));
    }
    pbuf_puts(b, "]}");
}

/* Hands the finished buffer to the caller, or reports the failure. */
static int finish(struct pbuf *b, int terminate, char **buf, size_t *len)
{
    if (terminate)
        pbuf_put(b, "", 1);
    if (b->failed) {
        free(b->data);
        return PROTO_ENOMEM;
    }
    *buf = b->data;
    if (len != NULL)
        *len = b->len - (terminate ? 1 : 0);
    return PROTO_OK;
}

/*
 * The msgpack answer: {"out": tensor, "id": ..., "stats": {...}}.  With
 * with_data 0 the output tensor's bytes are left out and *head_len is
 * where they would start; every other byte is the same.
 */
static void encode_answer_msgpack(struct pbuf *b,
                                  const struct proto_request *req,
                                  const struct proto_stats *st,
                                  const uint32_t *dims, size_t elems,
                                  size_t bytes, int with_data, size_t *head_len)
{
    const struct attn_problem *p = &req->prob;
    const char *method = attn_method_name(p->method);
    const char *backend = st->backend ? st->backend : "";
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, pbuf_msgpack_write);
    if (!with_data)
        pbuf_reserve(b, 1024);
    else if (bytes <= SIZE_MAX - 1024)
        pbuf_reserve(b, bytes + 1024);
    msgpack_pack_map(&pk, req->has_id ? 3 : 2);
    mp_str(&pk, "out");
    put_tensor(b, &pk, 0, p->dtype, dims, 4, with_data ? p->out : NULL, elems,
               bytes);
    *head_len = b->len;
    if (req->has_id) {
        mp_str(&pk, "id");
        mp_str(&pk, req->id);
    }
    mp_str(&pk, "stats");
    int est = st->attn.est_rel_err >= 0.0;
    int heads = req->per_head_stats && req->heads;
    msgpack_pack_map(&pk, 8 + est + heads);
    mp_str(&pk, "method");
    mp_str(&pk, method ? method : "");
    mp_str(&pk, "backend");
    mp_str(&pk, backend);
    mp_str(&pk, "blocks_selected");
    msgpack_pack_uint64(&pk, st->attn.blocks_selected);
    mp_str(&pk, "blocks_total");
    msgpack_pack_uint64(&pk, st->attn.blocks_total);
    mp_str(&pk, "density");
    msgpack_pack_double(&pk, st->attn.density);
    mp_str(&pk, "queue_us");
    msgpack_pack_uint64(&pk, st->queue_us);
    mp_str(&pk, "compute_us");
    msgpack_pack_uint64(&pk, st->compute_us);
    mp_str(&pk, "batch_requests");
    msgpack_pack_uint32(&pk, st->batch_requests);
    if (est) {
        mp_str(&pk, "est_rel_err");
        msgpack_pack_double(&pk, st->attn.est_rel_err);
    }
    if (heads) {
        size_t n = (size_t)p->B * p->H;
        mp_str(&pk, "heads");
        msgpack_pack_array(&pk, n);
        for (size_t h = 0; h < n; h++) {
            const struct attn_head_stats *hs = &req->heads[h];
            int he = hs->est_rel_err >= 0.0;
            msgpack_pack_map(&pk, 4 + he);
            mp_str(&pk, "budget");
            msgpack_pack_uint64(&pk, hs->budget);
            mp_str(&pk, "blocks_selected");
            msgpack_pack_uint64(&pk, hs->blocks_selected);
            mp_str(&pk, "blocks_total");
            msgpack_pack_uint64(&pk, hs->blocks_total);
            mp_str(&pk, "density");
            msgpack_pack_double(&pk, hs->density);
            if (he) {
                mp_str(&pk, "est_rel_err");
                msgpack_pack_double(&pk, hs->est_rel_err);
            }
        }
    }
}

void proto_heads_json(struct pbuf *b, const struct attn_head_stats *heads,
                      size_t n)
{
    pbuf_puts(b, "[");
    for (size_t h = 0; h < n; h++) {
        const struct attn_head_stats *hs = &heads[h];
        pbuf_printf(b,
                    "%s{\"budget\":%llu,\"blocks_selected\":%llu,"
                    "\"blocks_total\":%llu,\"density\":",
                    h ? "," : "", (unsigned long long)hs->budget,
                    (unsigned long long)hs->blocks_selected,
                    (unsigned long long)hs->blocks_total);
        pbuf_json_double(b, hs->density);
        if (hs->est_rel_err >= 0.0) {
            pbuf_puts(b, ",\"est_rel_err\":");
            pbuf_json_double(b, hs->est_rel_err);
        }
        pbuf_puts(b, "}");
    }
    pbuf_puts(b, "]");
}

int proto_response_encode_split(const struct proto_request *req,
                                const struct proto_stats *st, char **buf,
                                size_t *head_len, size_t *out_len,
                                size_t *tail_len)
{
    const struct attn_problem *p = &req->prob;
    uint32_t dims[4] = {p->B, p->H, p->Nq, p->D};
    size_t elems, bytes, head;
    *buf = NULL;
    if (req->format != PROTO_MSGPACK)
        return PROTO_EBADREQ;
    if (tensor_bytes(dims, 4, attn_dtype_size(p->dtype), &elems, &bytes) != 0)
        return PROTO_ENOMEM;
    struct pbuf b = {0};
    encode_answer_msgpack(&b, req, st, dims, elems, bytes, 0, &head);
    size_t len;
    int rc = finish(&b, 0, buf, &len);
    if (rc != PROTO_OK)
        return rc;
    *head_len = head;
    *out_len = bytes;
    *tail_len = len - head;
    return PROTO_OK;
}

int proto_response_encode(const struct proto_request *req,
                          const struct proto_stats *st, char **buf, size_t *len)
{
    const struct attn_problem *p = &req->prob;
    uint32_t dims[4] = {p->B, p->H, p->Nq, p->D};
    size_t elems, bytes, head;
    *buf = NULL;
    if (tensor_bytes(dims, 4, attn_dtype_size(p->dtype), &elems, &bytes) != 0)
        return PROTO_ENOMEM;
    const char *method = attn_method_name(p->method);
    const char *backend = st->backend ? st->backend : "";
    struct pbuf b = {0};

    if (req->format != PROTO_JSON) {
        encode_answer_msgpack(&b, req, st, dims, elems, bytes, 1, &head);
        return finish(&b, 0, buf, len);
    }

    pbuf_puts(&b, "{\"out\":");
    put_tensor(&b, NULL, 1, p->dtype, dims, 4, p->out, elems, bytes);
    if (req->has_id) {
        pbuf_puts(&b, ",\"id\":");
        pbuf_json_str(&b, req->id, strlen(req->id));
    }
    pbuf_puts(&b, ",\"stats\":{\"method\":");
    pbuf_json_str(&b, method ? method : "", method ? strlen(method) : 0);
    pbuf_puts(&b, ",\"backend\":");
    pbuf_json_str(&b, backend, strlen(backend));
    pbuf_printf(&b,
                ",\"blocks_selected\":%llu,\"blocks_total\":%llu,"
                "\"density\":",
                (unsigned long long)st->attn.blocks_selected,
                (unsigned long long)st->attn.blocks_total);
    pbuf_json_double(&b, st->attn.density);
    pbuf_printf(&b,
                ",\"queue_us\":%llu,\"compute_us\":%llu,"
                "\"batch_requests\":%u",
                (unsigned long long)st->queue_us,
                (unsigned long long)st->compute_us,
                (unsigned)st->batch_requests);
    if (st->attn.est_rel_err >= 0.0) {
        pbuf_puts(&b, ",\"est_rel_err\":");
        pbuf_json_double(&b, st->attn.est_rel_err);
    }
    if (req->per_head_stats && req->heads) {
        pbuf_puts(&b, ",\"heads\":");
        proto_heads_json(&b, req->heads, (size_t)p->B * p->H);
    }
    pbuf_puts(&b, "}}");
    return finish(&b, 0, buf, len);
}

/* Field names and values of the optional parameters, in wire order. */
struct param {
    const char *name;
    uint64_t value;
};

/* A tensor to write: its key, dtype (-1: u8 mask), dims and data. */
struct wtensor {
    const char *name;
    int dtype;
    int rank;
    uint32_t dims[4];
    const void *data;
    size_t elems, bytes;
};

/* Fills t, or returns -1 when its size overflows. */
static int wtensor_set(struct wtensor *t, const char *name, int dtype,
                       const void *data, int rank, uint32_t d0, uint32_t d1,
                       uint32_t d2, uint32_t d3)
{
    const uint32_t d[4] = {d0, d1, d2, d3};
    t->name = name;
    t->dtype = dtype;
    t->rank = rank;
    memcpy(t->dims, d, sizeof d);
    t->data = data;
    return tensor_bytes(t->dims, rank, dtype < 0 ? 1 : attn_dtype_size(dtype),
                        &t->elems, &t->bytes);
}

/* Writes the tensors of a body, first among its keys: in JSON right after
 * the opening brace, in msgpack as map entries (their bytes reserved up
 * front, so each is copied once). */
static void put_tensors(struct pbuf *b, msgpack_packer *pk, int json,
                        const struct wtensor *t, size_t n)
{
    if (!json) {
        size_t total = 1024;
        for (size_t i = 0; i < n; i++)
            if (__builtin_add_overflow(total, t[i].bytes, &total) ||
                __builtin_add_overflow(total, 64, &total))
                total = 0;
        if (total)
            pbuf_reserve(b, total);
    }
    for (size_t i = 0; i < n; i++) {
        if (json)
            pbuf_printf(b, "%s\"%s\":", i ? "," : "", t[i].name);
        else
            mp_str(pk, t[i].name);
        put_tensor(b, pk, json, t[i].dtype, t[i].dims, t[i].rank, t[i].data,
                   t[i].elems, t[i].bytes);
    }
}

int proto_request_encode(const struct attn_problem *p, enum proto_format fmt,
                         const char *id, uint64_t timeout_ms, char **buf,
                         size_t *len)
{
    struct proto_encode_opts o = {.id = id, .timeout_ms = timeout_ms};
    return proto_request_encode_opts(p, fmt, &o, buf, len);
}

int proto_request_encode_opts(const struct attn_problem *p,
                              enum proto_format fmt,
                              const struct proto_encode_opts *o, char **buf,
                              size_t *len)
{
    static const struct proto_encode_opts none = {0};
    if (o == NULL)
        o = &none;
    *buf = NULL;
    const char *method = attn_method_name(p->method);
    const int dt = (int)p->dtype, kv = o->kv != NULL;
    const struct attn_kv_tokens *a = &p->append;
    if (attn_dtype_size(p->dtype) == 0 || method == NULL || p->q == NULL ||
        (fmt != PROTO_MSGPACK && fmt != PROTO_JSON))
        return PROTO_EBADREQ;
    if (kv ? !proto_kv_id_valid(o->kv, strlen(o->kv)) ||
                 (a->n && (!a->k || !a->v || p->Hkv == 0 || p->H % p->Hkv))
           : !p->k || !p->v || p->Hkv == 0 || p->H % p->Hkv != 0)
        return PROTO_EBADREQ;

    /* q, then k, v and mask (or the appended tokens), then q_mask. */
    struct wtensor t[6];
    size_t nt = 0;
    int bad = wtensor_set(&t[nt++], "q", dt, p->q, 4, p->B, p->H, p->Nq, p->D);
    if (!kv) {
        bad |=
            wtensor_set(&t[nt++], "k", dt, p->k, 4, p->B, p->Hkv, p->Nk, p->D);
        bad |=
            wtensor_set(&t[nt++], "v", dt, p->v, 4, p->B, p->Hkv, p->Nk, p->D);
        if (p->mask)
            bad |= wtensor_set(&t[nt++], "mask", -1, p->mask, 2, p->B, p->Nk, 0,
                               0);
    } else if (a->n) {
        bad |= wtensor_set(&t[nt++], "k_append", dt, a->k, 4, p->B, p->Hkv,
                           a->n, p->D);
        bad |= wtensor_set(&t[nt++], "v_append", dt, a->v, 4, p->B, p->Hkv,
                           a->n, p->D);
        if (a->mask)
            bad |= wtensor_set(&t[nt++], "mask_append", -1, a->mask, 2, p->B,
                               a->n, 0, 0);
    }
    if (p->q_mask)
        bad |= wtensor_set(&t[nt++], "q_mask", -1, p->q_mask, 2, p->B, p->Nq, 0,
                           0);
    for (size_t i = 0; i < nt; i++)
        bad |= t[i].elems == 0;
    if (bad)
        return PROTO_EBADREQ;

    struct param params[] = {
        {"block_per_row", p->block_per_row},
        {"num_blocks", p->num_blocks},
        {"prior_first", p->prior_first},
        {"prior_diagonal", p->prior_diagonal},
        {"timeout_ms", o->timeout_ms},
        {"min_blocks_per_row", p->min_blocks_per_row},
        {"error_samples", p->error_samples},
    };
    size_t nparams = sizeof params / sizeof params[0];
    const int put_kv = kv && !o->kv_in_path;
    size_t nkeys = nt + 1 + (p->causal != 0) + (p->scale != 0) +
                   (p->target_error != 0) + (o->per_head_stats != 0) +
                   (o->id != NULL) + (size_t)put_kv;
    for (size_t i = 0; i < nparams; i++)
        nkeys += params[i].value != 0;

    struct pbuf b = {0};
    if (fmt == PROTO_MSGPACK) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &b, pbuf_msgpack_write);
        msgpack_pack_map(&pk, nkeys);
        put_tensors(&b, &pk, 0, t, nt);
        if (put_kv) {
            mp_str(&pk, "kv");
            mp_str(&pk, o->kv);
        }
        if (p->causal) {
            mp_str(&pk, "causal");
            msgpack_pack_true(&pk);
        }
        mp_str(&pk, "method");
        mp_str(&pk, method);
        for (size_t i = 0; i < nparams; i++) {
            if (params[i].value == 0)
                continue;
            mp_str(&pk, params[i].name);
            msgpack_pack_uint64(&pk, params[i].value);
        }
        if (p->scale != 0) {
            mp_str(&pk, "scale");
            msgpack_pack_float(&pk, p->scale);
        }
        if (p->target_error != 0) {
            mp_str(&pk, "target_error");
            msgpack_pack_float(&pk, p->target_error);
        }
        if (o->per_head_stats) {
            mp_str(&pk, "per_head_stats");
            msgpack_pack_true(&pk);
        }
        if (o->id != NULL) {
            mp_str(&pk, "id");
            mp_str(&pk, o->id);
        }
        return finish(&b, 0, buf, len);
    }

    pbuf_put(&b, "{", 1);
    put_tensors(&b, NULL, 1, t, nt);
    if (put_kv) {
        pbuf_puts(&b, ",\"kv\":");
        pbuf_json_str(&b, o->kv, strlen(o->kv));
    }
    if (p->causal)
        pbuf_puts(&b, ",\"causal\":true");
    pbuf_printf(&b, ",\"method\":\"%s\"", method);
    for (size_t i = 0; i < nparams; i++)
        if (params[i].value != 0)
            pbuf_printf(&b, ",\"%s\":%llu", params[i].name,
                        (unsigned long long)params[i].value);
    if (p->scale != 0) {
        pbuf_puts(&b, ",\"scale\":");
        pbuf_json_float(&b, p->scale);
    }
    if (p->target_error != 0) {
        pbuf_puts(&b, ",\"target_error\":");
        pbuf_json_float(&b, p->target_error);
    }
    if (o->per_head_stats)
        pbuf_puts(&b, ",\"per_head_stats\":true");
    if (o->id != NULL) {
        pbuf_puts(&b, ",\"id\":");
        pbuf_json_str(&b, o->id, strlen(o->id));
    }
    pbuf_put(&b, "}", 1);
    return finish(&b, 0, buf, len);
}

int proto_kv_body_encode(const struct attn_kv_shape *shape,
                         const struct attn_kv_tokens *tk, uint64_t ttl_ms,
                         enum proto_format fmt, char **buf, size_t *len)
{
    *buf = NULL;
    const int dt = (int)shape->dtype;
    if (attn_dtype_size(shape->dtype) == 0 || !tk->k || !tk->v ||
        (fmt != PROTO_MSGPACK && fmt != PROTO_JSON))
        return PROTO_EBADREQ;
    struct wtensor t[3];
    size_t nt = 0;
    int bad = wtensor_set(&t[nt++], "k", dt, tk->k, 4, shape->B, shape->Hkv,
                          tk->n, shape->D);
    bad |= wtensor_set(&t[nt++], "v", dt, tk->v, 4, shape->B, shape->Hkv, tk->n,
                       shape->D);
    if (tk->mask)
        bad |= wtensor_set(&t[nt++], "mask", -1, tk->mask, 2, shape->B, tk->n,
                           0, 0);
    for (size_t i = 0; i < nt; i++)
        bad |= t[i].elems == 0;
    if (bad)
        return PROTO_EBADREQ;
    struct pbuf b = {0};
    if (fmt == PROTO_MSGPACK) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &b, pbuf_msgpack_write);
        msgpack_pack_map(&pk, nt + (ttl_ms != 0));
        put_tensors(&b, &pk, 0, t, nt);
        if (ttl_ms) {
            mp_str(&pk, "ttl_ms");
            msgpack_pack_uint64(&pk, ttl_ms);
        }
        return finish(&b, 0, buf, len);
    }
    pbuf_put(&b, "{", 1);
    put_tensors(&b, NULL, 1, t, nt);
    if (ttl_ms)
        pbuf_printf(&b, ",\"ttl_ms\":%llu", (unsigned long long)ttl_ms);
    pbuf_put(&b, "}", 1);
    return finish(&b, 0, buf, len);
}

char *proto_error_body(const char *code, const char *message, size_t *len)
{
    struct pbuf b = {0};
    char *out = NULL;
    if (code == NULL)
        code = "internal";
    if (message == NULL)
        message = "";
    pbuf_puts(&b, "{\"error\":{\"code\":");
    pbuf_json_str(&b, code, strlen(code));
    pbuf_puts(&b, ",\"message\":");
    pbuf_json_str(&b, message, strlen(message));
    pbuf_puts(&b, "}}");
    if (finish(&b, 1, &out, len) != PROTO_OK)
        return NULL;
    return out;
}
