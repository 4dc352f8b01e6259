/*
 * test-sched.c - the batch scheduler (server/sched.c) on its own: batches
 * bounded by count and by tokens, the batching window, priorities,
 * deadlines of waiting and of running jobs, cancellation by the
 * submitter, the queue limit, drain and abort, and the job's reference
 * count.
 *
 * The compute worker runs a backend of this test's own (through the
 * backend seam, attention/attn-impl.h) that records each batch it is given
 * and can be held at a gate, so the test decides when a worker is busy.
 * Jobs carry real (tiny) problems: the library checks every problem before
 * a backend sees it.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "attention/attn-impl.h"
#include "server/log.h"
#include "server/sched.h"

/* ---- a backend held at a gate ------------------------------------------- */

#define MAX_BATCHES 64

struct gate_backend {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int open;    /* compute calls pass */
    int entered; /* compute calls started */
    int left;    /* compute calls returned */
    size_t sizes[MAX_BATCHES];
    const struct attn_problem *first[MAX_BATCHES];
    size_t nbatches;
    int fail; /* fail every problem with ATTN_EBACKEND */
    int sick; /* health() answers ATTN_EBACKEND this many more times */
    int health_calls;
};

static int gate_compute(void *ctx, const struct attn_problem *const *probs,
                        size_t n, int *errs)
{
    struct gate_backend *g = ctx;
    pthread_mutex_lock(&g->lock);
    if (g->nbatches < MAX_BATCHES) {
        g->sizes[g->nbatches] = n;
        g->first[g->nbatches] = probs[0];
    }
    g->nbatches++;
    g->entered++;
    pthread_cond_broadcast(&g->cond);
    while (!g->open)
        pthread_cond_wait(&g->cond, &g->lock);
    for (size_t i = 0; i < n; i++)
        errs[i] = g->fail ? ATTN_EBACKEND : ATTN_OK;
    g->left++;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
    return ATTN_OK;
}

static int gate_health(void *ctx)
{
    struct gate_backend *g = ctx;
    pthread_mutex_lock(&g->lock);
    g->health_calls++;
    int rc = g->sick > 0 ? ATTN_EBACKEND : ATTN_OK;
    g->sick -= g->sick > 0;
    pthread_mutex_unlock(&g->lock);
    return rc;
}

static void gate_free(void *ctx)
{
    (void)ctx; /* owned by the test */
}

static const struct attn_backend_i gate_iface = {
    .name = "gate",
    .compute_batch = gate_compute,
    .health = gate_health,
    .free = gate_free,
};

static struct attn_backend *gate_new(struct gate_backend *g, int open)
{
    memset(g, 0, sizeof(*g));
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
    g->open = open;
    struct attn_backend *be = calloc(1, sizeof(*be));
    assert_non_null(be);
    be->iface = &gate_iface;
    be->ctx = g;
    return be;
}

