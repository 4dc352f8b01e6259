/*
 * test-kv.c - tests the wire codec of resident key/value sessions
 * (protocol/SPEC.md, "Sessions"): requests that name a session ("kv", or
 * the path's id) with appended tokens, the create and append bodies, the
 * session answer, and their encoders, in msgpack and JSON.
 *
 * Refusals assert the code and that the message names the field, as
 * test-malformed.c does for requests with their own keys.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "protocol/proto.h"
#include "tests/unit/protocol/body.h"

/* q [1,4,2,8] f16; appended tokens [1,2,3,8]. */
#define Q "'q':{'dtype':'f16','shape':[1,4,2,8],'data':'bin:128'}"
#define KA "'k_append':{'dtype':'f16','shape':[1,2,3,8],'data':'bin:96'}"
#define VA "'v_append':{'dtype':'f16','shape':[1,2,3,8],'data':'bin:96'}"
#define MA "'mask_append':{'dtype':'u8','shape':[1,3],'data':'bin:3:1'}"
#define K "'k':{'dtype':'f16','shape':[1,2,3,8],'data':'bin:96'}"
#define V "'v':{'dtype':'f16','shape':[1,2,3,8],'data':'bin:96'}"
#define M "'mask':{'dtype':'u8','shape':[1,3],'data':'bin:3:1'}"

/* The body of the last decode(): the tensors of a request point into it,
 * so it lives until the next decode() (or the end of the test run). */
static char *last_body;

static int decode(const char *tmpl, const char *path, struct proto_request *req,
                  char *err, size_t errlen)
{
    size_t len;
    free(last_body);
    char *body = last_body = tbody_msgpack(tmpl, &len);
    struct proto_decode_opts o = {NULL, NULL, path};
    int rc = proto_request_decode_opts(body, len, PROTO_MSGPACK, &o, req, err,
                                       errlen);
    /* The appended keys, zeros in every template. */
    if (rc == PROTO_OK && req->prob.append.n) {
        size_t n = (size_t)req->prob.B * req->prob.Hkv * req->prob.append.n *
                   req->prob.D * 2;
        const unsigned char *k = req->prob.append.k;
        for (size_t i = 0; i < n; i++)
            assert_int_equal(k[i], 0);
    }
    return rc;
}

static void test_session_request(void **state)
{
    (void)state;
    struct proto_request req;
    char err[256];
    assert_int_equal(decode("{" Q ",'kv':'s-1_A'," KA "," VA "," MA
                            ",'causal':true}",
                            NULL, &req, err, sizeof err),
                     PROTO_OK);
    assert_true(req.has_kv);
    assert_string_equal(req.kv, "s-1_A");
    assert_null(req.prob.k);
    assert_null(req.prob.v);
    assert_null(req.prob.mask);
    assert_int_equal(req.prob.Hkv, 2);
    assert_int_equal(req.prob.append.n, 3);
    assert_non_null(req.prob.append.mask);
    assert_int_equal(req.prob.append.mask[2], 1);
    assert_int_equal(req.prob.causal, 1);
    assert_int_equal(req.prob.Nq, 2);
    assert_non_null(req.prob.out);
    proto_request_release(&req);

    /* Queries only; the session named by the path. */
    assert_int_equal(decode("{" Q "}", "abc", &req, err, sizeof err), PROTO_OK);
    assert_true(req.has_kv);
    assert_string_equal(req.kv, "abc");
    assert_int_equal(req.prob.append.n, 0);
    assert_int_equal(req.prob.Hkv, 0);
    proto_request_release(&req);

    /* Without a session, a request is as before. */
    assert_int_equal(decode("{" Q "," K "," V "}", NULL, &req, err, sizeof err),
                     PROTO_OK);
    assert_false(req.has_kv);
    assert_int_equal(req.prob.Nk, 3);
    proto_request_release(&req);
}

struct bad {
    const char *tmpl;
    const char *path;
    int code;
    const char *field;
};

