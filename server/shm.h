/*
 * shm.h - system shared-memory regions (Triton's system shared-memory
 * extension of the KServe v2 protocol): a client on the same host
 * registers a POSIX shared-memory object (shm_open key, offset, size), and
 * its requests then read inputs from it and have outputs written into it
 * instead of sending bytes over the socket.
 *
 * A region belongs to the API key that registered it (0 without keys).
 * Each use is checked: the name must be registered, the tensor must lie
 * within the registered size, and the object must still exist and still
 * be as large as registered.  A region in use by a request stays mapped
 * until the request releases it, even when unregistered meanwhile.
 *
 * The object is the client's: it can shrink it while a request reads it,
 * which would make the reads fault (SIGBUS).  mrad_shm_guard() installs a
 * handler that, for a fault inside a mapped region, maps zero pages over
 * the rest of the region and marks it broken; the request then computes
 * on zeros, and its owner answers 400 when mrad_shm_broken() says so.  A
 * fault anywhere else is handled as before (the process stops).
 *
 * Thread-safe.  Knows nothing of HTTP or the wire format.
 */
#ifndef MRAD_SERVER_SHM_H
#define MRAD_SERVER_SHM_H

#include <stddef.h>
#include <stdint.h>

#define MRAD_SHM_NAME_MAX 127
#define MRAD_SHM_REGIONS 256 /* registered at once, all keys together */

struct mrad_shm_table;
struct mrad_shm_region;

/* Returns 0, or -1 when out of memory. */
int mrad_shm_table_new(struct mrad_shm_table **out);
/* Unmaps every region.  No use may be left. */
void mrad_shm_table_free(struct mrad_shm_table *t);

/* Installs the SIGBUS handler (once per process).  Returns 0 or -1. */
int mrad_shm_guard(void);

/*
 * Registers region `name` for `owner`: byte_size bytes at `offset` of the
 * shared-memory object `key` ("/name": one path segment of letters,
 * digits, '.', '_' or '-').  Returns 0, or -1 with a sentence in msg: a
 * bad name or key, a name already registered, an object that cannot be
 * opened or is smaller than offset + byte_size, too many regions.
 */
int mrad_shm_register(struct mrad_shm_table *t, uint64_t owner,
                      const char *name, const char *key, uint64_t offset,
                      uint64_t byte_size, char *msg, size_t msglen);
/* Unregisters `name` of `owner` (NULL: all of owner's regions).  Returns
 * 0, or -1 when `name` is not registered (msg says so). */
int mrad_shm_unregister(struct mrad_shm_table *t, uint64_t owner,
                        const char *name, char *msg, size_t msglen);

/* What a region is: for GET .../status. */
struct mrad_shm_info {
    char name[MRAD_SHM_NAME_MAX + 1];
    char key[MRAD_SHM_NAME_MAX + 1];
    uint64_t offset, byte_size;
};
/* Owner's regions (only `name`, when not NULL) into out (at most cap);
 * returns how many. */
size_t mrad_shm_status(struct mrad_shm_table *t, uint64_t owner,
                       const char *name, struct mrad_shm_info *out,
                       size_t cap);

/*
 * Takes a use of region `name` of `owner` for `need` bytes at `offset`
 * into it: *ptr gets their address.  Returns the region (release it with
 * mrad_shm_release() once nothing reads or writes it any more), or NULL
 * with a sentence in msg naming `what`: not registered, past its size,
 * removed or shrunk since it was registered, broken by an earlier fault.
 */
struct mrad_shm_region *mrad_shm_use(struct mrad_shm_table *t, uint64_t owner,
                                     const char *name, uint64_t offset,
                                     uint64_t need, const char *what,
                                     void **ptr, char *msg, size_t msglen);
void mrad_shm_release(struct mrad_shm_table *t, struct mrad_shm_region *r);
/* Nonzero when a fault broke the region while it was in use. */
int mrad_shm_broken(const struct mrad_shm_region *r);
/* Its name. */
const char *mrad_shm_name(const struct mrad_shm_region *r);

#endif /* MRAD_SERVER_SHM_H */
