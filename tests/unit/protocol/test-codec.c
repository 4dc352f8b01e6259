/*
 * test-codec.c - tests the wire codec on bodies that must be accepted:
 * request and response round trips in msgpack and JSON for every dtype,
 * self- and cross-attention shapes with key and query masks and causality,
 * tensor data read in place or copied depending on its alignment, JSON
 * string escapes and numbers, limits at their edge, error bodies.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tests/unit/protocol/body.h"
#include "protocol/proto.h"

/* Deterministic pseudo-random numbers in [-2, 2). */
static float rnd(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / (float)(1u << 24) * 4.0f - 2.0f;
}

struct sample {
    struct attn_problem p;
    void *q, *k, *v;
    uint8_t *mask, *q_mask;
};

static void *fill(enum attn_dtype dt, size_t n, uint32_t *seed)
{
    float *f = malloc(n * sizeof *f);
    void *out = malloc(n * attn_dtype_size(dt));
    for (size_t i = 0; i < n; i++)
        f[i] = rnd(seed);
    attn_from_f32(dt, f, out, n);
    free(f);
    return out;
}

/* Mask bytes with zeros and a few nonzero values other than 1 (the wire
 * carries them as 1). */
static uint8_t *mask_make(size_t n, int shift)
{
    uint8_t *m = malloc(n);
    for (size_t i = 0; i < n; i++)
        m[i] = ((i + shift) % 5 == 0) ? 0 : ((i + shift) % 7 == 0 ? 5 : 1);
    return m;
}

/* The shapes of the samples: self-attention without and with a mask,
 * more keys than queries with both masks and causality, and more queries
 * than keys with a query mask only. */
enum { SAMPLE_PLAIN, SAMPLE_MASK, SAMPLE_CROSS, SAMPLE_WIDE, SAMPLE_KINDS };

/* A problem with every optional field set, odd sizes and grouped heads. */
static void sample_make(struct sample *s, enum attn_dtype dt, int kind)
{
    static const uint32_t nq[SAMPLE_KINDS] = {37, 37, 37, 70};
    static const uint32_t nk[SAMPLE_KINDS] = {37, 37, 53, 5};
    uint32_t seed = 12345 + (uint32_t)dt;
    memset(s, 0, sizeof *s);
    struct attn_problem *p = &s->p;
    p->dtype = dt;
    p->B = 2;
    p->H = 4;
    p->Hkv = 2;
    p->Nq = nq[kind];
    p->Nk = nk[kind];
    p->D = 17;
    p->method = ATTN_MRA2_SPARSE;
    p->block_per_row = 3;
    p->num_blocks = 7;
    p->prior_first = 1;
    p->prior_diagonal = 3;
    p->scale = 0.3f;
    p->causal = kind >= SAMPLE_CROSS;
    size_t nqe = (size_t)2 * 4 * p->Nq * 17, nke = (size_t)2 * 2 * p->Nk * 17;
    p->q = s->q = fill(dt, nqe, &seed);
    p->k = s->k = fill(dt, nke, &seed);
    p->v = s->v = fill(dt, nke, &seed);
    if (kind == SAMPLE_MASK || kind == SAMPLE_CROSS)
        p->mask = s->mask = mask_make((size_t)2 * p->Nk, 0);
    if (kind >= SAMPLE_CROSS)
        p->q_mask = s->q_mask = mask_make((size_t)2 * p->Nq, 3);
}

static void sample_free(struct sample *s)
{
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->mask);
    free(s->q_mask);
}

static void assert_same_mask(const uint8_t *a, const uint8_t *b, size_t n)
{
    assert_int_equal(a == NULL, b == NULL);
    for (size_t i = 0; a != NULL && i < n; i++)
        assert_int_equal(a[i] != 0, b[i]);
}

static void assert_same_problem(const struct attn_problem *a,
                                const struct attn_problem *b)
{
    assert_int_equal(a->method, b->method);
    assert_int_equal(a->dtype, b->dtype);
    assert_int_equal(a->B, b->B);
    assert_int_equal(a->H, b->H);
    assert_int_equal(a->Hkv, b->Hkv);
    assert_int_equal(a->Nq, b->Nq);
    assert_int_equal(a->Nk, b->Nk);
    assert_int_equal(a->D, b->D);
    assert_int_equal(a->causal != 0, b->causal);
    assert_true(a->scale == b->scale);
    assert_int_equal(a->num_blocks, b->num_blocks);
    assert_int_equal(a->block_per_row, b->block_per_row);
    assert_int_equal(a->prior_first, b->prior_first);
    assert_int_equal(a->prior_diagonal, b->prior_diagonal);
    size_t es = attn_dtype_size(a->dtype);
    size_t nq = (size_t)a->B * a->H * a->Nq * a->D * es;
    size_t nk = (size_t)a->B * a->Hkv * a->Nk * a->D * es;
    assert_memory_equal(a->q, b->q, nq);
    assert_memory_equal(a->k, b->k, nk);
    assert_memory_equal(a->v, b->v, nk);
    assert_same_mask(a->mask, b->mask, (size_t)a->B * a->Nk);
    assert_same_mask(a->q_mask, b->q_mask, (size_t)a->B * a->Nq);
}

