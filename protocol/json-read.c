/*
 * json-read.c - a strict, bounded JSON parser that builds the same
 * msgpack_object tree as a msgpack body, so one validator serves both.
 *
 * Iterative: open containers live on a fixed stack of PROTO_MAX_DEPTH
 * frames, and finished values on a growable value stack; when a container
 * closes its values move into an exactly sized array in the zone.  Nothing
 * recurses, so a body of ten thousand '[' is a clean error, and memory grows
 * with the text only (every value costs at least one byte of input).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/internal.h"

/* Longest number literal accepted; longer ones carry no extra precision
 * that a float tensor could hold. */
#define JSON_MAX_NUMBER 64

struct jparser {
    const unsigned char *p;
    size_t len, pos;
    msgpack_zone *zone;
    msgpack_object *vals; /* value stack */
    size_t nvals, capvals;
    char *err;
    size_t errlen;
};

static int jerr(struct jparser *j, const char *what)
{
    return perr(j->err, j->errlen, PROTO_EBADREQ,
                "body: invalid JSON at byte %zu: %s", j->pos, what);
}

static void skip_ws(struct jparser *j)
{
    while (j->pos < j->len) {
        unsigned char c = j->p[j->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        j->pos++;
    }
}

static int push(struct jparser *j, const msgpack_object *o)
{
    if (j->nvals == j->capvals) {
        size_t cap = j->capvals ? j->capvals * 2 : 64;
        if (cap > SIZE_MAX / sizeof *j->vals)
            return PROTO_ENOMEM;
        msgpack_object *v = realloc(j->vals, cap * sizeof *v);
        if (v == NULL)
            return PROTO_ENOMEM;
        j->vals = v;
        j->capvals = cap;
    }
    j->vals[j->nvals++] = *o;
    return PROTO_OK;
}

static int hex4(const unsigned char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = s[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Parses a string at j->pos (on the opening quote) into a STR object whose
 * bytes live in the zone.  The decoded form is never longer than the
 * literal, so one allocation of the literal's length suffices. */
static int parse_string(struct jparser *j, msgpack_object *o)
{
    size_t start = ++j->pos, end = start;
    while (end < j->len && j->p[end] != '"') {
        if (j->p[end] == '\\')
            end++;
        end++;
    }
    if (end >= j->len)
        return jerr(j, "unterminated string");
    if (end - start > UINT32_MAX)
        return jerr(j, "string too long");
    char *out = msgpack_zone_malloc_no_align(j->zone, end - start + 1);
    if (out == NULL)
        return PROTO_ENOMEM;
    size_t n = 0;
    while (j->pos < end) {
        unsigned char c = j->p[j->pos];
        if (c < 0x20)
            return jerr(j, "control character in string");
        if (c != '\\') {
            out[n++] = (char)c;
            j->pos++;
            continue;
        }
        unsigned char e = j->p[j->pos + 1];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e != 0 && simple != NULL) {
            static const char map[] = "\"\\/\b\f\n\r\t";
            out[n++] = map[simple - "\"\\/bfnrt"];
            j->pos += 2;
            continue;
        }
        if (e != 'u')
            return jerr(j, "invalid escape in string");
        unsigned cp, lo;
        if (end - j->pos < 6 || hex4(j->p + j->pos + 2, &cp) != 0)
            return jerr(j, "invalid \\u escape in string");
        j->pos += 6;
        if (cp >= 0xdc00 && cp <= 0xdfff)
            return jerr(j, "lone low surrogate in string");
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (end - j->pos < 6 || j->p[j->pos] != '\\' ||
                j->p[j->pos + 1] != 'u' || hex4(j->p + j->pos + 2, &lo) != 0 ||
                lo < 0xdc00 || lo > 0xdfff)
                return jerr(j, "high surrogate without a low surrogate");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            j->pos += 6;
        }
        n += put_utf8(out + n, cp);
    }
    j->pos = end + 1;
    if (!proto_utf8_valid(out, n, 1)) {
        j->pos = start;
        return jerr(j, "string is not valid UTF-8");
    }
    out[n] = '\0';
    o->type = MSGPACK_OBJECT_STR;
    o->via.str.ptr = out;
    o->via.str.size = (uint32_t)n;
    return PROTO_OK;
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Parses a number per the JSON grammar.  Integer literals that fit 64 bits
 * stay exact integers; anything else goes through strtod on a bounded,
 * terminated copy. */
static int parse_number(struct jparser *j, msgpack_object *o)
{
    size_t s = j->pos, i = s;
    int is_float = 0;
    if (i < j->len && j->p[i] == '-')
        i++;
    if (i >= j->len || !is_digit(j->p[i]))
        return jerr(j, "invalid number");
    if (j->p[i] == '0') {
        i++;
        if (i < j->len && is_digit(j->p[i]))
            return jerr(j, "number with a leading zero");
    } else {
        while (i < j->len && is_digit(j->p[i]))
            i++;
    }
    if (i < j->len && j->p[i] == '.') {
        is_float = 1;
        i++;
        if (i >= j->len || !is_digit(j->p[i]))
            return jerr(j, "invalid number: digits must follow '.'");
        while (i < j->len && is_digit(j->p[i]))
            i++;
    }
    if (i < j->len && (j->p[i] == 'e' || j->p[i] == 'E')) {
        is_float = 1;
        i++;
        if (i < j->len && (j->p[i] == '+' || j->p[i] == '-'))
            i++;
        if (i >= j->len || !is_digit(j->p[i]))
            return jerr(j, "invalid number: digits must follow the exponent");
        while (i < j->len && is_digit(j->p[i]))
            i++;
    }
    if (i - s > JSON_MAX_NUMBER)
        return jerr(j, "number literal longer than 64 characters");
    char buf[JSON_MAX_NUMBER + 1];
    memcpy(buf, j->p + s, i - s);
    buf[i - s] = '\0';
    if (!is_float) {
        char *endp;
        errno = 0;
        if (buf[0] == '-') {
            long long v = strtoll(buf, &endp, 10);
            /* "-0" is left to strtod, which keeps the sign of zero. */
            if (errno == 0 && v < 0) {
                o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
                o->via.i64 = v;
                j->pos = i;
                return PROTO_OK;
            }
        } else {
            unsigned long long v = strtoull(buf, &endp, 10);
            if (errno == 0) {
                o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
                o->via.u64 = v;
                j->pos = i;
                return PROTO_OK;
            }
        }
        /* Past 64 bits: keep it as a float, like msgpack would need to. */
    }
    errno = 0;
    double d = strtod(buf, NULL);
    if (!isfinite(d))
        return jerr(j, "number out of the range of a double");
    o->type = MSGPACK_OBJECT_FLOAT64;
    o->via.f64 = d;
    j->pos = i;
    return PROTO_OK;
}

static int parse_literal(struct jparser *j, msgpack_object *o)
{
    static const struct {
        const char *word;
        int type, val;
    } lits[] = {
        {"true", MSGPACK_OBJECT_BOOLEAN, 1},
        {"false", MSGPACK_OBJECT_BOOLEAN, 0},
        {"null", MSGPACK_OBJECT_NIL, 0},
    };
    for (size_t k = 0; k < sizeof lits / sizeof lits[0]; k++) {
        size_t n = strlen(lits[k].word);
        if (j->len - j->pos >= n &&
            memcmp(j->p + j->pos, lits[k].word, n) == 0) {
            o->type = (msgpack_object_type)lits[k].type;
            o->via.boolean = lits[k].val;
            j->pos += n;
            return PROTO_OK;
        }
    }
    return jerr(j, "expected a value");
}

struct jframe {
    int is_map;
    size_t first; /* index of its first value on the value stack */
};

/* Moves the values of the innermost container into the zone and leaves
 * the container itself on the value stack. */
static int close_container(struct jparser *j, const struct jframe *f)
{
    size_t n = j->nvals - f->first;
    msgpack_object o;
    if (f->is_map) {
        size_t pairs = n / 2;
        if (pairs > UINT32_MAX)
            return jerr(j, "object with too many members");
        msgpack_object_kv *kv = NULL;
        if (pairs > 0) {
            kv = msgpack_zone_malloc(j->zone, pairs * sizeof *kv);
            if (kv == NULL)
                return PROTO_ENOMEM;
            for (size_t i = 0; i < pairs; i++) {
                kv[i].key = j->vals[f->first + 2 * i];
                kv[i].val = j->vals[f->first + 2 * i + 1];
            }
        }
        o.type = MSGPACK_OBJECT_MAP;
        o.via.map.size = (uint32_t)pairs;
        o.via.map.ptr = kv;
    } else {
        if (n > UINT32_MAX)
            return jerr(j, "array with too many elements");
        msgpack_object *a = NULL;
        if (n > 0) {
            a = msgpack_zone_malloc(j->zone, n * sizeof *a);
            if (a == NULL)
                return PROTO_ENOMEM;
            memcpy(a, j->vals + f->first, n * sizeof *a);
        }
        o.type = MSGPACK_OBJECT_ARRAY;
        o.via.array.size = (uint32_t)n;
        o.via.array.ptr = a;
    }
    j->nvals = f->first;
    return push(j, &o);
}

static int parse(struct jparser *j)
{
    struct jframe frames[PROTO_MAX_DEPTH];
    int depth = 0, rc;
    enum { VALUE, KEY, AFTER } state = VALUE;
    msgpack_object o;

    for (;;) {
        skip_ws(j);
        if (j->pos >= j->len) {
            if (depth == 0 && state == AFTER)
                return PROTO_OK;
            return jerr(j, j->len == 0 ? "empty body" : "unexpected end");
        }
        unsigned char c = j->p[j->pos];
        if (state == AFTER) {
            if (depth == 0)
                return jerr(j, "trailing characters after the value");
            struct jframe *f = &frames[depth - 1];
            if (c == ',') {
                j->pos++;
                state = f->is_map ? KEY : VALUE;
            } else if (c == (f->is_map ? '}' : ']')) {
                j->pos++;
                if ((rc = close_container(j, f)) != PROTO_OK)
                    return rc;
                depth--;
            } else {
                return jerr(j, f->is_map ? "expected ',' or '}'"
                                         : "expected ',' or ']'");
            }
            continue;
        }
        if (state == KEY) {
            if (c != '"')
                return jerr(j, "expected a string key");
            if ((rc = parse_string(j, &o)) != PROTO_OK ||
                (rc = push(j, &o)) != PROTO_OK)
                return rc;
            skip_ws(j);
            if (j->pos >= j->len || j->p[j->pos] != ':')
                return jerr(j, "expected ':' after a key");
            j->pos++;
            state = VALUE;
            continue;
        }
        /* state == VALUE */
        if (c == '{' || c == '[') {
            if (depth >= PROTO_MAX_DEPTH)
                return perr(j->err, j->errlen, PROTO_EBADREQ,
                            "body: nesting deeper than %d levels",
                            PROTO_MAX_DEPTH);
            int is_map = c == '{';
            frames[depth].is_map = is_map;
            frames[depth].first = j->nvals;
            depth++;
            j->pos++;
            skip_ws(j);
            if (j->pos < j->len && j->p[j->pos] == (is_map ? '}' : ']')) {
                j->pos++;
                if ((rc = close_container(j, &frames[depth - 1])) != PROTO_OK)
                    return rc;
                depth--;
                state = AFTER;
            } else {
                state = is_map ? KEY : VALUE;
            }
            continue;
        }
        if (c == '"')
            rc = parse_string(j, &o);
        else if (c == '-' || is_digit(c))
            rc = parse_number(j, &o);
        else
            rc = parse_literal(j, &o);
        if (rc != PROTO_OK || (rc = push(j, &o)) != PROTO_OK)
            return rc;
        state = AFTER;
    }
}

int proto_json_read(const void *text, size_t len, msgpack_zone **zone,
                    msgpack_object *root, char *err, size_t errlen)
{
    struct jparser j = {
        .p = text,
        .len = len,
        .err = err,
        .errlen = errlen,
    };
    j.zone = msgpack_zone_new(MSGPACK_ZONE_CHUNK_SIZE);
    if (j.zone == NULL)
        return perr(err, errlen, PROTO_ENOMEM, "body: out of memory");
    int rc = parse(&j);
    if (rc == PROTO_OK && j.nvals != 1)
        rc = jerr(&j, "expected exactly one value");
    if (rc != PROTO_OK) {
        if (rc == PROTO_ENOMEM)
            perr(err, errlen, PROTO_ENOMEM, "body: out of memory");
        free(j.vals);
        msgpack_zone_free(j.zone);
        return rc;
    }
    *root = j.vals[0];
    free(j.vals);
    *zone = j.zone;
    return PROTO_OK;
}
