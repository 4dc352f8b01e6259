/*
 * test-v2.c - tests protocol/v2.c, the KServe v2 inference request and
 * answer: JSON tensors (flat and nested, BOOL masks), binary data after
 * the JSON header, shared-memory inputs and output through the caller's
 * resolver, the parameters, the answer in its three forms, and refusals
 * that name their field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "protocol/proto.h"

static struct proto_stats stats = {.backend = "cpu", .batch_requests = 1};

static int decode(const char *json, const void *bin, size_t binlen,
                  const struct proto_v2_opts *o, struct proto_v2_request *r,
                  char *err, size_t errlen, char **keep)
{
    size_t jl = strlen(json);
    char *body = malloc(jl + binlen + 1);
    memcpy(body, json, jl);
    if (binlen)
        memcpy(body + jl, bin, binlen);
    int rc = proto_v2_request_decode(body, jl + binlen, jl, "exact", o, r, err,
                                     errlen);
    *keep = body; /* binary inputs are read in place */
    return rc;
}

#define Q1 "{\"name\":\"q\",\"datatype\":\"FP32\",\"shape\":[1,1,2,2],"
#define K1 "{\"name\":\"k\",\"datatype\":\"FP32\",\"shape\":[1,1,2,2],"
#define V1 "{\"name\":\"v\",\"datatype\":\"FP32\",\"shape\":[1,1,2,2],"

static void test_json_tensors(void **state)
{
    (void)state;
    struct proto_v2_request r;
    char err[256], *keep;
    const char *json =
        "{\"id\":\"r-1\",\"inputs\":[" Q1 "\"data\":[1,0,0,1]}," K1
        "\"data\":[[[[1,0],[0,1]]]]}," V1 "\"data\":[[1,2],[3,4]]},"
        "{\"name\":\"mask\",\"datatype\":\"BOOL\",\"shape\":[1,2],"
        "\"data\":[true,false]}],"
        "\"parameters\":{\"causal\":true,\"scale\":0.5}}";
    int rc = decode(json, NULL, 0, NULL, &r, err, sizeof err, &keep);
    if (rc != PROTO_OK)
        print_error("%s\n", err);
    assert_int_equal(rc, PROTO_OK);
    const struct attn_problem *p = &r.req.prob;
    assert_int_equal(p->method, ATTN_EXACT);
    assert_int_equal(p->Nq, 2);
    assert_int_equal(p->Nk, 2);
    assert_int_equal(p->causal, 1);
    assert_true(p->scale == 0.5f);
    assert_int_equal(p->mask[0], 1);
    assert_int_equal(p->mask[1], 0);
    assert_true(((const float *)p->v)[3] == 4.0f);
    assert_string_equal(r.v2_id, "r-1");
    assert_false(r.binary_out);
    /* the answer, as JSON numbers */
    memset(p->out, 0, 16);
    ((float *)p->out)[1] = 2.5f;
    char *ans;
    size_t alen;
    assert_int_equal(proto_v2_response_encode(&r, &stats, &ans, &alen),
                     PROTO_OK);
    assert_int_equal(strlen(ans), alen);
    assert_non_null(strstr(ans, "\"model_name\":\"exact\""));
    assert_non_null(strstr(ans, "\"id\":\"r-1\""));
    assert_non_null(strstr(ans, "\"name\":\"out\",\"datatype\":\"FP32\","
                                "\"shape\":[1,1,2,2],\"data\":[0,2.5,0,0]"));
    assert_non_null(strstr(ans, "\"backend\":\"cpu\""));
    free(ans);
    proto_v2_request_release(&r);
    free(keep);
}

