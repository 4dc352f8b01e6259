/*
 * body.h - builds request bodies for the protocol tests from readable
 * templates.
 *
 * A template is JSON written with single quotes (so it reads well inside C
 * strings).  tbody_msgpack() turns it into msgpack through the codec's own
 * JSON reader and msgpack-c's packer, and replaces string values of the
 * form 'bin:N' by N bytes of bin data (filled with byte 0) and 'bin:N:V' by
 * N bytes of value V, since JSON has no bin type; 'f64:X' becomes the
 * double strtod() reads from X ('f64:nan', 'f64:inf'), which JSON cannot
 * write either.  Functions are static
 * inline so each test includes only what it uses.
 */
#ifndef MRAD_TESTS_PROTOCOL_BODY_H
#define MRAD_TESTS_PROTOCOL_BODY_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "protocol/internal.h"

/* The template with ' replaced by ", malloc'd. */
static inline char *tbody_json(const char *tmpl)
{
    char *s = strdup(tmpl);
    for (char *p = s; p && *p; p++)
        if (*p == '\'')
            *p = '"';
    return s;
}

static inline void tbody_pack(msgpack_packer *pk, const msgpack_object *o)
{
    unsigned n, v;
    char tail;
    if (o->type == MSGPACK_OBJECT_STR && o->via.str.size < 40 &&
        o->via.str.size > 4 && memcmp(o->via.str.ptr, "bin:", 4) == 0) {
        char tmp[48];
        memcpy(tmp, o->via.str.ptr, o->via.str.size);
        tmp[o->via.str.size] = '\0';
        int k = sscanf(tmp, "bin:%u:%u%c", &n, &v, &tail);
        if (k < 2) {
            v = 0;
            k = sscanf(tmp, "bin:%u%c", &n, &tail);
        }
        if (k >= 1) {
            char *bytes = malloc(n ? n : 1);
            memset(bytes, (int)v, n);
            msgpack_pack_bin(pk, n);
            msgpack_pack_bin_body(pk, bytes, n);
            free(bytes);
            return;
        }
    }
    if (o->type == MSGPACK_OBJECT_STR && o->via.str.size < 40 &&
        o->via.str.size > 4 && memcmp(o->via.str.ptr, "f64:", 4) == 0) {
        char tmp[48];
        memcpy(tmp, o->via.str.ptr + 4, o->via.str.size - 4);
        tmp[o->via.str.size - 4] = '\0';
        msgpack_pack_double(pk, strtod(tmp, NULL));
        return;
    }
    if (o->type == MSGPACK_OBJECT_MAP) {
        msgpack_pack_map(pk, o->via.map.size);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            tbody_pack(pk, &o->via.map.ptr[i].key);
            tbody_pack(pk, &o->via.map.ptr[i].val);
        }
        return;
    }
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        msgpack_pack_array(pk, o->via.array.size);
        for (uint32_t i = 0; i < o->via.array.size; i++)
            tbody_pack(pk, &o->via.array.ptr[i]);
        return;
    }
    msgpack_pack_object(pk, *o);
}

/* msgpack body from a template; *len receives its length.  Aborts the
 * test binary on a broken template (a bug in the test, not the codec). */
static inline char *tbody_msgpack(const char *tmpl, size_t *len)
{
    char *json = tbody_json(tmpl);
    msgpack_zone *zone = NULL;
    msgpack_object root;
    char err[256];
    if (proto_json_read(json, strlen(json), &zone, &root, err, sizeof err)) {
        fprintf(stderr, "bad template %s: %s\n", tmpl, err);
        abort();
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    tbody_pack(&pk, &root);
    msgpack_zone_free(zone);
    free(json);
    *len = sb.size;
    return msgpack_sbuffer_release(&sb);
}

#endif /* MRAD_TESTS_PROTOCOL_BODY_H */