static void test_request_roundtrip(void **state)
{
    (void)state;
    for (int fmt = PROTO_MSGPACK; fmt <= PROTO_JSON; fmt++) {
        for (int dt = ATTN_F32; dt <= ATTN_BF16; dt++) {
            for (int m = 0; m < SAMPLE_KINDS; m++) {
                struct sample s;
                sample_make(&s, (enum attn_dtype)dt, m);
                char *body;
                size_t len;
                assert_int_equal(proto_request_encode(&s.p, fmt,
                                                      "run-\xc3\xa9-\"1\"", 250,
                                                      &body, &len),
                                 PROTO_OK);
                struct proto_request req;
                char err[256];
                int rc = proto_request_decode(body, len, fmt, NULL, &req, err,
                                              sizeof err);
                if (rc != PROTO_OK)
                    print_error("fmt %d dtype %d kind %d: %s\n", fmt, dt, m,
                                err);
                assert_int_equal(rc, PROTO_OK);
                assert_same_problem(&s.p, &req.prob);
                assert_int_equal(req.format, fmt);
                assert_true(req.has_id);
                assert_string_equal(req.id, "run-\xc3\xa9-\"1\"");
                assert_int_equal(req.timeout_ms, 250);
                assert_non_null(req.prob.out);
                assert_int_equal((uintptr_t)req.prob.out % 64, 0);
                proto_request_release(&req);
                free(body);
                sample_free(&s);
            }
        }
    }
}

/* Unset parameters stay unset: the library applies its defaults. */
static void test_request_defaults(void **state)
{
    (void)state;
    size_t len;
    char *body =
        tbody_msgpack("{'q':{'dtype':'bf16','shape':[1,1,3,2],'data':'bin:12'},"
                      "'k':{'dtype':'bf16','shape':[1,1,3,2],'data':'bin:12'},"
                      "'v':{'dtype':'bf16','shape':[1,1,3,2],'data':'bin:12'}}",
                      &len);
    struct proto_request req;
    char err[256];
    assert_int_equal(proto_request_decode(body, len, PROTO_MSGPACK, NULL, &req,
                                          err, sizeof err),
                     PROTO_OK);
    assert_int_equal(req.prob.method, ATTN_MRA2);
    assert_int_equal(req.prob.dtype, ATTN_BF16);
    assert_true(req.prob.scale == 0);
    assert_int_equal(req.prob.block_per_row, 0);
    assert_int_equal(req.prob.num_blocks, 0);
    assert_null(req.prob.mask);
    assert_null(req.prob.q_mask);
    assert_int_equal(req.prob.causal, 0);
    assert_int_equal(req.prob.Nq, 3);
    assert_int_equal(req.prob.Nk, 3);
    assert_false(req.has_id);
    assert_int_equal(req.timeout_ms, 0);
    proto_request_release(&req);
    free(body);

    /* scale as an integer and as float32; methods by name. */
    body =
        tbody_msgpack("{'q':{'dtype':'f32','shape':[1,1,1,1],'data':'bin:4'},"
                      "'k':{'dtype':'f32','shape':[1,1,1,1],'data':'bin:4'},"
                      "'v':{'dtype':'f32','shape':[1,1,1,1],'data':'bin:4'},"
                      "'scale':2,'method':'exact'}",
                      &len);
    assert_int_equal(proto_request_decode(body, len, PROTO_MSGPACK, NULL, &req,
                                          err, sizeof err),
                     PROTO_OK);
    assert_true(req.prob.scale == 2.0f);
    assert_int_equal(req.prob.method, ATTN_EXACT);
    proto_request_release(&req);
    free(body);
}

/* Cross-attention bodies: Nq and Nk independent, each mask over its own
 * side, causal as a boolean in both formats; the answer is [B,H,Nq,D]. */
