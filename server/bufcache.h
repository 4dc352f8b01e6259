/*
 * bufcache.h - reusable buffers for request bodies and answers.
 *
 * A large request body is tens of megabytes, and the output tensor its
 * answer is computed into and sent from a third of that or more;
 * allocating them fresh for every request means faulting in and zeroing
 * every page, which costs as much CPU as a good part of the computation.
 * Freed buffers of at least 1 MiB are kept (a few, bounded in total bytes)
 * and handed out again.  Thread-safe.
 */
#ifndef MRAD_SERVER_BUFCACHE_H
#define MRAD_SERVER_BUFCACHE_H

#include <stddef.h>

/* Returns a buffer of at least `size` bytes (64-byte aligned) and stores
 * its capacity in *cap, or NULL when out of memory.  Release it with
 * mrad_bufcache_put(), never free(). */
void *mrad_bufcache_get(size_t size, size_t *cap);

/* Gives a buffer of mrad_bufcache_get() back; NULL is ignored. */
void mrad_bufcache_put(void *buf);

/* Frees every cached buffer (at exit). */
void mrad_bufcache_clear(void);

#endif /* MRAD_SERVER_BUFCACHE_H */
