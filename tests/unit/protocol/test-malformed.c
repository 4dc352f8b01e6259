/*
 * test-malformed.c - tests protocol/request.c, msgpack-read.c and
 * json-read.c on bodies that must be refused.
 *
 * Every case asserts the error code (400 bad request or 413 too big) and
 * that the message names the field that was wrong, since that message is
 * what a client sees.  Cases are tables: msgpack bodies from readable
 * templates (see body.h), raw msgpack bytes for what a template cannot
 * express (truncation, bad type bytes, bombs), and JSON texts.  Run under
 * `make test SANITIZE=address,undefined` to catch reads out of bounds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tests/unit/protocol/body.h"
#include "protocol/proto.h"

struct bad_case {
    const char *tmpl; /* template, see body.h */
    int code;
    const char *field; /* must appear in the message */
    int nolimits;      /* decode with every limit off */
    uint64_t max_elements;
};

/* A valid request: q [1,2,40,8], k and v [1,1,40,8], all f32. */
#define TQ "'q':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560'}"
#define TK "'k':{'dtype':'f32','shape':[1,1,40,8],'data':'bin:1280'}"
#define TV "'v':{'dtype':'f32','shape':[1,1,40,8],'data':'bin:1280'}"
#define QKV TQ "," TK "," TV
/* q of 8 queries, for cross-attention with TK and TV's 40 keys. */
#define XQ "'q':{'dtype':'f32','shape':[1,2,8,8],'data':'bin:512'}"
#define TQS(shape, bin)                                                        \
    "'q':{'dtype':'f32','shape':" shape ",'data':'bin:" bin "'}," TK "," TV
#define BAD PROTO_EBADREQ
#define BIG PROTO_ETOOBIG
#define C(tmpl, code, field)                                                   \
    {                                                                          \
        tmpl, code, field, 0, 0                                                \
    }