static void test_request_cross(void **state)
{
    (void)state;
    static const char *const tmpls[] = {
        "{'q':{'dtype':'f32','shape':[2,2,1,4],'data':'bin:64'},"
        "'k':{'dtype':'f32','shape':[2,1,300,4],'data':'bin:9600'},"
        "'v':{'dtype':'f32','shape':[2,1,300,4],'data':'bin:9600'},"
        "'mask':{'dtype':'u8','shape':[2,300],'data':'bin:600:1'},"
        "'q_mask':{'dtype':'u8','shape':[2,1],'data':'bin:2:1'},"
        "'causal':true}",
        "{'q':{'dtype':'f32','shape':[1,1,3,2],'data':[1,2,3,4,5,6]},"
        "'k':{'dtype':'f32','shape':[1,1,2,2],'data':[1,2,3,4]},"
        "'v':{'dtype':'f32','shape':[1,1,2,2],'data':[1,2,3,4]},"
        "'q_mask':{'dtype':'u8','shape':[1,3],'data':[1,0,1]},"
        "'causal':false}",
    };
    static const uint32_t want[2][3] = {{1, 300, 1}, {3, 2, 0}};
    for (int i = 0; i < 2; i++) {
        enum proto_format fmt = i == 0 ? PROTO_MSGPACK : PROTO_JSON;
        size_t len;
        char *body = fmt == PROTO_MSGPACK ? tbody_msgpack(tmpls[i], &len)
                                          : tbody_json(tmpls[i]);
        if (fmt == PROTO_JSON)
            len = strlen(body);
        struct proto_request req;
        char err[256];
        int rc =
            proto_request_decode(body, len, fmt, NULL, &req, err, sizeof err);
        if (rc != PROTO_OK)
            fail_msg("body %d: %s", i, err);
        assert_int_equal(req.prob.Nq, want[i][0]);
        assert_int_equal(req.prob.Nk, want[i][1]);
        assert_int_equal(req.prob.causal, want[i][2]);
        assert_non_null(req.prob.q_mask);
        assert_int_equal(req.prob.mask == NULL, i == 1);
        if (i == 1) {
            assert_int_equal(req.prob.q_mask[0], 1);
            assert_int_equal(req.prob.q_mask[1], 0);
        }
        /* The answer has q's shape. */
        struct proto_stats st = {.backend = "cpu"};
        char *ans;
        size_t alen;
        memset(req.prob.out, 0,
               (size_t)req.prob.B * req.prob.H * req.prob.Nq * req.prob.D * 4);
        assert_int_equal(proto_response_encode(&req, &st, &ans, &alen),
                         PROTO_OK);
        struct proto_response r;
        assert_int_equal(
            proto_response_decode(ans, alen, fmt, &r, err, sizeof err),
            PROTO_OK);
        assert_int_equal(r.shape[0], req.prob.B);
        assert_int_equal(r.shape[1], req.prob.H);
        assert_int_equal(r.shape[2], req.prob.Nq);
        assert_int_equal(r.shape[3], req.prob.D);
        proto_response_release(&r);
        free(ans);
        proto_request_release(&req);
        free(body);
    }
}

/* Where the tensor bytes land in memory decides between in place and a
 * copy: slide one body over eight offsets of an aligned buffer. */
static void test_inplace_or_copy(void **state)
{
    (void)state;
    for (int dt = ATTN_F32; dt <= ATTN_BF16; dt++) {
        struct sample s;
        sample_make(&s, (enum attn_dtype)dt, SAMPLE_CROSS);
        char *body;
        size_t len;
        assert_int_equal(
            proto_request_encode(&s.p, PROTO_MSGPACK, NULL, 0, &body, &len),
            PROTO_OK);
        char *space = proto_aligned_alloc(len + 8);
        int in_place = 0, copied = 0;
        size_t es = attn_dtype_size((enum attn_dtype)dt);
        for (size_t off = 0; off < 8; off++) {
            memcpy(space + off, body, len);
            struct proto_request req;
            char err[256];
            assert_int_equal(proto_request_decode(space + off, len,
                                                  PROTO_MSGPACK, NULL, &req,
                                                  err, sizeof err),
                             PROTO_OK);
            const char *q = req.prob.q;
            int inside = q >= space + off && q < space + off + len;
            assert_int_equal(inside, req.owned[0] == NULL);
            assert_int_equal((uintptr_t)q % es, 0);
            assert_int_equal((uintptr_t)req.prob.k % es, 0);
            assert_int_equal((uintptr_t)req.prob.v % es, 0);
            /* The masks (bytes) are always read in place. */
            const char *m = (const char *)req.prob.mask;
            assert_true(m >= space + off && m < space + off + len);
            m = (const char *)req.prob.q_mask;
            assert_true(m >= space + off && m < space + off + len);
            /* The encoder aligns every tensor's data to 16 bytes from the
             * start of the body, so an aligned body is read in place. */
            if (off == 0)
                assert_true(inside && req.owned[1] == NULL &&
                            req.owned[2] == NULL);
            in_place += inside;
            copied += !inside;
            assert_same_problem(&s.p, &req.prob);
            proto_request_release(&req);
        }
        assert_true(in_place > 0);
        assert_true(copied > 0 || es == 1);
        free(space);
        free(body);
        sample_free(&s);
    }
}

