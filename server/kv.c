/*
 * kv.c - the session table: ids, owners, the byte budget, lifetimes, uses
 * (server/kv.h).
 *
 * Published sessions are in a hash table by id and on a list by last use
 * (most recent first), which eviction walks from its tail.  A session
 * being created, or deleted while in use, is on neither: only its users
 * hold it.  A session ends (its bytes leave the budget and its store is
 * freed) when it is unpublished and unused; stores are freed after the
 * table's lock is released, as freeing device memory may take a while.
 */
#include "server/kv.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "server/errors.h"

enum kv_state {
    KV_CREATING, /* made by its first request, not yet visible */
    KV_LIVE,     /* published: in the hash table and the list */
    KV_GONE,     /* deleted, evicted or expired while in use */
};

struct mrad_kv {
    char id[MRAD_KV_ID_LEN + 1];
    uint64_t owner;
    struct attn_kv_shape shape;
    struct attn_kv *store;
    int worker;
    enum kv_state state;
    uint64_t tokens, bytes; /* planned, and counted in the budget */
    uint64_t ttl_ms;
    uint64_t last_ns; /* start or end of the last use */
    unsigned uses;
    struct mrad_kv *hnext;             /* hash chain */
    struct mrad_kv *newer, *older;     /* the list by last use */
    struct mrad_kv *free_next;         /* sessions to free after unlock */
};

struct mrad_kv_table {
    struct mrad_kv_config cfg;
    pthread_mutex_t lock;
    struct mrad_kv **buckets;
    size_t mask; /* buckets - 1, a power of two minus one */
    struct mrad_kv *newest, *oldest;
    uint64_t count; /* sessions not yet ended */
    uint64_t used;  /* their bytes */
    uint64_t *worker_bytes;
    struct mrad_kv_stats st; /* counters; gauges filled at read */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t hash_id(const char *id, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)id[i]) * 1099511628211ull;
    return h;
}

int mrad_kv_table_new(struct mrad_kv_table **out,
                      const struct mrad_kv_config *cfg)
{
    struct mrad_kv_table *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    t->cfg = *cfg;
    if (t->cfg.workers == 0)
        t->cfg.workers = 1;
    if (t->cfg.max_tokens == 0 || t->cfg.max_tokens > UINT32_MAX)
        t->cfg.max_tokens = UINT32_MAX;
    if (t->cfg.max_ttl_ms && t->cfg.ttl_ms > t->cfg.max_ttl_ms)
        t->cfg.ttl_ms = t->cfg.max_ttl_ms;
    size_t nb = 64;
    while (nb < t->cfg.max_sessions && nb < ((size_t)1 << 20))
        nb <<= 1;
    t->buckets = calloc(nb, sizeof *t->buckets);
    t->worker_bytes = calloc(t->cfg.workers, sizeof *t->worker_bytes);
    if (!t->buckets || !t->worker_bytes) {
        free(t->buckets);
        free(t->worker_bytes);
        free(t);
        return -1;
    }
    t->mask = nb - 1;
    pthread_mutex_init(&t->lock, NULL);
    t->st.budget_bytes = t->cfg.budget_bytes;
    t->st.max_sessions = t->cfg.max_sessions;
    *out = t;
    return 0;
}

/* ---- with the lock held ----------------------------------------------- */

static struct mrad_kv **bucket(struct mrad_kv_table *t, const char *id,
                               size_t n)
{
    return &t->buckets[hash_id(id, n) & t->mask];
}

static struct mrad_kv *find(struct mrad_kv_table *t, const char *id, size_t n)
{
    if (n != MRAD_KV_ID_LEN)
        return NULL;
    for (struct mrad_kv *kv = *bucket(t, id, n); kv; kv = kv->hnext)
        if (!memcmp(kv->id, id, n))
            return kv;
    return NULL;
}

static void list_unlink(struct mrad_kv_table *t, struct mrad_kv *kv)
{
    if (kv->newer)
        kv->newer->older = kv->older;
    else
        t->newest = kv->older;
    if (kv->older)
        kv->older->newer = kv->newer;
    else
        t->oldest = kv->newer;
    kv->newer = kv->older = NULL;
}

static void list_push(struct mrad_kv_table *t, struct mrad_kv *kv)
{
    kv->older = t->newest;
    kv->newer = NULL;
    if (t->newest)
        t->newest->newer = kv;
    else
        t->oldest = kv;
    t->newest = kv;
}

