/*
 * internal.h - what the files of the wire codec share and nobody else sees.
 *
 * Both body formats are read into one tree type, msgpack-c's msgpack_object
 * (allocated in a msgpack_zone the reader creates and the caller frees with
 * msgpack_zone_free()), so that one validator serves msgpack and JSON
 * alike: msgpack bodies through msgpack_unpack_next() after a bounded
 * pre-scan (msgpack-read.c), JSON bodies through the strict parser in
 * json-read.c.  Strings and bin data of a msgpack tree point into the body;
 * a JSON tree owns its unescaped strings in the zone.
 *
 * Writers append to a growable byte buffer (struct pbuf) whose growth is
 * overflow-checked; a failed allocation is remembered and reported once at
 * the end, so encoders need not test every append.
 */
#ifndef MRAD_PROTO_INTERNAL_H
#define MRAD_PROTO_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "protocol/proto.h"

/* Deepest container nesting accepted in a body (the schema needs 3). */
#define PROTO_MAX_DEPTH 16
/* Most msgpack objects in one body: the schema needs a few dozen; tensor
 * data travels as bin, so this only stops maps and arrays of junk. */
#define PROTO_MAX_MSGPACK_OBJECTS 65536

/* Writes a formatted message into err (errlen bytes, always terminated
 * when errlen > 0) and returns code, so callers can `return perr(...)`. */
int perr(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Reads one msgpack body into a tree in `zone`.  Checks first, without
 * allocating, that the body is exactly one well-formed object, no deeper
 * than PROTO_MAX_DEPTH, with at most PROTO_MAX_MSGPACK_OBJECTS objects and
 * container counts that fit the bytes left.  Returns PROTO_OK,
 * PROTO_EBADREQ (message in err) or PROTO_ENOMEM.
 */
int proto_msgpack_read(const void *body, size_t len, msgpack_zone **zone,
                       msgpack_object *root, char *err, size_t errlen);

/*
 * Parses one JSON text (RFC 8259, strict: no comments, no trailing commas,
 * no NaN/Infinity, no leading zeros, UTF-8 strings with valid escapes and
 * surrogate pairs) into a tree in `zone`.  Integers without fraction or
 * exponent that fit 64 bits become POSITIVE/NEGATIVE_INTEGER, every other
 * number FLOAT64.  Iterative (no recursion), depth at most PROTO_MAX_DEPTH;
 * memory is proportional to the text.  Returns PROTO_OK, PROTO_EBADREQ
 * (message with the byte offset in err) or PROTO_ENOMEM.
 */
int proto_json_read(const void *text, size_t len, msgpack_zone **zone,
                    msgpack_object *root, char *err, size_t errlen);

/* Reads a body of either format (see above); on success *zone holds the
 * tree and the caller frees it with msgpack_zone_free(). */
int proto_tree_read(const void *body, size_t len, enum proto_format fmt,
                    msgpack_zone **zone, msgpack_object *root, char *err,
                    size_t errlen);

/*
 * A request given in parts by another envelope than the /v1 body (the
 * KServe v2 protocol, protocol/v2.c): its tensors, each with its /v1 key
 * name ("q", "k", "mask", ...), dtype (enum attn_dtype, -1 for a u8 mask),
 * shape and data (a BIN object for bytes, used in place when aligned, or
 * an ARRAY of numbers, converted), and its scalar fields by their /v1 key
 * names ("method", "causal", "block_per_row", "kv", "id", ...).  Decoded
 * and checked exactly as a /v1 body with those keys (the same messages);
 * an unknown name is refused.  The objects are only read during the call.
 */
struct proto_part {
    const char *name;
    int dtype;
    int rank;
    uint64_t shape[4];
    const msgpack_object *data;
};
struct proto_field {
    const char *name;
    const msgpack_object *value;
};
int proto_request_from_parts(const struct proto_part *tensors, size_t ntensors,
                             const struct proto_field *fields, size_t nfields,
                             enum proto_format fmt,
                             const struct proto_decode_opts *opts,
                             struct proto_request *req, char *err,
                             size_t errlen);

/* Growable output buffer. */
struct pbuf {
    char *data;
    size_t len, cap;
    int failed; /* an allocation failed: contents are incomplete */
};

/* Makes sure `more` bytes can be appended; returns 0 or -1 (and sets
 * failed). */
int pbuf_reserve(struct pbuf *b, size_t more);
void pbuf_put(struct pbuf *b, const void *p, size_t n);
void pbuf_puts(struct pbuf *b, const char *s);
void pbuf_printf(struct pbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s (n bytes) as a quoted JSON string, escaping what RFC 8259
 * requires plus DEL; bytes >= 0x80 pass through. */
void pbuf_json_str(struct pbuf *b, const char *s, size_t n);
/* Appends a float as a JSON number with "%.9g" (enough digits to read back
 * the same float32), or null for NaN and infinities. */
void pbuf_json_float(struct pbuf *b, float f);
/* Appends a double with 17 significant digits, or null if not finite. */
void pbuf_json_double(struct pbuf *b, double d);

/* Appends the per-head statistics of an answer as a JSON array of
 * {"budget", "blocks_selected", "blocks_total", "density"[,
 * "est_rel_err"]} objects (protocol/encode.c). */
void proto_heads_json(struct pbuf *b, const struct attn_head_stats *heads,
                      size_t n);

/* msgpack_packer write callback appending to a struct pbuf. */
int pbuf_msgpack_write(void *data, const char *buf, size_t len);

/* *out = a * b; returns 0, or -1 when the product overflows size_t. */
static inline int proto_mul_size(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}

/* Allocates n bytes aligned to 64 (n may be 0: one byte is allocated).
 * Free with free(). */
void *proto_aligned_alloc(size_t n);

/* True when s (n bytes) is valid UTF-8 (no overlong forms, surrogates or
 * code points past U+10FFFF), and free of NUL bytes unless allow_nul. */
int proto_utf8_valid(const char *s, size_t n, int allow_nul);

/* Wire name of a msgpack object's type, for messages ("a string", ...). */
const char *proto_type_name(const msgpack_object *o);

/* String helpers over msgpack str objects. */
int proto_str_eq(const msgpack_object *o, const char *s);

/* Reads a number object (integer or float) into *v; returns 0, or -1 when
 * the object is not a number. */
int proto_get_number(const msgpack_object *o, double *v);

/* Makes the bytes of bin object d available at an address that is a
 * multiple of `align`: in place when the body allows (*owned = NULL), else
 * as a copy in *owned (free it with free()).  *ptr gets the address.
 * Returns PROTO_OK or PROTO_ENOMEM. */
int proto_bin_aligned(const msgpack_object *d, size_t align, const void **ptr,
                      void **owned);

/* Reads an integer object into *v (int64 range); returns 0, or -1 when the
 * object is not an integer or does not fit int64 (then *v is unset and
 * *too_big says whether it was a large positive integer). */
int proto_get_int(const msgpack_object *o, int64_t *v, int *too_big);

#endif /* MRAD_PROTO_INTERNAL_H */