static void test_response_roundtrip(void **state)
{
    (void)state;
    for (int fmt = PROTO_MSGPACK; fmt <= PROTO_JSON; fmt++) {
        for (int dt = ATTN_F32; dt <= ATTN_BF16; dt++) {
            struct sample s;
            sample_make(&s, (enum attn_dtype)dt, SAMPLE_CROSS);
            char *body, *ans;
            size_t len, alen;
            assert_int_equal(
                proto_request_encode(&s.p, fmt, "x", 0, &body, &len), 0);
            struct proto_request req;
            char err[256];
            assert_int_equal(proto_request_decode(body, len, fmt, NULL, &req,
                                                  err, sizeof err),
                             PROTO_OK);
            size_t n = (size_t)2 * 4 * 37 * 17, es = attn_dtype_size(dt);
            uint32_t seed = 99;
            void *vals = fill(dt, n, &seed);
            memcpy(req.prob.out, vals, n * es);
            float special[3] = {NAN, INFINITY, -0.0f};
            for (int i = 0; i < 3; i++)
                attn_from_f32(dt, &special[i], (char *)req.prob.out + i * es,
                              1);
            struct proto_stats st = {
                .attn = {.blocks_selected = 24,
                         .blocks_total = 32,
                         .density = 0.75},
                .backend = "cpu",
                .queue_us = 17,
                .compute_us = 123456789012ull,
                .batch_requests = 3,
            };
            assert_int_equal(proto_response_encode(&req, &st, &ans, &alen),
                             PROTO_OK);
            struct proto_response r;
            assert_int_equal(
                proto_response_decode(ans, alen, fmt, &r, err, sizeof err),
                PROTO_OK);
            assert_int_equal(r.dtype, dt);
            assert_int_equal(r.shape[0], 2);
            assert_int_equal(r.shape[1], 4);
            assert_int_equal(r.shape[2], 37);
            assert_int_equal(r.shape[3], 17);
            assert_int_equal(r.out_bytes, n * es);
            assert_true(r.has_id);
            assert_string_equal(r.id, "x");
            assert_string_equal(r.method, "mra2_sparse");
            assert_string_equal(r.backend, "cpu");
            assert_string_equal(r.stats.backend, "cpu");
            assert_int_equal(r.stats.attn.blocks_selected, 24);
            assert_int_equal(r.stats.attn.blocks_total, 32);
            assert_true(r.stats.attn.density == 0.75);
            assert_int_equal(r.stats.queue_us, 17);
            assert_int_equal(r.stats.compute_us, 123456789012ull);
            assert_int_equal(r.stats.batch_requests, 3);
            float f[3];
            attn_to_f32(dt, r.out, f, 3);
            assert_true(isnan(f[0]));
            /* JSON has no infinity: it travels as null and reads as NaN. */
            if (fmt == PROTO_JSON)
                assert_true(isnan(f[1]));
            else
                assert_true(isinf(f[1]) && f[1] > 0);
            assert_true(f[2] == 0 && signbit(f[2]));
            assert_memory_equal((const char *)r.out + 3 * es,
                                (const char *)req.prob.out + 3 * es,
                                (n - 3) * es);
            proto_response_release(&r);
            free(ans);
            free(vals);
            proto_request_release(&req);
            free(body);
            sample_free(&s);
        }
    }
}

/* The accuracy controls: min_blocks_per_row, error_samples, target_error
 * and per_head_stats written by the encoder and read back in both
 * formats; out-of-range and mistyped values refused naming the key; the
 * estimate and every head's statistics in the answer and back. */