static const struct bad_case msgpack_cases[] = {
    C("{" QKV ",'bogus':1}", BAD, "bogus: unknown key"),
    C("{" QKV ",'method':'exact','method':'exact'}", BAD,
      "method: duplicate key"),
    C("{" TK "," TV "}", BAD, "q: missing"),
    C("{" TQ "," TV "}", BAD, "k: missing"),
    C("{" TQ "," TK "}", BAD, "v: missing"),
    C("{'q':5," TK "," TV "}", BAD, "q: must be a map (got an integer)"),
    C("{'q':{'dtype':'f64','shape':[1,2,40,8],'data':'bin:2560'}," TK "," TV
      "}",
      BAD, "q.dtype: must be"),
    C("{'q':{'dtype':4,'shape':[1,2,40,8],'data':'bin:2560'}," TK "," TV "}",
      BAD, "q.dtype: must be a string"),
    C("{'q':{'dtype':'u8','shape':[1,2,40,8],'data':'bin:640'}," TK "," TV "}",
      BAD, "q.dtype: must be"),
    C("{'q':{'shape':[1,2,40,8],'data':'bin:2560'}," TK "," TV "}", BAD,
      "q.dtype: missing"),
    C("{'q':{'dtype':'f32','data':'bin:2560'}," TK "," TV "}", BAD,
      "q.shape: missing"),
    C("{'q':{'dtype':'f32','shape':[1,2,40,8]}," TK "," TV "}", BAD,
      "q.data: missing"),
    C("{'q':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560',"
      "'stride':1}," TK "," TV "}",
      BAD, "q.stride: unknown key"),
    C("{'q':{'dtype':'f32','dtype':'f32','shape':[1,2,40,8],"
      "'data':'bin:2560'}," TK "," TV "}",
      BAD, "q.dtype: duplicate key"),
    C("{" TQS("'1,2,40,8'", "2560") "}", BAD, "q.shape: must be an array"),
    C("{" TQS("[2,40,8]", "2560") "}", BAD, "q.shape: must have 4"),
    C("{" TQS("[1,'2',40,8]", "2560") "}", BAD,
      "q.shape[1]: H must be an integer"),
    C("{" TQS("[1,2,0,8]", "0") "}", BAD,
      "q.shape[2]: Nq must be >= 1 (got 0)"),
    C("{" TQS("[-1,2,40,8]", "2560") "}", BAD,
      "q.shape[0]: B must be >= 1 (got -1)"),
    C("{" TQS("[1,2,40,8.5]", "2560") "}", BAD,
      "q.shape[3]: D must be an integer (got a float)"),
    C("{'q':{'dtype':'f32','shape':[1,2,40,8],'data':'xyz'}," TK "," TV "}",
      BAD, "q.data: must be binary data (got a string)"),
    C("{'q':{'dtype':'f32','shape':[1,2,40,8],'data':[1,2]}," TK "," TV "}",
      BAD, "q.data: must be binary data (got an array)"),
    C("{" TQS("[1,2,40,8]", "2559") "}", BAD, "q.data: length 2559"),
    /* k and v must agree on Nk (q's Nq may differ from both). */
    C("{" TQ ",'k':{'dtype':'f32','shape':[1,1,39,8],'data':'bin:1248'}," TV
      "}",
      BAD, "v: shape [1,1,40,8] does not match k's [B,Hkv,Nk,D] = [1,1,39,8]"),
    C("{" TQ "," TK ",'v':{'dtype':'f32','shape':[1,1,41,8],"
      "'data':'bin:1312'}}",
      BAD, "v: shape [1,1,41,8] does not match k's [B,Hkv,Nk,D] = [1,1,40,8]"),
    C("{" TQ ",'k':{'dtype':'f32','shape':[1,1,40,4],'data':'bin:640'},"
      "'v':{'dtype':'f32','shape':[1,1,40,4],'data':'bin:640'}}",
      BAD,
      "k: shape [1,1,40,4] does not match q's [B,Hkv,Nk,D] = [1,Hkv,Nk,8]"),
    C("{" TQ ",'k':{'dtype':'f32','shape':[2,1,40,8],'data':'bin:2560'},"
      "'v':{'dtype':'f32','shape':[2,1,40,8],'data':'bin:2560'}}",
      BAD,
      "k: shape [2,1,40,8] does not match q's [B,Hkv,Nk,D] = [1,Hkv,Nk,8]"),
    C("{" TQ "," TK ",'v':{'dtype':'f32','shape':[1,2,40,8],"
      "'data':'bin:2560'}}",
      BAD, "v: shape [1,2,40,8] does not match k's [B,Hkv,Nk,D] = [1,1,40,8]"),
    C("{'q':{'dtype':'f32','shape':[1,3,40,8],'data':'bin:3840'},"
      "'k':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560'},"
      "'v':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560'}}",
      BAD, "k.shape[1]: Hkv = 2 must divide"),
    C("{'q':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560'},"
      "'k':{'dtype':'f32','shape':[1,4,40,8],'data':'bin:5120'},"
      "'v':{'dtype':'f32','shape':[1,4,40,8],'data':'bin:5120'}}",
      BAD, "k.shape[1]"),
    C("{" TQ ",'k':{'dtype':'f16','shape':[1,1,40,8],'data':'bin:640'}," TV "}",
      BAD, "k.dtype: must match q.dtype (f16 vs f32)"),
    C("{" TQ "," TK ",'v':{'dtype':'bf16','shape':[1,1,40,8],"
      "'data':'bin:640'}}",
      BAD, "v.dtype: must match q.dtype"),
    C("{" QKV ",'mask':{'dtype':'f32','shape':[1,40],'data':'bin:160'}}", BAD,
      "mask.dtype: must be \"u8\""),
    C("{" QKV ",'mask':{'dtype':'u8','shape':[1,1,1,40],'data':'bin:40'}}", BAD,
      "mask.shape: must have 2"),
    C("{" QKV ",'mask':{'dtype':'u8','shape':[1,39],'data':'bin:39'}}", BAD,
      "mask: shape [1,39] does not match k's [B,Nk] = [1,40]"),
    C("{" QKV ",'mask':{'dtype':'u8','shape':[2,40],'data':'bin:80'}}", BAD,
      "mask: shape [2,40] does not match k's [B,Nk] = [1,40]"),
    C("{" QKV ",'mask':{'dtype':'u8','shape':[1,40],'data':'bin:40:2'}}", BAD,
      "mask.data[0]: must be 0 or 1 (got 2)"),
    C("{" QKV ",'mask':{'dtype':'u8','shape':[1,40],'data':'bin:41'}}", BAD,
      "mask.data: length 41"),
    C("{" QKV ",'mask':[1,1]}", BAD, "mask: must be a map"),
    /* The query mask: the rules of the key mask, over q's [B, Nq]. */
    C("{" QKV ",'q_mask':{'dtype':'u8','shape':[1,39],'data':'bin:39'}}", BAD,
      "q_mask: shape [1,39] does not match q's [B,Nq] = [1,40]"),
    C("{" QKV ",'q_mask':{'dtype':'u8','shape':[2,40],'data':'bin:80'}}", BAD,
      "q_mask: shape [2,40] does not match q's [B,Nq] = [1,40]"),
    C("{" QKV ",'q_mask':{'dtype':'u8','shape':[40],'data':'bin:40'}}", BAD,
      "q_mask.shape: must have 2 dimensions [B,Nq] (got 1)"),
    C("{" QKV ",'q_mask':{'dtype':'u8','shape':[1,0],'data':'bin:0'}}", BAD,
      "q_mask.shape[1]: Nq must be >= 1 (got 0)"),
    C("{" QKV ",'q_mask':{'dtype':'u8','shape':[1,40],'data':'bin:40:2'}}", BAD,
      "q_mask.data[0]: must be 0 or 1 (got 2)"),
    C("{" QKV ",'q_mask':{'dtype':'u8','shape':[1,40],'data':'bin:40:255'}}",
      BAD, "q_mask.data[0]: must be 0 or 1 (got 255)"),
    C("{" QKV ",'q_mask':{'dtype':'u8','shape':[1,40],'data':'bin:39'}}", BAD,
      "q_mask.data: length 39"),
    C("{" QKV ",'q_mask':{'dtype':'f32','shape':[1,40],'data':'bin:160'}}", BAD,
      "q_mask.dtype: must be \"u8\" (got \"f32\")"),
    C("{" QKV ",'q_mask':{'dtype':'bool','shape':[1,40],'data':'bin:40'}}", BAD,
      "q_mask.dtype: must be \"u8\""),
    C("{" QKV ",'q_mask':{'shape':[1,40],'data':'bin:40'}}", BAD,
      "q_mask.dtype: missing"),
    C("{" QKV ",'q_mask':true}", BAD, "q_mask: must be a map (got a boolean)"),
    C("{" QKV ",'q_mask':{'dtype':'u8','shape':[1,40],'data':'bin:40:1'},"
      "'q_mask':{'dtype':'u8','shape':[1,40],'data':'bin:40:1'}}",
      BAD, "q_mask: duplicate key"),
    /* Cross-attention, 8 queries and 40 keys: each mask over its side. */
    C("{" XQ "," TK "," TV ",'mask':{'dtype':'u8','shape':[1,8],'data':'bin:8'}"
      "}",
      BAD,
      "mask: shape [1,8] does not match k's [B,Nk] = [1,40] (mask is over "
      "the keys; q_mask is over the queries)"),
    C("{" XQ "," TK "," TV
      ",'q_mask':{'dtype':'u8','shape':[1,40],'data':'bin:40'}}",
      BAD,
      "q_mask: shape [1,40] does not match q's [B,Nq] = [1,8] (q_mask is "
      "over the queries; mask is over the keys)"),
    C("{" XQ "," TK ",'v':{'dtype':'f32','shape':[1,1,8,8],'data':'bin:256'}}",
      BAD, "v: shape [1,1,8,8] does not match k's [B,Hkv,Nk,D] = [1,1,40,8]"),
    C("{" XQ ",'k':{'dtype':'f32','shape':[1,1,40,4],'data':'bin:640'},"
      "'v':{'dtype':'f32','shape':[1,1,40,4],'data':'bin:640'}}",
      BAD,
      "k: shape [1,1,40,4] does not match q's [B,Hkv,Nk,D] = [1,Hkv,Nk,8]"),
    /* causal is a boolean, nothing else. */
    C("{" QKV ",'causal':1}", BAD,
      "causal: must be a boolean, true or false (got an integer)"),
    C("{" QKV ",'causal':0}", BAD, "causal: must be a boolean"),
    C("{" QKV ",'causal':'true'}", BAD,
      "causal: must be a boolean, true or false (got a string)"),
    C("{" QKV ",'causal':null}", BAD,
      "causal: must be a boolean, true or false (got null)"),
    C("{" QKV ",'causal':[true]}", BAD, "causal: must be a boolean"),
    C("{" QKV ",'causal':'f64:1'}", BAD,
      "causal: must be a boolean, true or false (got a float)"),
    C("{" QKV ",'causal':true,'causal':false}", BAD, "causal: duplicate key"),
    C("{" QKV ",'Causal':true}", BAD, "Causal: unknown key"),
    C("{" QKV ",'method':'fast'}", BAD, "method: must be"),
    C("{" QKV ",'method':2}", BAD, "method: must be a string"),
    C("{" QKV ",'block_per_row':0}", BAD, "block_per_row: must be >= 1"),
    C("{" QKV ",'block_per_row':-3}", BAD, "block_per_row: must be >= 1"),
    C("{" QKV ",'block_per_row':'8'}", BAD,
      "block_per_row: must be an integer (got a string)"),
    C("{" QKV ",'block_per_row':1099511627776}", BAD,
      "block_per_row: must be at most 4294967295"),
    C("{" QKV ",'block_per_row':18446744073709551615}", BAD,
      "block_per_row: must be at most"),
    C("{" QKV ",'num_blocks':0}", BAD, "num_blocks: must be >= 1"),
    C("{" QKV ",'num_blocks':true}", BAD, "num_blocks: must be an integer"),
    C("{" QKV ",'prior_first':-1}", BAD, "prior_first: must be >= 0"),
    C("{" QKV ",'prior_diagonal':1.5}", BAD,
      "prior_diagonal: must be an integer"),
    C("{" QKV ",'scale':0}", BAD, "scale: must be a finite number > 0"),
    C("{" QKV ",'scale':-0.5}", BAD, "scale: must be a finite number > 0"),
    C("{" QKV ",'scale':'0.1'}", BAD, "scale: must be a number"),
    C("{" QKV ",'scale':null}", BAD, "scale: must be a number (got null)"),
    C("{" QKV ",'scale':1e300}", BAD, "scale: 1e+300 is outside the range"),
    C("{" QKV ",'scale':'f64:nan'}", BAD, "scale: must be a finite"),
    C("{" QKV ",'scale':'f64:inf'}", BAD, "scale: must be a finite"),
    C("{" QKV ",'timeout_ms':0}", BAD, "timeout_ms: must be >= 1"),
    C("{" QKV ",'timeout_ms':[5]}", BAD, "timeout_ms: must be an integer"),
    C("{" QKV ",'id':'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
      "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
      "xxx'}",
      BAD, "id: must be at most 128 bytes (got 129)"),
    C("{" QKV ",'id':17}", BAD, "id: must be a string (got an integer)"),
    C("{" QKV ",'id':'a\\u0000b'}", BAD, "id: must be UTF-8 text"),
    C("[1,2]", BAD, "body: must be a map (got an array)"),
    C("'just a string'", BAD, "body: must be a map (got a string)"),
    C("{}", BAD, "q: missing"),
    /* Limits: 413 before anything is allocated. */
    C("{" TQS("[100,2,40,8]", "2560") "}", BIG,
      "q.shape[0]: B = 100 exceeds the limit of 64"),
    C("{" TQS("[1,1000,40,8]", "2560") "}", BIG, "q.shape[1]: H = 1000"),
    C("{" TQS("[1,2,200000,8]", "2560") "}", BIG,
      "q.shape[2]: Nq = 200000 exceeds the limit of 131072"),
    C("{" TQS("[1,2,40,512]", "2560") "}", BIG,
      "q.shape[3]: D = 512 exceeds the limit of 256"),
    C("{" TQS("[18446744073709551615,2,40,8]", "2560") "}", BIG,
      "q.shape[0]: B = 18446744073709551615 exceeds"),
    C("{" TQ ",'k':{'dtype':'f32','shape':[1,1,200000,8],'data':'bin:1'},"
      "'v':{'dtype':'f32','shape':[1,1,40,8],'data':'bin:1280'}}",
      BIG, "k.shape[2]: Nk = 200000 exceeds the limit of 131072"),
    C("{" XQ ",'k':{'dtype':'f32','shape':[1,1,200000,8],'data':'bin:1'},"
      "'v':{'dtype':'f32','shape':[1,1,200000,8],'data':'bin:1'}}",
      BIG, "k.shape[2]: Nk = 200000 exceeds the limit of 131072"),
    C("{" QKV ",'mask':{'dtype':'u8','shape':[1000,40],'data':'bin:4'}}", BIG,
      "mask.shape[0]: B = 1000"),
    C("{" QKV ",'mask':{'dtype':'u8','shape':[1,200000],'data':'bin:4'}}", BIG,
      "mask.shape[1]: Nk = 200000 exceeds"),
    C("{" QKV ",'q_mask':{'dtype':'u8','shape':[1,200000],'data':'bin:4'}}",
      BIG, "q_mask.shape[1]: Nq = 200000 exceeds the limit of 131072"),
    {"{" TQS("[1,2,40,8]", "2560") "}", PROTO_ETOOBIG,
     "q.shape: 640 elements exceed the limit of 100", 0, 100},
    {"{" TQS("[4294967295,4294967295,4294967295,8]", "4") "}", PROTO_ETOOBIG,
     "q.shape: the element count overflows 64 bits", 1, 0},
    {"{" TQS("[1,2,1099511627776,8]", "4") "}", PROTO_ETOOBIG,
     "q.shape[2]: Nq = 1099511627776 exceeds the largest supported", 1, 0},
    /* max_elements bounds k and v too, not only q: 8 queries, 40 keys. */
    {"{" XQ "," TK "," TV "}", PROTO_ETOOBIG,
     "k.shape: 320 elements exceed the limit of 300", 0, 300},
};

