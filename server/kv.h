/*
 * kv.h - the daemon's sessions: keys and values kept in a backend's store
 * (attention/attn.h, "Resident keys and values") between requests.
 *
 * The table knows ids, owners, byte budget, lifetimes and uses; it knows
 * nothing of HTTP, the wire format or the scheduler.  A session's store
 * belongs to the backend of one worker (the session's `worker`): it is
 * made, appended to and read only by jobs pinned to that worker, and
 * freed by the table once no job uses it.
 *
 * Uses.  Every request on a session holds a use from mrad_kv_acquire()
 * (or mrad_kv_create()) to mrad_kv_release(), which its job calls once the
 * worker no longer touches the store (the job's release).  A session in
 * use is never evicted nor expired; a session deleted while in use
 * disappears at once from the table (404 from then on) and its store is
 * freed when the last use ends.
 *
 * Budget.  Each session counts attn_kv_bytes_for() its planned tokens:
 * those held plus the appends admitted and not yet applied.  When the last
 * use ends, the count is trued up from the store (an append that failed or
 * was cancelled gives its bytes back).  Room is made by evicting idle
 * sessions, least recently used first; what still does not fit is
 * MRAD_EKVFULL.
 *
 * Thread-safe: one mutex guards the table; stores are freed outside it.
 */
#ifndef MRAD_SERVER_KV_H
#define MRAD_SERVER_KV_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attn.h"

/* A session id: 32 lowercase hex digits (128 random bits). */
#define MRAD_KV_ID_LEN 32

struct mrad_kv_config {
    const char *backend;   /* backend name, for attn_kv_bytes_for() */
    size_t workers;        /* sessions are spread over workers 0..n-1 */
    uint64_t budget_bytes; /* --kv-cache-bytes */
    uint64_t max_sessions; /* --kv-max-sessions */
    uint64_t ttl_ms;       /* --kv-ttl-ms: the default idle lifetime */
    uint64_t max_ttl_ms;   /* --kv-max-ttl-ms: the longest one granted */
    uint64_t max_tokens;   /* tokens one session may hold (0: 2^32-1) */
};

struct mrad_kv_table;
struct mrad_kv; /* one session */

/* Returns 0, or -1 when out of memory. */
int mrad_kv_table_new(struct mrad_kv_table **out,
                      const struct mrad_kv_config *cfg);
/* Frees every session and its store.  No use may be left (the workers
 * are stopped); the backends must still be open. */
void mrad_kv_table_free(struct mrad_kv_table *t);

/*
 * Starts a session of `shape` for `tokens` first tokens, owned by the API
 * key `owner` (0 without keys), with an idle lifetime of ttl_ms (0: the
 * default; capped at the maximum): reserves its bytes and picks its worker.
 * The session is in use by the caller and not yet visible by its id; the
 * job that makes the store hands it over with mrad_kv_attach(), and
 * mrad_kv_publish() makes the session visible.  Returns 0, MRAD_EKVFULL,
 * MRAD_ETOOBIG (more tokens than a session may hold) or MRAD_EINTERNAL
 * (no random bytes, no memory), with a sentence in msg.
 */
int mrad_kv_create(struct mrad_kv_table *t, uint64_t owner,
                   const struct attn_kv_shape *shape, uint64_t tokens,
                   uint64_t ttl_ms, struct mrad_kv **out, char *msg,
                   size_t msglen);
/* The store made for a session being created (by its job, on its
 * worker): the table frees it if the session never gets published. */
void mrad_kv_attach(struct mrad_kv_table *t, struct mrad_kv *kv,
                    struct attn_kv *store);
/* Makes a created session visible by its id. */
void mrad_kv_publish(struct mrad_kv_table *t, struct mrad_kv *kv);

/* Finds the session `id` (n bytes) of `owner` and takes a use of it.
 * Returns 0 or MRAD_EKVNOTFOUND (unknown, expired, evicted, deleted, or
 * another owner's). */
int mrad_kv_acquire(struct mrad_kv_table *t, const char *id, size_t n,
                    uint64_t owner, struct mrad_kv **out);
/* Counts `n` more tokens for a session in use (an append admitted),
 * making room if needed.  Returns 0, MRAD_EKVFULL or MRAD_ETOOBIG, with
 * a sentence in msg. */
int mrad_kv_reserve(struct mrad_kv_table *t, struct mrad_kv *kv, uint64_t n,
                    char *msg, size_t msglen);
/* Ends a use.  Any thread, once no job touches the store for this use. */
void mrad_kv_release(struct mrad_kv_table *t, struct mrad_kv *kv);

struct mrad_kv_view;
/* What the session `id` of `owner` is now, without using it: its idle
 * time goes on.  Returns 0 or MRAD_EKVNOTFOUND. */
int mrad_kv_lookup(struct mrad_kv_table *t, const char *id, size_t n,
                   uint64_t owner, struct mrad_kv_view *out);

/* Deletes the session `id` of `owner`.  Returns 0 or MRAD_EKVNOTFOUND. */
int mrad_kv_delete(struct mrad_kv_table *t, const char *id, size_t n,
                   uint64_t owner);
/* Ends the idle sessions whose lifetime is over at `now`
 * (CLOCK_MONOTONIC nanoseconds, as mrad_now_ns(); the daemon calls it
 * every few hundred milliseconds).  Returns how many it ended. */
size_t mrad_kv_expire(struct mrad_kv_table *t, uint64_t now);

/* ---- a session in use ------------------------------------------------ */

struct mrad_kv_view {
    char id[MRAD_KV_ID_LEN + 1];
    struct attn_kv_shape shape;
    uint64_t tokens; /* planned: held plus admitted appends */
    uint64_t bytes;  /* counted against the budget */
    uint64_t ttl_ms, idle_ms;
    int worker;
};
/* What a session in use is now. */
void mrad_kv_view(struct mrad_kv_table *t, struct mrad_kv *kv,
                  struct mrad_kv_view *out);
/* Its store (NULL until attached) and worker, fixed for a session in
 * use. */
struct attn_kv *mrad_kv_store(struct mrad_kv *kv);
int mrad_kv_worker(const struct mrad_kv *kv);
const struct attn_kv_shape *mrad_kv_shape(const struct mrad_kv *kv);

/* ---- metrics ------------------------------------------------------------ */

struct mrad_kv_stats {
    uint64_t sessions, bytes, budget_bytes, max_sessions;
    uint64_t created, deleted, evicted, expired; /* sessions ended, by
                                                   reason */
    uint64_t hits, misses;   /* acquisitions that found the session, or not */
    uint64_t append_tokens;  /* tokens admitted, in creates and appends */
    uint64_t full;           /* creates and appends refused: no room */
};
void mrad_kv_stats(struct mrad_kv_table *t, struct mrad_kv_stats *out);

#endif /* MRAD_SERVER_KV_H */
