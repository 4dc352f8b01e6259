/*
 * test-kv.c - the session table (server/kv.c) on its own, with stores of
 * the CPU backend: ids and owners, the byte budget and least-recently-used
 * eviction that spares sessions in use, the session limit, appends
 * admitted then trued up from the store, deletion while in use, idle
 * lifetimes, the spread over workers, and that the budget's count
 * returns to zero.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "attention/attn.h"
#include "server/errors.h"
#include "server/kv.h"
#include "server/sched.h"

static struct attn_backend *be;

static int setup(void **state)
{
    (void)state;
    struct attn_config cfg = {0};
    cfg.threads = 1;
    return attn_backend_new("cpu", &cfg, &be) == ATTN_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    attn_backend_free(be);
    return 0;
}

enum { D = 8 };
static const struct attn_kv_shape shape = {ATTN_F32, 1, 1, D};
static float tok_k[64 * D], tok_v[64 * D];

static uint64_t bytes_for(uint64_t tokens)
{
    return attn_kv_bytes_for("cpu", &shape, tokens);
}

#define PLENTY (1ull << 30)

static struct mrad_kv_table *table(uint64_t budget, uint64_t max_sessions,
                                   size_t workers)
{
    struct mrad_kv_config c = {
        .backend = "cpu",
        .workers = workers,
        .budget_bytes = budget,
        .max_sessions = max_sessions,
        .ttl_ms = 60000,
        .max_ttl_ms = 120000,
        .max_tokens = 1000,
    };
    struct mrad_kv_table *t;
    assert_int_equal(mrad_kv_table_new(&t, &c), 0);
    return t;
}

/* What a create job does on its worker: the store and its first tokens. */
static struct mrad_kv *make(struct mrad_kv_table *t, uint64_t owner,
                            uint32_t tokens)
{
    struct mrad_kv *kv;
    char msg[256];
    int rc = mrad_kv_create(t, owner, &shape, tokens, 0, &kv, msg, sizeof msg);
    if (rc != 0) {
        print_error("%s\n", msg);
        fail();
    }
    struct attn_kv *store;
    assert_int_equal(attn_kv_new(be, &shape, &store), ATTN_OK);
    struct attn_kv_tokens tk = {tok_k, tok_v, NULL, tokens};
    assert_int_equal(attn_kv_append(store, &tk), ATTN_OK);
    mrad_kv_attach(t, kv, store);
    mrad_kv_publish(t, kv);
    return kv;
}

static void id_of(struct mrad_kv_table *t, struct mrad_kv *kv, char *id)
{
    struct mrad_kv_view v;
    mrad_kv_view(t, kv, &v);
    memcpy(id, v.id, sizeof v.id);
}

static void assert_idle(struct mrad_kv_table *t, uint64_t sessions,
                        uint64_t bytes)
{
    struct mrad_kv_stats st;
    mrad_kv_stats(t, &st);
    assert_int_equal(st.sessions, sessions);
    assert_int_equal(st.bytes, bytes);
}

static void test_ids_and_owners(void **state)
{
    (void)state;
    struct mrad_kv_table *t = table(PLENTY, 16, 1);
    struct mrad_kv *kv = make(t, 7, 40);
    char id[MRAD_KV_ID_LEN + 1], id2[MRAD_KV_ID_LEN + 1];
    id_of(t, kv, id);
    assert_int_equal(strlen(id), 32);
    assert_int_equal(strspn(id, "0123456789abcdef"), 32);
    struct mrad_kv_view v;
    mrad_kv_view(t, kv, &v);
    assert_int_equal(v.tokens, 40);
    assert_int_equal(v.bytes, bytes_for(40));
    assert_int_equal(v.ttl_ms, 60000);
    mrad_kv_release(t, kv);

    struct mrad_kv *again;
    assert_int_equal(mrad_kv_acquire(t, id, 32, 7, &again), 0);
    assert_ptr_equal(again, kv);
    assert_non_null(mrad_kv_store(again));
    mrad_kv_release(t, again);
    /* another key, a wrong id, a prefix */
    assert_int_equal(mrad_kv_acquire(t, id, 32, 8, &again), MRAD_EKVNOTFOUND);
    assert_int_equal(mrad_kv_lookup(t, id, 32, 8, &v), MRAD_EKVNOTFOUND);
    assert_int_equal(mrad_kv_delete(t, id, 32, 8), MRAD_EKVNOTFOUND);
    assert_int_equal(mrad_kv_acquire(t, id, 31, 7, &again), MRAD_EKVNOTFOUND);
    id2[0] = id[0] == 'a' ? 'b' : 'a';
    memcpy(id2 + 1, id + 1, 32);
    assert_int_equal(mrad_kv_acquire(t, id2, 32, 7, &again), MRAD_EKVNOTFOUND);
    /* two sessions never share an id */
    struct mrad_kv *kv2 = make(t, 7, 1);
    id_of(t, kv2, id2);
    assert_string_not_equal(id, id2);
    mrad_kv_release(t, kv2);
    struct mrad_kv_stats st;
    mrad_kv_stats(t, &st);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.misses, 4);
    assert_int_equal(st.created, 2);
    assert_int_equal(st.append_tokens, 41);
    mrad_kv_table_free(t);
}