/* Takes a published session out of the hash table and the list. */
static void unpublish(struct mrad_kv_table *t, struct mrad_kv *kv)
{
    struct mrad_kv **pp = bucket(t, kv->id, MRAD_KV_ID_LEN);
    while (*pp != kv)
        pp = &(*pp)->hnext;
    *pp = kv->hnext;
    kv->hnext = NULL;
    list_unlink(t, kv);
    kv->state = KV_GONE;
}

/* Ends an unpublished, unused session: its bytes leave the budget and it
 * goes on *to_free. */
static void end(struct mrad_kv_table *t, struct mrad_kv *kv,
                struct mrad_kv **to_free)
{
    t->used -= kv->bytes;
    t->worker_bytes[kv->worker] -= kv->bytes;
    t->count--;
    kv->free_next = *to_free;
    *to_free = kv;
}

/* Ends a published, unused session. */
static void drop(struct mrad_kv_table *t, struct mrad_kv *kv,
                 struct mrad_kv **to_free)
{
    unpublish(t, kv);
    end(t, kv, to_free);
}

/* `now` may have been read before another thread, holding the lock
 * first, used the session (last_ns > now): then it is fresh. */
static int expired(const struct mrad_kv *kv, uint64_t now)
{
    return kv->uses == 0 && now > kv->last_ns &&
           now - kv->last_ns >= kv->ttl_ms * 1000000ull;
}

/* Evicts idle sessions, least recently used first, until `bytes` more
 * (and a session more, with `session` set) fit.  Returns 0, or -1 when
 * they do not fit even with every idle session gone. */
static int make_room(struct mrad_kv_table *t, uint64_t bytes, int session,
                     struct mrad_kv **to_free)
{
    struct mrad_kv *kv = t->oldest;
    while (t->used + bytes > t->cfg.budget_bytes ||
           bytes > t->cfg.budget_bytes ||
           (session && t->count + 1 > t->cfg.max_sessions)) {
        while (kv && kv->uses)
            kv = kv->newer;
        if (!kv || bytes > t->cfg.budget_bytes)
            return -1;
        struct mrad_kv *next = kv->newer;
        drop(t, kv, to_free);
        t->st.evicted++;
        kv = next;
    }
    return 0;
}

/* Frees the sessions ended under the lock; after unlocking. */
static void free_ended(struct mrad_kv *kv)
{
    while (kv) {
        struct mrad_kv *next = kv->free_next;
        attn_kv_free(kv->store);
        free(kv);
        kv = next;
    }
}

/* ---- public functions ----------------------------------------------------- */

void mrad_kv_table_free(struct mrad_kv_table *t)
{
    if (!t)
        return;
    struct mrad_kv *to_free = NULL;
    pthread_mutex_lock(&t->lock);
    while (t->oldest)
        drop(t, t->oldest, &to_free);
    pthread_mutex_unlock(&t->lock);
    free_ended(to_free);
    pthread_mutex_destroy(&t->lock);
    free(t->buckets);
    free(t->worker_bytes);
    free(t);
}

static uint64_t bytes_for(const struct mrad_kv_table *t,
                          const struct attn_kv_shape *shape, uint64_t tokens)
{
    return attn_kv_bytes_for(t->cfg.backend, shape, tokens);
}