/* Small valid JSON tensors: q, k, v [1,1,2,2]. */
#define JT(name, data)                                                         \
    "'" name "':{'dtype':'f32','shape':[1,1,2,2],'data':" data "}"
#define JKV JT("k", "[1,2,3,4]") "," JT("v", "[1,2,3,4]")
#define JQKV JT("q", "[1,2,3,4]") "," JKV

static const struct bad_case json_cases[] = {
    C("", BAD, "body: invalid JSON at byte 0: empty body"),
    C("hello", BAD, "body: invalid JSON at byte 0: expected a value"),
    C("[1,]", BAD, "body: invalid JSON at byte 3"),
    C("{" JQKV ",}", BAD, "expected a string key"),
    C("{'q' 1}", BAD, "expected ':' after a key"),
    C("{" JQKV, BAD, "unexpected end"),
    C("{'id':'abc}", BAD, "unterminated string"),
    C("{'id':'a\\xb'}", BAD, "invalid escape in string"),
    C("{'id':'a\\u12'}", BAD, "invalid \\u escape"),
    C("{'id':'\\ud800'}", BAD, "high surrogate without a low surrogate"),
    C("{'id':'\\ud800\\u0041'}", BAD, "high surrogate without a low"),
    C("{'id':'\\udc00'}", BAD, "lone low surrogate"),
    C("{'id':'a\tb'}", BAD, "control character in string"),
    C("{'id':'\xff'}", BAD, "not valid UTF-8"),
    C("{'id':'\xc0\x80'}", BAD, "not valid UTF-8"),
    C("{'block_per_row':01}", BAD, "leading zero"),
    C("{'scale':NaN}", BAD, "expected a value"),
    C("{'scale':-}", BAD, "invalid number"),
    C("{'scale':1.}", BAD, "digits must follow '.'"),
    C("{'scale':1e}", BAD, "digits must follow the exponent"),
    C("{'scale':1e400}", BAD, "out of the range of a double"),
    C("{'scale':1234567890123456789012345678901234567890123456789012345678901"
      "234567890}",
      BAD, "number literal longer than 64"),
    C("{} {}", BAD, "trailing characters"),
    C("{'a':tru}", BAD, "expected a value"),
    C("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
      "]]]]]]]]]]",
      BAD, "nesting deeper than 16"),
    C("{" JQKV ",'method':'exact','method':'mra2'}", BAD,
      "method: duplicate key"),
    C("{" JQKV ",'extra':{}}", BAD, "extra: unknown key"),
    C("{" JT("q", "'AAAA'") "," JKV "}", BAD,
      "q.data: must be an array of numbers (got a string)"),
    C("{" JT("q", "[1,2,'3',4]") "," JKV "}", BAD,
      "q.data[2]: must be a number (got a string)"),
    C("{" JT("q", "[null,2,3,4]") "," JKV "}", BAD,
      "q.data[0]: must be a number (got null)"),
    C("{" JT("q", "[1,2,3]") "," JKV "}", BAD,
      "q.data: 3 numbers do not match the shape (4 expected)"),
    C("{" JT("q", "[1e39,2,3,4]") "," JKV "}", BAD,
      "q.data[0]: 1e+39 is out of the range of f32"),
    C("{'q':{'dtype':'f16','shape':[1,1,2,2],'data':[1,70000,3,4]},"
      "'k':{'dtype':'f16','shape':[1,1,2,2],'data':[1,2,3,4]},"
      "'v':{'dtype':'f16','shape':[1,1,2,2],'data':[1,2,3,4]}}",
      BAD, "q.data[1]: 70000 is out of the range of f16"),
    C("{" JQKV ",'mask':{'dtype':'u8','shape':[1,2],'data':[1,2]}}", BAD,
      "mask.data[1]: must be 0 or 1 (got 2)"),
    C("{" JQKV ",'mask':{'dtype':'u8','shape':[1,2],'data':[1,0.5]}}", BAD,
      "mask.data[1]: must be 0 or 1"),
    C("{" JQKV ",'id':'\\u0000'}", BAD, "id: must be UTF-8 text"),
    C("{" JQKV ",'q_mask':{'dtype':'u8','shape':[1,2],'data':[1,2]}}", BAD,
      "q_mask.data[1]: must be 0 or 1 (got 2)"),
    C("{" JQKV ",'q_mask':{'dtype':'u8','shape':[1,2],'data':[true,1]}}", BAD,
      "q_mask.data[0]: must be a number (got a boolean)"),
    C("{" JQKV ",'q_mask':{'dtype':'u8','shape':[1,3],'data':[1,1,1]}}", BAD,
      "q_mask: shape [1,3] does not match q's [B,Nq] = [1,2]"),
    C("{" JQKV ",'causal':1}", BAD,
      "causal: must be a boolean, true or false (got an integer)"),
    C("{" JQKV ",'causal':'yes'}", BAD,
      "causal: must be a boolean, true or false (got a string)"),
    C("{" JQKV ",'causal':null}", BAD, "causal: must be a boolean"),
    C("{" JQKV ",'causal':tru}", BAD, "expected a value"),
    C("{'q':{'dtype':'f32','shape':[1,1,2,2],'data':'bin:16'}," JKV "}", BAD,
      "q.data: must be an array of numbers"),
};