static void test_accuracy_keys(void **state)
{
    (void)state;
    for (int fmt = PROTO_MSGPACK; fmt <= PROTO_JSON; fmt++) {
        struct sample s;
        sample_make(&s, ATTN_F32, SAMPLE_CROSS);
        s.p.min_blocks_per_row = 2;
        s.p.error_samples = 48;
        s.p.target_error = 0.05f;
        struct proto_encode_opts o = {.per_head_stats = 1};
        char *body, *ans;
        size_t len, alen;
        assert_int_equal(proto_request_encode_opts(&s.p, fmt, &o, &body, &len),
                         PROTO_OK);
        struct proto_request req;
        char err[256];
        assert_int_equal(
            proto_request_decode(body, len, fmt, NULL, &req, err, sizeof err),
            PROTO_OK);
        assert_int_equal(req.prob.min_blocks_per_row, 2);
        assert_int_equal(req.prob.error_samples, 48);
        assert_true(req.prob.target_error == 0.05f);
        assert_true(req.per_head_stats);
        assert_non_null(req.heads);
        assert_ptr_equal(req.prob.head_stats, req.heads);
        size_t nh = (size_t)req.prob.B * req.prob.H;
        for (size_t h = 0; h < nh; h++)
            req.heads[h] = (struct attn_head_stats){
                .budget = 10 + h,
                .blocks_selected = 12 + h,
                .blocks_total = 40,
                .density = (12.0 + h) / 40.0,
                .est_rel_err = h == 1 ? -1.0 : 0.01 * (double)(h + 1),
            };
        struct proto_stats st = {
            .attn = {.blocks_selected = 99,
                     .blocks_total = 320,
                     .density = 99.0 / 320.0,
                     .est_rel_err = 0.0375},
            .backend = "cpu",
        };
        assert_int_equal(proto_response_encode(&req, &st, &ans, &alen),
                         PROTO_OK);
        struct proto_response r;
        assert_int_equal(
            proto_response_decode(ans, alen, fmt, &r, err, sizeof err),
            PROTO_OK);
        assert_true(r.stats.attn.est_rel_err == 0.0375);
        assert_int_equal(r.nheads, nh);
        for (size_t h = 0; h < nh; h++) {
            assert_int_equal(r.heads[h].budget, 10 + h);
            assert_int_equal(r.heads[h].blocks_selected, 12 + h);
            assert_int_equal(r.heads[h].blocks_total, 40);
            assert_true(r.heads[h].density == (12.0 + h) / 40.0);
            assert_true(r.heads[h].est_rel_err ==
                        (h == 1 ? -1.0 : 0.01 * (double)(h + 1)));
        }
        proto_response_release(&r);
        free(ans);
        /* without them: no estimate, no heads */
        req.per_head_stats = 0;
        st.attn.est_rel_err = -1.0;
        assert_int_equal(proto_response_encode(&req, &st, &ans, &alen),
                         PROTO_OK);
        assert_int_equal(
            proto_response_decode(ans, alen, fmt, &r, err, sizeof err),
            PROTO_OK);
        assert_true(r.stats.attn.est_rel_err == -1.0);
        assert_null(r.heads);
        assert_int_equal(r.nheads, 0);
        proto_response_release(&r);
        free(ans);
        proto_request_release(&req);
        assert_null(req.heads);
        free(body);
        sample_free(&s);
    }

    static const struct {
        const char *extra, *want;
    } bad[] = {
        {"'error_samples':257", "error_samples"},
        {"'error_samples':-1", "error_samples"},
        {"'error_samples':'many'", "error_samples"},
        {"'min_blocks_per_row':-2", "min_blocks_per_row"},
        {"'min_blocks_per_row':4294967296", "min_blocks_per_row"},
        {"'target_error':0", "target_error"},
        {"'target_error':-0.5", "target_error"},
        {"'target_error':1e300", "target_error"},
        {"'target_error':'low'", "target_error"},
        {"'per_head_stats':1", "per_head_stats"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char tmpl[512];
        snprintf(tmpl, sizeof tmpl,
                 "{'q':{'dtype':'f32','shape':[1,1,1,1],'data':'bin:4'},"
                 "'k':{'dtype':'f32','shape':[1,1,1,1],'data':'bin:4'},"
                 "'v':{'dtype':'f32','shape':[1,1,1,1],'data':'bin:4'},%s}",
                 bad[i].extra);
        size_t len;
        char *body = tbody_msgpack(tmpl, &len);
        struct proto_request req;
        char err[256];
        int rc = proto_request_decode(body, len, PROTO_MSGPACK, NULL, &req, err,
                                      sizeof err);
        if (rc != PROTO_EBADREQ || !strstr(err, bad[i].want))
            fail_msg("%s: rc %d, %s", bad[i].extra, rc, err);
        free(body);
    }
}

/* The pieces of proto_response_encode_split() around the output make the
 * very bytes of proto_response_encode(), for every float dtype, shapes
 * whose header integers and bin length take different widths, with and
 * without ids of several lengths; the output starts 16-byte aligned. */
static void test_response_split(void **state)
{
    (void)state;
    static const uint32_t shapes[][4] = {
        {1, 1, 1, 1},   {1, 12, 33, 64},  {2, 3, 5, 7},
        {1, 1, 300, 9}, {3, 1, 70000, 1}, {2, 4, 37, 17},
    };
    char longid[PROTO_ID_MAX + 1];
    memset(longid, 'z', PROTO_ID_MAX);
    longid[PROTO_ID_MAX] = '\0';
    const char *ids[] = {NULL, "", "r1", "an id of thirty-one bytes......",
                         longid};
    uint32_t seed = 7;
    for (int dt = ATTN_F32; dt <= ATTN_BF16; dt++) {
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            for (size_t ii = 0; ii < sizeof ids / sizeof ids[0]; ii++) {
                struct proto_request req;
                memset(&req, 0, sizeof req);
                struct attn_problem *p = &req.prob;
                p->dtype = (enum attn_dtype)dt;
                p->method = (enum attn_method)(ii % 3);
                p->B = shapes[si][0];
                p->H = p->Hkv = shapes[si][1];
                p->Nq = shapes[si][2];
                p->Nk = shapes[si][2] / 2 + 1;
                p->D = shapes[si][3];
                size_t n = (size_t)p->B * p->H * p->Nq * p->D;
                void *out = fill((enum attn_dtype)dt, n, &seed);
                p->out = out;
                req.format = PROTO_MSGPACK;
                if (ids[ii] != NULL) {
                    req.has_id = 1;
                    strcpy(req.id, ids[ii]);
                }
                struct proto_stats st = {
                    .attn = {.blocks_selected = si * 1000 + ii,
                             .blocks_total = 1ull << (si * 7),
                             .density = 1.0 / (double)(ii + 1)},
                    .backend = ii % 2 ? "cuda" : "cpu",
                    .queue_us = ii * 300,
                    .compute_us = 123456789012ull >> si,
                    .batch_requests = (uint32_t)(si + 1),
                };
                char *whole, *parts;
                size_t wlen, head, olen, tail;
                assert_int_equal(
                    proto_response_encode(&req, &st, &whole, &wlen), PROTO_OK);
                assert_int_equal(proto_response_encode_split(
                                     &req, &st, &parts, &head, &olen, &tail),
                                 PROTO_OK);
                assert_int_equal(olen, n * attn_dtype_size(dt));
                assert_int_equal(head % 16, 0);
                assert_int_equal(head + olen + tail, wlen);
                assert_memory_equal(whole, parts, head);
                assert_memory_equal(whole + head, out, olen);
                assert_memory_equal(whole + head + olen, parts + head, tail);
                free(parts);
                free(whole);
                free(out);
            }
        }
    }
    /* JSON answers have no payload to send apart. */
    struct proto_request req;
    memset(&req, 0, sizeof req);
    req.format = PROTO_JSON;
    req.prob.B = req.prob.H = req.prob.Hkv = req.prob.D = 1;
    req.prob.Nq = req.prob.Nk = 1;
    float one = 1;
    req.prob.out = &one;
    struct proto_stats st = {.backend = "cpu"};
    char *parts = (char *)&one;
    size_t head, olen, tail;
    assert_int_equal(
        proto_response_encode_split(&req, &st, &parts, &head, &olen, &tail),
        PROTO_EBADREQ);
    assert_null(parts);
}