static void gate_open(struct gate_backend *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = 1;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

/* Waits until `count` compute calls have started. */
static void gate_wait_entered(struct gate_backend *g, int count)
{
    pthread_mutex_lock(&g->lock);
    while (g->entered < count)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
}

/* Waits until `count` compute calls have returned, then closes the gate
 * again. */
static void gate_wait_left_and_close(struct gate_backend *g, int count)
{
    pthread_mutex_lock(&g->lock);
    while (g->left < count)
        pthread_cond_wait(&g->cond, &g->lock);
    g->open = 0;
    pthread_mutex_unlock(&g->lock);
}

/* ---- jobs ------------------------------------------------------------------
 */

/* One problem shared by every job: 1x1x32x8 f32 (the backend writes no
 * output). */
static float tensor_q[32 * 8], tensor_out[32 * 8];

struct tjob {
    struct mrad_job job;
    struct attn_problem prob;
    int id;
    int done;     /* done() calls */
    int released; /* release() calls */
    int cancel;   /* what cancelled() answers */
    uint64_t done_ns;
};

static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static int order[64], norder; /* ids in the order done() saw them */

static void tjob_done(struct mrad_job *job)
{
    struct tjob *t = job->owner;
    pthread_mutex_lock(&done_lock);
    t->done++;
    t->done_ns = mrad_now_ns();
    if (norder < 64)
        order[norder++] = t->id;
    pthread_cond_broadcast(&done_cond);
    pthread_mutex_unlock(&done_lock);
}

static int tjob_cancelled(struct mrad_job *job)
{
    struct tjob *t = job->owner;
    return __atomic_load_n(&t->cancel, __ATOMIC_SEQ_CST);
}

static void tjob_release(struct mrad_job *job)
{
    struct tjob *t = job->owner;
    __atomic_add_fetch(&t->released, 1, __ATOMIC_SEQ_CST);
}

static const struct mrad_job_ops tjob_ops = {
    .done = tjob_done, .cancelled = tjob_cancelled, .release = tjob_release};

static void tjob_init(struct tjob *t, int id, uint64_t tokens)
{
    memset(t, 0, sizeof(*t));
    t->id = id;
    t->prob = (struct attn_problem){.method = ATTN_EXACT,
                                    .dtype = ATTN_F32,
                                    .B = 1,
                                    .H = 1,
                                    .Hkv = 1,
                                    .Nq = 32,
                                    .Nk = 32,
                                    .D = 8,
                                    .q = tensor_q,
                                    .k = tensor_q,
                                    .v = tensor_q,
                                    .out = tensor_out};
    mrad_job_init(&t->job, &tjob_ops, t);
    t->job.prob = &t->prob;
    t->job.tokens = tokens;
    t->job.deadline_ns = mrad_now_ns() + 10ull * 1000000000ull;
}

/* Waits (at most 10 s) until `n` jobs of `jobs` are done. */
static void wait_done(struct tjob *jobs, size_t n)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&done_lock);
    for (;;) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            k += jobs[i].done;
        if (k == n)
            break;
        assert_int_equal(pthread_cond_timedwait(&done_cond, &done_lock, &until),
                         0);
    }
    pthread_mutex_unlock(&done_lock);
}

static struct mrad_sched *start(struct gate_backend *g, int open,
                                uint64_t max_queue, uint64_t max_req,
                                uint64_t max_tok, uint64_t window_us)
{
    struct mrad_sched_config cfg = {max_queue, max_req, max_tok, window_us};
    struct attn_backend *be = gate_new(g, open);
    int device = 0;
    struct mrad_sched *s;
    assert_int_equal(mrad_sched_start(&s, &cfg, &be, &device, 1), 0);
    norder = 0;
    return s;
}

/* Drops the submitter's references; each job must be released once. */
static void finish(struct mrad_sched *s, struct tjob *jobs, size_t n)
{
    mrad_sched_free(s);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(jobs[i].done, 1);
        mrad_job_unref(&jobs[i].job);
        assert_int_equal(jobs[i].released, 1);
    }
}

/* ---- tests ----------------------------------------------------------------
 */

/* A first job takes the idle worker alone; the 7 that queue behind it go
 * in batches of at most 3, in arrival order. */
static void test_batches_by_count(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 64, 3, 0, 0);
    struct tjob jobs[8];
    for (int i = 0; i < 8; i++) {
        tjob_init(&jobs[i], i, 32);
        assert_int_equal(mrad_sched_submit(s, &jobs[i].job), MRAD_OK);
        if (i == 0)
            gate_wait_entered(&g, 1);
    }
    gate_open(&g);
    wait_done(jobs, 8);
    assert_int_equal(g.nbatches, 4);
    assert_int_equal(g.sizes[0], 1);
    assert_int_equal(g.sizes[1], 3);
    assert_int_equal(g.sizes[2], 3);
    assert_int_equal(g.sizes[3], 1);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(order[i], i);
        assert_int_equal(jobs[i].job.err, 0);
        assert_int_equal(jobs[i].job.batch_requests,
                         g.sizes[i ? (i + 2) / 3 : 0]);
    }
    finish(s, jobs, 8);
}

/* --max-batch-tokens: jobs of 40 tokens under a limit of 100 go two by
 * two; a single job over the limit still runs (alone). */
