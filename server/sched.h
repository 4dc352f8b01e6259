/*
 * sched.h - the batch scheduler and the compute workers.
 *
 * HTTP threads submit jobs (one decoded request each).  One scheduler
 * thread, running a libuv loop, keeps the bounded queue: it waits up to the
 * batching window for a batch to fill, drops jobs whose deadline passed or
 * whose client went away, and hands batches to the compute workers.  Each
 * worker thread owns one backend handle (one per GPU, one for the CPU) and
 * is the only thread that calls into it.  Every job is finished exactly
 * once, by whichever thread decides its outcome first (a worker, or the
 * scheduler on a deadline), which then calls the job's `done` callback.
 *
 * Jobs are reference counted: the submitter holds one reference and the
 * scheduler takes one at submit for as long as it or a worker may touch the
 * job, so a job answered with 504 while a worker still computes it stays
 * valid until the worker lets go.  A job carries only what scheduling
 * needs (the problem, its cost, deadline and priority) and the
 * submitter's callbacks; the scheduler never sees how the problem was
 * decoded or where its answer goes.
 */
#ifndef MRAD_SERVER_SCHED_H
#define MRAD_SERVER_SCHED_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "attention/attn.h"
#include "server/errors.h"
#include "server/metrics.h"

struct mrad_job;

/*
 * What the submitter of a job provides.  The scheduler knows nothing of
 * where a job came from (an HTTP request, a test): it calls these and
 * nothing else of the submitter.
 */
struct mrad_job_ops {
    /* Required.  Called exactly once, from the scheduler or a worker
     * thread, when the job's outcome is final (the outcome fields below
     * are written before). */
    void (*done)(struct mrad_job *job);
    /* Optional.  Called by the scheduler thread (at least every 50 ms)
     * while the job waits or computes: nonzero when the submitter no
     * longer wants the result (its client went away); the job is then
     * finished with MRAD_EGONE and its computation cancelled. */
    int (*cancelled)(struct mrad_job *job);
    /* Required.  Called once, on whichever thread drops the last
     * reference: releases what the submitter keeps behind the job (the
     * job itself included when it is embedded in the submitter's own
     * struct). */
    void (*release)(struct mrad_job *job);
    /* Optional: a job that is a call on the backend rather than a problem
     * (job->prob NULL), such as creating or filling a store of keys and
     * values.  Called on the job's worker thread, in the job's turn, with
     * no other job in its batch; its return value is the job's err
     * (source MRAD_SRC_ATTN).  It may read job->cancel to stop early. */
    int (*run)(struct mrad_job *job, struct attn_backend *be);
};

struct mrad_job {
    /* Set by the submitter before mrad_sched_submit(), then read-only. */
    const struct attn_problem *prob; /* owned by the submitter; prob->out
                                        receives the answer */
    uint64_t tokens;                 /* B*max(Nq,Nk): --max-batch-tokens */
    uint64_t bytes;                  /* input and output bytes of the problem */
    uint64_t deadline_ns;            /* CLOCK_MONOTONIC; see mrad_now_ns() */
    int priority; /* higher goes first; FIFO within a priority */
    /* The worker that must run the job (its backend holds the job's
     * store), or -1 for any. */
    int worker;
    /* Jobs with the same non-NULL order key run in the order they were
     * submitted, whatever their priorities (the requests on one session). */
    const void *order;
    const struct mrad_job_ops *ops;
    void *owner;     /* the submitter's context, for the callbacks */
    char rid[72];    /* the request's id for the log lines ("": none) */
#ifdef MRAD_TEST_HOOKS
    int inject_fault; /* test builds only: fail the batch of this job */
#endif

    /* Set to 1 by the scheduler when the job is answered while a worker
     * may still compute it (deadline, cancellation, abort): point the
     * problem's cancel field here so that the computation stops. */
    volatile int cancel;

    /* The outcome, written by the finishing thread before done(). */
    enum mrad_err_source err_src;
    int err; /* 0 = computed */
    struct attn_stats stats;
    uint64_t queue_us, compute_us;
    uint32_t batch_requests;

