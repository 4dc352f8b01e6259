/*
 * test-pool.c - tests of attention/cpu/pool.c: every item of a job runs
 * exactly once, whatever the thread count and job size, across many jobs
 * in a row on the same pool; worker ids stay in range; the calling thread
 * takes part.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attention/attn.h"
#include "attention/cpu/pool.h"

struct job {
    int threads;
    unsigned *hits;   /* per item, atomic */
    unsigned *by;     /* per worker, atomic */
    unsigned bad_ids; /* atomic */
};

static void count(void *arg, size_t item, int worker)
{
    struct job *j = arg;
    __atomic_fetch_add(&j->hits[item], 1, __ATOMIC_RELAXED);
    if (worker < 0 || worker >= j->threads)
        __atomic_fetch_add(&j->bad_ids, 1, __ATOMIC_RELAXED);
    else
        __atomic_fetch_add(&j->by[worker], 1, __ATOMIC_RELAXED);
}

static void test_every_item_once(void **state)
{
    (void)state;
    static const int threads[] = {1, 2, 3, 8};
    static const size_t sizes[] = {0, 1, 2, 7, 64, 1000, 10007};
    for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
        struct cpu_pool *pool;
        assert_int_equal(cpu_pool_new(threads[t], &pool), ATTN_OK);
        assert_int_equal(cpu_pool_threads(pool), threads[t]);
        for (int round = 0; round < 50; round++) {
            size_t n = sizes[round % (sizeof sizes / sizeof *sizes)];
            struct job j = {.threads = threads[t]};
            j.hits = calloc(n + 1, sizeof *j.hits);
            j.by = calloc((size_t)threads[t], sizeof *j.by);
            assert_non_null(j.hits);
            assert_non_null(j.by);
            cpu_pool_run(pool, n, count, &j);
            for (size_t i = 0; i < n; i++)
                if (j.hits[i] != 1)
                    fail_msg("threads=%d n=%zu: item %zu ran %u times",
                             threads[t], n, i, j.hits[i]);
            assert_int_equal(j.bad_ids, 0);
            unsigned total = 0;
            for (int w = 0; w < threads[t]; w++)
                total += j.by[w];
            assert_int_equal(total, n);
            free(j.hits);
            free(j.by);
        }
        cpu_pool_free(pool);
    }
    cpu_pool_free(NULL);
}

/* With one thread every item runs on the caller, in order. */
struct order {
    size_t n, items[16];
};

static void record(void *arg, size_t item, int worker)
{
    struct order *o = arg;
    assert_int_equal(worker, 0);
    o->items[o->n++] = item;
}

static void test_single_thread_in_order(void **state)
{
    (void)state;
    struct cpu_pool *pool;
    assert_int_equal(cpu_pool_new(0, &pool), ATTN_OK); /* clamps to 1 */
    assert_int_equal(cpu_pool_threads(pool), 1);
    struct order o = {0};
    cpu_pool_run(pool, 10, record, &o);
    assert_int_equal(o.n, 10);
    for (size_t i = 0; i < 10; i++)
        assert_int_equal(o.items[i], i);
    cpu_pool_free(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_item_once),
        cmocka_unit_test(test_single_thread_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