static void test_batches_by_tokens(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 64, 16, 100, 0);
    struct tjob jobs[6];
    for (int i = 0; i < 6; i++) {
        tjob_init(&jobs[i], i, i == 5 ? 500 : 40);
        assert_int_equal(mrad_sched_submit(s, &jobs[i].job), MRAD_OK);
        if (i == 0)
            gate_wait_entered(&g, 1);
    }
    gate_open(&g);
    wait_done(jobs, 6);
    assert_int_equal(g.nbatches, 4);
    assert_int_equal(g.sizes[0], 1);
    assert_int_equal(g.sizes[1], 2);
    assert_int_equal(g.sizes[2], 2);
    assert_int_equal(g.sizes[3], 1);
    finish(s, jobs, 6);
}

/* With a window, an idle worker waits for more jobs: two jobs submitted
 * together share a batch, which starts no earlier than the window after
 * the first; a full batch starts at once. */
static void test_batching_window(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 1, 64, 3, 0, 200000);
    struct tjob jobs[5];
    uint64_t t0 = mrad_now_ns();
    for (int i = 0; i < 2; i++) {
        tjob_init(&jobs[i], i, 32);
        assert_int_equal(mrad_sched_submit(s, &jobs[i].job), MRAD_OK);
    }
    wait_done(jobs, 2);
    assert_int_equal(g.nbatches, 1);
    assert_int_equal(g.sizes[0], 2);
    assert_true(jobs[0].done_ns - t0 >= 190ull * 1000000);

    /* Three jobs fill a batch: no waiting for the window. */
    t0 = mrad_now_ns();
    for (int i = 2; i < 5; i++) {
        tjob_init(&jobs[i], i, 32);
        assert_int_equal(mrad_sched_submit(s, &jobs[i].job), MRAD_OK);
    }
    wait_done(jobs + 2, 3);
    assert_true(g.nbatches == 2 || g.nbatches == 3);
    if (g.nbatches == 2) {
        assert_int_equal(g.sizes[1], 3);
        assert_true(jobs[4].done_ns - t0 < 150ull * 1000000);
    }
    finish(s, jobs, 5);
}

/* Higher priorities leave the queue first; equal ones in arrival order. */
static void test_priority(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 64, 1, 0, 0);
    struct tjob jobs[6];
    static const int prio[6] = {0, 0, 5, 1, 5, 0};
    for (int i = 0; i < 6; i++) {
        tjob_init(&jobs[i], i, 32);
        jobs[i].job.priority = prio[i];
        assert_int_equal(mrad_sched_submit(s, &jobs[i].job), MRAD_OK);
        if (i == 0)
            gate_wait_entered(&g, 1);
    }
    gate_open(&g);
    wait_done(jobs, 6);
    static const int want[6] = {0, 2, 4, 3, 1, 5};
    for (int i = 0; i < 6; i++)
        assert_int_equal(order[i], want[i]);
    finish(s, jobs, 6);
}

/* A waiting job past its deadline is answered MRAD_ETIMEOUT without
 * waiting for the busy worker; so is a running one, whose result is then
 * dropped. */
static void test_deadlines(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 64, 4, 0, 0);
    struct tjob jobs[3];
    tjob_init(&jobs[0], 0, 32);
    jobs[0].job.deadline_ns = mrad_now_ns() + 300ull * 1000000;
    assert_int_equal(mrad_sched_submit(s, &jobs[0].job), MRAD_OK);
    gate_wait_entered(&g, 1);
    tjob_init(&jobs[1], 1, 32);
    jobs[1].job.deadline_ns = mrad_now_ns() + 50ull * 1000000;
    assert_int_equal(mrad_sched_submit(s, &jobs[1].job), MRAD_OK);
    tjob_init(&jobs[2], 2, 32);
    assert_int_equal(mrad_sched_submit(s, &jobs[2].job), MRAD_OK);
    wait_done(jobs, 2); /* both while the worker is held */
    assert_int_equal(jobs[1].job.err_src, MRAD_SRC_SERVER);
    assert_int_equal(jobs[1].job.err, MRAD_ETIMEOUT);
    assert_int_equal(jobs[0].job.err, MRAD_ETIMEOUT);
    assert_int_equal(jobs[2].done, 0);
    gate_open(&g);
    wait_done(jobs, 3);
    assert_int_equal(jobs[2].job.err, 0);
    /* The held job's late result changed nothing. */
    assert_int_equal(jobs[0].job.err, MRAD_ETIMEOUT);
    assert_int_equal(g.nbatches, 2);
    finish(s, jobs, 3);
}

