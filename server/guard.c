/*
 * guard.c - the head deadline, the upload rate and lingering closes (see
 * guard.h).
 *
 * One thread wakes every TICK_NS (or when a lingering socket has data):
 * it looks at every watched connection under the lock and shuts down
 * those past a deadline, and it reads and drops what lingering sockets
 * receive.  Whether a connection waiting for a head has received any of
 * it is read from the kernel (TCP_INFO's count of bytes received), since
 * the HTTP library consumes the bytes: a connection that received nothing
 * since its last request is idle, not slow.
 */
#include "server/guard.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/sched.h" /* mrad_now_ns */

#define TICK_MS 100

enum conn_state {
    WAIT_HEAD, /* between requests or before the first */
    BUSY,      /* a head arrived: the request's own deadlines apply */
    BODY,      /* receiving a body */
};

struct mrad_guard_conn {
    int fd;
    enum conn_state state;
    uint64_t seen;       /* bytes received by the socket when it began
                            waiting for a head */
    uint64_t gen;        /* requests ended on the connection */
    uint64_t first_ns;   /* when bytes of a head were first seen; 0.
                            Only the guard thread writes it and
                            first_gen: a head seen before a request ended
                            cannot start the deadline of the next */
    uint64_t first_gen;  /* the gen first_ns belongs to */
    uint64_t body_ns;    /* when the body began */
    uint64_t body_bytes; /* of the body so far */
    int closed;          /* shut down by the guard */
    struct mrad_guard_conn *prev, *next;
};

struct lingering {
    int fd; /* -1: free slot */
    uint64_t until_ns;
    uint64_t bytes;
};

struct mrad_guard {
    struct mrad_guard_config cfg;
    pthread_mutex_t lock;
    struct mrad_guard_conn *conns; /* guarded by lock */
    struct lingering lingers[GUARD_LINGER_MAX];
    size_t nlinger;
    struct mrad_guard_stats stats;
    int epfd;
    int stop;
    pthread_t thread;
};

/* Bytes the socket has received since it was opened (0 if unknown). */
static uint64_t bytes_received(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len))
        return 0;
    if (len < offsetof(struct tcp_info, tcpi_bytes_received) +
                  sizeof(ti.tcpi_bytes_received))
        return 0;
    return ti.tcpi_bytes_received;
}

static void shut(struct mrad_guard_conn *c)
{
    if (!c->closed)
        shutdown(c->fd, SHUT_RDWR);
    c->closed = 1;
}

/* Looks at every connection; with the lock held. */
static void check_conns_locked(struct mrad_guard *g, uint64_t now)
{
    for (struct mrad_guard_conn *c = g->conns; c; c = c->next) {
        if (c->closed)
            continue;
        uint64_t gen = __atomic_load_n(&c->gen, __ATOMIC_ACQUIRE);
        enum conn_state st = __atomic_load_n(&c->state, __ATOMIC_ACQUIRE);
        if (st == WAIT_HEAD) {
            if (!c->first_ns || c->first_gen != gen) {
                c->first_ns = 0;
                if (bytes_received(c->fd) >
                    __atomic_load_n(&c->seen, __ATOMIC_RELAXED)) {
                    c->first_ns = now;
                    c->first_gen = gen;
                }
            } else if (now - c->first_ns > g->cfg.head_timeout_ns &&
                       __atomic_load_n(&c->gen, __ATOMIC_ACQUIRE) == gen &&
                       __atomic_load_n(&c->state, __ATOMIC_ACQUIRE) ==
                           WAIT_HEAD) {
                g->stats.head_timeouts++;
                shut(c);
            }
        } else if (st == BODY && g->cfg.min_upload_rate) {
            /* the body may have begun after `now` was read */
            uint64_t began = __atomic_load_n(&c->body_ns, __ATOMIC_RELAXED);
            uint64_t took = now > began ? now - began : 0;
            uint64_t got = __atomic_load_n(&c->body_bytes, __ATOMIC_RELAXED);
            /* bytes / seconds < rate, without division */
            if (took > GUARD_GRACE_NS &&
                (double)got * 1e9 <
                    (double)g->cfg.min_upload_rate * (double)took) {
                g->stats.slow_uploads++;
                shut(c);
            }
        }
    }
}

static void linger_end(struct mrad_guard *g, struct lingering *l)
{
    epoll_ctl(g->epfd, EPOLL_CTL_DEL, l->fd, NULL);
    close(l->fd);
    l->fd = -1;
    g->nlinger--;
}

/* Reads and drops what a lingering socket holds; ends it at the peer's
 * close, an error, or the byte bound.  With the lock held. */