/* Raw msgpack bodies. */
struct raw_case {
    const char *bytes;
    size_t len;
    const char *field;
};
#define R(lit, field)                                                          \
    {                                                                          \
        lit, sizeof lit - 1, field                                             \
    }

static const struct raw_case raw_cases[] = {
    R("", "body: empty"),
    R("\xc1", "invalid msgpack type byte 0xc1"),
    R("\x81\xa1q", "truncated msgpack"),
    R("\x81\xa1q\x80\x00", "trailing bytes"),
    R("\x81\x01\x02", "body: key #0 must be a string (got an integer)"),
    R("\x81\xc4\x01q\x02", "body: key #0 must be a string (got binary data)"),
    R("\xdf\xff\xff\xff\xff", "announces 8589934590 values"),
    R("\xdd\xff\xff\xff\xff\x00", "announces 4294967295 values"),
    R("\xdb\xff\xff\xff\xff\x61", "truncated msgpack"),
    R("\xc6\x00\x01\x00\x00\x61", "truncated msgpack"),
    R("\xda\x00", "truncated msgpack header"),
    R("\x81\xa1q\xd4\x01", "truncated msgpack"),
    R("\x81\xa1q\xd4\x01\x02", "q: must be a map (got an extension object)"),
    R("\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91"
      "\x91\x91\x91\x01",
      "nesting deeper than 16"),
    R("\x81\xa1q\x81\xa5shape\xcb\x00", "truncated msgpack"),
};

