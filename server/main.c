/*
 * main.c - mrad: flags, startup, signals and the drain.
 *
 * Threading rule.  HTTP threads (libmicrohttpd's epoll thread pool) never
 * block on compute: they read the body within its size limit,
 * authenticate, decode and validate it, queue a job and suspend the
 * connection.  One scheduler thread, on a libuv loop woken by
 * uv_async_send, forms batches within the batching window, answers jobs
 * whose deadline passed or whose client left, and hands each batch to a
 * compute worker.  Each worker owns one backend handle (one per GPU, one
 * for the CPU) and is the only thread that calls it; when a batch is done
 * it resumes each job's connection and the HTTP thread encodes the answer.
 * /healthz, /readyz, /metrics and /v1/info read snapshots under short
 * locks and never wait behind the queue.  The main thread only starts
 * everything, then waits for SIGTERM/SIGINT and runs the drain.
 */
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attention/attn.h"
#include "attention/cpu/kernels.h"
#include "server/auth.h"
#include "server/bufcache.h"
#include "server/config.h"
#include "server/http.h"
#include "server/kv.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/sched.h"

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Opens backend `name` on GPU ordinal `device` (ignored by the CPU). */
static int open_backend(const struct mrad_config *cfg, const char *name,
                        int device, struct attn_backend **be)
{
    struct attn_config ac = {0};
    ac.threads = (int)cfg->threads;
    /* The configuration has read MRAD_ISA already (--isa wins over it),
     * so "auto" is the best this CPU runs, named here: the library would
     * read the variable again. */
    const struct cpu_kernels *best = cpu_kernels_pick(NULL);
    ac.isa = strcmp(cfg->isa, "auto") ? cfg->isa : best ? best->name : NULL;
    ac.device = device;
    int rc = attn_backend_new(name, &ac, be);
    if (rc != ATTN_OK)
        mrad_log(rc == ATTN_ENODEV && cfg->all_devices ? MRAD_LOG_DEBUG
                                                       : MRAD_LOG_ERROR,
                 "backend %s on device %d: %s", name, device,
                 attn_strerror(rc));
    return rc;
}

/* Creates one backend per device (GPU backends) or one CPU backend: the
 * ordinals of --devices, or device 0 when none is given.  With --devices
 * all and a GPU backend (cuda, or auto) every ordinal up to
 * MRAD_MAX_DEVICES is tried for a CUDA backend, skipping those that answer
 * ATTN_ENODEV (no GPU there, or one too old), so that no single ordinal
 * decides; without any, auto takes the CPU and cuda fails. */
static int open_backends(const struct mrad_config *cfg,
                         struct attn_backend **be, int *devices, size_t *n)
{
    *n = 0;
    if (cfg->all_devices && strcmp(cfg->backend, "cpu")) {
        for (int d = 0; d < MRAD_MAX_DEVICES; d++) {
            int rc = open_backend(cfg, "cuda", d, &be[*n]);
            if (rc == ATTN_ENODEV)
                continue;
            if (rc != ATTN_OK)
                goto fail;
            devices[(*n)++] = d;
        }
        if (*n)
            return 0;
        if (!strcmp(cfg->backend, "cuda")) {
            mrad_log(MRAD_LOG_ERROR, "backend cuda: no usable GPU for "
                                     "--devices all");
            return -1;
        }
    }
    size_t want = cfg->ndevices ? cfg->ndevices : 1;
    for (size_t i = 0; i < want; i++) {
        int device = cfg->ndevices ? cfg->devices[i] : 0;
        if (open_backend(cfg, cfg->backend, device, &be[*n]) != ATTN_OK)
            goto fail;
        devices[(*n)++] = device;
        /* The CPU backend uses every core already: one worker. */
        if (!strcmp(attn_backend_name(be[*n - 1]), "cpu"))
            break;
    }
    return 0;
fail:
    for (size_t j = 0; j < *n; j++)
        attn_backend_free(be[j]);
    *n = 0;
    return -1;
}

/* SIGHUP: reopen the log file and reload the API keys.  A key file that
 * no longer loads keeps the keys in use (logged). */