int mrad_kv_create(struct mrad_kv_table *t, uint64_t owner,
                   const struct attn_kv_shape *shape, uint64_t tokens,
                   uint64_t ttl_ms, struct mrad_kv **out, char *msg,
                   size_t msglen)
{
    if (tokens > t->cfg.max_tokens) {
        snprintf(msg, msglen,
                 "k: %" PRIu64 " tokens exceed the %" PRIu64
                 " a session may hold",
                 tokens, t->cfg.max_tokens);
        return MRAD_ETOOBIG;
    }
    struct mrad_kv *kv = calloc(1, sizeof *kv);
    unsigned char rnd[MRAD_KV_ID_LEN / 2];
    if (!kv || getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        free(kv);
        snprintf(msg, msglen, "cannot make a session id now");
        return MRAD_EINTERNAL;
    }
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(kv->id + 2 * i, 3, "%02x", rnd[i]);
    kv->owner = owner;
    kv->shape = *shape;
    kv->tokens = tokens;
    kv->bytes = bytes_for(t, shape, tokens);
    kv->ttl_ms = ttl_ms ? ttl_ms : t->cfg.ttl_ms;
    if (t->cfg.max_ttl_ms && kv->ttl_ms > t->cfg.max_ttl_ms)
        kv->ttl_ms = t->cfg.max_ttl_ms;
    kv->state = KV_CREATING;
    kv->uses = 1;
    kv->last_ns = now_ns();

    struct mrad_kv *to_free = NULL;
    pthread_mutex_lock(&t->lock);
    if (make_room(t, kv->bytes, 1, &to_free)) {
        t->st.full++;
        if (t->count + 1 > t->cfg.max_sessions)
            snprintf(msg, msglen,
                     "the session cache is full: %" PRIu64
                     " sessions, all in use (--kv-max-sessions %" PRIu64 ")",
                     t->count, t->cfg.max_sessions);
        else
            snprintf(msg, msglen,
                     "the session cache is full: the session needs %" PRIu64
                     " bytes, %" PRIu64 " of %" PRIu64
                     " are held by sessions in use (--kv-cache-bytes)",
                     kv->bytes, t->used, t->cfg.budget_bytes);
        pthread_mutex_unlock(&t->lock);
        free_ended(to_free);
        free(kv);
        return MRAD_EKVFULL;
    }
    /* The worker whose backend holds the fewest session bytes. */
    for (size_t w = 1; w < t->cfg.workers; w++)
        if (t->worker_bytes[w] < t->worker_bytes[kv->worker])
            kv->worker = (int)w;
    t->used += kv->bytes;
    t->worker_bytes[kv->worker] += kv->bytes;
    t->count++;
    t->st.append_tokens += tokens;
    pthread_mutex_unlock(&t->lock);
    free_ended(to_free);
    *out = kv;
    return 0;
}

void mrad_kv_attach(struct mrad_kv_table *t, struct mrad_kv *kv,
                    struct attn_kv *store)
{
    pthread_mutex_lock(&t->lock);
    kv->store = store;
    pthread_mutex_unlock(&t->lock);
}

void mrad_kv_publish(struct mrad_kv_table *t, struct mrad_kv *kv)
{
    pthread_mutex_lock(&t->lock);
    if (kv->state == KV_CREATING && kv->store) {
        struct mrad_kv **b = bucket(t, kv->id, MRAD_KV_ID_LEN);
        kv->hnext = *b;
        *b = kv;
        list_push(t, kv);
        kv->state = KV_LIVE;
        t->st.created++;
    }
    pthread_mutex_unlock(&t->lock);
}

int mrad_kv_acquire(struct mrad_kv_table *t, const char *id, size_t n,
                    uint64_t owner, struct mrad_kv **out)
{
    struct mrad_kv *to_free = NULL;
    uint64_t now = now_ns();
    pthread_mutex_lock(&t->lock);
    struct mrad_kv *kv = find(t, id, n);
    if (kv && kv->owner == owner && expired(kv, now)) {
        drop(t, kv, &to_free);
        t->st.expired++;
        kv = NULL;
    }
    int rc = MRAD_EKVNOTFOUND;
    if (kv && kv->owner == owner) {
        kv->uses++;
        kv->last_ns = now;
        list_unlink(t, kv);
        list_push(t, kv);
        t->st.hits++;
        *out = kv;
        rc = 0;
    } else {
        t->st.misses++;
    }
    pthread_mutex_unlock(&t->lock);
    free_ended(to_free);
    return rc;
}

int mrad_kv_reserve(struct mrad_kv_table *t, struct mrad_kv *kv, uint64_t n,
                    char *msg, size_t msglen)
{
    struct mrad_kv *to_free = NULL;
    int rc = 0;
    pthread_mutex_lock(&t->lock);
    uint64_t tokens = kv->tokens + n;
    if (tokens > t->cfg.max_tokens) {
        snprintf(msg, msglen,
                 "the session would hold %" PRIu64 " tokens, over the %" PRIu64
                 " a session may hold",
                 tokens, t->cfg.max_tokens);
        rc = MRAD_ETOOBIG;
    } else {
        uint64_t bytes = bytes_for(t, &kv->shape, tokens);
        uint64_t more = bytes > kv->bytes ? bytes - kv->bytes : 0;
        if (make_room(t, more, 0, &to_free)) {
            t->st.full++;
            snprintf(msg, msglen,
                     "the session cache is full: the append needs %" PRIu64
                     " bytes more, %" PRIu64 " of %" PRIu64
                     " are held by sessions in use (--kv-cache-bytes)",
                     more, t->used, t->cfg.budget_bytes);
            rc = MRAD_EKVFULL;
        } else {
            kv->tokens = tokens;
            kv->bytes += more;
            t->used += more;
            t->worker_bytes[kv->worker] += more;
            t->st.append_tokens += n;
        }
    }
    pthread_mutex_unlock(&t->lock);
    free_ended(to_free);
    return rc;
}

