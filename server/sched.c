/*
 * sched.c - bounded queue, batching window, deadlines, compute workers.
 *
 * One mutex (`lock`) guards the queue and the workers' slots; it is held
 * only for list surgery, never across a compute call or a callback into
 * the HTTP layer that could block.  The scheduler thread runs a libuv
 * loop: uv_async_send() wakes it on a submit and when a worker turns idle,
 * one uv_timer ends the batching window and another fires at the earliest
 * deadline.  Workers sleep on their own condition variable until the
 * scheduler gives them a batch.
 */
#include "server/sched.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "server/log.h"
#ifdef MRAD_TEST_HOOKS
#include "attention/attn-test.h"
#endif

/* Seconds between the health checks of an idle, unhealthy worker. */
#define HEALTH_PROBE_S 1

struct worker {
    struct mrad_sched *s;
    int index; /* in s->workers: a job's `worker` */
    pthread_t thread;
    pthread_cond_t cond;
    struct attn_backend *be;
    int device;
    /* Guarded by s->lock. */
    struct mrad_job **batch; /* capacity max_batch_requests */
    size_t nbatch;
    /* The worker's own scratch, capacity max_batch_requests each. */
    struct mrad_job **running;
    const struct attn_problem **probs;
    struct attn_stats *stats;
    int *errs;
    int busy; /* a batch is assigned or running */
    int stop;
    int trim; /* give the backend's kept memory back when idle */
    int healthy;
    struct mrad_metrics_device mem;
};

struct mrad_sched {
    struct mrad_sched_config cfg; /* a copy */
    pthread_mutex_t lock;
    /* Guarded by lock. */
    struct mrad_job *head, *tail; /* FIFO of waiting jobs */
    uint64_t depth, depth_tokens;
    int draining, stopping;
    int stopped; /* mrad_sched_stop() joined the workers */
    int quit;    /* the workers are gone: the loop closes its handles */
    atomic_uint_fast64_t inflight;

    struct worker *workers;
    size_t nworkers;

    pthread_t thread;
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t window_timer, deadline_timer;
    int thread_started;
};

uint64_t mrad_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void mrad_job_init(struct mrad_job *job, const struct mrad_job_ops *ops,
                   void *owner)
{
    memset(job, 0, sizeof(*job));
    job->ops = ops;
    job->owner = owner;
    job->worker = -1;
    job->deadline_ns = UINT64_MAX;
    atomic_init(&job->refs, 1);
    atomic_init(&job->finished, 0);
}

void mrad_job_ref(struct mrad_job *job)
{
    atomic_fetch_add(&job->refs, 1);
}

void mrad_job_unref(struct mrad_job *job)
{
    if (!job || atomic_fetch_sub(&job->refs, 1) != 1)
        return;
    job->ops->release(job);
}

/* Claims the right to answer a job: 1 for the first caller, 0 after.  The
 * winner alone writes the outcome fields, so the HTTP thread that reads
 * them after done() never races with a late worker. */
static int job_claim(struct mrad_job *job)
{
    int expected = 0;
    return atomic_compare_exchange_strong(&job->finished, &expected, 1);
}

/* Sets the outcome of a claimed job and hands it back through done(). */
static void job_complete(struct mrad_sched *s, struct mrad_job *job,
                         enum mrad_err_source src, int err)
{
    job->err_src = src;
    job->err = err;
    atomic_fetch_sub(&s->inflight, 1);
    job->ops->done(job);
}

/* Claims and completes a job with an error; no-op when it was answered
 * already. */
static void job_finish(struct mrad_sched *s, struct mrad_job *job,
                       enum mrad_err_source src, int err)
{
    if (job_claim(job))
        job_complete(s, job, src, err);
}

/* Answers a running job with an error and stops its computation. */
static void job_cancel(struct mrad_sched *s, struct mrad_job *job, int err)
{
    if (!job_claim(job))
        return;
    job->cancel = 1;
    job_complete(s, job, MRAD_SRC_SERVER, err);
}

/* ---- workers ------------------------------------------------------- */

static void worker_sample(struct worker *w)
{
    uint64_t used = 0, total = 0;
    int ok = attn_backend_memory(w->be, &used, &total) == ATTN_OK;
    int healthy = attn_backend_health(w->be) == ATTN_OK;
    pthread_mutex_lock(&w->s->lock);
    w->mem = (struct mrad_metrics_device){w->device, ok, used, total};
    w->healthy = healthy;
    pthread_mutex_unlock(&w->s->lock);
}