/* A budget of two and a half sessions: the third evicts the least
 * recently used idle one, never one in use; with both in use: full. */
static void test_budget_and_lru(void **state)
{
    (void)state;
    uint64_t two = bytes_for(64);
    struct mrad_kv_table *t = table(2 * two + two / 2, 16, 1);
    struct mrad_kv *a = make(t, 0, 64), *b = make(t, 0, 64);
    char ida[40], idb[40];
    id_of(t, a, ida);
    id_of(t, b, idb);
    mrad_kv_release(t, a);
    mrad_kv_release(t, b);
    /* use a again: b is now the least recently used */
    struct mrad_kv *x;
    assert_int_equal(mrad_kv_acquire(t, ida, 32, 0, &x), 0);
    mrad_kv_release(t, x);
    struct mrad_kv *c = make(t, 0, 64);
    assert_int_equal(mrad_kv_acquire(t, idb, 32, 0, &x), MRAD_EKVNOTFOUND);
    assert_int_equal(mrad_kv_acquire(t, ida, 32, 0, &x), 0);
    assert_idle(t, 2, 2 * two);
    /* a and c in use: nothing to evict */
    struct mrad_kv *d;
    char msg[256];
    assert_int_equal(mrad_kv_create(t, 0, &shape, 1, 0, &d, msg, sizeof msg),
                     MRAD_EKVFULL);
    assert_non_null(strstr(msg, "--kv-cache-bytes"));
    /* more than the whole budget */
    mrad_kv_release(t, x);
    assert_int_equal(
        mrad_kv_create(t, 0, &shape, 1000, 0, &d, msg, sizeof msg),
        MRAD_EKVFULL);
    assert_idle(t, 2, 2 * two);
    struct mrad_kv_stats st;
    mrad_kv_stats(t, &st);
    assert_int_equal(st.evicted, 1);
    assert_int_equal(st.full, 2);
    mrad_kv_release(t, c);
    mrad_kv_table_free(t);
}

static void test_session_limit(void **state)
{
    (void)state;
    struct mrad_kv_table *t = table(PLENTY, 2, 1);
    struct mrad_kv *a = make(t, 0, 1), *b = make(t, 0, 1), *c;
    char msg[256];
    assert_int_equal(mrad_kv_create(t, 0, &shape, 1, 0, &c, msg, sizeof msg),
                     MRAD_EKVFULL);
    assert_non_null(strstr(msg, "--kv-max-sessions"));
    mrad_kv_release(t, a);
    c = make(t, 0, 1); /* a evicted */
    assert_idle(t, 2, 2 * bytes_for(1));
    mrad_kv_release(t, b);
    mrad_kv_release(t, c);
    mrad_kv_table_free(t);
}

/* Appends are counted when admitted and trued up from the store when the
 * last use ends: one that never ran gives its bytes back. */
static void test_reserve(void **state)
{
    (void)state;
    struct mrad_kv_table *t = table(bytes_for(64) + bytes_for(32) / 2, 16, 1);
    struct mrad_kv *kv = make(t, 0, 30);
    char msg[256];
    assert_int_equal(mrad_kv_reserve(t, kv, 2, msg, sizeof msg), 0);
    assert_idle(t, 1, bytes_for(32));
    assert_int_equal(mrad_kv_reserve(t, kv, 3, msg, sizeof msg), 0);
    assert_idle(t, 1, bytes_for(35)); /* 2 pages */
    /* one of them applied */
    struct attn_kv_tokens tk = {tok_k, tok_v, NULL, 2};
    assert_int_equal(attn_kv_append(mrad_kv_store(kv), &tk), ATTN_OK);
    assert_int_equal(mrad_kv_reserve(t, kv, 100, msg, sizeof msg),
                     MRAD_EKVFULL);
    assert_non_null(strstr(msg, "append needs"));
    assert_int_equal(mrad_kv_reserve(t, kv, 2000, msg, sizeof msg),
                     MRAD_ETOOBIG);
    assert_non_null(strstr(msg, "1000"));
    mrad_kv_release(t, kv);
    assert_idle(t, 1, bytes_for(32));
    struct mrad_kv_view v;
    char id[40];
    id_of(t, kv, id);
    assert_int_equal(mrad_kv_lookup(t, id, 32, 0, &v), 0);
    assert_int_equal(v.tokens, 32);
    struct mrad_kv *x;
    assert_int_equal(
        mrad_kv_create(t, 0, &shape, 5000, 0, &x, msg, sizeof msg),
        MRAD_ETOOBIG);
    mrad_kv_table_free(t);
}

