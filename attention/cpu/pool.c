/*
 * pool.c - persistent worker pool of the CPU backend (see pool.h).
 *
 * A job is published under the mutex with a new generation number; workers
 * wake on the condition variable, pull items from an atomic counter until
 * the range is exhausted, and the last one to finish signals the caller.
 * A mutex/condvar pair rather than spinning: the machine is often shared
 * and a compute call is long next to a wake-up.
 */
#include <pthread.h>
#include <stdlib.h>

#include "attention/attn.h"
#include "attention/cpu/pool.h"

struct cpu_pool {
    int threads;
    pthread_t *tids; /* threads - 1 workers */
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    unsigned long gen; /* job generation, under mu */
    int busy;          /* workers still in the current job, under mu */
    int stop;
    /* the current job */
    cpu_pool_fn fn;
    void *arg;
    size_t n;
    size_t next; /* next item, atomic */
};

struct worker_arg {
    struct cpu_pool *pool;
    int id;
};

static void drain(struct cpu_pool *p, cpu_pool_fn fn, void *arg, size_t n,
                  int id)
{
    for (;;) {
        size_t i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
        if (i >= n)
            break;
        fn(arg, i, id);
    }
}

static void *worker_main(void *varg)
{
    struct worker_arg wa = *(struct worker_arg *)varg;
    struct cpu_pool *p = wa.pool;
    free(varg);
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->gen == seen)
            pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop)
            break;
        seen = p->gen;
        cpu_pool_fn fn = p->fn;
        void *arg = p->arg;
        size_t n = p->n;
        pthread_mutex_unlock(&p->mu);
        drain(p, fn, arg, n, wa.id);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int cpu_pool_new(int threads, struct cpu_pool **out)
{
    if (threads < 1)
        threads = 1;
    struct cpu_pool *p = calloc(1, sizeof *p);
    if (!p)
        return ATTN_ENOMEM;
    p->threads = threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (threads > 1) {
        p->tids = calloc((size_t)threads - 1, sizeof *p->tids);
        if (!p->tids) {
            p->threads = 1; /* no worker to join */
            cpu_pool_free(p);
            return ATTN_ENOMEM;
        }
    }
    for (int i = 1; i < threads; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (!wa || (wa->pool = p, wa->id = i,
                    pthread_create(&p->tids[i - 1], NULL, worker_main, wa))) {
            free(wa);
            p->threads = i; /* cpu_pool_free joins the ones started */
            cpu_pool_free(p);
            return ATTN_ENOMEM;
        }
    }
    *out = p;
    return ATTN_OK;
}

void cpu_pool_free(struct cpu_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->threads; i++)
        pthread_join(p->tids[i - 1], NULL);
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    free(p->tids);
    free(p);
}

int cpu_pool_threads(const struct cpu_pool *p)
{
    return p->threads;
}

void cpu_pool_run(struct cpu_pool *p, size_t n, cpu_pool_fn fn, void *arg)
{
    if (n == 0)
        return;
    if (p->threads == 1 || n == 1) {
        for (size_t i = 0; i < n; i++)
            fn(arg, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    __atomic_store_n(&p->next, 0, __ATOMIC_RELAXED);
    p->busy = p->threads - 1;
    p->gen++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    drain(p, fn, arg, n, 0);

    pthread_mutex_lock(&p->mu);
    while (p->busy > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
