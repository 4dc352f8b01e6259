/*
 * test-nomem.c - tests that the wire codec fails cleanly when memory runs
 * out: with the codec's allocations made to fail after 0, 1, 2, ...
 * successes, every entry point returns PROTO_ENOMEM (or NULL) with nothing
 * left to free, until the budget is large enough and the call succeeds.
 * The sanitizer build (`make test SANITIZE=address`) reports any leak on
 * those paths.
 *
 * How: this binary is linked with -Wl,--wrap=malloc,calloc,realloc,
 * posix_memalign,aligned_alloc (tests/module.mk), so every call to those
 * from the objects linked statically (libproto.a, libattn.a, this file)
 * goes to the __wrap_* functions below, which count and fail on demand.
 * msgpack-c is a shared library and is not redirected: its zones'
 * allocations never fail here, as before.  The codec's own allocations
 * are realloc() (struct pbuf, the JSON reader's value stack) and
 * posix_memalign() (proto_aligned_alloc: tensor copies and outputs).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "protocol/proto.h"
#include "tests/unit/protocol/body.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);

/* Allocations left before they start to fail; < 0 = no injection (the
 * default).  Once it reaches 0 every later allocation fails too, as when
 * memory is really exhausted, until fail_after(-1).  One thread only. */
static long budget = -1;

static void fail_after(long count)
{
    budget = count;
}

/* Consumes one allocation from the budget; false when it must fail. */
static int allowed(void)
{
    if (budget > 0)
        budget--;
    else if (budget == 0)
        return 0;
    return 1;
}

void *__wrap_malloc(size_t n)
{
    return allowed() ? __real_malloc(n) : NULL;
}
void *__wrap_calloc(size_t n, size_t m)
{
    return allowed() ? __real_calloc(n, m) : NULL;
}
void *__wrap_realloc(void *p, size_t n)
{
    return allowed() ? __real_realloc(p, n) : NULL;
}
int __wrap_posix_memalign(void **p, size_t a, size_t n)
{
    return allowed() ? __real_posix_memalign(p, a, n) : ENOMEM;
}
void *__wrap_aligned_alloc(size_t a, size_t n)
{
    return allowed() ? __real_aligned_alloc(a, n) : NULL;
}

#define TENSORS                                                                \
    "'q':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560'},"                \
    "'k':{'dtype':'f32','shape':[1,1,40,8],'data':'bin:1280'},"                \
    "'v':{'dtype':'f32','shape':[1,1,40,8],'data':'bin:1280'}"

/* Runs `call` with ever larger allocation budgets until it succeeds;
 * asserts every failure before that is an ENOMEM.  Returns the number of
 * budgets that failed. */
#define UNTIL_OK(call, ok_expr, cleanup)                                       \
    ({                                                                         \
        long n_;                                                               \
        for (n_ = 0; n_ < 1000; n_++) {                                        \
            fail_after(n_);                                                    \
            int rc_ = (call);                                                  \
            fail_after(-1);                                                    \
            if (ok_expr) {                                                     \
                cleanup;                                                       \
                break;                                                         \
            }                                                                  \
            assert_int_equal(rc_, PROTO_ENOMEM);                               \
        }                                                                      \
        assert_true(n_ < 1000);                                                \
        n_;                                                                    \
    })

static void test_request_decode(void **state)
{
    (void)state;
    size_t len;
    char *body = tbody_msgpack("{" TENSORS ",'mask':{'dtype':'u8','shape':"
                               "[1,40],'data':'bin:40:1'},'id':'m'}",
                               &len);
    /* One byte off alignment, so that every tensor is copied. */
    char *mis = malloc(len + 1);
    memcpy(mis + 1, body, len);
    struct proto_request req;
    char err[256];
    long fails = UNTIL_OK(proto_request_decode(mis + 1, len, PROTO_MSGPACK,
                                               NULL, &req, err, sizeof err),
                          rc_ == PROTO_OK, proto_request_release(&req));
    assert_true(fails >= 4); /* q, k, v copies and the output */
    fail_after(0);
    assert_int_equal(proto_request_decode(mis + 1, len, PROTO_MSGPACK, NULL,
                                          &req, err, sizeof err),
                     PROTO_ENOMEM);
    fail_after(-1);
    assert_non_null(strstr(err, "out of memory"));
    for (size_t i = 0; i < sizeof req.owned / sizeof req.owned[0]; i++)
        assert_null(req.owned[i]);
    free(mis);
    free(body);

    char *json = tbody_json(
        "{'q':{'dtype':'bf16','shape':[1,1,3,2],'data':[1,2,3,4,5,6]},"
        "'k':{'dtype':'bf16','shape':[1,1,3,2],'data':[1,2,3,4,5,6]},"
        "'v':{'dtype':'bf16','shape':[1,1,3,2],'data':[1,2,3,4,5,6]},"
        "'mask':{'dtype':'u8','shape':[1,3],'data':[1,0,1]},"
        "'q_mask':{'dtype':'u8','shape':[1,3],'data':[0,1,1]},"
        "'causal':true}");
    fails = UNTIL_OK(proto_request_decode(json, strlen(json), PROTO_JSON, NULL,
                                          &req, err, sizeof err),
                     rc_ == PROTO_OK, proto_request_release(&req));
    assert_true(fails >= 7); /* value stack, 5 tensors, output */
    free(json);
}