    /* Internal to the scheduler. */
    uint64_t enqueue_ns;
    atomic_int refs;
    atomic_int finished;
    struct mrad_job *next;
};

/* Monotonic clock in nanoseconds. */
uint64_t mrad_now_ns(void);

/* Zeroes a job and gives it one reference (the caller's), its callbacks
 * and owner; it runs on any worker (worker -1).  The memory is the
 * submitter's: ops->release frees it. */
void mrad_job_init(struct mrad_job *job, const struct mrad_job_ops *ops,
                   void *owner);
/* Takes one more reference.  Any thread. */
void mrad_job_ref(struct mrad_job *job);
/* Drops a reference; the last one calls ops->release.  NULL is ignored.
 * Any thread. */
void mrad_job_unref(struct mrad_job *job);

struct mrad_sched; /* opaque */

/* The scheduler's settings (from the daemon's flags of the same names). */
struct mrad_sched_config {
    uint64_t max_queue;          /* jobs waiting; beyond, MRAD_EOVERLOAD */
    uint64_t max_batch_requests; /* jobs in one batch, >= 1 */
    uint64_t max_batch_tokens;   /* sum of tokens in one batch; 0 = none */
    uint64_t batch_window_us;    /* how long to wait for a batch to fill */
};

/*
 * Starts the scheduler thread and one worker per backend (`cfg` is
 * copied).  Takes ownership
 * of the `n` backend handles (freed by mrad_sched_free()); `devices[i]` is
 * the ordinal shown in metrics for backend i.  Returns 0 or -1.
 */
int mrad_sched_start(struct mrad_sched **out,
                     const struct mrad_sched_config *cfg,
                     struct attn_backend **backends, const int *devices,
                     size_t n);

/* The number of workers (backends); a job's `worker` is below it. */
size_t mrad_sched_workers(const struct mrad_sched *s);

/*
 * Queues a job.  Returns MRAD_OK (the scheduler took its own reference and
 * will call job->done exactly once), MRAD_EOVERLOAD when the queue is full
 * or MRAD_EUNAVAIL while draining (done is not called).  Thread-safe.
 */
int mrad_sched_submit(struct mrad_sched *s, struct mrad_job *job);

/* Refuses new jobs from now on; queued and running jobs carry on. */
void mrad_sched_drain(struct mrad_sched *s);
/* Finishes every queued and running job with `err` (e.g. MRAD_EUNAVAIL at
 * the end of the drain timeout).  Workers still computing carry on and
 * discard their results. */
void mrad_sched_abort(struct mrad_sched *s, int err);

/* Asks every worker to give its backend's kept working memory back
 * (attn_backend_trim) once it has no batch.  Any thread. */
void mrad_sched_trim(struct mrad_sched *s);

struct mrad_sched_status {
    uint64_t queue_depth; /* jobs waiting for a worker */
    uint64_t inflight;    /* jobs submitted and not yet finished */
    uint64_t max_queue;
    int healthy; /* every backend reports ATTN_OK */
    int draining;
};
/* A snapshot of the scheduler's state; never waits for compute.  Any
 * thread. */
void mrad_sched_status(struct mrad_sched *s, struct mrad_sched_status *st);

/* Device memory of each worker's backend, as last sampled by its worker
 * (no call into a backend from the caller's thread).  Fills at most `cap`
 * entries and returns how many it filled. */
size_t mrad_sched_devices(struct mrad_sched *s, struct mrad_metrics_device *out,
                          size_t cap);

/* Stops the workers (after mrad_sched_abort or once idle): when it
 * returns no worker touches a job or a backend any more, and every job
 * reference the scheduler held is dropped.  The backends stay open until
 * mrad_sched_free(), so that what was made with them (stores) can be freed
 * first. */
void mrad_sched_stop(struct mrad_sched *s);

/* Stops the threads (mrad_sched_stop, when not done yet) and frees the
 * scheduler and the backends. */
void mrad_sched_free(struct mrad_sched *s);

#endif /* MRAD_SERVER_SCHED_H */