/* A waiting job whose submitter cancels is finished with MRAD_EGONE and
 * never computed. */
static void test_cancellation(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 64, 4, 0, 0);
    struct tjob jobs[3];
    for (int i = 0; i < 3; i++) {
        tjob_init(&jobs[i], i, 32);
        assert_int_equal(mrad_sched_submit(s, &jobs[i].job), MRAD_OK);
        if (i == 0)
            gate_wait_entered(&g, 1);
    }
    __atomic_store_n(&jobs[1].cancel, 1, __ATOMIC_SEQ_CST);
    wait_done(jobs + 1, 1);
    assert_int_equal(jobs[1].job.err, MRAD_EGONE);
    gate_open(&g);
    wait_done(jobs, 3);
    assert_int_equal(g.nbatches, 2);
    assert_int_equal(g.sizes[1], 1);
    assert_ptr_equal(g.first[1], &jobs[2].prob);
    finish(s, jobs, 3);
}

/* A running job whose submitter cancels, or whose deadline passes, is
 * answered at once and its cancel flag set, so that the backend stops. */
static void test_cancel_running(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 64, 1, 0, 0);
    struct tjob jobs[2];
    tjob_init(&jobs[0], 0, 32);
    assert_int_equal(mrad_sched_submit(s, &jobs[0].job), MRAD_OK);
    gate_wait_entered(&g, 1);
    assert_int_equal(jobs[0].job.cancel, 0);
    __atomic_store_n(&jobs[0].cancel, 1, __ATOMIC_SEQ_CST);
    wait_done(jobs, 1);
    assert_int_equal(jobs[0].job.err, MRAD_EGONE);
    assert_int_equal(jobs[0].job.cancel, 1);
    gate_open(&g);
    gate_wait_left_and_close(&g, 1);
    tjob_init(&jobs[1], 1, 32);
    jobs[1].job.deadline_ns = mrad_now_ns() + 200ull * 1000000;
    assert_int_equal(mrad_sched_submit(s, &jobs[1].job), MRAD_OK);
    gate_wait_entered(&g, 2);
    wait_done(jobs + 1, 1);
    assert_int_equal(jobs[1].job.err, MRAD_ETIMEOUT);
    assert_int_equal(jobs[1].job.cancel, 1);
    gate_open(&g);
    finish(s, jobs, 2);
}

/* --max-queue counts waiting jobs: beyond it submit refuses with
 * MRAD_EOVERLOAD and done() is never called for the refused job. */
static void test_queue_limit(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 2, 1, 0, 0);
    struct tjob jobs[4];
    for (int i = 0; i < 4; i++)
        tjob_init(&jobs[i], i, 32);
    assert_int_equal(mrad_sched_submit(s, &jobs[0].job), MRAD_OK);
    gate_wait_entered(&g, 1);
    assert_int_equal(mrad_sched_submit(s, &jobs[1].job), MRAD_OK);
    assert_int_equal(mrad_sched_submit(s, &jobs[2].job), MRAD_OK);
    assert_int_equal(mrad_sched_submit(s, &jobs[3].job), MRAD_EOVERLOAD);
    struct mrad_sched_status st;
    mrad_sched_status(s, &st);
    assert_int_equal(st.queue_depth, 2);
    assert_int_equal(st.inflight, 3);
    assert_int_equal(st.max_queue, 2);
    gate_open(&g);
    wait_done(jobs, 3);
    assert_int_equal(jobs[3].done, 0);
    mrad_sched_status(s, &st);
    assert_int_equal(st.inflight, 0);
    finish(s, jobs, 3);
    mrad_job_unref(&jobs[3].job);
    assert_int_equal(jobs[3].released, 1);
}

/* Drain refuses new jobs and lets the accepted ones finish; abort then
 * answers what is left with the given error at once. */