/* A caller's allocator for the output buffer. */
struct counting_alloc {
    int allocs, releases;
    void *last;
};

static void *count_alloc(size_t bytes, void *ctx)
{
    struct counting_alloc *a = ctx;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0)
        return NULL;
    a->allocs++;
    a->last = p;
    return p;
}

static void count_release(void *buf, void *ctx)
{
    struct counting_alloc *a = ctx;
    assert_ptr_equal(buf, a->last);
    a->releases++;
    free(buf);
}

static void *fail_alloc(size_t bytes, void *ctx)
{
    (void)bytes;
    (void)ctx;
    return NULL;
}

static void test_decode_with_out_alloc(void **state)
{
    (void)state;
    struct sample s;
    sample_make(&s, ATTN_F32, 1);
    char *body;
    size_t len;
    assert_int_equal(
        proto_request_encode(&s.p, PROTO_MSGPACK, "a", 0, &body, &len), 0);
    struct counting_alloc ca = {0};
    struct proto_out_alloc oa = {count_alloc, count_release, &ca};
    struct proto_request req;
    char err[256];
    assert_int_equal(proto_request_decode_with(body, len, PROTO_MSGPACK, NULL,
                                               &oa, &req, err, sizeof err),
                     PROTO_OK);
    assert_int_equal(ca.allocs, 1);
    assert_ptr_equal(req.prob.out, ca.last);
    assert_int_equal((uintptr_t)req.prob.out % 64, 0);
    proto_request_release(&req);
    assert_int_equal(ca.releases, 1);
    proto_request_release(&req); /* twice is harmless */
    assert_int_equal(ca.releases, 1);

    /* An allocator out of memory: a 500, and nothing left to release. */
    struct proto_out_alloc none = {fail_alloc, count_release, &ca};
    ca = (struct counting_alloc){0};
    assert_int_equal(proto_request_decode_with(body, len, PROTO_MSGPACK, NULL,
                                               &none, &req, err, sizeof err),
                     PROTO_ENOMEM);
    assert_int_equal(ca.releases, 0);
    proto_request_release(&req);
    assert_int_equal(ca.releases, 0);
    free(body);
    sample_free(&s);
}

