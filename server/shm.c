/*
 * shm.c - system shared-memory regions (server/shm.h).
 *
 * Each region keeps its object's descriptor (to check at every use that
 * the object still exists and is still as large) and one mapping of its
 * registered bytes, rounded out to whole pages.  The mappings' bounds are
 * also published in a fixed table of atomics that the SIGBUS handler
 * reads without a lock.
 */
#include "server/shm.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct mrad_shm_region {
    char name[MRAD_SHM_NAME_MAX + 1];
    char key[MRAD_SHM_NAME_MAX + 1];
    uint64_t owner, offset, byte_size;
    int fd;
    char *map;      /* the mapping: whole pages */
    size_t map_len; /* its length */
    size_t skew;    /* where byte `offset` of the object is in it */
    int slot;       /* in `slots` */
    unsigned refs;  /* 1 while registered, and one per use */
    int registered;
};

struct mrad_shm_table {
    pthread_mutex_t lock;
    struct mrad_shm_region *regions[MRAD_SHM_REGIONS];
};

/* The mappings, for the SIGBUS handler: [start, end) of slot i, and
 * whether a fault broke it.  start 0: a free slot.  Written under the
 * lock of the one table that uses them. */
static struct {
    atomic_uintptr_t start, end;
    atomic_int broken;
} slots[MRAD_SHM_REGIONS];

static struct sigaction old_bus;
static size_t page_size;

/* A fault in a mapped region: zero pages over the rest of its mapping, so
 * the access is retried on them; the region is marked broken.  Anything
 * else goes to the handler that was there before. */
static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    for (size_t i = 0; i < MRAD_SHM_REGIONS; i++) {
        uintptr_t s = atomic_load(&slots[i].start);
        uintptr_t e = atomic_load(&slots[i].end);
        if (!s || a < s || a >= e)
            continue;
        uintptr_t page = a & ~(uintptr_t)(page_size - 1);
        if (mmap((void *)page, e - page, PROT_READ | PROT_WRITE,
                 MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1,
                 0) != MAP_FAILED) {
            atomic_store(&slots[i].broken, 1);
            return;
        }
    }
    if (old_bus.sa_flags & SA_SIGINFO) {
        old_bus.sa_sigaction(sig, si, uc);
    } else if (old_bus.sa_handler != SIG_DFL &&
               old_bus.sa_handler != SIG_IGN) {
        old_bus.sa_handler(sig);
    } else {
        /* The default action, when the access is retried. */
        signal(SIGBUS, SIG_DFL);
    }
}

static int guard_rc;

static void install_guard(void)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    guard_rc = sigaction(SIGBUS, &sa, &old_bus) ? -1 : 0;
}

int mrad_shm_guard(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, install_guard);
    return guard_rc;
}

int mrad_shm_table_new(struct mrad_shm_table **out)
{
    struct mrad_shm_table *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    pthread_mutex_init(&t->lock, NULL);
    if (!page_size)
        page_size = (size_t)sysconf(_SC_PAGESIZE);
    *out = t;
    return 0;
}

/* Unmaps and frees a region nobody uses (with the lock held). */
static void destroy(struct mrad_shm_table *t, struct mrad_shm_region *r)
{
    atomic_store(&slots[r->slot].start, 0);
    atomic_store(&slots[r->slot].end, 0);
    atomic_store(&slots[r->slot].broken, 0);
    for (size_t i = 0; i < MRAD_SHM_REGIONS; i++)
        if (t->regions[i] == r)
            t->regions[i] = NULL;
    munmap(r->map, r->map_len);
    close(r->fd);
    free(r);
}

static void drop_ref(struct mrad_shm_table *t, struct mrad_shm_region *r)
{
    if (--r->refs == 0)
        destroy(t, r);
}

void mrad_shm_table_free(struct mrad_shm_table *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->lock);
    for (size_t i = 0; i < MRAD_SHM_REGIONS; i++)
        if (t->regions[i])
            destroy(t, t->regions[i]);
    pthread_mutex_unlock(&t->lock);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* 1 to MRAD_SHM_NAME_MAX of [A-Za-z0-9._-]. */
static int word_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MRAD_SHM_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
              (c >= 'A' && c <= 'Z') || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* A registered region of owner by name (with the lock held). */
static struct mrad_shm_region *find(struct mrad_shm_table *t, uint64_t owner,
                                    const char *name)
{
    for (size_t i = 0; i < MRAD_SHM_REGIONS; i++) {
        struct mrad_shm_region *r = t->regions[i];
        if (r && r->registered && r->owner == owner && !strcmp(r->name, name))
            return r;
    }
    return NULL;
}

