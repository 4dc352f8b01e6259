/*
 * bufcache.c - a small cache of large buffers, best fit first.
 *
 * Each buffer carries its capacity in a 64-byte header in front of the
 * pointer handed out, so put() needs no size.  The cache is a handful of
 * slots under one mutex: it is touched twice per request.
 */
#include "server/bufcache.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define HEADER 64             /* keeps the data 64-byte aligned */
#define MIN_CACHED (1u << 20) /* smaller buffers are cheap to allocate */
#define SLOTS 8               /* buffers kept */
#define MAX_CACHED_BYTES (2ull << 30) /* bytes kept in all */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *slots[SLOTS]; /* header pointers */
static size_t caps[SLOTS];
static uint64_t cached_bytes;

void *mrad_bufcache_get(size_t size, size_t *cap)
{
    if (size > SIZE_MAX - HEADER)
        return NULL;
    if (size >= MIN_CACHED) {
        int best = -1;
        pthread_mutex_lock(&lock);
        for (int i = 0; i < SLOTS; i++)
            if (slots[i] && caps[i] >= size &&
                (best < 0 || caps[i] < caps[best]))
                best = i;
        if (best >= 0) {
            char *h = slots[best];
            *cap = caps[best];
            slots[best] = NULL;
            cached_bytes -= caps[best];
            pthread_mutex_unlock(&lock);
            return h + HEADER;
        }
        pthread_mutex_unlock(&lock);
    }
    void *p = NULL;
    if (posix_memalign(&p, HEADER, size + HEADER))
        return NULL;
    char *h = p;
    *(size_t *)h = size;
    *cap = size;
    return h + HEADER;
}

void mrad_bufcache_put(void *buf)
{
    if (!buf)
        return;
    char *h = (char *)buf - HEADER;
    size_t cap = *(size_t *)h;
    if (cap >= MIN_CACHED) {
        pthread_mutex_lock(&lock);
        /* A free slot, else the smallest cached buffer if this one is
         * larger: large bodies are the ones worth keeping. */
        int slot = -1;
        for (int i = 0; i < SLOTS; i++) {
            if (!slots[i]) {
                slot = i;
                break;
            }
            if (caps[i] < cap && (slot < 0 || caps[i] < caps[slot]))
                slot = i;
        }
        void *evict = NULL;
        if (slot >= 0) {
            uint64_t after =
                cached_bytes + cap - (slots[slot] ? caps[slot] : 0);
            if (after <= MAX_CACHED_BYTES) {
                evict = slots[slot];
                slots[slot] = h;
                caps[slot] = cap;
                cached_bytes = after;
                h = evict;
            }
        }
        pthread_mutex_unlock(&lock);
    }
    free(h);
}

void mrad_bufcache_clear(void)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < SLOTS; i++) {
        free(slots[i]);
        slots[i] = NULL;
    }
    cached_bytes = 0;
    pthread_mutex_unlock(&lock);
}
