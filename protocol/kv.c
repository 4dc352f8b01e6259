/*
 * kv.c - what the service says of a session (the JSON answers of
 * POST /v1/kv, POST /v1/kv/{id}/append and GET /v1/kv/{id}), written by
 * the daemon and read by clients.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/internal.h"

char *proto_kv_info_json(const struct proto_kv_info *in, size_t *len)
{
    struct pbuf b = {0};
    const char *dt = attn_dtype_name(in->shape.dtype);
    pbuf_puts(&b, "{\"kv\":");
    pbuf_json_str(&b, in->kv, strlen(in->kv));
    pbuf_printf(&b,
                ",\"dtype\":\"%s\",\"shape\":[%" PRIu32 ",%" PRIu32
                ",%" PRIu64 ",%" PRIu32 "],\"tokens\":%" PRIu64
                ",\"bytes\":%" PRIu64 ",\"ttl_ms\":%" PRIu64
                ",\"idle_ms\":%" PRIu64 "}",
                dt ? dt : "", in->shape.B, in->shape.Hkv, in->tokens,
                in->shape.D, in->tokens, in->bytes, in->ttl_ms, in->idle_ms);
    pbuf_put(&b, "", 1);
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    if (len)
        *len = b.len - 1;
    return b.data;
}

/* An unsigned integer field of the answer; 0 when absent. */
static int get_u64(const msgpack_object *o, uint64_t *out)
{
    int64_t v;
    int too_big;
    if (o == NULL) {
        *out = 0;
        return 0;
    }
    if (proto_get_int(o, &v, &too_big) != 0 || v < 0)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

int proto_kv_info_parse(const void *body, size_t len,
                        struct proto_kv_info *out)
{
    memset(out, 0, sizeof *out);
    msgpack_zone *zone = NULL;
    msgpack_object root;
    if (proto_tree_read(body, len, PROTO_JSON, &zone, &root, NULL, 0) !=
        PROTO_OK)
        return PROTO_EBADREQ;
    int rc = root.type == MSGPACK_OBJECT_MAP ? PROTO_OK : PROTO_EBADREQ;
    const msgpack_object *id = NULL, *tokens = NULL, *bytes = NULL,
                         *ttl = NULL, *idle = NULL, *dtype = NULL,
                         *shape = NULL;
    for (uint32_t i = 0; rc == PROTO_OK && i < root.via.map.size; i++) {
        const msgpack_object *k = &root.via.map.ptr[i].key;
        const msgpack_object *v = &root.via.map.ptr[i].val;
        if (proto_str_eq(k, "kv"))
            id = v;
        else if (proto_str_eq(k, "tokens"))
            tokens = v;
        else if (proto_str_eq(k, "bytes"))
            bytes = v;
        else if (proto_str_eq(k, "ttl_ms"))
            ttl = v;
        else if (proto_str_eq(k, "idle_ms"))
            idle = v;
        else if (proto_str_eq(k, "dtype"))
            dtype = v;
        else if (proto_str_eq(k, "shape"))
            shape = v;
    }
    if (rc == PROTO_OK &&
        (!id || id->type != MSGPACK_OBJECT_STR ||
         !proto_kv_id_valid(id->via.str.ptr, id->via.str.size) || !tokens ||
         get_u64(tokens, &out->tokens) || get_u64(bytes, &out->bytes) ||
         get_u64(ttl, &out->ttl_ms) || get_u64(idle, &out->idle_ms)))
        rc = PROTO_EBADREQ;
    int found = 0;
    for (int d = ATTN_F32; rc == PROTO_OK && dtype && d <= ATTN_BF16; d++)
        if (proto_str_eq(dtype, attn_dtype_name((enum attn_dtype)d))) {
            out->shape.dtype = (enum attn_dtype)d;
            found = 1;
        }
    uint64_t dims[4];
    int ok = found && shape && shape->type == MSGPACK_OBJECT_ARRAY &&
             shape->via.array.size == 4;
    for (int i = 0; ok && i < 4; i++)
        ok = get_u64(&shape->via.array.ptr[i], &dims[i]) == 0 &&
             dims[i] <= UINT32_MAX;
    if (rc == PROTO_OK && !ok)
        rc = PROTO_EBADREQ;
    if (rc == PROTO_OK) {
        memcpy(out->kv, id->via.str.ptr, id->via.str.size);
        out->kv[id->via.str.size] = '\0';
        out->shape.B = (uint32_t)dims[0];
        out->shape.Hkv = (uint32_t)dims[1];
        out->shape.D = (uint32_t)dims[3];
    }
    msgpack_zone_free(zone);
    return rc;
}