static void reload(const struct mrad_config *cfg, struct mrad_http *http)
{
    if (mrad_log_reopen())
        mrad_log(MRAD_LOG_ERROR, "SIGHUP: cannot reopen --log-file %s: %s",
                 cfg->log_file, strerror(errno));
    if (!cfg->api_key_file[0]) {
        mrad_log(MRAD_LOG_INFO, "SIGHUP: log reopened");
        return;
    }
    struct mrad_keyring *keys;
    char msg[160];
    if (mrad_keyring_load(cfg->api_key_file, &keys, msg, sizeof(msg))) {
        mrad_log(MRAD_LOG_ERROR,
                 "SIGHUP: --api-key-file %s: %s; the keys in use stay",
                 cfg->api_key_file, msg);
        return;
    }
    mrad_log(MRAD_LOG_INFO, "SIGHUP: log reopened, %zu API keys loaded",
             mrad_keyring_count(keys));
    mrad_http_set_keys(http, keys);
}

/* Waits up to `ms` for a signal of `sigs`; returns it, or 0 on timeout. */
static int wait_signal(const sigset_t *sigs, unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    int sig = sigtimedwait(sigs, NULL, &ts);
    return sig > 0 ? sig : 0;
}

/* After SIGTERM: refuse new work, finish what was accepted, stop. */
static void drain(const struct mrad_config *cfg, struct mrad_http *http,
                  struct mrad_sched *sched, const sigset_t *sigs)
{
    mrad_http_drain(http);
    mrad_sched_drain(sched);
    uint64_t t0 = mrad_now_ns();
    uint64_t limit = cfg->drain_timeout_ms * 1000000ull;
    struct mrad_sched_status st;
    mrad_sched_status(sched, &st);
    mrad_log(MRAD_LOG_INFO, "draining: %" PRIu64 " requests in flight",
             st.inflight);
    for (;;) {
        mrad_sched_status(sched, &st);
        if (st.inflight == 0 && mrad_http_pending_answers(http) == 0)
            break;
        /* Waiting for the next signal doubles as the poll interval: a
         * second SIGTERM/SIGINT ends the drain at once. */
        int sig = wait_signal(sigs, 5);
        if (sig == SIGHUP)
            reload(cfg, http);
        int again = sig == SIGTERM || sig == SIGINT;
        if (again || mrad_now_ns() - t0 >= limit) {
            mrad_log(MRAD_LOG_WARN,
                     "%s: answering %" PRIu64 " requests with 503",
                     again ? "second signal" : "drain timeout", st.inflight);
            /* Running computations are cancelled: their workers return
             * within milliseconds. */
            mrad_sched_abort(sched, MRAD_EUNAVAIL);
            /* Give the HTTP threads a moment to send those answers. */
            for (int i = 0; i < 200 && mrad_http_pending_answers(http); i++)
                sleep_ms(10);
            break;
        }
    }
}

/* Once the service has been idle for --idle-release-ms, the memory kept
 * for reuse goes back to the system: cached buffers, and the free pages
 * of the heap (which main() tells glibc to keep while busy). */
/* Heap trims of one idle period: 200 ms after the release, then every
 * 2 s, this many in all. */
#define IDLE_TRIMS 5

struct idle_state {
    uint64_t busy_ns; /* last time something was in flight */
    int released;     /* released since then */
    uint64_t trim_at; /* when to trim the heap next, 0 = done */
    int trims;        /* trims since the release */
};

