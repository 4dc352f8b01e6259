/*
 * msgpack-read.c - reads a msgpack body into a msgpack_object tree.
 *
 * msgpack-c allocates a container's element array from the count in its
 * header before reading the elements, so a 6-byte body announcing 2^32
 * entries would ask for tens of gigabytes, and its fixed parse stack turns
 * deep nesting into an out-of-memory error.  A pre-scan over the bytes,
 * which allocates nothing, rejects such bodies first with a message that
 * says what was wrong and where; only then does msgpack_unpack_next() build
 * the tree.  Its strings and bin data point into the body (msgpack-c never
 * copies them in this mode), which is what lets the decoder read tensors in
 * place.
 */
#include <string.h>

#include "protocol/internal.h"

/* Big-endian reads of 1, 2, 4 bytes. */
static uint32_t be(const unsigned char *p, size_t n)
{
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/*
 * Checks the structure of a msgpack body without allocating.  Each object
 * is a header (type byte and any length or count fields) followed by a
 * payload of known size for scalars, or by `count` further objects for
 * containers; `left[d]` counts the objects still owed at depth d.
 */
static int prescan(const unsigned char *p, size_t len, char *err, size_t errlen)
{
    uint64_t left[PROTO_MAX_DEPTH + 1];
    int depth = 0;
    size_t pos = 0;
    uint64_t objects = 0;

    if (len == 0)
        return perr(err, errlen, PROTO_EBADREQ, "body: empty");
    left[0] = 1;
    for (;;) {
        if (pos >= len)
            return perr(err, errlen, PROTO_EBADREQ,
                        "body: truncated msgpack (ends at byte %zu inside "
                        "a value)",
                        len);
        if (++objects > PROTO_MAX_MSGPACK_OBJECTS)
            return perr(err, errlen, PROTO_EBADREQ,
                        "body: more than %d msgpack objects",
                        PROTO_MAX_MSGPACK_OBJECTS);
        unsigned t = p[pos];
        size_t hdr = 1;      /* header bytes after the type byte included */
        size_t lenbytes = 0; /* bytes of a length/count field */
        uint64_t payload = 0;
        uint64_t count = 0; /* child objects of a container */
        int container = 0;

        if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) {
            /* fixint, nil, bool: the type byte is everything */
        } else if (t >= 0x80 && t <= 0x8f) {
            container = 1;
            count = 2 * (uint64_t)(t & 0x0f);
        } else if (t >= 0x90 && t <= 0x9f) {
            container = 1;
            count = t & 0x0f;
        } else if (t >= 0xa0 && t <= 0xbf) {
            payload = t & 0x1f;
        } else {
            switch (t) {
            case 0xc4:
            case 0xd9:
                lenbytes = 1;
                break; /* bin8, str8 */
            case 0xc5:
            case 0xda:
                lenbytes = 2;
                break;
            case 0xc6:
            case 0xdb:
                lenbytes = 4;
                break;
            case 0xc7:
                lenbytes = 1;
                hdr = 2;
                break; /* ext8: + type */
            case 0xc8:
                lenbytes = 2;
                hdr = 2;
                break;
            case 0xc9:
                lenbytes = 4;
                hdr = 2;
                break;
            case 0xca:
                payload = 4;
                break;
            case 0xcb:
                payload = 8;
                break;
            case 0xcc:
            case 0xd0:
                payload = 1;
                break;
            case 0xcd:
            case 0xd1:
                payload = 2;
                break;
            case 0xce:
            case 0xd2:
                payload = 4;
                break;
            case 0xcf:
            case 0xd3:
                payload = 8;
                break;
            case 0xd4:
                payload = 2;
                break; /* fixext: type + data */
            case 0xd5:
                payload = 3;
                break;
            case 0xd6:
                payload = 5;
                break;
            case 0xd7:
                payload = 9;
                break;
            case 0xd8:
                payload = 17;
                break;
            case 0xdc:
            case 0xde:
                lenbytes = 2;
                container = 1;
                break;
            case 0xdd:
            case 0xdf:
                lenbytes = 4;
                container = 1;
                break;
            default:
                return perr(err, errlen, PROTO_EBADREQ,
                            "body: invalid msgpack type byte 0x%02x at "
                            "byte %zu",
                            t, pos);
            }
        }
        if (lenbytes > 0) {
            if (len - pos < 1 + lenbytes + (hdr - 1))
                return perr(err, errlen, PROTO_EBADREQ,
                            "body: truncated msgpack header at byte %zu", pos);
            uint32_t n = be(p + pos + 1, lenbytes);
            hdr = 1 + lenbytes + (hdr - 1);
            if (container)
                count = (t == 0xde || t == 0xdf) ? 2 * (uint64_t)n : n;
            else
                payload = n;
        }
        if (payload > len - pos - hdr)
            return perr(err, errlen, PROTO_EBADREQ,
                        "body: truncated msgpack (a value at byte %zu needs "
                        "%llu bytes, %zu left)",
                        pos, (unsigned long long)(hdr + payload), len - pos);
        pos += hdr + (size_t)payload;
        left[depth]--;
        if (container && count > 0) {
            /* Every child takes at least one byte. */
            if (count > len - pos)
                return perr(err, errlen, PROTO_EBADREQ,
                            "body: truncated msgpack (a container at byte "
                            "%zu announces %llu values, %zu bytes left)",
                            pos - hdr, (unsigned long long)count, len - pos);
            if (depth + 1 > PROTO_MAX_DEPTH)
                return perr(err, errlen, PROTO_EBADREQ,
                            "body: nesting deeper than %d levels",
                            PROTO_MAX_DEPTH);
            left[++depth] = count;
            continue;
        }
        while (depth > 0 && left[depth] == 0)
            depth--;
        if (depth == 0 && left[0] == 0)
            break;
    }
    if (pos != len)
        return perr(err, errlen, PROTO_EBADREQ,
                    "body: %zu trailing bytes after the msgpack value",
                    len - pos);
    return PROTO_OK;
}

int proto_msgpack_read(const void *body, size_t len, msgpack_zone **zone,
                       msgpack_object *root, char *err, size_t errlen)
{
    int rc = prescan(body, len, err, errlen);
    if (rc != PROTO_OK)
        return rc;

    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&res, body, len, &off);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        msgpack_unpacked_destroy(&res);
        return perr(err, errlen, PROTO_ENOMEM, "body: out of memory");
    }
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len || res.zone == NULL) {
        /* The pre-scan accepts only what msgpack-c accepts; reaching this
         * means the two disagree, which is still the body's fault. */
        msgpack_unpacked_destroy(&res);
        return perr(err, errlen, PROTO_EBADREQ, "body: invalid msgpack");
    }
    *root = res.data;
    *zone = res.zone;
    res.zone = NULL; /* ownership moves to the caller */
    msgpack_unpacked_destroy(&res);
    return PROTO_OK;
}

int proto_tree_read(const void *body, size_t len, enum proto_format fmt,
                    msgpack_zone **zone, msgpack_object *root, char *err,
                    size_t errlen)
{
    if (body == NULL && len > 0)
        return perr(err, errlen, PROTO_EBADREQ, "body: missing");
    if (fmt == PROTO_JSON)
        return proto_json_read(body, len, zone, root, err, errlen);
    if (fmt != PROTO_MSGPACK)
        return perr(err, errlen, PROTO_EBADREQ, "body: unknown format %d",
                    (int)fmt);
    return proto_msgpack_read(body, len, zone, root, err, errlen);
}