static void linger_read(struct mrad_guard *g, struct lingering *l)
{
    static char sink[64 << 10]; /* only this thread reads into it */
    for (;;) {
        ssize_t n = recv(l->fd, sink, sizeof(sink), MSG_DONTWAIT);
        if (n > 0) {
            l->bytes += (uint64_t)n;
            if (l->bytes < GUARD_LINGER_BYTES)
                continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else if (n < 0 && errno == EINTR) {
            continue;
        }
        linger_end(g, l);
        return;
    }
}

static void *guard_main(void *arg)
{
    struct mrad_guard *g = arg;
    struct epoll_event ev[32];
    for (;;) {
        int n = epoll_wait(g->epfd, ev, 32, TICK_MS);
        uint64_t now = mrad_now_ns();
        pthread_mutex_lock(&g->lock);
        if (g->stop) {
            pthread_mutex_unlock(&g->lock);
            break;
        }
        for (int i = 0; i < n; i++) {
            struct lingering *l = ev[i].data.ptr;
            if (l->fd >= 0)
                linger_read(g, l);
        }
        for (size_t i = 0; i < GUARD_LINGER_MAX; i++)
            if (g->lingers[i].fd >= 0 && now >= g->lingers[i].until_ns)
                linger_end(g, &g->lingers[i]);
        /* read anew: reading lingering sockets takes a while */
        check_conns_locked(g, mrad_now_ns());
        pthread_mutex_unlock(&g->lock);
    }
    return NULL;
}

int mrad_guard_start(struct mrad_guard **out,
                     const struct mrad_guard_config *cfg)
{
    struct mrad_guard *g = calloc(1, sizeof(*g));
    if (!g)
        return -1;
    g->cfg = *cfg;
    pthread_mutex_init(&g->lock, NULL);
    for (size_t i = 0; i < GUARD_LINGER_MAX; i++)
        g->lingers[i].fd = -1;
    g->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g->epfd < 0 || pthread_create(&g->thread, NULL, guard_main, g)) {
        if (g->epfd >= 0)
            close(g->epfd);
        pthread_mutex_destroy(&g->lock);
        free(g);
        return -1;
    }
    *out = g;
    return 0;
}

void mrad_guard_stop(struct mrad_guard *g)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->lock);
    g->stop = 1;
    pthread_mutex_unlock(&g->lock);
    pthread_join(g->thread, NULL);
    for (size_t i = 0; i < GUARD_LINGER_MAX; i++)
        if (g->lingers[i].fd >= 0)
            linger_end(g, &g->lingers[i]);
    while (g->conns) {
        struct mrad_guard_conn *c = g->conns;
        g->conns = c->next;
        free(c);
    }
    close(g->epfd);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

void mrad_guard_check(struct mrad_guard *g, uint64_t now)
{
    pthread_mutex_lock(&g->lock);
    check_conns_locked(g, now);
    pthread_mutex_unlock(&g->lock);
}

void mrad_guard_stats(struct mrad_guard *g, struct mrad_guard_stats *st)
{
    pthread_mutex_lock(&g->lock);
    *st = g->stats;
    pthread_mutex_unlock(&g->lock);
}

struct mrad_guard_conn *mrad_guard_watch(struct mrad_guard *g, int fd)
{
    struct mrad_guard_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->fd = fd;
    c->state = WAIT_HEAD;
    pthread_mutex_lock(&g->lock);
    c->next = g->conns;
    if (g->conns)
        g->conns->prev = c;
    g->conns = c;
    pthread_mutex_unlock(&g->lock);
    return c;
}

void mrad_guard_forget(struct mrad_guard *g, struct mrad_guard_conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&g->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        g->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&g->lock);
    free(c);
}

/* The state changes below are made by the connection's own HTTP thread
 * and read by the guard thread under its lock; a torn read of a counter
 * at worst delays a close by one tick, so plain atomic stores suffice. */
void mrad_guard_head_done(struct mrad_guard_conn *c)
{
    if (c)
        __atomic_store_n(&c->state, BUSY, __ATOMIC_RELAXED);
}

void mrad_guard_body(struct mrad_guard_conn *c, uint64_t bytes)
{
    if (!c)
        return;
    if (__atomic_load_n(&c->state, __ATOMIC_RELAXED) != BODY) {
        __atomic_store_n(&c->body_ns, mrad_now_ns(), __ATOMIC_RELAXED);
        __atomic_store_n(&c->state, BODY, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&c->body_bytes, bytes, __ATOMIC_RELAXED);
}

void mrad_guard_request_done(struct mrad_guard_conn *c)
{
    if (!c)
        return;
    __atomic_store_n(&c->seen, bytes_received(c->fd), __ATOMIC_RELAXED);
    __atomic_store_n(&c->state, WAIT_HEAD, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->gen, 1, __ATOMIC_RELEASE);
}

int mrad_guard_linger(struct mrad_guard *g, int fd)
{
    pthread_mutex_lock(&g->lock);
    struct lingering *l = NULL;
    for (size_t i = 0; i < GUARD_LINGER_MAX && !l; i++)
        if (g->lingers[i].fd < 0)
            l = &g->lingers[i];
    int dup_fd = l ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (dup_fd < 0) {
        pthread_mutex_unlock(&g->lock);
        return -1;
    }
    l->fd = dup_fd;
    l->until_ns = mrad_now_ns() + GUARD_LINGER_NS;
    l->bytes = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = l};
    if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, dup_fd, &ev)) {
        close(dup_fd);
        l->fd = -1;
        pthread_mutex_unlock(&g->lock);
        return -1;
    }
    g->nlinger++;
    g->stats.lingered++;
    pthread_mutex_unlock(&g->lock);
    return 0;
}
