/*
 * guard.h - deadlines the HTTP library does not enforce, and lingering
 * closes.
 *
 * libmicrohttpd bounds only the silence of a connection, so a client that
 * trickles a byte every few seconds can hold a connection (and its slot)
 * forever, and it closes a connection right after an early answer, so a
 * client still sending its body sees a reset instead of the answer.  The
 * guard watches every connection from one thread:
 *   - a request head must be complete within `head_timeout_ns` of its
 *     first byte (connections that are merely idle are left to the
 *     library's idle timeout);
 *   - a body must average `min_upload_rate` bytes/s once it has been
 *     arriving for GUARD_GRACE_NS;
 * and closes (shutdown(2)) a connection that fails either.  It also owns
 * lingering closes: after an early answer, the socket is kept open (a
 * duplicate of its descriptor) and what the client still sends is read
 * and dropped, until the client closes, GUARD_LINGER_NS pass, or
 * GUARD_LINGER_BYTES were read, as nginx's lingering close does: the
 * client finishes sending and then reads the answer.
 *
 * Knows nothing of HTTP: it sees descriptors and byte counts.  Thread-safe.
 */
#ifndef MRAD_SERVER_GUARD_H
#define MRAD_SERVER_GUARD_H

#include <stdint.h>

#define GUARD_GRACE_NS (5ull * 1000000000)  /* before the rate counts */
#define GUARD_LINGER_NS (5ull * 1000000000) /* a lingering close */
#define GUARD_LINGER_BYTES (1ull << 30)     /* read by one */
#define GUARD_LINGER_MAX 256                /* lingering at once */

struct mrad_guard_config {
    uint64_t head_timeout_ns;
    uint64_t min_upload_rate; /* bytes/s; 0 = none */
};

struct mrad_guard;      /* opaque */
struct mrad_guard_conn; /* one watched connection */

/* Closes by reason, for the metrics. */
struct mrad_guard_stats {
    uint64_t head_timeouts, slow_uploads, lingered;
};

/* Starts the guard thread.  Returns 0 or -1. */
int mrad_guard_start(struct mrad_guard **out,
                     const struct mrad_guard_config *cfg);
/* Stops the thread and closes what still lingers. */
void mrad_guard_stop(struct mrad_guard *g);
void mrad_guard_stats(struct mrad_guard *g, struct mrad_guard_stats *st);
/* One look at every connection as at `now` (mrad_now_ns()), as the guard
 * thread takes every tick: a state change may come after `now` was read. */
void mrad_guard_check(struct mrad_guard *g, uint64_t now);

/* A connection was accepted on `fd`: watched until mrad_guard_forget().
 * Returns NULL when out of memory (the connection is then not watched). */
struct mrad_guard_conn *mrad_guard_watch(struct mrad_guard *g, int fd);
/* The connection is closing: no longer watched (frees c; NULL ignored). */
void mrad_guard_forget(struct mrad_guard *g, struct mrad_guard_conn *c);

/* A request head is complete: no head deadline until the request ends. */
void mrad_guard_head_done(struct mrad_guard_conn *c);
/* A request body is arriving: `bytes` received so far. */
void mrad_guard_body(struct mrad_guard_conn *c, uint64_t bytes);
/* The request ended: the connection waits for the next head. */
void mrad_guard_request_done(struct mrad_guard_conn *c);

/* Lingers on the socket of `fd` (duplicated, so the caller may close its
 * own descriptor at once): the peer's writes are read and dropped until it
 * closes, or the linger time or byte count runs out.  Returns 0, or -1
 * when too many close at once (nothing is done then). */
int mrad_guard_linger(struct mrad_guard *g, int fd);

#endif /* MRAD_SERVER_GUARD_H */
