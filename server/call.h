/*
 * call.h - a request answered after a job: what the computing API
 * surfaces (server/api-*.c) share.
 *
 * A surface's handler decodes the body, fills a job and submits it; the
 * request waits, suspended, and the job's completion resumes it on an
 * HTTP thread, where the surface encodes the answer.  The job is embedded
 * in a struct mrad_call, which a surface embeds first in its own struct
 * for what only it knows (the decoded request, the answer).  The call
 * holds the request body (its tensors point into it), the bytes counted
 * against --max-inflight-bytes, and the session in use, if any: all
 * released with the job's last reference, once no worker touches them.
 */
#ifndef MRAD_SERVER_CALL_H
#define MRAD_SERVER_CALL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol/proto.h"
#include "server/kv.h"
#include "server/route.h"
#include "server/sched.h"

struct mrad_call {
    struct mrad_job job; /* its owner is the call */
    /* The request, until it ends (the job may outlive it: a worker still
     * computing a job answered 504).  `lock` guards it and `woken` against
     * the scheduler's thread, which asks whether the client left. */
    pthread_mutex_t lock;
    struct mrad_req *r;
    int woken;
    struct mrad_server *srv;
    enum proto_format fmt; /* of the body, from its Content-Type */
    /* The body (from mrad_bufcache_get()) and the bytes counted against
     * --max-inflight-bytes for it and for the answer. */
    void *body;
    size_t body_len, body_pad; /* the body is at body + body_pad */
    uint64_t body_reserved, out_reserved;
    struct mrad_kv *kv; /* the session in use, or NULL */
    int refused;        /* the mrad_err of a refused submit, or 0 */
    /* The surface's own release of what it keeps, before the call is
     * freed (NULL: none). */
    void (*cleanup)(struct mrad_call *c);
#ifdef MRAD_TEST_HOOKS
    int inject_fault;
#endif
};

/* The job callbacks of a call: done() resumes the request, cancelled()
 * asks whether its client left, release() frees the call.  A surface uses
 * them in its struct mrad_job_ops (adding a run() for calls on the
 * backend, or wrapping done()). */
void mrad_call_done(struct mrad_job *job);
int mrad_call_cancelled(struct mrad_job *job);
void mrad_call_release(struct mrad_job *job);

/* Options of mrad_call_begin(). */
enum mrad_call_flags {
    /* Any Content-Type, and the body limit of msgpack (a surface that
     * tells its body's form otherwise: KServe v2's binary data). */
    MRAD_CALL_ANY_MEDIA = 1,
};

/*
 * In a route's begin(): refuses the request while draining, or when its
 * Content-Type is not msgpack or JSON, sets the body limit (the JSON one
 * for JSON), refuses it early when the queue is full, and attaches a
 * zeroed call of `size` bytes (a surface's struct, starting with a struct
 * mrad_call) with its job's callbacks `ops`.  Returns the call, or NULL
 * when the request was answered (the route returns `*rc`).
 */
struct mrad_call *mrad_call_begin(struct mrad_req *r, size_t size,
                                  const struct mrad_job_ops *ops,
                                  unsigned flags, int *rc);

/* In handle(): the call takes the body (and its count). */
void mrad_call_take_body(struct mrad_req *r, struct mrad_call *c);
/* The body the call took ("" when empty), c->body_len bytes. */
const char *mrad_call_body(const struct mrad_call *c);

/* The output allocator of decoded problems: cached buffers (a fresh one
 * would be faulted in page by page as the backend writes it). */
extern const struct proto_out_alloc mrad_call_out_alloc;

/* Bytes of a decoded problem's output [B, H, Nq, D]. */
size_t mrad_call_out_bytes(const struct attn_problem *p);

/*
 * A request on a session (req->has_kv; the id in the path when
 * kv_in_path, else X-Mrad-KV is set here): takes a use of the session,
 * checks the problem against what it holds, admits its appended tokens,
 * points the problem at the store and pins the job to the session's
 * worker, in its order.  Returns 0, or -1 with the error answered.
 */
int mrad_call_bind_session(struct mrad_req *r, struct mrad_call *c,
                           struct proto_request *req, int kv_in_path);

/*
 * The admission of a decoded problem: its estimated cost against
 * --max-problem-flops, room for its answer (when `answer` is set: the
 * answer goes through the service), then the job's problem, cost and
 * cancel flag.  Returns 0, or -1 with the error answered.
 */
int mrad_call_admit(struct mrad_req *r, struct mrad_call *c,
                    struct attn_problem *p, int answer);

/* Counts the answer's `bytes` against --max-inflight-bytes.  Returns 0,
 * or -1 with the 503 answered. */
int mrad_call_reserve_answer(struct mrad_req *r, struct mrad_call *c,
                             uint64_t bytes);

/*
 * Submits the call's job (its problem, cost, worker and order set by the
 * surface) with a deadline of the request's start plus the smaller of
 * timeout_ms (0: none) and --request-timeout-ms, and suspends the
 * request; resume() runs when the job is finished or was refused.
 * Returns 0.
 */
int mrad_call_submit(struct mrad_req *r, struct mrad_call *c,
                     uint64_t timeout_ms);

/*
 * In resume(): writes the access log's fields, and answers a refused,
 * failed or abandoned job.  Returns 1 when it answered (the route returns
 * *rc), 0 when the job computed and the surface answers.  `id` is the
 * request's id for the log (NULL: none).
 */
int mrad_call_failed(struct mrad_req *r, struct mrad_call *c, const char *id,
                     int *rc);

/* The request body goes back to the cache (and its count) once the job is
 * over and before the answer is sent. */
void mrad_call_drop_body(struct mrad_call *c);

/* In resume(): ends the call's use of its session now, rather than when
 * the call is freed (after its answer is sent), when no worker can touch
 * the store for it any more: the job was computed (or failed) by its
 * worker, or never submitted.  A job answered by the scheduler (a
 * deadline, a client gone, a drain) keeps its use until its release, as
 * its worker may still be computing it.  So a client that has its answer
 * finds the session idle, as it left it. */
void mrad_call_end_session(struct mrad_call *c);

#endif /* MRAD_SERVER_CALL_H */
