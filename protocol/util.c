/*
 * util.c - small pieces the wire codec shares: error codes and messages,
 * default limits, the growable output buffer with its JSON number and
 * string writers, aligned allocation, UTF-8 checking and msgpack object
 * helpers.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/internal.h"

const char *proto_strerror(int err)
{
    switch (err) {
    case PROTO_OK:
        return "success";
    case PROTO_EBADREQ:
        return "malformed or invalid request body";
    case PROTO_ETOOBIG:
        return "tensor or problem larger than the configured limits";
    case PROTO_ENOMEM:
        return "out of memory";
    default:
        return "unknown protocol error";
    }
}

void proto_limits_default(struct proto_limits *lim)
{
    lim->max_batch = 64;
    lim->max_heads = 256;
    lim->max_tokens = 131072;
    lim->max_head_dim = ATTN_MAX_HEAD_DIM;
    lim->max_elements = (uint64_t)1 << 28;
}

int perr(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

int pbuf_reserve(struct pbuf *b, size_t more)
{
    if (b->failed)
        return -1;
    if (more <= b->cap - b->len)
        return 0;
    if (more > SIZE_MAX - b->len) {
        b->failed = 1;
        return -1;
    }
    size_t need = b->len + more;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (p == NULL) {
        b->failed = 1;
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

void pbuf_put(struct pbuf *b, const void *p, size_t n)
{
    if (n == 0 || pbuf_reserve(b, n) != 0)
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void pbuf_puts(struct pbuf *b, const char *s)
{
    pbuf_put(b, s, strlen(s));
}

void pbuf_printf(struct pbuf *b, const char *fmt, ...)
{
    char small[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n < sizeof small) {
        pbuf_put(b, small, (size_t)n);
        return;
    }
    /* Longer than the stack buffer: format straight into the buffer. */
    if (pbuf_reserve(b, (size_t)n + 1) != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* The escape of one byte inside a JSON string: its length (2 or 6) with
 * the escape in out, or 0 when the byte stands for itself.  Control
 * characters and DEL are escaped, so a string stays on one line. */
static size_t json_escape_byte(unsigned char c, char out[6])
{
    static const char hex[] = "0123456789abcdef";
    static const char shortcut[] = {
        ['"'] = '"',  ['\\'] = '\\', ['\n'] = 'n', ['\r'] = 'r',
        ['\t'] = 't', ['\b'] = 'b',  ['\f'] = 'f'};
    if (c < sizeof shortcut && shortcut[c]) {
        out[0] = '\\';
        out[1] = shortcut[c];
        return 2;
    }
    if (c >= 0x20 && c != 0x7f)
        return 0;
    out[0] = '\\';
    out[1] = 'u';
    out[2] = '0';
    out[3] = '0';
    out[4] = hex[c >> 4];
    out[5] = hex[c & 15];
    return 6;
}

void pbuf_json_str(struct pbuf *b, const char *s, size_t n)
{
    pbuf_put(b, "\"", 1);
    size_t run = 0; /* bytes copied verbatim in one go */
    for (size_t i = 0; i < n; i++) {
        char esc[6];
        size_t len = json_escape_byte((unsigned char)s[i], esc);
        if (!len)
            continue;
        pbuf_put(b, s + run, i - run);
        run = i + 1;
        pbuf_put(b, esc, len);
    }
    pbuf_put(b, s + run, n - run);
    pbuf_put(b, "\"", 1);
}

size_t proto_json_escape(char *dst, size_t cap, const char *s, size_t n)
{
    size_t len = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char esc[6];
        size_t e = json_escape_byte((unsigned char)s[i], esc);
        if (!e) {
            esc[0] = s[i];
            e = 1;
        }
        if (len + e >= cap)
            break;
        memcpy(dst + len, esc, e);
        len += e;
    }
    dst[len] = '\0';
    return len;
}

void pbuf_json_float(struct pbuf *b, float f)
{
    if (!isfinite(f)) {
        pbuf_put(b, "null", 4);
        return;
    }
    pbuf_printf(b, "%.9g", (double)f);
}

void pbuf_json_double(struct pbuf *b, double d)
{
    if (!isfinite(d)) {
        pbuf_put(b, "null", 4);
        return;
    }
    pbuf_printf(b, "%.17g", d);
}

int pbuf_msgpack_write(void *data, const char *buf, size_t len)
{
    struct pbuf *b = data;
    pbuf_put(b, buf, len);
    return b->failed ? -1 : 0;
}

void *proto_aligned_alloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 1) != 0)
        return NULL;
    return p;
}

int proto_utf8_valid(const char *s, size_t n, int allow_nul)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c == 0 && !allow_nul)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t extra;
        unsigned cp;
        if (c >= 0xc2 && c <= 0xdf) {
            extra = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i <= extra)
            return 0;
        for (size_t k = 1; k <= extra; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        /* Overlong forms, surrogates and code points past U+10FFFF. */
        if ((extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return 0;
        i += extra + 1;
    }
    return 1;
}

const char *proto_type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return "null";
    case MSGPACK_OBJECT_BOOLEAN:
        return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "an integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "a float";
    case MSGPACK_OBJECT_STR:
        return "a string";
    case MSGPACK_OBJECT_ARRAY:
        return "an array";
    case MSGPACK_OBJECT_MAP:
        return "a map";
    case MSGPACK_OBJECT_BIN:
        return "binary data";
    case MSGPACK_OBJECT_EXT:
        return "an extension object";
    }
    return "an unknown object";
}

int proto_str_eq(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

int proto_get_int(const msgpack_object *o, int64_t *v, int *too_big)
{
    *too_big = 0;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX) {
            *too_big = 1;
            return -1;
        }
        *v = (int64_t)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = o->via.i64;
        return 0;
    }
    return -1;
}

int proto_get_number(const msgpack_object *o, double *v)
{
    if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
        *v = o->via.f64;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        *v = (double)o->via.u64;
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *v = (double)o->via.i64;
    else
        return -1;
    return 0;
}

int proto_bin_aligned(const msgpack_object *d, size_t align, const void **ptr,
                      void **owned)
{
    *owned = NULL;
    if ((uintptr_t)d->via.bin.ptr % align == 0) {
        *ptr = d->via.bin.ptr;
        return PROTO_OK;
    }
    void *copy = proto_aligned_alloc(d->via.bin.size);
    if (copy == NULL)
        return PROTO_ENOMEM;
    memcpy(copy, d->via.bin.ptr, d->via.bin.size);
    *ptr = *owned = copy;
    return PROTO_OK;
}
