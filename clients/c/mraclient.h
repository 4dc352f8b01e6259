/*
 * mraclient.h - C client library of the attention service (libmraclient.a).
 *
 * Sends attention problems to a running mrad over HTTP and returns the
 * output tensor and the statistics; keeps keys and values in the service
 * as sessions (POST /v1/kv, ...) and computes on them; also reads
 * /healthz, /v1/info and /metrics.  Built on libcurl: one client holds one
 * easy handle, so consecutive calls reuse the same keep-alive connection.
 * Request and response bodies are encoded and decoded with protocol/proto.h,
 * the codec the server uses.
 *
 * Errors are values: every function that can fail returns MRAC_OK (0) or a
 * negative `enum mrac_err`, and fills a struct mrac_error (when the caller
 * passes one) with the HTTP status, the wire error code and the server's
 * message.  mrac_strerror() describes a code.
 *
 * Threading: call mrac_global_init() once, before other threads start
 * (it initialises libcurl).  A client handle is used by one thread at a
 * time; create one client per thread.  Different clients are independent.
 * mrac_random_problem(), mrac_strerror() and the name look-ups are
 * re-entrant.
 *
 * Ownership: the library never keeps pointers into caller memory past the
 * call that received them; buffers it returns are malloc'd and released
 * by the caller as each function says.
 */
#ifndef MRAD_MRACLIENT_H
#define MRAD_MRACLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "attention/attn.h"
#include "protocol/proto.h"