static void test_binary(void **state)
{
    (void)state;
    /* f16 q, k, v [1,2,3,4] in the body after the header */
    uint16_t t[3][24];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 24; j++)
            t[i][j] = attn_f32_to_f16((float)(i * 24 + j) / 8.0f);
    const char *json =
        "{\"inputs\":["
        "{\"name\":\"q\",\"datatype\":\"FP16\",\"shape\":[1,2,3,4],"
        "\"parameters\":{\"binary_data_size\":48}},"
        "{\"name\":\"k\",\"datatype\":\"FP16\",\"shape\":[1,2,3,4],"
        "\"parameters\":{\"binary_data_size\":48}},"
        "{\"name\":\"v\",\"datatype\":\"FP16\",\"shape\":[1,2,3,4],"
        "\"parameters\":{\"binary_data_size\":48}}],"
        "\"outputs\":[{\"name\":\"out\",\"parameters\":{\"binary_data\":true}}]"
        ","
        "\"parameters\":{\"block_per_row\":2,\"timeout\":1500}}";
    struct proto_v2_request r;
    char err[256], *keep;
    int rc = decode(json, t, sizeof t, NULL, &r, err, sizeof err, &keep);
    if (rc != PROTO_OK)
        print_error("%s\n", err);
    assert_int_equal(rc, PROTO_OK);
    assert_int_equal(r.req.prob.dtype, ATTN_F16);
    assert_memory_equal(r.req.prob.k, t[1], 48);
    assert_memory_equal(r.req.prob.v, t[2], 48);
    assert_int_equal(r.req.prob.block_per_row, 2);
    assert_int_equal(r.req.timeout_ms, 2); /* 1500 us */
    assert_true(r.binary_out);
    char *ans;
    size_t alen;
    assert_int_equal(proto_v2_response_encode(&r, &stats, &ans, &alen),
                     PROTO_OK);
    assert_non_null(strstr(ans, "\"datatype\":\"FP16\",\"shape\":[1,2,3,4],"
                                "\"parameters\":{\"binary_data_size\":48}"));
    assert_null(strstr(ans, "\"data\""));
    free(ans);
    proto_v2_request_release(&r);
    free(keep);
    /* the request-level switch */
    const char *json2 = "{\"inputs\":[" Q1 "\"data\":[1,0,0,1]}," K1
                        "\"data\":[1,0,0,1]}," V1 "\"data\":[1,0,0,1]}],"
                        "\"parameters\":{\"binary_data_output\":true}}";
    assert_int_equal(decode(json2, NULL, 0, NULL, &r, err, sizeof err, &keep),
                     PROTO_OK);
    assert_true(r.binary_out);
    proto_v2_request_release(&r);
    free(keep);
}

/* A resolver over a local buffer, as the server's over its regions. */
static float region[64];

static int resolve(void *ctx, const struct proto_v2_shm *ref, const char *what,
                   uint64_t need, void **ptr, char *err, size_t errlen)
{
    (*(int *)ctx)++;
    if (strcmp(ref->region, "r0") != 0) {
        snprintf(err, errlen, "%s: no region \"%s\"", what, ref->region);
        return PROTO_EBADREQ;
    }
    if (ref->offset + need > sizeof region) {
        snprintf(err, errlen, "%s: past the region", what);
        return PROTO_EBADREQ;
    }
    *ptr = (char *)region + ref->offset;
    return PROTO_OK;
}

static void test_shared_memory(void **state)
{
    (void)state;
    for (int i = 0; i < 64; i++)
        region[i] = (float)i;
    int calls = 0;
    struct proto_v2_opts o = {{0}, resolve, &calls};
    const char *json =
        "{\"inputs\":[" Q1 "\"parameters\":{\"shared_memory_region\":\"r0\","
        "\"shared_memory_byte_size\":16}}," K1
        "\"parameters\":{\"shared_memory_region\":\"r0\","
        "\"shared_memory_byte_size\":16,\"shared_memory_offset\":16}}," V1
        "\"data\":[1,2,3,4]}],"
        "\"outputs\":[{\"name\":\"out\",\"parameters\":{"
        "\"shared_memory_region\":\"r0\",\"shared_memory_byte_size\":16,"
        "\"shared_memory_offset\":128}}]}";
    struct proto_v2_request r;
    char err[256], *keep;
    int rc = decode(json, NULL, 0, &o, &r, err, sizeof err, &keep);
    if (rc != PROTO_OK)
        print_error("%s\n", err);
    assert_int_equal(rc, PROTO_OK);
    assert_int_equal(calls, 3);
    assert_ptr_equal(r.req.prob.q, region);
    assert_ptr_equal(r.req.prob.k, region + 4);
    assert_ptr_equal(r.req.prob.out, region + 32);
    assert_true(r.shm_out);
    char *ans;
    size_t alen;
    assert_int_equal(proto_v2_response_encode(&r, &stats, &ans, &alen),
                     PROTO_OK);
    assert_non_null(strstr(ans,
                           "\"outputs\":[{\"name\":\"out\","
                           "\"datatype\":\"FP32\",\"shape\":[1,1,2,2]}]}"));
    free(ans);
    /* The output is the client's: releasing the request leaves it. */
    proto_v2_request_release(&r);
    free(keep);
    assert_true(region[32] == 32.0f);

    /* The resolver's refusal, and shared memory off. */
    const char *bad =
        "{\"inputs\":[" Q1 "\"parameters\":{\"shared_memory_region\":\"nope\","
        "\"shared_memory_byte_size\":16}}," K1 "\"data\":[1,2,3,4]}," V1
        "\"data\":[1,2,3,4]}]}";
    assert_int_equal(decode(bad, NULL, 0, &o, &r, err, sizeof err, &keep),
                     PROTO_EBADREQ);
    assert_non_null(strstr(err, "inputs[0]: no region \"nope\""));
    free(keep);
    assert_int_equal(decode(bad, NULL, 0, NULL, &r, err, sizeof err, &keep),
                     PROTO_EBADREQ);
    assert_non_null(strstr(err, "shared memory is not enabled"));
    free(keep);
}