int mrad_shm_register(struct mrad_shm_table *t, uint64_t owner,
                      const char *name, const char *key, uint64_t offset,
                      uint64_t byte_size, char *msg, size_t msglen)
{
    if (!word_ok(name)) {
        snprintf(msg, msglen,
                 "region name: 1 to %d letters, digits, '.', '_' or '-'",
                 MRAD_SHM_NAME_MAX);
        return -1;
    }
    if (key[0] != '/' || !word_ok(key + 1) || !strcmp(key, "/.") ||
        !strcmp(key, "/..")) {
        snprintf(msg, msglen,
                 "key: a shared-memory object name, '/' and 1 to %d letters, "
                 "digits, '.', '_' or '-'",
                 MRAD_SHM_NAME_MAX - 1);
        return -1;
    }
    if (byte_size == 0 || offset > UINT64_MAX - byte_size ||
        byte_size > SIZE_MAX / 2) {
        snprintf(msg, msglen, "byte_size: must be >= 1 (and offset + "
                              "byte_size within 64 bits)");
        return -1;
    }
    int fd = shm_open(key, O_RDWR, 0);
    if (fd < 0) {
        snprintf(msg, msglen, "key: cannot open shared-memory object %s", key);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) || (uint64_t)st.st_size < offset + byte_size) {
        snprintf(msg, msglen,
                 "shared-memory object %s holds %lld bytes, fewer than offset "
                 "+ byte_size = %" PRIu64,
                 key, (long long)st.st_size, offset + byte_size);
        close(fd);
        return -1;
    }
    struct mrad_shm_region *r = calloc(1, sizeof *r);
    if (!r) {
        close(fd);
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    snprintf(r->name, sizeof r->name, "%s", name);
    snprintf(r->key, sizeof r->key, "%s", key);
    r->owner = owner;
    r->offset = offset;
    r->byte_size = byte_size;
    r->fd = fd;
    uint64_t start = offset & ~(uint64_t)(page_size - 1);
    r->skew = (size_t)(offset - start);
    r->map_len = (r->skew + byte_size + page_size - 1) & ~(page_size - 1);
    r->map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                  (off_t)start);
    if (r->map == MAP_FAILED) {
        snprintf(msg, msglen, "cannot map shared-memory object %s", key);
        close(fd);
        free(r);
        return -1;
    }
    r->refs = 1;
    r->registered = 1;
    pthread_mutex_lock(&t->lock);
    int free_at = -1;
    for (int i = 0; i < MRAD_SHM_REGIONS && free_at < 0; i++)
        if (!t->regions[i] && !atomic_load(&slots[i].start))
            free_at = i;
    const char *why = find(t, owner, name) ? "is already registered"
                      : free_at < 0        ? "cannot be registered: "
                                             "every slot is taken"
                                           : NULL;
    if (!why) {
        r->slot = free_at;
        t->regions[free_at] = r;
        atomic_store(&slots[free_at].broken, 0);
        atomic_store(&slots[free_at].end, (uintptr_t)r->map + r->map_len);
        atomic_store(&slots[free_at].start, (uintptr_t)r->map);
    }
    pthread_mutex_unlock(&t->lock);
    if (why) {
        snprintf(msg, msglen, "region %s %s", name, why);
        munmap(r->map, r->map_len);
        close(fd);
        free(r);
        return -1;
    }
    return 0;
}

int mrad_shm_unregister(struct mrad_shm_table *t, uint64_t owner,
                        const char *name, char *msg, size_t msglen)
{
    int rc = 0;
    pthread_mutex_lock(&t->lock);
    if (name) {
        struct mrad_shm_region *r = find(t, owner, name);
        if (r) {
            r->registered = 0;
            drop_ref(t, r);
        } else {
            snprintf(msg, msglen, "region %s is not registered", name);
            rc = -1;
        }
    } else {
        for (size_t i = 0; i < MRAD_SHM_REGIONS; i++) {
            struct mrad_shm_region *r = t->regions[i];
            if (r && r->registered && r->owner == owner) {
                r->registered = 0;
                drop_ref(t, r);
            }
        }
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

size_t mrad_shm_status(struct mrad_shm_table *t, uint64_t owner,
                       const char *name, struct mrad_shm_info *out,
                       size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&t->lock);
    for (size_t i = 0; i < MRAD_SHM_REGIONS && n < cap; i++) {
        struct mrad_shm_region *r = t->regions[i];
        if (!r || !r->registered || r->owner != owner ||
            (name && strcmp(name, r->name)))
            continue;
        memcpy(out[n].name, r->name, sizeof out[n].name);
        memcpy(out[n].key, r->key, sizeof out[n].key);
        out[n].offset = r->offset;
        out[n].byte_size = r->byte_size;
        n++;
    }
    pthread_mutex_unlock(&t->lock);
    return n;
}

struct mrad_shm_region *mrad_shm_use(struct mrad_shm_table *t, uint64_t owner,
                                     const char *name, uint64_t offset,
                                     uint64_t need, const char *what,
                                     void **ptr, char *msg, size_t msglen)
{
    pthread_mutex_lock(&t->lock);
    struct mrad_shm_region *r = find(t, owner, name);
    struct stat st;
    if (!r) {
        snprintf(msg, msglen, "%s: shared-memory region %s is not registered",
                 what, name);
    } else if (offset > r->byte_size || need > r->byte_size - offset) {
        snprintf(msg, msglen,
                 "%s: %" PRIu64 " bytes at offset %" PRIu64
                 " are past region %s's %" PRIu64 " bytes",
                 what, need, offset, name, r->byte_size);
        r = NULL;
    } else if (atomic_load(&slots[r->slot].broken)) {
        snprintf(msg, msglen,
                 "%s: region %s shrank while a request used it: register it "
                 "again",
                 what, name);
        r = NULL;
    } else if (fstat(r->fd, &st) || st.st_nlink == 0) {
        snprintf(msg, msglen,
                 "%s: the shared-memory object of region %s was removed", what,
                 name);
        r = NULL;
    } else if ((uint64_t)st.st_size < r->offset + r->byte_size) {
        snprintf(msg, msglen,
                 "%s: the shared-memory object of region %s shrank to %lld "
                 "bytes, fewer than registered",
                 what, name, (long long)st.st_size);
        r = NULL;
    } else {
        r->refs++;
        *ptr = r->map + r->skew + offset;
    }
    pthread_mutex_unlock(&t->lock);
    return r;
}

void mrad_shm_release(struct mrad_shm_table *t, struct mrad_shm_region *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&t->lock);
    drop_ref(t, r);
    pthread_mutex_unlock(&t->lock);
}

int mrad_shm_broken(const struct mrad_shm_region *r)
{
    return atomic_load(&slots[r->slot].broken);
}

const char *mrad_shm_name(const struct mrad_shm_region *r)
{
    return r->name;
}