#ifdef __cplusplus
extern "C" {
#endif

enum mrac_err {
    MRAC_OK = 0,
    MRAC_EINVAL = -1,     /* a bad argument (URL, problem, option) */
    MRAC_ENOMEM = -2,     /* an allocation failed */
    MRAC_ETRANSPORT = -3, /* connection refused, reset, DNS, ... */
    MRAC_ETIMEDOUT = -4,  /* the client-side connect or total timeout */
    MRAC_EHTTP = -5,      /* the server answered a non-2xx status */
    MRAC_EPROTO = -6,     /* the server's answer could not be decoded */
    /* Two answers of the calls on a session (mrac_kv_*), told apart from
     * MRAC_EHTTP because the caller acts on them; *err is filled as for
     * MRAC_EHTTP (status, wire code, message). */
    MRAC_EKVNOTFOUND = -7, /* 404 kv_not_found: the session is gone
                              (unknown, expired, evicted, deleted): send
                              the context again in a new one */
    MRAC_EKVFULL = -8,     /* 507 kv_cache_full: the service cannot hold
                              the tokens, even after evicting idle
                              sessions */
};

/* Returns a static description of an mrac_err code. */
const char *mrac_strerror(int err);

#define MRAC_CODE_MAX 64
#define MRAC_MESSAGE_MAX 512

/* What went wrong in a call.  `status` is the HTTP status (0 when no answer
 * arrived); `code` and `message` are the wire error's fields for
 * MRAC_EHTTP, otherwise a description of the local failure (code is then
 * "transport", "timeout", "bad_response", "invalid_argument" or
 * "out_of_memory").  `retry_after_s` is the Retry-After header in seconds,
 * or -1 when absent. */
struct mrac_error {
    int err;
    long status;
    char code[MRAC_CODE_MAX];
    char message[MRAC_MESSAGE_MAX];
    long retry_after_s;
};

/* Client settings.  Zero-initialise and set what you need. */
struct mrac_options {
    const char *url;             /* base URL, e.g. "http://127.0.0.1:8080";
                                    NULL = that default */
    const char *api_key;         /* sent as "Authorization: Bearer KEY"; NULL =
                                    none.  Copied by mrac_client_new(). */
    uint32_t connect_timeout_ms; /* 0 = 10 s */
    uint32_t timeout_ms;         /* whole-call limit; 0 = none */
};

struct mrac_client; /* opaque */

/* Initialises libcurl for the whole process.  Call once, before creating
 * clients on several threads.  Returns MRAC_OK or MRAC_ENOMEM. */
int mrac_global_init(void);
/* Releases what mrac_global_init() set up; call after freeing every
 * client, when no other thread uses the library. */
void mrac_global_cleanup(void);

/* Creates a client.  On success stores the handle in *out and returns
 * MRAC_OK; else MRAC_EINVAL (bad URL) or MRAC_ENOMEM.  The options' strings
 * are copied.  `err` may be NULL.  Free with mrac_client_free(). */
int mrac_client_new(const struct mrac_options *opt, struct mrac_client **out,
                    struct mrac_error *err);
/* Closes the connection and frees the client.  NULL is allowed. */
void mrac_client_free(struct mrac_client *c);

/* Per-call extras of mrac_attention(); NULL means all defaults. */
struct mrac_call {
    const char *id;           /* echoed back by the server; NULL = none */
    uint64_t timeout_ms;      /* server-side deadline (504); 0 = server's */
    enum proto_format format; /* body format: PROTO_MSGPACK (default) or
                                 PROTO_JSON (small problems only) */
    int per_head_stats;       /* 1: the answer lists every head's
                                 statistics (mrac_result.heads) */
};

/* The answer to one problem. */
struct mrac_result {
    void *out; /* B*H*Nq*D elements in the problem's dtype; see
                  mrac_attention() for who owns it */
    size_t out_bytes;
    int out_owned;            /* 1 when `out` is malloc'd by the library */
    struct proto_stats stats; /* stats.backend points at `backend`;
                                 stats.attn.est_rel_err is the estimated
                                 error of a problem with error_samples or
                                 target_error, else -1 */
    /* With mrac_call.per_head_stats: nheads = B*H statistics in (b, h)
     * order (budget, pairs, density, est_rel_err or -1), owned by the
     * result; else NULL and 0. */
    struct attn_head_stats *heads;
    size_t nheads;
    char backend[16];
    char method[16];
    char id[PROTO_ID_MAX + 1];
    int has_id;
};

/*
 * Sends one problem to POST /v1/attention and waits for the answer.
 *
 * `p` is checked with attn_problem_check() first (p->out may be NULL).
 * When p->out is not NULL the output tensor is written there (it must hold
 * B*H*Nq*D elements of p->dtype) and res->out == p->out; otherwise the
 * library mallocs it and res->out_owned is 1.  Either way release the
 * result with mrac_result_release(), which frees only what the library
 * allocated.  On error nothing needs releasing and the contents of p->out
 * are unspecified.
 *
 * Returns MRAC_OK, MRAC_EINVAL (the problem failed its check),
 * MRAC_ENOMEM, MRAC_ETRANSPORT, MRAC_ETIMEDOUT, MRAC_EHTTP (the server
 * refused it: see err->status, err->code, err->message) or MRAC_EPROTO
 * (an answer that does not decode, or whose shape or dtype does not match
 * the problem).
 */
int mrac_attention(struct mrac_client *c, const struct attn_problem *p,
                   const struct mrac_call *call, struct mrac_result *res,
                   struct mrac_error *err);

/* Frees what the library allocated in *res and zeroes it.  Safe on a
 * zeroed result. */
void mrac_result_release(struct mrac_result *res);

/*
 * Sends an already-encoded body to POST /v1/attention (content type from
 * `fmt`) and returns the raw answer, whatever its status: the body in
 * *resp (malloc'd and NUL-terminated, caller frees with free()), its length
 * in *resp_len, the status in *status.  Returns MRAC_OK for a 2xx answer,
 * MRAC_EHTTP with *resp still set (and err filled from the error body) for
 * other statuses, or a transport error with *resp NULL.
 */
int mrac_post_raw(struct mrac_client *c, const void *body, size_t len,
                  enum proto_format fmt, char **resp, size_t *resp_len,
                  long *status, struct mrac_error *err);

/*
 * GET /healthz, /v1/info and /metrics.  On a 2xx answer stores the body
 * (malloc'd, NUL-terminated, caller frees with free()) in *text and returns
 * MRAC_OK.  A non-2xx answer gives MRAC_EHTTP with the body still stored
 * in *text (e.g. /healthz answers 503 with a JSON body while draining).
 * Transport errors leave *text NULL.
 */
int mrac_health(struct mrac_client *c, char **text, struct mrac_error *err);
int mrac_info(struct mrac_client *c, char **text, struct mrac_error *err);
int mrac_metrics(struct mrac_client *c, char **text, struct mrac_error *err);

/* ---- sessions: keys and values kept in the service --------------------
 *
 * A session holds keys and values [B, Hkv, N, D] in one dtype on the
 * server, so that later requests send only their queries and new tokens
 * (protocol/SPEC.md, "Sessions").  Its id is the `kv` of the struct
 * proto_kv_info each call answers, with the shape, the tokens held, the
 * bytes counted against the service's budget and the idle lifetime.
 * Sessions expire when unused for their ttl_ms and may be evicted when the
 * service needs room: any call may then fail with MRAC_EKVNOTFOUND, and
 * the caller creates the session again.  Requests on one session apply in
 * the order the service receives them.  Nothing is retried.
 */

/*
 * POST /v1/kv: creates a session from t->n tokens: t->k, t->v [B, Hkv, n,
 * D] in shape->dtype and t->mask [B, n] (0/1; NULL: every token real).
 * ttl_ms asks for an idle lifetime (0: the service's default; it caps
 * it).  On MRAC_OK fills *info: info->kv is the new session's id.  Returns
 * MRAC_OK, MRAC_EINVAL (a bad shape or NULL tensors), MRAC_ENOMEM,
 * MRAC_ETRANSPORT, MRAC_ETIMEDOUT, MRAC_EKVFULL, MRAC_EHTTP (e.g. 400,
 * 413) or MRAC_EPROTO.  The tensors are only read during the call.
 */
int mrac_kv_create(struct mrac_client *c, const struct attn_kv_shape *shape,
                   const struct attn_kv_tokens *t, uint64_t ttl_ms,
                   struct proto_kv_info *info, struct mrac_error *err);

/*
 * POST /v1/kv/{id}/append: appends t->n tokens to session `id`; shape is
 * the session's (dtype, B, Hkv, D: info->shape of its create).  On MRAC_OK
 * fills *info (info may be NULL) with the session right after this append.
 * Returns what mrac_kv_create() does, and MRAC_EKVNOTFOUND.
 */
int mrac_kv_append(struct mrac_client *c, const char *id,
                   const struct attn_kv_shape *shape,
                   const struct attn_kv_tokens *t, struct proto_kv_info *info,
                   struct mrac_error *err);

/*
 * POST /v1/kv/{id}/attention: computes p on session `id`: p->q [B, H, Nq,
 * D] (with p->q_mask, p->causal, the method and its parameters) attends
 * to the keys and values the session holds once p->append is appended.
 * p->append.n tokens (append.k, append.v [B, Hkv, n, D], append.mask [B,
 * n] or NULL) go into the session just before the computation, in the
 * same round trip, so a decoding step is one call; p->Hkv must then be
 * the session's.  p->k, p->v, p->mask, p->Nk and p->kv are not used.
 * `causal` aligns the queries with the end of the session after the
 * append.  The output and *res are as for mrac_attention().  Returns what
 * mrac_attention() does, and MRAC_EKVNOTFOUND and MRAC_EKVFULL (no room
 * for the appended tokens).
 */
int mrac_kv_attend(struct mrac_client *c, const char *id,
                   const struct attn_problem *p, const struct mrac_call *call,
                   struct mrac_result *res, struct mrac_error *err);

/* GET /v1/kv/{id}: what session `id` holds now, in *info.  Returns
 * MRAC_OK, MRAC_EKVNOTFOUND, MRAC_EINVAL (an id that is not 1 to 64 of
 * [A-Za-z0-9_-]), or a transport or HTTP error. */
int mrac_kv_info(struct mrac_client *c, const char *id,
                 struct proto_kv_info *info, struct mrac_error *err);

/* DELETE /v1/kv/{id}: ends session `id` and frees what the service holds
 * for it.  Returns MRAC_OK, MRAC_EKVNOTFOUND (already gone: a caller that
 * only wants it gone may take that as success), MRAC_EINVAL, or a
 * transport or HTTP error. */
int mrac_kv_free(struct mrac_client *c, const char *id, struct mrac_error *err);

/* ---- session handles: sessions that survive a lost context ------------
 *
 * struct mrac_session wraps the calls above for one session and follows
 * it when it changes id.  With keep_context the handle keeps, in client
 * memory, every token the session holds (those of the create and of each
 * append that succeeded, in order), and when a call is answered
 * MRAC_EKVNOTFOUND (the session expired, was evicted, or the replica that
 * held it behind a proxy restarted or died) it creates the session again
 * from them (POST /v1/kv, same shape and ttl_ms; the id changes) and sends
 * the call once more: the 404 applied nothing, so the call's own tokens
 * go in once, with the retry.  A second MRAC_EKVNOTFOUND, or an error of
 * the re-create (e.g. MRAC_EKVFULL), is returned.  Without keep_context
 * nothing is kept and MRAC_EKVNOTFOUND is returned, for the caller to act
 * on.  A session handle is used on the thread that uses its client, one
 * call at a time; the client must outlive it.
 */
struct mrac_session; /* opaque */

/* Options of mrac_session_new().  Zero-initialise and set what you need. */
struct mrac_session_options {
    uint64_t ttl_ms;  /* idle lifetime asked for at each create; 0: the
                         service's default */
    int keep_context; /* 1: keep the tokens and re-create on a loss */
};

/*
 * Creates a session from tokens t (as mrac_kv_create(); opt may be NULL:
 * the defaults) and a handle on it in *out.  Returns what mrac_kv_create()
 * does; on error *out is NULL and nothing needs freeing.  The tokens are
 * copied when kept, else only read during the call.  When memory for the
 * kept tokens runs out (here or after a later call) the handle stops
 * keeping them: a loss is then returned as MRAC_EKVNOTFOUND.
 */
int mrac_session_new(struct mrac_client *c, const struct attn_kv_shape *shape,
                     const struct attn_kv_tokens *t,
                     const struct mrac_session_options *opt,
                     struct mrac_session **out, struct mrac_error *err);
/* mrac_kv_append() on the handle's session (with its shape), re-creating
 * it once on a loss as said above.  info may be NULL. */
int mrac_session_append(struct mrac_session *s, const struct attn_kv_tokens *t,
                        struct proto_kv_info *info, struct mrac_error *err);
/* mrac_kv_attend() on the handle's session, re-creating it once on a loss
 * as said above; p->append (if any) is kept once the call succeeds. */
int mrac_session_attend(struct mrac_session *s, const struct attn_problem *p,
                        const struct mrac_call *call, struct mrac_result *res,
                        struct mrac_error *err);
/* The session's id now (it changes at a re-create; the string belongs to
 * the handle and changes with it), the tokens it holds as of the handle's
 * last call, and how many times the handle made it again. */
const char *mrac_session_id(const struct mrac_session *s);
uint64_t mrac_session_tokens(const struct mrac_session *s);
uint64_t mrac_session_recreated(const struct mrac_session *s);
/* Deletes the session (one already gone is not an error) and frees the
 * handle, whatever the answer.  Returns MRAC_OK or the error of the
 * DELETE (transport, HTTP).  NULL is allowed. */
int mrac_session_free(struct mrac_session *s, struct mrac_error *err);

/* The masks mrac_random_problem() can give a problem (key or query). */
enum mrac_mask_kind {
    MRAC_MASK_NONE = 0, /* no mask: NULL */
    MRAC_MASK_ONES,     /* every token real */
    MRAC_MASK_RANDOM,   /* each token real with probability 3/4 */
    MRAC_MASK_BLOCKS,   /* tokens 32..63 and the last token masked */
    MRAC_MASK_ZEROS,    /* every token masked */
};

/* What mrac_random_problem() generates. */
struct mrac_random_spec {
    uint32_t B, H, Hkv, Nq, Nk, D; /* Hkv 0 = H; Nk 0 = Nq */
    enum attn_method method;
    enum attn_dtype dtype;
    uint64_t seed;
    uint32_t block_per_row;     /* 0 = leave at the default */
    int causal;                 /* sets attn_problem.causal */
    enum mrac_mask_kind mask;   /* the key mask, [B, Nk] */
    enum mrac_mask_kind q_mask; /* the query mask, [B, Nq] */
    /* the accuracy controls, copied into the problem (0 = none) */
    uint32_t min_blocks_per_row;
    uint32_t error_samples;
    float target_error;
};

/*
 * Fills *p with a problem of random q [B, H, Nq, D] and k, v [B, Hkv, Nk,
 * D] (uniform in [-1, 1), then converted to spec->dtype), and the masks
 * spec asks for, from a deterministic generator seeded by spec->seed, for
 * trying the service and for load tests.  The tensors and masks live in
 * one malloc'd block stored in *owned (free it with free() when done with
 * p); p->out is NULL.  Returns MRAC_OK, MRAC_EINVAL (a shape that
 * attn_problem_check() rejects or whose size overflows, an unknown mask
 * kind) or MRAC_ENOMEM.  Re-entrant.
 */
int mrac_random_problem(const struct mrac_random_spec *spec,
                        struct attn_problem *p, void **owned);

/* Looks up a method or a dtype by its wire name ("mra2", "mra2_sparse",
 * "exact"; "f32", "f16", "bf16"), as command lines name them.  Returns
 * MRAC_OK and stores it, or MRAC_EINVAL (nothing stored) for another
 * name.  Re-entrant. */
int mrac_method_parse(const char *name, enum attn_method *m);
int mrac_dtype_parse(const char *name, enum attn_dtype *dt);
/* Looks up a mask kind by its command-line name: "none", "ones",
 * "random", "blocks", "zeros" (the names tools/mkreq.py uses).  Same
 * returns.  Re-entrant. */
int mrac_mask_parse(const char *name, enum mrac_mask_kind *kind);

/*
 * Reads the rest of stream f, or the whole file at path, into a malloc'd
 * buffer (caller frees with free()), for request bodies and key files:
 * *len receives the byte count, and a NUL byte follows the data (not
 * counted), so text can be used as a string.  mrac_read_stream() does not
 * close f.  Return NULL with errno set when the file cannot be opened or
 * read, or memory runs out.
 */
char *mrac_read_stream(FILE *f, size_t *len);
char *mrac_read_file(const char *path, size_t *len);

#ifdef __cplusplus
}
#endif
#endif /* MRAD_MRACLIENT_H */