static void check_result(const char *what, size_t i, int rc, int want,
                         const char *err, const char *field,
                         const struct proto_request *req, int *fails)
{
    int ok = rc == want && strstr(err, field) != NULL;
    for (size_t k = 0; k < sizeof req->owned / sizeof req->owned[0]; k++)
        ok = ok && req->owned[k] == NULL;
    if (!ok) {
        print_error("%s case %zu: rc %d (want %d), message \"%s\" "
                    "(want \"%s\")\n",
                    what, i, rc, want, err, field);
        (*fails)++;
    }
}

static void decode_case(const struct bad_case *c, enum proto_format fmt,
                        const char *what, size_t i, int *fails)
{
    size_t len;
    char *body = fmt == PROTO_MSGPACK ? tbody_msgpack(c->tmpl, &len)
                                      : tbody_json(c->tmpl);
    if (fmt == PROTO_JSON)
        len = strlen(body);
    struct proto_limits lim;
    proto_limits_default(&lim);
    if (c->nolimits)
        memset(&lim, 0, sizeof lim);
    if (c->max_elements)
        lim.max_elements = c->max_elements;
    struct proto_request req;
    char err[256] = "";
    int rc = proto_request_decode(body, len, fmt, &lim, &req, err, sizeof err);
    check_result(what, i, rc, c->code, err, c->field, &req, fails);
    proto_request_release(&req);
    free(body);
}