static void test_session_request_refused(void **state)
{
    (void)state;
    char long_id[80];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    char body_long[200];
    snprintf(body_long, sizeof body_long, "{" Q ",'kv':'%s'}", long_id);
    const struct bad cases[] = {
        {"{" Q ",'kv':'s'," K "}", NULL, PROTO_EBADREQ, "k: not with kv"},
        {"{" Q ",'kv':'s'," V "}", NULL, PROTO_EBADREQ, "v: not with kv"},
        {"{" Q ",'kv':'s'," M "}", NULL, PROTO_EBADREQ, "mask: not with kv"},
        {"{" Q ",'kv':'s'," KA "}", NULL, PROTO_EBADREQ, "v_append: missing"},
        {"{" Q ",'kv':'s'," VA "}", NULL, PROTO_EBADREQ, "k_append: missing"},
        {"{" Q ",'kv':'s'," MA "}", NULL, PROTO_EBADREQ,
         "mask_append: only with k_append"},
        {"{" Q "," K "," V "," KA "," VA "}", NULL, PROTO_EBADREQ,
         "k_append: only with kv"},
        {"{" Q "," K "," V "," MA "}", NULL, PROTO_EBADREQ,
         "mask_append: only with kv"},
        {"{" Q ",'kv':5}", NULL, PROTO_EBADREQ, "kv: must be a string"},
        {"{" Q ",'kv':''}", NULL, PROTO_EBADREQ, "kv: must be a session id"},
        {"{" Q ",'kv':'a/b'}", NULL, PROTO_EBADREQ, "kv: must be a session id"},
        {body_long, NULL, PROTO_EBADREQ, "kv: must be a session id"},
        {"{" Q ",'kv':'s'}", "s", PROTO_EBADREQ,
         "kv: not in the body when the path"},
        {"{" Q "}", "a.b", PROTO_EBADREQ, "kv: the path's session id"},
        {"{" Q ",'kv':'s'," KA
         ",'v_append':{'dtype':'f16','shape':[1,2,4,8],'data':'bin:128'}}",
         NULL, PROTO_EBADREQ, "v_append: shape [1,2,4,8] does not match"},
        {"{" Q ",'kv':'s',"
         "'k_append':{'dtype':'f16','shape':[2,2,3,8],'data':'bin:192'},"
         "'v_append':{'dtype':'f16','shape':[2,2,3,8],'data':'bin:192'}}",
         NULL, PROTO_EBADREQ, "k_append: shape [2,2,3,8] does not match q's"},
        {"{" Q ",'kv':'s',"
         "'k_append':{'dtype':'f32','shape':[1,2,3,8],'data':'bin:192'},"
         "'v_append':{'dtype':'f32','shape':[1,2,3,8],'data':'bin:192'}}",
         NULL, PROTO_EBADREQ, "k_append.dtype: must match q.dtype"},
        {"{" Q ",'kv':'s'," KA "," VA
         ",'mask_append':{'dtype':'u8','shape':[1,4],'data':'bin:4:1'}}",
         NULL, PROTO_EBADREQ, "mask_append: shape [1,4] does not match"},
        {"{" Q ",'kv':'s'," KA "," VA
         ",'mask_append':{'dtype':'u8','shape':[1,3],'data':'bin:3:2'}}",
         NULL, PROTO_EBADREQ, "mask_append.data[0]: must be 0 or 1"},
        {"{" Q ",'kv':'s'," KA
         ",'v_append':{'dtype':'f16','shape':[1,2,3,8],'data':'bin:95'}}",
         NULL, PROTO_EBADREQ, "v_append.data: length 95"},
        {"{" Q ",'kv':'s',"
         "'k_append':{'dtype':'f16','shape':[1,2,99999999,8],'data':'bin:2'},"
         "'v_append':{'dtype':'f16','shape':[1,2,3,8],'data':'bin:96'}}",
         NULL, PROTO_ETOOBIG, "k_append.shape[2]: n = 99999999"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct proto_request req;
        char err[256] = "";
        int rc = decode(cases[i].tmpl, cases[i].path, &req, err, sizeof err);
        if (rc != cases[i].code || !strstr(err, cases[i].field)) {
            print_error("case %zu: rc %d, message \"%s\", want %d \"%s\"\n", i,
                        rc, err, cases[i].code, cases[i].field);
            fail();
        }
        for (size_t j = 0; j < sizeof req.owned / sizeof req.owned[0]; j++)
            assert_null(req.owned[j]);
    }
}

/* A problem on a session encodes (both formats, with "kv" in the body or
 * the path) to a body that decodes to the same request. */
static void test_session_request_encode(void **state)
{
    (void)state;
    uint16_t q[1 * 4 * 2 * 8], ka[1 * 2 * 3 * 8], va[1 * 2 * 3 * 8];
    for (size_t i = 0; i < sizeof q / 2; i++)
        q[i] = attn_f32_to_f16((float)i * 0.25f);
    for (size_t i = 0; i < sizeof ka / 2; i++) {
        ka[i] = attn_f32_to_f16(-(float)i);
        va[i] = attn_f32_to_f16((float)i + 0.5f);
    }
    uint8_t ma[3] = {1, 0, 1}, qm[2] = {0, 1};
    struct attn_problem p = {0};
    p.method = ATTN_EXACT;
    p.dtype = ATTN_F16;
    p.B = 1, p.H = 4, p.Hkv = 2, p.Nq = 2, p.D = 8;
    p.q = q;
    p.q_mask = qm;
    p.causal = 1;
    p.append = (struct attn_kv_tokens){ka, va, ma, 3};
    for (int fmt = PROTO_MSGPACK; fmt <= PROTO_JSON; fmt++)
        for (int in_path = 0; in_path <= 1; in_path++) {
            struct proto_encode_opts o = {.id = "r1",
                                          .timeout_ms = 7,
                                          .kv = "sess",
                                          .kv_in_path = in_path};
            char *body, err[256];
            size_t len;
            assert_int_equal(proto_request_encode_opts(
                                 &p, (enum proto_format)fmt, &o, &body, &len),
                             PROTO_OK);
            struct proto_decode_opts d = {NULL, NULL, in_path ? "sess" : NULL};
            struct proto_request req;
            int rc = proto_request_decode_opts(
                body, len, (enum proto_format)fmt, &d, &req, err, sizeof err);
            if (rc != PROTO_OK)
                print_error("%s\n", err);
            assert_int_equal(rc, PROTO_OK);
            assert_true(req.has_kv);
            assert_string_equal(req.kv, "sess");
            assert_string_equal(req.id, "r1");
            assert_int_equal(req.timeout_ms, 7);
            assert_int_equal(req.prob.causal, 1);
            assert_int_equal(req.prob.method, ATTN_EXACT);
            assert_int_equal(req.prob.append.n, 3);
            assert_memory_equal(req.prob.append.k, ka, sizeof ka);
            assert_memory_equal(req.prob.append.v, va, sizeof va);
            assert_memory_equal(req.prob.append.mask, ma, 3);
            assert_memory_equal(req.prob.q, q, sizeof q);
            assert_memory_equal(req.prob.q_mask, qm, 2);
            proto_request_release(&req);
            /* Without the path, a body written for it has no keys. */
            if (in_path) {
                rc = proto_request_decode(body, len, (enum proto_format)fmt,
                                          NULL, &req, err, sizeof err);
                assert_int_equal(rc, PROTO_EBADREQ);
                assert_non_null(strstr(err, "k: missing"));
            }
            free(body);
        }
    /* A session id that is not one, appended tokens without their data. */
    struct proto_encode_opts bad = {.kv = "a b"};
    char *body;
    size_t len;
    assert_int_equal(
        proto_request_encode_opts(&p, PROTO_MSGPACK, &bad, &body, &len),
        PROTO_EBADREQ);
    bad.kv = "ok";
    p.append.v = NULL;
    assert_int_equal(
        proto_request_encode_opts(&p, PROTO_MSGPACK, &bad, &body, &len),
        PROTO_EBADREQ);
}

static void test_kv_body(void **state)
{
    (void)state;
    struct proto_kv_body kb;
    char err[256];
    size_t len;
    char *body = tbody_msgpack("{" K "," V "," M ",'ttl_ms':5000}", &len);
    assert_int_equal(proto_kv_body_decode(body, len, PROTO_MSGPACK, NULL, 1,
                                          &kb, err, sizeof err),
                     PROTO_OK);
    assert_int_equal(kb.shape.dtype, ATTN_F16);
    assert_int_equal(kb.shape.B, 1);
    assert_int_equal(kb.shape.Hkv, 2);
    assert_int_equal(kb.shape.D, 8);
    assert_int_equal(kb.tokens.n, 3);
    assert_int_equal(kb.ttl_ms, 5000);
    assert_non_null(kb.tokens.mask);
    proto_kv_body_release(&kb);
    /* An append has no ttl_ms. */
    assert_int_equal(proto_kv_body_decode(body, len, PROTO_MSGPACK, NULL, 0,
                                          &kb, err, sizeof err),
                     PROTO_EBADREQ);
    assert_non_null(strstr(err, "ttl_ms: unknown key"));
    free(body);

    const struct bad cases[] = {
        {"{" V "}", NULL, PROTO_EBADREQ, "k: missing"},
        {"{" K "}", NULL, PROTO_EBADREQ, "v: missing"},
        {"{" K "," V ",'q':1}", NULL, PROTO_EBADREQ, "q: unknown key"},
        {"{" K ",'v':{'dtype':'f16','shape':[1,2,4,8],'data':'bin:128'}}", NULL,
         PROTO_EBADREQ, "v: shape [1,2,4,8] does not match k's"},
        {"{" K ",'v':{'dtype':'bf16','shape':[1,2,3,8],'data':'bin:96'}}", NULL,
         PROTO_EBADREQ, "v.dtype: must match k.dtype"},
        {"{" K "," V ",'mask':{'dtype':'u8','shape':[1,2],'data':'bin:2:1'}}",
         NULL, PROTO_EBADREQ, "mask: shape [1,2] does not match k's"},
        {"{" K "," V ",'ttl_ms':0}", NULL, PROTO_EBADREQ,
         "ttl_ms: must be >= 1"},
        {"{" K "," V ",'ttl_ms':'x'}", NULL, PROTO_EBADREQ,
         "ttl_ms: must be an integer"},
        {"{'k':{'dtype':'u8','shape':[1,2,3,8],'data':'bin:48'}," V "}", NULL,
         PROTO_EBADREQ, "k.dtype: must be"},
        {"{'k':{'dtype':'f16','shape':[1,2,3,9999],'data':'bin:2'}," V "}",
         NULL, PROTO_ETOOBIG, "k.shape[3]: D = 9999"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        body = tbody_msgpack(cases[i].tmpl, &len);
        err[0] = '\0';
        int rc = proto_kv_body_decode(body, len, PROTO_MSGPACK, NULL, 1, &kb,
                                      err, sizeof err);
        free(body);
        if (rc != cases[i].code || !strstr(err, cases[i].field)) {
            print_error("case %zu: rc %d, message \"%s\", want %d \"%s\"\n", i,
                        rc, err, cases[i].code, cases[i].field);
            fail();
        }
        for (size_t j = 0; j < 3; j++)
            assert_null(kb.owned[j]);
    }
}

static void test_kv_body_encode(void **state)
{
    (void)state;
    float k[1 * 1 * 2 * 4], v[1 * 1 * 2 * 4];
    for (int i = 0; i < 8; i++)
        k[i] = (float)i - 3.5f, v[i] = 1.0f / (float)(i + 1);
    uint8_t m[2] = {1, 0};
    struct attn_kv_shape sh = {ATTN_F32, 1, 1, 4};
    struct attn_kv_tokens t = {k, v, m, 2};
    for (int fmt = PROTO_MSGPACK; fmt <= PROTO_JSON; fmt++)
        for (int create = 0; create <= 1; create++) {
            char *body, err[256];
            size_t len;
            assert_int_equal(proto_kv_body_encode(&sh, &t, create ? 60000 : 0,
                                                  (enum proto_format)fmt, &body,
                                                  &len),
                             PROTO_OK);
            struct proto_kv_body kb;
            int rc = proto_kv_body_decode(body, len, (enum proto_format)fmt,
                                          NULL, create, &kb, err, sizeof err);
            if (rc != PROTO_OK)
                print_error("%s\n", err);
            assert_int_equal(rc, PROTO_OK);
            assert_int_equal(kb.shape.dtype, sh.dtype);
            assert_int_equal(kb.shape.B, sh.B);
            assert_int_equal(kb.shape.Hkv, sh.Hkv);
            assert_int_equal(kb.shape.D, sh.D);
            assert_int_equal(kb.tokens.n, 2);
            assert_memory_equal(kb.tokens.k, k, sizeof k);
            assert_memory_equal(kb.tokens.v, v, sizeof v);
            assert_memory_equal(kb.tokens.mask, m, 2);
            assert_int_equal(kb.ttl_ms, create ? 60000 : 0);
            proto_kv_body_release(&kb);
            free(body);
        }
    char *body;
    size_t len;
    t.k = NULL;
    assert_int_equal(proto_kv_body_encode(&sh, &t, 0, PROTO_JSON, &body, &len),
                     PROTO_EBADREQ);
}

static void test_kv_info(void **state)
{
    (void)state;
    struct proto_kv_info in = {
        "0123abcd", {ATTN_BF16, 2, 8, 128}, 65536, 1u << 30, 600000, 12};
    size_t len;
    char *j = proto_kv_info_json(&in, &len);
    assert_non_null(j);
    assert_int_equal(strlen(j), len);
    assert_non_null(strstr(j, "\"shape\":[2,8,65536,128]"));
    assert_non_null(strstr(j, "\"dtype\":\"bf16\""));
    struct proto_kv_info out;
    assert_int_equal(proto_kv_info_parse(j, len, &out), PROTO_OK);
    assert_string_equal(out.kv, in.kv);
    assert_int_equal(out.shape.dtype, in.shape.dtype);
    assert_int_equal(out.shape.B, in.shape.B);
    assert_int_equal(out.shape.Hkv, in.shape.Hkv);
    assert_int_equal(out.shape.D, in.shape.D);
    assert_int_equal(out.tokens, in.tokens);
    assert_int_equal(out.bytes, in.bytes);
    assert_int_equal(out.ttl_ms, in.ttl_ms);
    assert_int_equal(out.idle_ms, in.idle_ms);
    free(j);
    /* Unknown keys are skipped; the id, dtype, shape and count are
     * required. */
#define SH "\"dtype\":\"f16\",\"shape\":[1,2,3,4]"
    const char *extra = "{\"kv\":\"x\",\"tokens\":3,\"new\":[1]," SH "}";
    assert_int_equal(proto_kv_info_parse(extra, strlen(extra), &out), PROTO_OK);
    assert_int_equal(out.tokens, 3);
    assert_int_equal(out.shape.dtype, ATTN_F16);
    assert_int_equal(out.shape.D, 4);
    const char *bad[] = {"{\"tokens\":3," SH "}",
                         "{\"kv\":\"x\"," SH "}",
                         "{\"kv\":\"a b\",\"tokens\":1," SH "}",
                         "{\"kv\":\"x\",\"tokens\":-1," SH "}",
                         "{\"kv\":\"x\",\"tokens\":1}",
                         "{\"kv\":\"x\",\"tokens\":1,\"dtype\":\"f64\","
                         "\"shape\":[1,2,3,4]}",
                         "{\"kv\":\"x\",\"tokens\":1,\"dtype\":\"f32\","
                         "\"shape\":[1,2,3]}",
                         "[1]",
                         "{"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(proto_kv_info_parse(bad[i], strlen(bad[i]), &out),
                         PROTO_EBADREQ);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_request),
        cmocka_unit_test(test_session_request_refused),
        cmocka_unit_test(test_session_request_encode),
        cmocka_unit_test(test_kv_body),
        cmocka_unit_test(test_kv_body_encode),
        cmocka_unit_test(test_kv_info),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    free(last_body);
    return rc;
}