static void test_drain_and_abort(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 64, 1, 0, 0);
    struct tjob jobs[4];
    for (int i = 0; i < 3; i++) {
        tjob_init(&jobs[i], i, 32);
        assert_int_equal(mrad_sched_submit(s, &jobs[i].job), MRAD_OK);
        if (i == 0)
            gate_wait_entered(&g, 1);
    }
    mrad_sched_drain(s);
    tjob_init(&jobs[3], 3, 32);
    assert_int_equal(mrad_sched_submit(s, &jobs[3].job), MRAD_EUNAVAIL);
    struct mrad_sched_status st;
    mrad_sched_status(s, &st);
    assert_int_equal(st.draining, 1);
    /* The running job and the two queued ones are answered 503 by the
     * abort while the worker is still held. */
    mrad_sched_abort(s, MRAD_EUNAVAIL);
    wait_done(jobs, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(jobs[i].job.err_src, MRAD_SRC_SERVER);
        assert_int_equal(jobs[i].job.err, MRAD_EUNAVAIL);
    }
    gate_open(&g);
    finish(s, jobs, 3);
    mrad_job_unref(&jobs[3].job);
}

/* A failing backend fails its batch's jobs with the library's error and
 * leaves the scheduler serving. */
static void test_backend_error(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 1, 64, 4, 0, 0);
    g.fail = 1;
    struct tjob jobs[2];
    tjob_init(&jobs[0], 0, 32);
    assert_int_equal(mrad_sched_submit(s, &jobs[0].job), MRAD_OK);
    wait_done(jobs, 1);
    assert_int_equal(jobs[0].job.err_src, MRAD_SRC_ATTN);
    assert_int_equal(jobs[0].job.err, ATTN_EBACKEND);
    pthread_mutex_lock(&g.lock);
    g.fail = 0;
    pthread_mutex_unlock(&g.lock);
    tjob_init(&jobs[1], 1, 32);
    assert_int_equal(mrad_sched_submit(s, &jobs[1].job), MRAD_OK);
    wait_done(jobs + 1, 1);
    assert_int_equal(jobs[1].job.err, 0);
    assert_int_equal(jobs[1].job.stats.blocks_total, 1);
    finish(s, jobs, 2);
}

/* References: release runs once, on the last unref, whoever drops it. */
static void test_refs(void **state)
{
    (void)state;
    struct tjob t;
    tjob_init(&t, 0, 32);
    mrad_job_ref(&t.job);
    mrad_job_unref(&t.job);
    assert_int_equal(t.released, 0);
    mrad_job_unref(&t.job);
    assert_int_equal(t.released, 1);
    mrad_job_unref(NULL);
}

/* Jobs of one order key keep their arrival order whatever their
 * priorities, and pass other jobs by priority; other jobs pass them by
 * priority. */
static void test_order_key(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 64, 1, 0, 0);
    struct tjob jobs[5];
    static const int prio[5] = {0, 0, 0, 5, 5};
    static const int keyed[5] = {0, 1, 0, 1, 0};
    static int key;
    for (int i = 0; i < 5; i++) {
        tjob_init(&jobs[i], i, 32);
        jobs[i].job.priority = prio[i];
        jobs[i].job.order = keyed[i] ? &key : NULL;
        assert_int_equal(mrad_sched_submit(s, &jobs[i].job), MRAD_OK);
        if (i == 0)
            gate_wait_entered(&g, 1);
    }
    gate_open(&g);
    wait_done(jobs, 5);
    static const int want[5] = {0, 4, 1, 3, 2};
    for (int i = 0; i < 5; i++)
        assert_int_equal(order[i], want[i]);
    finish(s, jobs, 5);
}

/* A job pinned to a worker waits for it while another worker takes the
 * jobs that may run anywhere. */