struct bad {
    const char *json;
    size_t binlen;
    const char *field;
};

static void test_refused(void **state)
{
    (void)state;
    static const char bin[64];
    int calls = 0;
    struct proto_v2_opts o = {{0}, resolve, &calls};
    const struct bad cases[] = {
        {"[1]", 0, "body: must be an object"},
        {"{\"inputs\":[]}", 0, "q: missing"},
        {"{}", 0, "inputs: missing"},
        {"{\"inputs\":5}", 0, "inputs: must be an array"},
        {"{\"inputs\":[" Q1 "\"data\":[1,0,0,1]}],\"extra\":1}", 0,
         "body.extra: unknown key"},
        {"{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[1],"
         "\"data\":[1]}]}",
         0, "inputs[0].name: unknown input \"x\""},
        {"{\"inputs\":[{\"name\":\"q\",\"datatype\":\"INT32\",\"shape\":[1,1,"
         "2,2],\"data\":[1,0,0,1]}]}",
         0, "inputs[0].datatype: must be FP32, FP16 or BF16"},
        {"{\"inputs\":[{\"name\":\"mask\",\"datatype\":\"FP32\",\"shape\":[1,"
         "2],\"data\":[1,0]}]}",
         0, "inputs[0].datatype: must be UINT8 or BOOL"},
        {"{\"inputs\":[{\"name\":\"q\",\"datatype\":\"FP32\",\"shape\":[1,1,"
         "2,2],\"data\":[1,0,0]}]}",
         0, "inputs[0].data: 3 numbers do not match the shape (4 expected)"},
        {"{\"inputs\":[{\"name\":\"q\",\"datatype\":\"FP32\",\"shape\":[1,1,"
         "2,-2],\"data\":[1,0,0,1]}]}",
         0, "inputs[0].shape[3]: must be an integer >= 0"},
        {"{\"inputs\":[" Q1 "\"data\":[1,0,0,1],\"parameters\":{"
         "\"binary_data_size\":16}}]}",
         16, "inputs[0]: needs exactly one of"},
        {"{\"inputs\":[" Q1 "\"parameters\":{\"binary_data_size\":12}}]}", 12,
         "inputs[0].parameters.binary_data_size: 12 bytes, the shape and "
         "datatype make 16"},
        {"{\"inputs\":[" Q1 "\"parameters\":{\"binary_data_size\":16}}]}", 8,
         "inputs[0]: 16 bytes of binary data, 8 left in the body"},
        {"{\"inputs\":[" Q1 "\"parameters\":{\"binary_data_size\":16}}," K1
         "\"data\":[1,0,0,1]}," V1 "\"data\":[1,0,0,1]}]}",
         20, "body: 4 bytes after the last input's binary data"},
        {"{\"inputs\":[" Q1 "\"data\":[1,0,0,1]}," K1 "\"data\":[1,0,0,1]}," V1
         "\"data\":[1,0,0,1]}],\"parameters\":{\"bogus\":1}}",
         0, "parameters.bogus: unknown parameter"},
        {"{\"inputs\":[" Q1 "\"data\":[1,0,0,1]}," K1 "\"data\":[1,0,0,1]}," V1
         "\"data\":[1,0,0,1]}],\"parameters\":{\"scale\":-1}}",
         0, "scale: must be a finite number > 0"},
        {"{\"inputs\":[" Q1 "\"data\":[1,0,0,1]}," K1 "\"data\":[1,0,0,1]}," V1
         "\"data\":[1,0,0,1]}],\"parameters\":{\"scale\":1,\"scale\":2,"
         "\"scale\":3,\"scale\":4,\"scale\":5,\"scale\":6,\"scale\":7,"
         "\"scale\":8,\"scale\":9,\"scale\":10,\"scale\":11,\"scale\":12,"
         "\"scale\":13,\"scale\":14,\"scale\":15,\"scale\":16}}",
         0, "parameters: a parameter is given more than once"},
        {"{\"inputs\":[" Q1 "\"data\":[1,0,0,1]}," K1 "\"data\":[1,0,0,1]}," V1
         "\"data\":[1,0,0,1]}],\"parameters\":{\"scale\":1,\"scale\":2}}",
         0, "scale: given twice"},
        {"{\"inputs\":[" Q1 "\"data\":[1,0,0,1]}," Q1 "\"data\":[1,0,0,1]}]}",
         0, "q: given twice"},
        {"{\"inputs\":[" Q1 "\"data\":[1,0,0,1]}," K1 "\"data\":[1,0,0,1]}," V1
         "\"data\":[1,0,0,1]}],\"outputs\":[{\"name\":\"o\"}]}",
         0, "outputs[0].name: unknown output \"o\" (out)"},
        {"{\"inputs\":[" Q1 "\"data\":[1,0,0,1]}," K1 "\"data\":[1,0,0,1]}," V1
         "\"data\":[1,0,0,1]}],\"outputs\":[{\"name\":\"out\","
         "\"parameters\":{\"shared_memory_region\":\"r0\","
         "\"shared_memory_byte_size\":8}}]}",
         0, "shared_memory_byte_size: 8 bytes, the output needs 16"},
        {"{\"inputs\":[{\"name\":\"q\",\"datatype\":\"FP32\",\"shape\":[1,2,"
         "2],\"data\":[1,0,0,1]}," K1 "\"data\":[1,0,0,1]}," V1
         "\"data\":[1,0,0,1]}]}",
         0, "q.shape: must have 4 dimensions"},
        {"{\"inputs\":[{\"name\":\"q\",\"datatype\":\"FP32\",\"shape\":[1,1,"
         "2,2],\"data\":[1,0,\"x\",1]}," K1 "\"data\":[1,0,0,1]}," V1
         "\"data\":[1,0,0,1]}]}",
         0, "q.data[2]: must be a number"},
        {"{\"inputs\":[{\"name\":\"q\",\"datatype\":\"FP32\",\"shape\":[1,1,"
         "2,2],\"data\":[1,0,true,1]}]}",
         0, "inputs[0].data: booleans only for a BOOL tensor"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct proto_v2_request r;
        char err[256] = "", *keep;
        int rc = decode(cases[i].json, bin, cases[i].binlen, &o, &r, err,
                        sizeof err, &keep);
        free(keep);
        if (rc == PROTO_OK || !strstr(err, cases[i].field)) {
            print_error("case %zu: rc %d, message \"%s\", want \"%s\"\n", i, rc,
                        err, cases[i].field);
            fail();
        }
        for (size_t j = 0; j < sizeof r.req.owned / sizeof r.req.owned[0]; j++)
            assert_null(r.req.owned[j]);
    }
    /* a header length past the body */
    struct proto_v2_request r;
    char err[256];
    assert_int_equal(
        proto_v2_request_decode("{}", 2, 3, "exact", NULL, &r, err, sizeof err),
        PROTO_EBADREQ);
    assert_non_null(strstr(err, "Inference-Header-Content-Length"));
}

static void test_error_body(void **state)
{
    (void)state;
    size_t len;
    char *b = proto_v2_error_body("q: \"bad\"\n", &len);
    assert_string_equal(b, "{\"error\":\"q: \\\"bad\\\"\\n\"}");
    assert_int_equal(len, strlen(b));
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_tensors),  cmocka_unit_test(test_binary),
        cmocka_unit_test(test_shared_memory), cmocka_unit_test(test_refused),
        cmocka_unit_test(test_error_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