/* Deleted while in use: gone from the table at once, its store and bytes
 * kept until the last use ends. */
static void test_delete_in_use(void **state)
{
    (void)state;
    struct mrad_kv_table *t = table(PLENTY, 16, 1);
    struct mrad_kv *kv = make(t, 3, 10);
    char id[40];
    id_of(t, kv, id);
    assert_int_equal(mrad_kv_delete(t, id, 32, 3), 0);
    struct mrad_kv *x;
    assert_int_equal(mrad_kv_acquire(t, id, 32, 3, &x), MRAD_EKVNOTFOUND);
    assert_int_equal(mrad_kv_delete(t, id, 32, 3), MRAD_EKVNOTFOUND);
    assert_idle(t, 1, bytes_for(10));
    assert_non_null(mrad_kv_store(kv)); /* still readable by its user */
    mrad_kv_release(t, kv);
    assert_idle(t, 0, 0);
    /* never published (the create failed): freed with its store */
    char msg[256];
    assert_int_equal(mrad_kv_create(t, 3, &shape, 4, 0, &kv, msg, sizeof msg),
                     0);
    struct attn_kv *store;
    assert_int_equal(attn_kv_new(be, &shape, &store), ATTN_OK);
    mrad_kv_attach(t, kv, store);
    assert_idle(t, 1, bytes_for(4));
    mrad_kv_release(t, kv);
    assert_idle(t, 0, 0);
    struct mrad_kv_stats st;
    mrad_kv_stats(t, &st);
    assert_int_equal(st.deleted, 1);
    assert_int_equal(st.created, 1);
    mrad_kv_table_free(t);
}

static void test_expiry(void **state)
{
    (void)state;
    struct mrad_kv_table *t = table(PLENTY, 16, 1);
    struct mrad_kv *a, *b;
    char msg[256];
    /* ttl 1 ms for a; b asks for more than the maximum */
    assert_int_equal(mrad_kv_create(t, 0, &shape, 1, 1, &a, msg, sizeof msg),
                     0);
    assert_int_equal(
        mrad_kv_create(t, 0, &shape, 1, 999999999, &b, msg, sizeof msg), 0);
    for (int i = 0; i < 2; i++) {
        struct mrad_kv *kv = i ? b : a;
        struct attn_kv *store;
        assert_int_equal(attn_kv_new(be, &shape, &store), ATTN_OK);
        mrad_kv_attach(t, kv, store);
        mrad_kv_publish(t, kv);
    }
    struct mrad_kv_view v;
    mrad_kv_view(t, b, &v);
    assert_int_equal(v.ttl_ms, 120000);
    struct timespec ts = {0, 5 * 1000000};
    nanosleep(&ts, NULL);
    /* in use: never expires */
    assert_int_equal(mrad_kv_expire(t, mrad_now_ns()), 0);
    /* a clock read before the last use (another thread's, waiting for
     * the lock meanwhile) finds the session fresh */
    uint64_t before = mrad_now_ns();
    nanosleep(&ts, NULL);
    mrad_kv_release(t, a);
    mrad_kv_release(t, b);
    assert_int_equal(mrad_kv_expire(t, before), 0);
    nanosleep(&ts, NULL);
    assert_int_equal(mrad_kv_expire(t, mrad_now_ns()), 1);
    assert_int_equal(mrad_kv_expire(t, mrad_now_ns()), 0);
    struct mrad_kv_stats st;
    mrad_kv_stats(t, &st);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.sessions, 1);
    mrad_kv_table_free(t);
}

/* Sessions go to the worker holding the fewest bytes. */
static void test_workers(void **state)
{
    (void)state;
    struct mrad_kv_table *t = table(PLENTY, 16, 3);
    struct mrad_kv *a = make(t, 0, 64), *b = make(t, 0, 1), *c = make(t, 0, 1),
                   *d = make(t, 0, 1);
    assert_int_equal(mrad_kv_worker(a), 0);
    assert_int_equal(mrad_kv_worker(b), 1);
    assert_int_equal(mrad_kv_worker(c), 2);
    assert_int_equal(mrad_kv_worker(d), 1);
    mrad_kv_release(t, a);
    mrad_kv_release(t, b);
    mrad_kv_release(t, c);
    mrad_kv_release(t, d);
    mrad_kv_table_free(t);
}

int main(void)
{
    for (size_t i = 0; i < sizeof tok_k / sizeof tok_k[0]; i++)
        tok_k[i] = (float)(i % 7), tok_v[i] = (float)(i % 5);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_and_owners),
        cmocka_unit_test(test_budget_and_lru),
        cmocka_unit_test(test_session_limit),
        cmocka_unit_test(test_reserve),
        cmocka_unit_test(test_delete_in_use),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_workers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