static const char *job_rid(const struct mrad_job *job)
{
    return job->rid[0] ? job->rid : "-";
}

/* A job that is a call on the backend (ops->run), alone in its batch. */
static void worker_run_call(struct worker *w, struct mrad_job *job)
{
    uint64_t t0 = mrad_now_ns();
    mrad_metrics_queue((double)(t0 - job->enqueue_ns) / 1e9);
    int err = job->ops->run ? job->ops->run(job, w->be) : ATTN_EINVAL;
    uint64_t t1 = mrad_now_ns();
    if (err != ATTN_OK)
        mrad_log(MRAD_LOG_ERROR, "request %s: call failed on device %d: %s",
                 job_rid(job), w->device, attn_strerror(err));
    if (!job_claim(job))
        return;
    job->queue_us = (t0 - job->enqueue_ns) / 1000;
    job->compute_us = (t1 - t0) / 1000;
    job->batch_requests = 1;
    job_complete(w->s, job, MRAD_SRC_ATTN, err);
}

static void worker_run_batch(struct worker *w, struct mrad_job **jobs, size_t n)
{
    struct mrad_sched *s = w->s;
    if (n == 1 && jobs[0]->prob == NULL) {
        worker_run_call(w, jobs[0]);
        return;
    }
    const struct attn_problem **probs = w->probs;
    struct attn_stats *stats = w->stats;
    int *errs = w->errs;
    uint64_t t0 = mrad_now_ns();
    for (size_t i = 0; i < n; i++) {
        probs[i] = jobs[i]->prob;
        errs[i] = ATTN_OK;
        mrad_metrics_queue((double)(t0 - jobs[i]->enqueue_ns) / 1e9);
    }
    memset(stats, 0, n * sizeof(*stats));
#ifdef MRAD_TEST_HOOKS
    /* Test builds: the fault counter of the backend makes exactly this
     * batch fail; it is disarmed afterwards in case nothing consumed it. */
    int fault = 0;
    for (size_t i = 0; i < n; i++)
        fault |= jobs[i]->inject_fault;
    if (fault)
        attn_backend_inject_fault(w->be, 1);
#endif
    int rc = attn_backend_compute_batch(w->be, probs, n, stats, errs);
#ifdef MRAD_TEST_HOOKS
    if (fault)
        attn_backend_inject_fault(w->be, -1);
#endif
    uint64_t t1 = mrad_now_ns();
    uint64_t compute_us = (t1 - t0) / 1000;
    uint64_t tokens = 0;
    for (size_t i = 0; i < n; i++)
        tokens += jobs[i]->tokens;
    mrad_metrics_batch((uint32_t)n, tokens, (double)(t1 - t0) / 1e9);
    mrad_log(MRAD_LOG_DEBUG,
             "device %d: batch of %zu computed in %" PRIu64 " us", w->device, n,
             compute_us);
    for (size_t i = 0; i < n; i++) {
        struct mrad_job *job = jobs[i];
        int err = rc != ATTN_OK ? rc : errs[i];
        if (err == ATTN_OK)
            mrad_metrics_problem(attn_method_name(job->prob->method),
                                 job->tokens, stats[i].blocks_selected,
                                 stats[i].blocks_total, stats[i].density,
                                 stats[i].est_rel_err);
        else if (rc != ATTN_OK)
            mrad_log(MRAD_LOG_ERROR,
                     "request %s: its batch of %zu failed on device %d: %s",
                     job_rid(job), n, w->device, attn_strerror(rc));
        else
            mrad_log(MRAD_LOG_ERROR, "request %s failed on device %d: %s",
                     job_rid(job), w->device, attn_strerror(err));
        /* A job answered meanwhile (deadline, drain) drops its result. */
        if (!job_claim(job))
            continue;
        job->stats = stats[i];
        job->queue_us = (t0 - job->enqueue_ns) / 1000;
        job->compute_us = compute_us;
        job->batch_requests = (uint32_t)n;
        job_complete(s, job, MRAD_SRC_ATTN, err);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct mrad_sched *s = w->s;
    struct mrad_job **jobs = w->running;
    worker_sample(w);
    for (;;) {
        int probe = 0;
        pthread_mutex_lock(&s->lock);
        while (!w->stop && !w->nbatch && !w->trim && !probe) {
            if (w->healthy) {
                pthread_cond_wait(&w->cond, &s->lock);
                continue;
            }
            /* An unhealthy backend is asked again every second, traffic
             * or not: asking is what lets a device backend rebuild its
             * context (attention/cuda/README.md), and
             * /healthz stays 503 until it has. */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += HEALTH_PROBE_S;
            probe =
                pthread_cond_timedwait(&w->cond, &s->lock, &until) == ETIMEDOUT;
        }
        if (probe && !w->stop && !w->nbatch && !w->trim) {
            pthread_mutex_unlock(&s->lock);
            worker_sample(w);
            continue;
        }
        if (w->trim && !w->nbatch) {
            w->trim = 0;
            pthread_mutex_unlock(&s->lock);
            attn_backend_trim(w->be);
            continue;
        }
        if (w->stop && !w->nbatch) {
            pthread_mutex_unlock(&s->lock);
            break;
        }
        /* A copy, because the scheduler refills w->batch as soon as the
         * worker is marked idle, before the jobs are released. */
        size_t n = w->nbatch;
        memcpy(jobs, w->batch, n * sizeof(*jobs));
        pthread_mutex_unlock(&s->lock);

        worker_run_batch(w, jobs, n);
        worker_sample(w);

        pthread_mutex_lock(&s->lock);
        w->nbatch = 0;
        w->busy = 0;
        pthread_mutex_unlock(&s->lock);
        for (size_t i = 0; i < n; i++)
            mrad_job_unref(jobs[i]);
        uv_async_send(&s->wake);
    }
    return NULL;
}

static void worker_release(struct worker *w)
{
    free(w->batch);
    free(w->running);
    free(w->probs);
    free(w->stats);
    free(w->errs);
}

/* ---- the scheduler loop --------------------------------------------- */

static void unlink_job(struct mrad_sched *s, struct mrad_job *prev,
                       struct mrad_job *job)
{
    if (prev)
        prev->next = job->next;
    else
        s->head = job->next;
    if (s->tail == job)
        s->tail = prev;
    job->next = NULL;
    s->depth--;
    s->depth_tokens -= job->tokens;
}

/* Removes queued jobs past their deadline or whose client left, onto the
 * `out` list; called with the lock held. */
static struct mrad_job *collect_dropped(struct mrad_sched *s, uint64_t now)
{
    struct mrad_job *out = NULL, *prev = NULL, *job = s->head;
    while (job) {
        struct mrad_job *next = job->next;
        int expired = now >= job->deadline_ns;
        if (expired || (job->ops->cancelled && job->ops->cancelled(job))) {
            unlink_job(s, prev, job);
            job->err = expired ? MRAD_ETIMEOUT : MRAD_EGONE;
            job->next = out;
            out = job;
        } else {
            prev = job;
        }
        job = next;
    }
    return out;
}

/* Whether worker w may run the job. */
static int eligible(const struct mrad_job *job, const struct worker *w)
{
    return job->worker < 0 || job->worker == w->index;
}

/* The first waiting job worker w may run, or NULL. */
static struct mrad_job *first_for(struct mrad_sched *s, const struct worker *w)
{
    for (struct mrad_job *job = s->head; job; job = job->next)
        if (eligible(job, w))
            return job;
    return NULL;
}

/* An idle worker with a job it may run, healthy workers first; NULL when
 * none.  *first gets that job. */
static struct worker *idle_worker(struct mrad_sched *s, struct mrad_job **first)
{
    for (int healthy = 1; healthy >= 0; healthy--)
        for (size_t i = 0; i < s->nworkers; i++) {
            struct worker *w = &s->workers[i];
            if (w->busy || w->stop || !w->healthy != !healthy)
                continue;
            if ((*first = first_for(s, w)) != NULL)
                return w;
        }
    return NULL;
}

/* Moves up to one batch of the jobs `w` may run, in queue order, to `w`.
 * A call (a job without a problem) goes alone: it ends the batch before
 * it, or is the batch. */
static void fill_batch(struct mrad_sched *s, struct worker *w)
{
    uint64_t max_req = s->cfg.max_batch_requests;
    uint64_t max_tok = s->cfg.max_batch_tokens, tok = 0;
    size_t n = 0;
    struct mrad_job *prev = NULL, *job = s->head;
    while (job && n < max_req) {
        struct mrad_job *next = job->next;
        if (!eligible(job, w)) {
            prev = job;
            job = next;
            continue;
        }
        if (n > 0 &&
            (job->prob == NULL || (max_tok && tok + job->tokens > max_tok)))
            break;
        unlink_job(s, prev, job);
        tok += job->tokens;
        w->batch[n++] = job;
        if (job->prob == NULL)
            break;
        job = next;
    }
    w->nbatch = n;
    w->busy = 1;
    pthread_cond_signal(&w->cond);
}

static uint64_t ms_until(uint64_t now, uint64_t when)
{
    /* libuv timers count whole milliseconds: round up so a timer never
     * fires before the moment it waits for. */
    return when <= now ? 0 : (when - now + 999999) / 1000000;
}

/* While jobs wait, the scheduler looks at them at least this often, to
 * notice clients that went away even when nothing else happens. */
#define POLL_NS (50ull * 1000000)

static void on_timer(uv_timer_t *t);

static void schedule(struct mrad_sched *s)
{
    uint64_t now = mrad_now_ns();
    uint64_t window_ns = s->cfg.batch_window_us * 1000;
    uint64_t window_at = 0, next_deadline = UINT64_MAX;
    struct mrad_job *late[64];
    int late_err[64];
    size_t nlate = 0;

    pthread_mutex_lock(&s->lock);
    struct mrad_job *dropped = collect_dropped(s, now);
    struct worker *w;
    struct mrad_job *first;
    while (s->head && (w = idle_worker(s, &first))) {
        int full = s->depth >= s->cfg.max_batch_requests ||
                   (s->cfg.max_batch_tokens &&
                    s->depth_tokens >= s->cfg.max_batch_tokens);
        /* A call has nothing to batch with: it never waits. */
        uint64_t until = first->enqueue_ns + window_ns;
        if (!full && !s->draining && now < until && first->prob != NULL) {
            window_at = until;
            break;
        }
        fill_batch(s, w);
    }
    /* Running jobs past their deadline, or whose submitter went away, are
     * answered now and their computation cancelled; the worker returns
     * within milliseconds and drops what it has. */
    int running = 0;
    for (size_t i = 0; i < s->nworkers; i++) {
        struct worker *wk = &s->workers[i];
        for (size_t j = 0; j < wk->nbatch; j++) {
            struct mrad_job *job = wk->batch[j];
            if (atomic_load(&job->finished))
                continue;
            running = 1;
            int expired = now >= job->deadline_ns;
            if (expired || (job->ops->cancelled && job->ops->cancelled(job))) {
                if (nlate == 64) {
                    next_deadline = now; /* the rest on the next round */
                    continue;
                }
                mrad_job_ref(job);
                late_err[nlate] = expired ? MRAD_ETIMEOUT : MRAD_EGONE;
                late[nlate++] = job;
            } else if (job->deadline_ns < next_deadline) {
                next_deadline = job->deadline_ns;
            }
        }
    }
    for (struct mrad_job *job = s->head; job; job = job->next)
        if (job->deadline_ns < next_deadline)
            next_deadline = job->deadline_ns;
    if ((s->head || running) && now + POLL_NS < next_deadline)
        next_deadline = now + POLL_NS;
    pthread_mutex_unlock(&s->lock);

    while (dropped) {
        struct mrad_job *job = dropped;
        dropped = job->next;
        job->next = NULL;
        job_finish(s, job, MRAD_SRC_SERVER, job->err);
        mrad_job_unref(job);
    }
    for (size_t i = 0; i < nlate; i++) {
        job_cancel(s, late[i], late_err[i]);
        mrad_job_unref(late[i]);
    }

    uv_update_time(&s->loop);
    uv_timer_stop(&s->window_timer);
    if (window_at)
        uv_timer_start(&s->window_timer, on_timer, ms_until(now, window_at), 0);
    uv_timer_stop(&s->deadline_timer);
    if (next_deadline != UINT64_MAX)
        uv_timer_start(&s->deadline_timer, on_timer,
                       ms_until(now, next_deadline), 0);
}

static void on_timer(uv_timer_t *t)
{
    schedule(t->data);
}

static void on_wake(uv_async_t *a)
{
    struct mrad_sched *s = a->data;
    pthread_mutex_lock(&s->lock);
    int quit = s->quit;
    pthread_mutex_unlock(&s->lock);
    if (quit) {
        uv_close((uv_handle_t *)&s->wake, NULL);
        uv_close((uv_handle_t *)&s->window_timer, NULL);
        uv_close((uv_handle_t *)&s->deadline_timer, NULL);
        return;
    }
    schedule(s);
}

static void *sched_main(void *arg)
{
    struct mrad_sched *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* Links a job behind the last one of its priority or a higher one, so
 * that higher priorities go first and equal ones in arrival order, but
 * never before a job of the same order key.  With the lock held. */
static void enqueue(struct mrad_sched *s, struct mrad_job *job)
{
    /* prev: the job to link after (NULL: the head). */
    struct mrad_job *prev = NULL;
    if (s->tail && s->tail->priority >= job->priority) {
        prev = s->tail;
    } else if (s->head && s->head->priority >= job->priority) {
        prev = s->head;
        while (prev->next && prev->next->priority >= job->priority)
            prev = prev->next;
    }
    if (job->order && prev != s->tail) {
        /* The last waiting job of the same key, if it is after prev. */
        struct mrad_job *last = NULL;
        for (struct mrad_job *j = prev ? prev->next : s->head; j; j = j->next)
            if (j->order == job->order)
                last = j;
        if (last)
            prev = last;
    }
    job->next = prev ? prev->next : s->head;
    if (prev)
        prev->next = job;
    else
        s->head = job;
    if (s->tail == prev)
        s->tail = job;
    s->depth++;
    s->depth_tokens += job->tokens;
}

/* ---- public functions ----------------------------------------------- */

int mrad_sched_start(struct mrad_sched **out,
                     const struct mrad_sched_config *cfg,
                     struct attn_backend **backends, const int *devices,
                     size_t n)
{
    struct mrad_sched *s = calloc(1, sizeof(*s));
    if (!s)
        return -1;
    s->cfg = *cfg;
    pthread_mutex_init(&s->lock, NULL);
    atomic_init(&s->inflight, 0);
    s->workers = calloc(n, sizeof(*s->workers));
    if (!s->workers || uv_loop_init(&s->loop)) {
        free(s->workers);
        free(s);
        return -1;
    }
    uv_async_init(&s->loop, &s->wake, on_wake);
    uv_timer_init(&s->loop, &s->window_timer);
    uv_timer_init(&s->loop, &s->deadline_timer);
    s->wake.data = s->window_timer.data = s->deadline_timer.data = s;

    for (size_t i = 0; i < n; i++) {
        struct worker *w = &s->workers[i];
        w->s = s;
        w->index = (int)i;
        w->be = backends[i];
        w->device = devices[i];
        w->healthy = attn_backend_health(w->be) == ATTN_OK;
        w->mem.device = devices[i];
        pthread_cond_init(&w->cond, NULL);
        size_t cap = cfg->max_batch_requests;
        w->batch = calloc(cap, sizeof(*w->batch));
        w->running = calloc(cap, sizeof(*w->running));
        w->probs = calloc(cap, sizeof(*w->probs));
        w->stats = calloc(cap, sizeof(*w->stats));
        w->errs = calloc(cap, sizeof(*w->errs));
        /* A worker that is set up is counted, so mrad_sched_free() joins
         * and frees exactly those; backends not reached yet are freed
         * here. */
        if (!w->batch || !w->running || !w->probs || !w->stats || !w->errs ||
            pthread_create(&w->thread, NULL, worker_main, w)) {
            mrad_log(MRAD_LOG_ERROR, "cannot start compute worker %zu", i);
            worker_release(w);
            pthread_cond_destroy(&w->cond);
            attn_backend_free(w->be);
            for (size_t j = i + 1; j < n; j++)
                attn_backend_free(backends[j]);
            mrad_sched_free(s);
            return -1;
        }
        s->nworkers = i + 1;
    }
    if (pthread_create(&s->thread, NULL, sched_main, s)) {
        mrad_log(MRAD_LOG_ERROR, "cannot start the scheduler thread");
        mrad_sched_free(s);
        return -1;
    }
    s->thread_started = 1;
    *out = s;
    return 0;
}

size_t mrad_sched_workers(const struct mrad_sched *s)
{
    return s->nworkers;
}

int mrad_sched_submit(struct mrad_sched *s, struct mrad_job *job)
{
    pthread_mutex_lock(&s->lock);
    if (s->draining || s->stopping) {
        pthread_mutex_unlock(&s->lock);
        return MRAD_EUNAVAIL;
    }
    if (s->depth >= s->cfg.max_queue) {
        pthread_mutex_unlock(&s->lock);
        return MRAD_EOVERLOAD;
    }
    if (job->worker >= (int)s->nworkers || (!job->prob && !job->ops->run)) {
        pthread_mutex_unlock(&s->lock);
        return MRAD_EINTERNAL;
    }
    mrad_job_ref(job);
    atomic_fetch_add(&s->inflight, 1);
    job->enqueue_ns = mrad_now_ns();
    enqueue(s, job);
    pthread_mutex_unlock(&s->lock);
    uv_async_send(&s->wake);
    return MRAD_OK;
}

void mrad_sched_drain(struct mrad_sched *s)
{
    pthread_mutex_lock(&s->lock);
    s->draining = 1;
    pthread_mutex_unlock(&s->lock);
    /* The batching window no longer applies: dispatch what waits. */
    uv_async_send(&s->wake);
}

void mrad_sched_abort(struct mrad_sched *s, int err)
{
    pthread_mutex_lock(&s->lock);
    struct mrad_job *queued = s->head;
    s->head = s->tail = NULL;
    s->depth = s->depth_tokens = 0;
    /* Running jobs: take a reference so they outlive their worker. */
    size_t nrun = 0;
    for (size_t i = 0; i < s->nworkers; i++)
        nrun += s->workers[i].nbatch;
    struct mrad_job **run = calloc(nrun ? nrun : 1, sizeof(*run));
    size_t k = 0;
    for (size_t i = 0; run && i < s->nworkers; i++)
        for (size_t j = 0; j < s->workers[i].nbatch; j++) {
            run[k] = s->workers[i].batch[j];
            mrad_job_ref(run[k]);
            k++;
        }
    pthread_mutex_unlock(&s->lock);
    while (queued) {
        struct mrad_job *job = queued;
        queued = job->next;
        job->next = NULL;
        job_finish(s, job, MRAD_SRC_SERVER, err);
        mrad_job_unref(job);
    }
    for (size_t i = 0; i < k; i++) {
        job_cancel(s, run[i], err);
        mrad_job_unref(run[i]);
    }
    free(run);
}

void mrad_sched_trim(struct mrad_sched *s)
{
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nworkers; i++) {
        s->workers[i].trim = 1;
        pthread_cond_signal(&s->workers[i].cond);
    }
    pthread_mutex_unlock(&s->lock);
}

void mrad_sched_status(struct mrad_sched *s, struct mrad_sched_status *st)
{
    pthread_mutex_lock(&s->lock);
    st->queue_depth = s->depth;
    st->max_queue = s->cfg.max_queue;
    st->draining = s->draining;
    st->healthy = 1;
    for (size_t i = 0; i < s->nworkers; i++)
        st->healthy &= s->workers[i].healthy;
    pthread_mutex_unlock(&s->lock);
    st->inflight = atomic_load(&s->inflight);
}

size_t mrad_sched_devices(struct mrad_sched *s, struct mrad_metrics_device *out,
                          size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nworkers && n < cap; i++)
        out[n++] = s->workers[i].mem;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void mrad_sched_stop(struct mrad_sched *s)
{
    pthread_mutex_lock(&s->lock);
    int stopped = s->stopped;
    s->stopping = 1;
    for (size_t i = 0; i < s->nworkers; i++) {
        s->workers[i].stop = 1;
        pthread_cond_signal(&s->workers[i].cond);
    }
    pthread_mutex_unlock(&s->lock);
    if (stopped)
        return;
    /* Nothing is submitted any more: what still waits is answered (and
     * what runs is cancelled), so that no reference stays behind. */
    mrad_sched_abort(s, MRAD_EUNAVAIL);
    /* Workers wake the loop when they finish, so the loop closes its
     * handles only once they are all gone. */
    for (size_t i = 0; i < s->nworkers; i++)
        pthread_join(s->workers[i].thread, NULL);
    pthread_mutex_lock(&s->lock);
    s->stopped = 1;
    pthread_mutex_unlock(&s->lock);
}

void mrad_sched_free(struct mrad_sched *s)
{
    if (!s)
        return;
    mrad_sched_stop(s);
    pthread_mutex_lock(&s->lock);
    s->quit = 1;
    pthread_mutex_unlock(&s->lock);
    if (s->thread_started) {
        uv_async_send(&s->wake);
        pthread_join(s->thread, NULL);
    } else {
        /* The loop never ran: close its handles here. */
        uv_close((uv_handle_t *)&s->wake, NULL);
        uv_close((uv_handle_t *)&s->window_timer, NULL);
        uv_close((uv_handle_t *)&s->deadline_timer, NULL);
        uv_run(&s->loop, UV_RUN_NOWAIT);
    }
    uv_loop_close(&s->loop);
    for (size_t i = 0; i < s->nworkers; i++) {
        pthread_cond_destroy(&s->workers[i].cond);
        worker_release(&s->workers[i]);
        attn_backend_free(s->workers[i].be);
    }
    free(s->workers);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
