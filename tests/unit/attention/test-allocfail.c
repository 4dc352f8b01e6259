/*
 * test-allocfail.c - allocation-failure injection over a request's whole
 * path: decode (protocol) -> compute (attention, CPU backend) -> encode
 * (protocol).  The N-th allocation made by the attention and protocol
 * libraries fails, for N = 1, 2, ... until the path succeeds; every
 * failure must come back as PROTO_ENOMEM or ATTN_ENOMEM (never a crash or
 * another code), and the sanitizer build (`make test SANITIZE=address`)
 * reports any leak on those paths.
 *
 * How: this binary is linked with -Wl,--wrap=malloc,calloc,realloc,
 * posix_memalign,aligned_alloc (tests/module.mk), so every call to those
 * from the objects linked statically (libattn.a, libproto.a, this file)
 * goes to the __wrap_* functions below, which count and fail on demand;
 * shared libraries (msgpack-c, libc itself) are not redirected.  No
 * library source needs a hook for it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attention/attn.h"
#include "protocol/proto.h"
#include "tests/unit/attention/attn-fixture.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);

/* Allocations left before the injected failure; < 0 = none injected.  Once
 * it reaches 0 every later allocation fails too (as when memory is really
 * exhausted), until it is reset. */
static atomic_long budget = -1;
/* Allocations seen while a budget was set. */
static atomic_long seen;

static int allowed(void)
{
    long b = atomic_load(&budget);
    if (b < 0)
        return 1;
    atomic_fetch_add(&seen, 1);
    while (b > 0 && !atomic_compare_exchange_weak(&budget, &b, b - 1))
        ;
    return b > 0;
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
    return allowed() ? __real_posix_memalign(p, a, n) : 12 /* ENOMEM */;
}
void *__wrap_aligned_alloc(size_t a, size_t n)
{
    return allowed() ? __real_aligned_alloc(a, n) : NULL;
}

/* A request body: one MRA-2 problem, f16, with a mask and an id, N not a
 * multiple of 32 and Hkv < H, so the decoder converts, copies and pads. */
static char *make_body(enum proto_format fmt, size_t *len)
{
    enum { B = 1, H = 2, HKV = 1, N = 100, D = 16 };
    static uint16_t q[B * H * N * D], k[B * HKV * N * D], v[B * HKV * N * D];
    static uint8_t mask[B * N];
    uint32_t s = 12345;
    for (size_t i = 0; i < sizeof q / 2; i++) {
        s = s * 1103515245u + 12345u;
        q[i] = attn_f32_to_f16((float)((s >> 16) & 0xff) / 128.0f - 1.0f);
    }
    for (size_t i = 0; i < sizeof k / 2; i++) {
        s = s * 1103515245u + 12345u;
        k[i] = attn_f32_to_f16((float)((s >> 16) & 0xff) / 128.0f - 1.0f);
        v[i] = attn_f32_to_f16((float)((s >> 8) & 0xff) / 128.0f - 1.0f);
    }
    for (size_t i = 0; i < N; i++)
        mask[i] = i < 90;
    struct attn_problem p = {
        .method = ATTN_MRA2,
        .dtype = ATTN_F16,
        .B = B,
        .H = H,
        .Hkv = HKV,
        .Nq = N,
        .Nk = N,
        .D = D,
        .q = q,
        .k = k,
        .v = v,
        .mask = mask,
        .block_per_row = 2,
    };
    char *buf = NULL;
    assert_int_equal(proto_request_encode(&p, fmt, "alloc", 0, &buf, len),
                     PROTO_OK);
    return buf;
}

/* Runs the whole path once with `limit` allocations allowed (-1: no
 * limit).  Returns 1 when it succeeded (answer in *ans, caller frees),
 * 0 when an allocation failed cleanly. */
static int run_path(struct attn_backend *be, const char *body, size_t len,
                    enum proto_format fmt, long limit, char **ans,
                    size_t *anslen)
{
    struct proto_request req;
    char err[256];
    int ok = 0;
    atomic_store(&budget, limit);
    int rc = proto_request_decode(body, len, fmt, NULL, &req, err, sizeof err);
    if (rc != PROTO_OK) {
        atomic_store(&budget, -1);
        assert_int_equal(rc, PROTO_ENOMEM);
        return 0;
    }
    struct attn_stats st;
    rc = attn_backend_compute(be, &req.prob, &st);
    if (rc != ATTN_OK) {
        atomic_store(&budget, -1);
        assert_int_equal(rc, ATTN_ENOMEM);
        proto_request_release(&req);
        return 0;
    }
    struct proto_stats ps = {.attn = st, .backend = "cpu", .batch_requests = 1};
    rc = proto_response_encode(&req, &ps, ans, anslen);
    atomic_store(&budget, -1);
    if (rc == PROTO_OK)
        ok = 1;
    else
        assert_int_equal(rc, PROTO_ENOMEM);
    proto_request_release(&req);
    return ok;
}

static void path_until_ok(enum proto_format fmt, int threads)
{
    struct attn_config cfg = {.threads = threads};
    struct attn_backend *be = NULL;
    assert_int_equal(attn_backend_new("cpu", &cfg, &be), ATTN_OK);
    size_t len;
    char *body = make_body(fmt, &len);

    char *want = NULL, *got = NULL;
    size_t wantlen = 0, gotlen = 0;
    atomic_store(&seen, 0);
    assert_true(run_path(be, body, len, fmt, 1L << 40, &want, &wantlen));
    long total = atomic_load(&seen);
    assert_true(total >= 3); /* at least the copies and the answer */

    long n;
    for (n = 0; n < 100000; n++) {
        if (run_path(be, body, len, fmt, n, &got, &gotlen))
            break;
    }
    /* The first budget that lets everything through is the number of
     * allocations the path makes (the backend may keep a workspace from
     * earlier runs, so it may need fewer than the first run). */
    assert_true(n <= total);
    assert_true(n >= 1);
    printf("%s, %d threads: %ld allocations on the first run, %ld failure "
           "points each answered cleanly\n",
           fmt == PROTO_JSON ? "json" : "msgpack", threads, total, n);
    /* The answer after all those failures is the same as before. */
    assert_int_equal(gotlen, wantlen);
    assert_memory_equal(got, want, wantlen);
    free(got);
    free(want);
    free(body);
    attn_backend_free(be);
}

static void test_msgpack_path_one_thread(void **state)
{
    (void)state;
    path_until_ok(PROTO_MSGPACK, 1);
}

static void test_json_path_two_threads(void **state)
{
    (void)state;
    path_until_ok(PROTO_JSON, 2);
}

/* Creating a backend: every failure is ATTN_ENOMEM and leaves nothing. */
static void test_backend_new(void **state)
{
    (void)state;
    long n;
    for (n = 0; n < 100000; n++) {
        struct attn_config cfg = {.threads = 3};
        struct attn_backend *be = NULL;
        atomic_store(&budget, n);
        int rc = attn_backend_new("cpu", &cfg, &be);
        atomic_store(&budget, -1);
        if (rc == ATTN_OK) {
            attn_backend_free(be);
            break;
        }
        assert_int_equal(rc, ATTN_ENOMEM);
        assert_null(be);
    }
    assert_true(n >= 1 && n < 100000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msgpack_path_one_thread),
        cmocka_unit_test(test_json_path_two_threads),
        cmocka_unit_test(test_backend_new),
    };
    return FX_RUN_PATHS(tests, NULL, NULL);
}