static void release_when_idle(const struct mrad_config *cfg,
                              struct mrad_http *http, struct mrad_sched *sched,
                              int freed, struct idle_state *is)
{
    struct mrad_sched_status st;
    mrad_sched_status(sched, &st);
    uint64_t now = mrad_now_ns();
    /* Sessions that ended on their own (expired) freed memory too. */
    if (freed || st.inflight || mrad_http_pending_answers(http) ||
        mrad_http_busy(http)) {
        is->busy_ns = now;
        is->released = 0;
        is->trim_at = 0;
        return;
    }
    if (is->released) {
        /* Trimmed again every few seconds while idle: memory a worker or
         * a late answer frees after a trim (a worker still giving its
         * buffers back when the first one ran) goes back too.  Cheap on a
         * heap with nothing to give. */
        if (is->trim_at && now >= is->trim_at) {
            malloc_trim(0);
            if (is->trims++ == 0)
                mrad_log(MRAD_LOG_DEBUG, "idle: cached memory released");
            is->trim_at = is->trims < IDLE_TRIMS ? now + 2000 * 1000000ull : 0;
        }
        return;
    }
    if (now - is->busy_ns < cfg->idle_release_ms * 1000000ull)
        return;
    mrad_sched_trim(sched);
    mrad_bufcache_clear();
    /* The workers free their memory on their own threads: the heap is
     * trimmed on the next round, after they did. */
    is->released = 1;
    is->trims = 0;
    is->trim_at = now + 200 * 1000000ull;
}

/* Room for --max-connections: the soft limit on open files goes up to the
 * hard one; the connection limits shrink to what fits. */
static void fit_open_files(struct mrad_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Descriptors beyond connections: the log, epoll sets, the backends,
     * the lingering closes. */
    uint64_t room = rl.rlim_cur > 512 ? rl.rlim_cur - 256 : rl.rlim_cur / 2;
    uint64_t want = (uint64_t)cfg->max_connections + MRAD_PROBE_CONNECTIONS;
    if (rl.rlim_cur != RLIM_INFINITY && want > room) {
        uint32_t fit = room > MRAD_PROBE_CONNECTIONS + 1
                           ? (uint32_t)(room - MRAD_PROBE_CONNECTIONS)
                           : 1;
        mrad_log(MRAD_LOG_WARN,
                 "--max-connections %" PRIu32 " lowered to %" PRIu32
                 " (open file limit %llu)",
                 cfg->max_connections, fit, (unsigned long long)rl.rlim_cur);
        cfg->max_connections = fit;
    }
}