static void test_msgpack_cases(void **state)
{
    (void)state;
    int fails = 0;
    size_t n = sizeof msgpack_cases / sizeof msgpack_cases[0];
    for (size_t i = 0; i < n; i++)
        decode_case(&msgpack_cases[i], PROTO_MSGPACK, "msgpack", i, &fails);
    assert_int_equal(fails, 0);
    assert_true(n >= 60);
}

static void test_json_cases(void **state)
{
    (void)state;
    int fails = 0;
    size_t n = sizeof json_cases / sizeof json_cases[0];
    for (size_t i = 0; i < n; i++)
        decode_case(&json_cases[i], PROTO_JSON, "json", i, &fails);
    assert_int_equal(fails, 0);
}

/* Raw msgpack bytes, each in an exact-size heap copy. */
static void test_raw_cases(void **state)
{
    (void)state;
    int fails = 0;
    for (size_t i = 0; i < sizeof raw_cases / sizeof raw_cases[0]; i++) {
        const struct raw_case *c = &raw_cases[i];
        /* An exact-size heap copy, so reading past the end is caught. */
        char *body = malloc(c->len ? c->len : 1);
        memcpy(body, c->bytes, c->len);
        struct proto_request req;
        char err[256] = "";
        int rc = proto_request_decode(body, c->len, PROTO_MSGPACK, NULL, &req,
                                      err, sizeof err);
        check_result("raw", i, rc, PROTO_EBADREQ, err, c->field, &req, &fails);
        free(body);
    }
    assert_int_equal(fails, 0);
}