static void test_pinned(void **state)
{
    (void)state;
    struct gate_backend g[2];
    struct attn_backend *be[2] = {gate_new(&g[0], 1), gate_new(&g[1], 0)};
    int devices[2] = {0, 1};
    struct mrad_sched_config cfg = {64, 4, 0, 0};
    struct mrad_sched *s;
    assert_int_equal(mrad_sched_start(&s, &cfg, be, devices, 2), 0);
    assert_int_equal(mrad_sched_workers(s), 2);
    norder = 0;
    struct tjob jobs[4];
    for (int i = 0; i < 4; i++)
        tjob_init(&jobs[i], i, 32);
    jobs[0].job.worker = 1;
    assert_int_equal(mrad_sched_submit(s, &jobs[0].job), MRAD_OK);
    gate_wait_entered(&g[1], 1);
    jobs[1].job.worker = 1;
    assert_int_equal(mrad_sched_submit(s, &jobs[1].job), MRAD_OK);
    assert_int_equal(mrad_sched_submit(s, &jobs[2].job), MRAD_OK);
    wait_done(jobs + 2, 1);
    assert_int_equal(jobs[1].done, 0);
    assert_int_equal(g[0].nbatches, 1);
    assert_ptr_equal(g[0].first[0], &jobs[2].prob);
    /* A worker out of range is refused. */
    jobs[3].job.worker = 2;
    assert_int_equal(mrad_sched_submit(s, &jobs[3].job), MRAD_EINTERNAL);
    jobs[3].done = 1; /* never submitted: nothing to answer */
    gate_open(&g[1]);
    wait_done(jobs, 2);
    assert_int_equal(g[1].nbatches, 2);
    assert_ptr_equal(g[1].first[1], &jobs[1].prob);
    assert_int_equal(g[0].nbatches, 1);
    finish(s, jobs, 4);
}

/* Calls on the backend (jobs without a problem): each runs alone on its
 * worker, in its turn, with that worker's backend; its value is the
 * job's error; it never waits for the batching window. */
static struct attn_backend *call_seen_be;
static int call_seen_order[8], ncalls;

static int tjob_run(struct mrad_job *job, struct attn_backend *be)
{
    struct tjob *t = job->owner;
    call_seen_be = be;
    call_seen_order[ncalls++] = t->id;
    return t->id == 3 ? ATTN_EINVAL : ATTN_OK;
}

static const struct mrad_job_ops tcall_ops = {.done = tjob_done,
                                              .cancelled = tjob_cancelled,
                                              .release = tjob_release,
                                              .run = tjob_run};

static void test_calls(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 64, 8, 0, 0);
    struct tjob jobs[6];
    ncalls = 0;
    for (int i = 0; i < 6; i++) {
        tjob_init(&jobs[i], i, 32);
        if (i == 2 || i == 3) {
            jobs[i].job.ops = &tcall_ops;
            jobs[i].job.prob = NULL;
        }
        assert_int_equal(mrad_sched_submit(s, &jobs[i].job), MRAD_OK);
        if (i == 0)
            gate_wait_entered(&g, 1);
    }
    gate_open(&g);
    wait_done(jobs, 6);
    /* [0], [1], call 2, call 3, [4, 5] */
    assert_int_equal(g.nbatches, 3);
    assert_int_equal(g.sizes[1], 1);
    assert_int_equal(g.sizes[2], 2);
    for (int i = 0; i < 6; i++)
        assert_int_equal(order[i], i);
    assert_int_equal(ncalls, 2);
    assert_int_equal(call_seen_order[0], 2);
    assert_int_equal(call_seen_order[1], 3);
    assert_non_null(call_seen_be);
    assert_ptr_equal(call_seen_be->ctx, &g);
    assert_int_equal(jobs[2].job.err, 0);
    assert_int_equal(jobs[3].job.err_src, MRAD_SRC_ATTN);
    assert_int_equal(jobs[3].job.err, ATTN_EINVAL);
    finish(s, jobs, 6);

    /* Under a long window, a call alone goes at once. */
    s = start(&g, 1, 64, 8, 0, 5 * 1000000);
    tjob_init(&jobs[0], 0, 32);
    jobs[0].job.ops = &tcall_ops;
    jobs[0].job.prob = NULL;
    uint64_t t0 = mrad_now_ns();
    assert_int_equal(mrad_sched_submit(s, &jobs[0].job), MRAD_OK);
    wait_done(jobs, 1);
    assert_true(jobs[0].done_ns - t0 < 2000ull * 1000000);
    /* A job without a problem and without a call is refused. */
    tjob_init(&jobs[1], 1, 32);
    jobs[1].job.prob = NULL;
    assert_int_equal(mrad_sched_submit(s, &jobs[1].job), MRAD_EINTERNAL);
    jobs[1].done = 1;
    finish(s, jobs, 2);
}

