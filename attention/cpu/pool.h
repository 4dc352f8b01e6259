/*
 * pool.h - the CPU backend's persistent worker pool.
 *
 * Workers are started once with the backend and sleep between jobs, so a
 * compute call costs no thread start-up.  A job is a flat range of items
 * [0, n); items are handed out one at a time from an atomic counter, and
 * the calling thread works too.  Which worker runs an item is arbitrary,
 * so callers must make each item's arithmetic independent of that (the
 * backend's determinism rests on this).
 *
 * Threading: one job at a time; cpu_pool_run() is called by the single
 * thread that owns the backend.
 */
#ifndef MRAD_ATTN_CPU_POOL_H
#define MRAD_ATTN_CPU_POOL_H

#include <stddef.h>

struct cpu_pool;

/* Item callback: `worker` is in [0, threads) (0 is the calling thread). */
typedef void (*cpu_pool_fn)(void *arg, size_t item, int worker);

/* Starts a pool of `threads` (>= 1) workers, the caller counting as one.
 * Returns ATTN_OK or ATTN_ENOMEM (thread or memory failure). */
int cpu_pool_new(int threads, struct cpu_pool **out);
/* Stops and joins the workers; NULL is a no-op. */
void cpu_pool_free(struct cpu_pool *pool);
int cpu_pool_threads(const struct cpu_pool *pool);
/* Runs fn(arg, item, worker) for every item in [0, n) and returns when all
 * have finished. */
void cpu_pool_run(struct cpu_pool *pool, size_t n, cpu_pool_fn fn, void *arg);

#endif /* MRAD_ATTN_CPU_POOL_H */