/* Bodies built to cost a lot: deep nesting and many objects. */
static void test_bombs(void **state)
{
    (void)state;
    size_t n = 100000;
    char *b = malloc(n + 1);
    struct proto_request req;
    char err[256];

    memset(b, 0x91, n); /* 100000 nested one-element arrays */
    b[n] = 0x01;
    assert_int_equal(proto_request_decode(b, n + 1, PROTO_MSGPACK, NULL, &req,
                                          err, sizeof err),
                     PROTO_EBADREQ);
    assert_non_null(strstr(err, "nesting deeper"));

    memset(b, '[', n);
    assert_int_equal(
        proto_request_decode(b, n, PROTO_JSON, NULL, &req, err, sizeof err),
        PROTO_EBADREQ);
    assert_non_null(strstr(err, "nesting deeper"));

    /* An array of 70000 nils: more objects than any request needs. */
    size_t m = 5 + 70000;
    char *c = calloc(1, m);
    memcpy(c, "\xdd\x00\x01\x11\x70", 5);
    memset(c + 5, 0xc0, 70000);
    assert_int_equal(
        proto_request_decode(c, m, PROTO_MSGPACK, NULL, &req, err, sizeof err),
        PROTO_EBADREQ);
    assert_non_null(strstr(err, "more than 65536 msgpack objects"));

    /* A 1 MB key: refused as unknown, quoted only in part. */
    size_t kn = 1 << 20;
    char *k = malloc(kn + 16);
    memcpy(k, "{\"", 2);
    memset(k + 2, 'a', kn);
    memcpy(k + 2 + kn, "\":1}", 4);
    assert_int_equal(proto_request_decode(k, kn + 6, PROTO_JSON, NULL, &req,
                                          err, sizeof err),
                     PROTO_EBADREQ);
    assert_non_null(strstr(err, "aaaa...: unknown key"));
    assert_true(strlen(err) < 100);
    free(k);

    /* A JSON array of 50000 numbers as the whole body: parses, then is
     * refused as not a map. */
    size_t jn = 2 * 50000 + 1;
    char *j = malloc(jn);
    for (size_t i = 0; i < 50000; i++) {
        j[2 * i] = i ? ',' : '[';
        j[2 * i + 1] = '7';
    }
    j[jn - 1] = ']';
    assert_int_equal(
        proto_request_decode(j, jn, PROTO_JSON, NULL, &req, err, sizeof err),
        PROTO_EBADREQ);
    assert_non_null(strstr(err, "body: must be a map"));
    free(j);
    free(c);
    free(b);
}