static void test_encoders(void **state)
{
    (void)state;
    size_t len;
    char *body = tbody_msgpack("{" TENSORS ",'id':'enc'}", &len);
    struct proto_request req;
    char err[256];
    assert_int_equal(proto_request_decode(body, len, PROTO_MSGPACK, NULL, &req,
                                          err, sizeof err),
                     PROTO_OK);
    memset(req.prob.out, 0, 2560);
    struct proto_stats st = {.backend = "cpu", .batch_requests = 1};
    char *out = NULL;
    size_t olen;
    for (int fmt = PROTO_MSGPACK; fmt <= PROTO_JSON; fmt++) {
        req.format = (enum proto_format)fmt;
        long fails = UNTIL_OK(proto_response_encode(&req, &st, &out, &olen),
                              rc_ == PROTO_OK, free(out));
        assert_true(fails >= 1);
        fails =
            UNTIL_OK(proto_request_encode(&req.prob, fmt, "x", 5, &out, &olen),
                     rc_ == PROTO_OK, free(out));
        assert_true(fails >= 1);
    }
    /* The answer in pieces: its head and tail in one buffer. */
    req.format = PROTO_MSGPACK;
    size_t head, outlen, tail;
    long split_fails = UNTIL_OK(
        proto_response_encode_split(&req, &st, &out, &head, &outlen, &tail),
        rc_ == PROTO_OK, free(out));
    assert_true(split_fails >= 1);
    /* The answer decoder copies JSON numbers into an owned buffer. */
    req.format = PROTO_JSON;
    assert_int_equal(proto_response_encode(&req, &st, &out, &olen), PROTO_OK);
    struct proto_response r;
    long fails = UNTIL_OK(
        proto_response_decode(out, olen, PROTO_JSON, &r, err, sizeof err),
        rc_ == PROTO_OK, proto_response_release(&r));
    assert_true(fails >= 1);
    free(out);
    proto_request_release(&req);
    free(body);

    /* The error body returns NULL rather than a code. */
    char *eb = NULL;
    fails = UNTIL_OK((eb = proto_error_body("bad_request", "m", NULL)) != NULL
                         ? PROTO_OK
                         : PROTO_ENOMEM,
                     rc_ == PROTO_OK, free(eb));
    assert_true(fails >= 1);
}

/* The session bodies and answers. */
static void test_sessions(void **state)
{
    (void)state;
    size_t len;
    char *body = tbody_msgpack(
        "{'k':{'dtype':'f32','shape':[1,1,40,8],'data':'bin:1280'},"
        "'v':{'dtype':'f32','shape':[1,1,40,8],'data':'bin:1280'},"
        "'mask':{'dtype':'u8','shape':[1,40],'data':'bin:40:1'},"
        "'ttl_ms':10}",
        &len);
    char *mis = malloc(len + 1);
    memcpy(mis + 1, body, len);
    struct proto_kv_body kb;
    char err[256];
    long fails = UNTIL_OK(proto_kv_body_decode(mis + 1, len, PROTO_MSGPACK,
                                               NULL, 1, &kb, err, sizeof err),
                          rc_ == PROTO_OK, (void)0);
    assert_true(fails >= 2); /* k and v copies */
    for (int fmt = PROTO_MSGPACK; fmt <= PROTO_JSON; fmt++) {
        char *out = NULL;
        size_t olen;
        fails =
            UNTIL_OK(proto_kv_body_encode(&kb.shape, &kb.tokens, 10,
                                          (enum proto_format)fmt, &out, &olen),
                     rc_ == PROTO_OK, free(out));
        assert_true(fails >= 1);
        /* A step on the session that appends the same tokens. */
        float q[2 * 8] = {0};
        struct attn_problem p = {0};
        p.dtype = ATTN_F32;
        p.B = 1, p.H = 2, p.Hkv = 1, p.Nq = 1, p.D = 8;
        p.q = q;
        p.append = kb.tokens;
        struct proto_encode_opts o = {.kv = "s"};
        fails = UNTIL_OK(proto_request_encode_opts(&p, (enum proto_format)fmt,
                                                   &o, &out, &olen),
                         rc_ == PROTO_OK, free(out));
        assert_true(fails >= 1);
    }
    proto_kv_body_release(&kb);
    free(mis);
    free(body);
    struct proto_kv_info in = {"id", {ATTN_F32, 1, 1, 8}, 40, 1, 2, 3};
    char *j = NULL;
    fails = UNTIL_OK((j = proto_kv_info_json(&in, NULL)) != NULL ? PROTO_OK
                                                                 : PROTO_ENOMEM,
                     rc_ == PROTO_OK, free(j));
    assert_true(fails >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_decode),
        cmocka_unit_test(test_encoders),
        cmocka_unit_test(test_sessions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