/* Opens the gate once the job is done (or after 10 s, so that the test
 * fails instead of hanging). */
struct open_when {
    struct gate_backend *g;
    struct tjob *job;
};

static void *open_when_done(void *arg)
{
    struct open_when *w = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&done_lock);
    while (!w->job->done &&
           pthread_cond_timedwait(&done_cond, &done_lock, &until) == 0)
        ;
    pthread_mutex_unlock(&done_lock);
    gate_open(w->g);
    return NULL;
}

/* mrad_sched_stop() answers what waits and what runs, and drops every
 * reference the scheduler held, before the backends are freed. */
static void test_stop(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched *s = start(&g, 0, 64, 1, 0, 0);
    struct tjob jobs[2];
    for (int i = 0; i < 2; i++) {
        tjob_init(&jobs[i], i, 32);
        assert_int_equal(mrad_sched_submit(s, &jobs[i].job), MRAD_OK);
        if (i == 0)
            gate_wait_entered(&g, 1);
    }
    /* The running job is cancelled; the gate lets it return once the
     * waiting one was answered (opened before the stop, the worker could
     * take the waiting job first). */
    struct open_when w = {&g, &jobs[1]};
    pthread_t opener;
    assert_int_equal(pthread_create(&opener, NULL, open_when_done, &w), 0);
    mrad_sched_stop(s);
    pthread_join(opener, NULL);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(jobs[i].done, 1);
        mrad_job_unref(&jobs[i].job);
        assert_int_equal(jobs[i].released, 1);
    }
    assert_int_equal(jobs[1].job.err, MRAD_EUNAVAIL);
    struct tjob late;
    tjob_init(&late, 9, 32);
    assert_int_equal(mrad_sched_submit(s, &late.job), MRAD_EUNAVAIL);
    mrad_sched_stop(s); /* twice is harmless */
    mrad_sched_free(s);
    mrad_job_unref(&late.job);
}

/* A backend unhealthy at the start, which heals when asked a few times:
 * the idle worker asks again (about every second) without any traffic,
 * and the scheduler reports healthy once it has. */
static void test_health_probed_while_idle(void **state)
{
    (void)state;
    struct gate_backend g;
    struct mrad_sched_config cfg = {64, 1, 0, 0};
    struct attn_backend *be = gate_new(&g, 1);
    g.sick = 3;
    int device = 0;
    struct mrad_sched *s;
    assert_int_equal(mrad_sched_start(&s, &cfg, &be, &device, 1), 0);
    struct mrad_sched_status st;
    mrad_sched_status(s, &st);
    assert_false(st.healthy);
    for (int i = 0; i < 100; i++) {
        mrad_sched_status(s, &st);
        if (st.healthy)
            break;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_true(st.healthy);
    pthread_mutex_lock(&g.lock);
    assert_true(g.health_calls >= 4);
    assert_int_equal(g.nbatches, 0);
    pthread_mutex_unlock(&g.lock);
    mrad_sched_free(s);
}

int main(void)
{
    mrad_log_init(MRAD_LOG_TEXT, MRAD_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batches_by_count),
        cmocka_unit_test(test_batches_by_tokens),
        cmocka_unit_test(test_batching_window),
        cmocka_unit_test(test_priority),
        cmocka_unit_test(test_deadlines),
        cmocka_unit_test(test_cancellation),
        cmocka_unit_test(test_cancel_running),
        cmocka_unit_test(test_queue_limit),
        cmocka_unit_test(test_drain_and_abort),
        cmocka_unit_test(test_backend_error),
        cmocka_unit_test(test_refs),
        cmocka_unit_test(test_order_key),
        cmocka_unit_test(test_pinned),
        cmocka_unit_test(test_calls),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_health_probed_while_idle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