static void test_response_errors(void **state)
{
    (void)state;
    static const struct {
        const char *tmpl;
        const char *field;
    } cases[] = {
        {"[]", "body: must be a map"},
        {"{'out':{}}", "stats: missing"},
        {"{'stats':{'method':'mra2','backend':'cpu','blocks_selected':1,"
         "'blocks_total':1,'density':1,'queue_us':0,'compute_us':0,"
         "'batch_requests':1}}",
         "out: missing"},
        {"{'out':{'dtype':'f32','shape':[1,1,1,1],'data':'bin:4'},"
         "'stats':{'method':'mra2','backend':'cpu','blocks_selected':-1}}",
         "stats.blocks_selected"},
        {"{'out':{'dtype':'f32','shape':[1,1,1,1],'data':'bin:4'},"
         "'stats':{'method':'mra2','blocks_selected':1}}",
         "stats.backend: missing"},
        {"{'out':{'dtype':'f64','shape':[1,1,1,1],'data':'bin:4'},"
         "'stats':{'method':'mra2','backend':'cpu','blocks_selected':1,"
         "'blocks_total':1,'density':1,'queue_us':0,'compute_us':0,"
         "'batch_requests':1}}",
         "out.dtype"},
        {"{'out':{'dtype':'f32','shape':[1,1,1,2],'data':'bin:4'},"
         "'stats':{'method':'mra2','backend':'cpu','blocks_selected':1,"
         "'blocks_total':1,'density':1,'queue_us':0,'compute_us':0,"
         "'batch_requests':1}}",
         "out.data: length 4"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        char *body = tbody_msgpack(cases[i].tmpl, &len);
        struct proto_response r;
        char err[256] = "";
        assert_int_equal(proto_response_decode(body, len, PROTO_MSGPACK, &r,
                                               err, sizeof err),
                         PROTO_EBADREQ);
        if (strstr(err, cases[i].field) == NULL)
            fail_msg("case %zu: \"%s\" does not name %s", i, err,
                     cases[i].field);
        assert_null(r.owned);
        free(body);
    }
}

static void test_error_body(void **state)
{
    (void)state;
    const char *msg =
        "q.shape[2]: \"N\" \\ bad\n\t\x01 caf\xc3\xa9 \xf0\x9f\x98\x80";
    size_t len;
    char *body = proto_error_body("bad_request", msg, &len);
    assert_non_null(body);
    assert_int_equal(strlen(body), len);
    assert_non_null(strstr(body, "\\\"N\\\""));
    assert_non_null(strstr(body, "\\u0001"));
    char code[32], text[256];
    assert_int_equal(
        proto_error_parse(body, len, code, sizeof code, text, sizeof text),
        PROTO_OK);
    assert_string_equal(code, "bad_request");
    assert_string_equal(text, msg);
    /* Truncated to the buffers, still terminated. */
    char small[5];
    assert_int_equal(
        proto_error_parse(body, len, small, sizeof small, text, sizeof text),
        PROTO_OK);
    assert_string_equal(small, "bad_");
    free(body);

    const char *notone[] = {
        "",    "{}",    "{\"error\":1}", "{\"error\":{\"code\":\"x\"}}",
        "[1]", "{\"err"};
    for (size_t i = 0; i < sizeof notone / sizeof notone[0]; i++)
        assert_int_equal(proto_error_parse(notone[i], strlen(notone[i]), code,
                                           sizeof code, text, sizeof text),
                         PROTO_EBADREQ);
}

/* Escapes and numbers of the JSON reader. */
static void test_json_text(void **state)
{
    (void)state;
    const char *body =
        "{\"q\":{\"dtype\":\"f32\",\"shape\":[1,1,2,3],"
        "\"data\":[-0, 1e-3, 1E+2, -2.5e0, 18446744073709551616, 7]},"
        " \"k\" : {\"shape\":[1,1,2,3],\"dtype\":\"f32\","
        "\"data\":[1,2,3,4,5,6]},\n\t\"v\":{\"dtype\":\"f32\","
        "\"data\":[1,2,3,4,5,6],\"shape\":[1,1,2,3]},"
        "\"id\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\u20ac\\ud83d\\ude00\","
        "\"scale\":0.25, \"mask\":{\"dtype\":\"u8\",\"shape\":[1,2],"
        "\"data\":[0,1]}}";
    struct proto_request req;
    char err[256];
    int rc = proto_request_decode(body, strlen(body), PROTO_JSON, NULL, &req,
                                  err, sizeof err);
    if (rc != PROTO_OK)
        fail_msg("%s", err);
    const float *q = req.prob.q;
    assert_true(q[0] == 0 && signbit(q[0])); /* -0 keeps its sign */
    assert_true(q[1] == 1e-3f);
    assert_true(q[2] == 100.0f);
    assert_true(q[3] == -2.5f);
    assert_true(q[4] == 18446744073709551616.0f);
    assert_true(q[5] == 7.0f);
    assert_string_equal(req.id, "a\"b\\c/d\b\f\n\r\t\xc3\xa9\xe2\x82\xac"
                                "\xf0\x9f\x98\x80");
    assert_true(req.prob.scale == 0.25f);
    assert_int_equal(req.prob.mask[0], 0);
    assert_int_equal(req.prob.mask[1], 1);
    proto_request_release(&req);
}

static void test_limits_edge(void **state)
{
    (void)state;
    struct proto_limits lim;
    proto_limits_default(&lim);
    assert_int_equal(lim.max_batch, 64);
    assert_int_equal(lim.max_heads, 256);
    assert_int_equal(lim.max_tokens, 131072);
    assert_int_equal(lim.max_head_dim, 256);
    assert_int_equal(lim.max_elements, 1u << 28);
    lim.max_tokens = 40;
    lim.max_elements = 640;
    size_t len;
    char *body = tbody_msgpack(
        "{'q':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560'},"
        "'k':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560'},"
        "'v':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560'}}",
        &len);
    struct proto_request req;
    char err[256];
    assert_int_equal(proto_request_decode(body, len, PROTO_MSGPACK, &lim, &req,
                                          err, sizeof err),
                     PROTO_OK);
    proto_request_release(&req);
    lim.max_tokens = 39;
    assert_int_equal(proto_request_decode(body, len, PROTO_MSGPACK, &lim, &req,
                                          err, sizeof err),
                     PROTO_ETOOBIG);
    assert_non_null(strstr(err, "q.shape[2]: Nq = 40 exceeds the limit of 39"));
    lim.max_tokens = 40;
    lim.max_elements = 639;
    assert_int_equal(proto_request_decode(body, len, PROTO_MSGPACK, &lim, &req,
                                          err, sizeof err),
                     PROTO_ETOOBIG);
    free(body);

    /* max_tokens bounds Nk as well as Nq, and max_elements k and v as well
     * as q: few queries do not let through many keys. */
    body = tbody_msgpack(
        "{'q':{'dtype':'f32','shape':[1,2,1,8],'data':'bin:64'},"
        "'k':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560'},"
        "'v':{'dtype':'f32','shape':[1,2,40,8],'data':'bin:2560'}}",
        &len);
    lim.max_tokens = 40;
    lim.max_elements = 640;
    assert_int_equal(proto_request_decode(body, len, PROTO_MSGPACK, &lim, &req,
                                          err, sizeof err),
                     PROTO_OK);
    proto_request_release(&req);
    lim.max_tokens = 39;
    assert_int_equal(proto_request_decode(body, len, PROTO_MSGPACK, &lim, &req,
                                          err, sizeof err),
                     PROTO_ETOOBIG);
    assert_non_null(strstr(err, "k.shape[2]: Nk = 40 exceeds the limit of 39"));
    lim.max_tokens = 40;
    lim.max_elements = 639;
    assert_int_equal(proto_request_decode(body, len, PROTO_MSGPACK, &lim, &req,
                                          err, sizeof err),
                     PROTO_ETOOBIG);
    assert_non_null(strstr(err, "k.shape: 640 elements exceed the limit"));
    free(body);
}

static void test_strerror(void **state)
{
    (void)state;
    const int codes[] = {PROTO_OK, PROTO_EBADREQ, PROTO_ETOOBIG, PROTO_ENOMEM,
                         -99};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        assert_non_null(proto_strerror(codes[i]));
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(proto_strerror(codes[i]),
                                    proto_strerror(codes[j]));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_roundtrip),
        cmocka_unit_test(test_request_defaults),
        cmocka_unit_test(test_request_cross),
        cmocka_unit_test(test_inplace_or_copy),
        cmocka_unit_test(test_response_roundtrip),
        cmocka_unit_test(test_accuracy_keys),
        cmocka_unit_test(test_response_split),
        cmocka_unit_test(test_decode_with_out_alloc),
        cmocka_unit_test(test_response_errors),
        cmocka_unit_test(test_error_body),
        cmocka_unit_test(test_json_text),
        cmocka_unit_test(test_limits_edge),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
