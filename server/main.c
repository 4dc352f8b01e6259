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
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention/attn.h"
#include "server/bufcache.h"
#include "server/config.h"
#include "server/http.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/sched.h"

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Creates one backend per device (GPU backends) or one CPU backend. */
static int open_backends(const struct mrad_config *cfg,
                         struct attn_backend **be, int *devices, size_t *n)
{
    size_t want = cfg->ndevices ? cfg->ndevices : 1;
    *n = 0;
    for (size_t i = 0; i < want; i++) {
        struct attn_config ac = {0};
        ac.threads = (int)cfg->threads;
        /* "auto" leaves the choice to the library (MRAD_ISA, else the
         * best this CPU runs). */
        ac.isa = strcmp(cfg->isa, "auto") ? cfg->isa : NULL;
        ac.device = cfg->ndevices ? cfg->devices[i] : 0;
        int rc = attn_backend_new(cfg->backend, &ac, &be[i]);
        if (rc != ATTN_OK) {
            mrad_log(MRAD_LOG_ERROR, "backend %s on device %d: %s",
                     cfg->backend, ac.device, attn_strerror(rc));
            for (size_t j = 0; j < i; j++)
                attn_backend_free(be[j]);
            return -1;
        }
        devices[i] = ac.device;
        *n = i + 1;
        /* The CPU backend uses every core already: one worker. */
        if (!strcmp(attn_backend_name(be[i]), "cpu"))
            break;
    }
    return 0;
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
        struct timespec poll = {0, 5 * 1000000};
        int again = sigtimedwait(sigs, NULL, &poll) > 0;
        if (again || mrad_now_ns() - t0 >= limit) {
            mrad_log(MRAD_LOG_WARN,
                     "%s: answering %" PRIu64 " requests with 503",
                     again ? "second signal" : "drain timeout", st.inflight);
            mrad_sched_abort(sched, MRAD_EUNAVAIL);
            /* Give the HTTP threads a moment to send those answers. */
            for (int i = 0; i < 200 && mrad_http_pending_answers(http); i++)
                sleep_ms(10);
            break;
        }
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

    /* Request bodies, tensors and answers are megabytes each.  glibc
     * serves blocks past its mmap threshold with fresh mmap()s, so every
     * request would pay for faulting in and zeroing their pages.  The
     * highest threshold glibc accepts (32 MiB on 64-bit) and no trimming
     * keep such blocks in the heap for reuse; larger request bodies are
     * reused through server/bufcache.c.  (Setting the trim
     * threshold alone would freeze the mmap threshold at 128 KiB.) */
    mallopt(M_MMAP_THRESHOLD, (int)(4 * 1024 * 1024 * sizeof(long)));
    mallopt(M_TRIM_THRESHOLD, 1024 << 20);
    /* One arena: glibc hands each thread its own arena, whose heaps are
     * unmapped as soon as they empty, and a body allocated on an HTTP
     * thread is freed on a worker.  The main heap keeps its pages. */
    mallopt(M_ARENA_MAX, 1);

    /* Every thread inherits this mask: only the main thread takes the
     * termination signals, in sigwait().  SIGPIPE is ignored (a client
     * that leaves mid-answer is an error value, not a signal). */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

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

    struct mrad_sched *sched;
    struct mrad_sched_config sc = {cfg.max_queue, cfg.max_batch_requests,
                                   cfg.max_batch_tokens, cfg.batch_window_us};
    if (mrad_sched_start(&sched, &sc, be, devices, nbe))
        return 1;
    struct mrad_http_info info = {backend, device, (uint32_t)nbe};
    struct mrad_http *http;
    if (mrad_http_start(&http, &cfg, sched, &info)) {
        mrad_sched_free(sched);
        return 1;
    }
    mrad_http_set_ready(http, 1);
    mrad_log(MRAD_LOG_INFO,
             "mrad %s listening on %s:%u backend=%s device=\"%s\" workers=%zu",
             MRAD_VERSION, cfg.host, (unsigned)mrad_http_port(http), backend,
             device, nbe);

    int sig = 0;
    sigwait(&sigs, &sig);
    mrad_log(MRAD_LOG_INFO, "received %s, draining",
             sig == SIGTERM ? "SIGTERM" : "SIGINT");
    drain(&cfg, http, sched, &sigs);
    mrad_http_stop(http);
    mrad_sched_free(sched);
    mrad_bufcache_clear();
    mrad_log(MRAD_LOG_INFO, "stopped");
    return 0;
}