/* Every truncation of a valid body is refused, never read past its end. */
static void test_every_truncation(void **state)
{
    (void)state;
    size_t len;
    char *body = tbody_msgpack("{" QKV ",'mask':{'dtype':'u8','shape':[1,40],"
                               "'data':'bin:40:1'},'q_mask':{'dtype':'u8',"
                               "'shape':[1,40],'data':'bin:40:1'},"
                               "'causal':true,'id':'x','scale':0.5}",
                               &len);
    struct proto_request req;
    char err[256];
    assert_int_equal(proto_request_decode(body, len, PROTO_MSGPACK, NULL, &req,
                                          err, sizeof err),
                     PROTO_OK);
    proto_request_release(&req);
    for (size_t cut = 0; cut < len; cut++) {
        char *part = malloc(cut ? cut : 1);
        memcpy(part, body, cut);
        int rc = proto_request_decode(part, cut, PROTO_MSGPACK, NULL, &req, err,
                                      sizeof err);
        assert_int_equal(rc, PROTO_EBADREQ);
        assert_non_null(strstr(err, "body: "));
        free(part);
    }
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msgpack_cases),
        cmocka_unit_test(test_json_cases),
        cmocka_unit_test(test_raw_cases),
        cmocka_unit_test(test_bombs),
        cmocka_unit_test(test_every_truncation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