int main(int argc, char **argv)
{
    struct mrad_config cfg;
    int rc = mrad_config_parse(&cfg, argc, argv, stdout, stderr);
    if (rc == MRAD_CONFIG_EXIT_OK)
        return 0;
    if (rc != MRAD_CONFIG_RUN)
        return 2;
    mrad_log_init(cfg.log_format, cfg.log_level);
    if (cfg.log_file[0] && mrad_log_open(cfg.log_file)) {
        fprintf(stderr, "mrad: --log-file %s: %s\n", cfg.log_file,
                strerror(errno));
        return 2;
    }

    /* Request bodies, tensors and answers are megabytes each.  glibc
     * serves blocks past its mmap threshold with fresh mmap()s, so every
     * request would pay for faulting in and zeroing their pages.  The
     * highest threshold glibc accepts (32 MiB on 64-bit) and no trimming
     * keep such blocks in the heap for reuse; larger request bodies are
     * reused through server/bufcache.c.  (Setting the trim
     * threshold alone would freeze the mmap threshold at 128 KiB.)  Once
     * the service is idle, release_when_idle() gives it all back. */
    mallopt(M_MMAP_THRESHOLD, (int)(4 * 1024 * 1024 * sizeof(long)));
    mallopt(M_TRIM_THRESHOLD, 1024 << 20);
    /* One arena: glibc hands each thread its own arena, whose heaps are
     * unmapped as soon as they empty, and a body allocated on an HTTP
     * thread is freed on a worker.  The main heap keeps its pages. */
    mallopt(M_ARENA_MAX, 1);
    fit_open_files(&cfg);

    /* Every thread inherits this mask: only the main thread takes the
     * signals it handles, in sigtimedwait().  SIGPIPE is ignored (a
     * client that leaves mid-answer is an error value, not a signal), and
     * so are SIGUSR1 and SIGUSR2 (nothing uses them; their default action
     * would kill the process). */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);

    struct attn_backend *be[MRAD_MAX_DEVICES];
    int devices[MRAD_MAX_DEVICES];
    size_t nbe = 0;
    if (open_backends(&cfg, be, devices, &nbe))
        return 1;
    /* Copied: the backends move to the workers, which own them. */
    char backend[32], device[512];
    snprintf(backend, sizeof(backend), "%s", attn_backend_name(be[0]));
    snprintf(device, sizeof(device), "%s", attn_backend_device(be[0]));
    mrad_metrics_init(MRAD_VERSION, backend);
    uint64_t device_bytes = 0;
    for (size_t i = 0; i < nbe; i++) {
        uint64_t used, total;
        if (attn_backend_memory(be[i], &used, &total) == ATTN_OK)
            device_bytes += total;
    }
    mrad_config_resolve(&cfg, backend, device_bytes);
    struct mrad_kv_config kc = {backend,
                                nbe,
                                cfg.kv_cache_bytes,
                                cfg.kv_max_sessions,
                                cfg.kv_ttl_ms,
                                cfg.kv_max_ttl_ms,
                                cfg.limits.max_tokens};
    struct mrad_kv_table *kv;
    if (mrad_kv_table_new(&kv, &kc)) {
        mrad_log(MRAD_LOG_ERROR, "out of memory for the session table");
        for (size_t i = 0; i < nbe; i++)
            attn_backend_free(be[i]);
        return 1;
    }

    struct mrad_sched *sched;
    struct mrad_sched_config sc = {cfg.max_queue, cfg.max_batch_requests,
                                   cfg.max_batch_tokens, cfg.batch_window_us};
    if (mrad_sched_start(&sched, &sc, be, devices, nbe)) {
        mrad_kv_table_free(kv);
        return 1;
    }
    struct mrad_http_info info = {backend, device, (uint32_t)nbe};
    /* Shared memory (--allow-shm): the regions, and the fault handler
     * that keeps a region shrunk under a request from stopping mrad. */
    struct mrad_shm_table *shm = NULL;
    if (cfg.allow_shm && (mrad_shm_guard() || mrad_shm_table_new(&shm))) {
        mrad_log(MRAD_LOG_ERROR, "--allow-shm: cannot set up shared memory");
        mrad_sched_stop(sched);
        mrad_kv_table_free(kv);
        mrad_sched_free(sched);
        return 1;
    }
    struct mrad_http *http;
    if (mrad_http_start(&http, &cfg, sched, kv, shm, &info)) {
        mrad_sched_stop(sched);
        mrad_shm_table_free(shm);
        mrad_kv_table_free(kv);
        mrad_sched_free(sched);
        return 1;
    }
    mrad_http_set_ready(http, 1);
    mrad_log(MRAD_LOG_INFO,
             "mrad %s listening on %s:%u backend=%s device=\"%s\" workers=%zu",
             MRAD_VERSION, cfg.host, (unsigned)mrad_http_port(http), backend,
             device, nbe);
    if (cfg.admin_port)
        mrad_log(MRAD_LOG_INFO, "probes and /metrics also on %s:%u (admin)",
                 cfg.host, (unsigned)mrad_http_admin_port(http));

    struct idle_state idle = {mrad_now_ns(), 0, 0, 0};
    int sig;
    while ((sig = wait_signal(&sigs, 500)) != SIGTERM && sig != SIGINT) {
        if (sig == SIGHUP)
            reload(&cfg, http);
        size_t expired = mrad_kv_expire(kv, mrad_now_ns());
        release_when_idle(&cfg, http, sched, expired > 0, &idle);
    }
    mrad_log(MRAD_LOG_INFO, "received %s, draining",
             sig == SIGTERM ? "SIGTERM" : "SIGINT");
    drain(&cfg, http, sched, &sigs);
    /* The workers stop first: a job they still held (one cancelled at the
     * drain timeout) is released while the server its call refers to is
     * alive.  Then the HTTP side, whose requests release the rest; then
     * the sessions' stores, before the backends that hold them. */
    mrad_sched_stop(sched);
    mrad_http_stop(http);
    mrad_shm_table_free(shm);
    mrad_kv_table_free(kv);
    mrad_sched_free(sched);
    mrad_bufcache_clear();
    mrad_log(MRAD_LOG_INFO, "stopped");
    return 0;
}