void mrad_kv_release(struct mrad_kv_table *t, struct mrad_kv *kv)
{
    struct mrad_kv *to_free = NULL;
    pthread_mutex_lock(&t->lock);
    kv->last_ns = now_ns();
    if (--kv->uses == 0) {
        if (kv->state != KV_LIVE) {
            end(t, kv, &to_free);
        } else {
            /* No job touches the store: true the count up from it (appends
             * that failed or never ran give their bytes back). */
            uint64_t bytes = attn_kv_bytes(kv->store);
            t->used = t->used - kv->bytes + bytes;
            t->worker_bytes[kv->worker] =
                t->worker_bytes[kv->worker] - kv->bytes + bytes;
            kv->bytes = bytes;
            kv->tokens = attn_kv_tokens(kv->store);
        }
    }
    pthread_mutex_unlock(&t->lock);
    free_ended(to_free);
}

int mrad_kv_delete(struct mrad_kv_table *t, const char *id, size_t n,
                   uint64_t owner)
{
    struct mrad_kv *to_free = NULL;
    pthread_mutex_lock(&t->lock);
    struct mrad_kv *kv = find(t, id, n);
    int rc = MRAD_EKVNOTFOUND;
    if (kv && kv->owner == owner) {
        unpublish(t, kv);
        if (kv->uses == 0)
            end(t, kv, &to_free);
        t->st.deleted++;
        rc = 0;
    }
    pthread_mutex_unlock(&t->lock);
    free_ended(to_free);
    return rc;
}

size_t mrad_kv_expire(struct mrad_kv_table *t, uint64_t now)
{
    struct mrad_kv *to_free = NULL;
    size_t n = 0;
    pthread_mutex_lock(&t->lock);
    for (struct mrad_kv *kv = t->oldest, *next; kv; kv = next) {
        next = kv->newer;
        if (expired(kv, now)) {
            drop(t, kv, &to_free);
            t->st.expired++;
            n++;
        }
    }
    pthread_mutex_unlock(&t->lock);
    free_ended(to_free);
    return n;
}

/* With the lock held. */
static void view(const struct mrad_kv *kv, uint64_t now,
                 struct mrad_kv_view *out)
{
    memcpy(out->id, kv->id, sizeof out->id);
    out->shape = kv->shape;
    out->tokens = kv->tokens;
    out->bytes = kv->bytes;
    out->ttl_ms = kv->ttl_ms;
    out->idle_ms = kv->uses == 0 && now > kv->last_ns
                       ? (now - kv->last_ns) / 1000000
                       : 0;
    out->worker = kv->worker;
}

void mrad_kv_view(struct mrad_kv_table *t, struct mrad_kv *kv,
                  struct mrad_kv_view *out)
{
    uint64_t now = now_ns();
    pthread_mutex_lock(&t->lock);
    view(kv, now, out);
    pthread_mutex_unlock(&t->lock);
}

int mrad_kv_lookup(struct mrad_kv_table *t, const char *id, size_t n,
                   uint64_t owner, struct mrad_kv_view *out)
{
    struct mrad_kv *to_free = NULL;
    uint64_t now = now_ns();
    pthread_mutex_lock(&t->lock);
    struct mrad_kv *kv = find(t, id, n);
    if (kv && kv->owner == owner && expired(kv, now)) {
        drop(t, kv, &to_free);
        t->st.expired++;
        kv = NULL;
    }
    int rc = MRAD_EKVNOTFOUND;
    if (kv && kv->owner == owner) {
        view(kv, now, out);
        t->st.hits++;
        rc = 0;
    } else {
        t->st.misses++;
    }
    pthread_mutex_unlock(&t->lock);
    free_ended(to_free);
    return rc;
}

struct attn_kv *mrad_kv_store(struct mrad_kv *kv)
{
    return kv->store;
}

int mrad_kv_worker(const struct mrad_kv *kv)
{
    return kv->worker;
}

const struct attn_kv_shape *mrad_kv_shape(const struct mrad_kv *kv)
{
    return &kv->shape;
}

void mrad_kv_stats(struct mrad_kv_table *t, struct mrad_kv_stats *out)
{
    pthread_mutex_lock(&t->lock);
    *out = t->st;
    out->sessions = t->count;
    out->bytes = t->used;
    pthread_mutex_unlock(&t->lock);
}
