/*
 * proto.h - the wire codec of POST /v1/attention (see protocol/SPEC.md).
 *
 * Decodes a request body (msgpack, or JSON for small requests) into a
 * validated struct attn_problem, encodes the response body, and builds the
 * JSON error body.  Knows nothing of sockets or threads: every function is
 * re-entrant and may be called from any thread on distinct objects.
 *
 * Errors are values: functions return PROTO_OK (0) or a negative
 * `enum proto_err`; proto_strerror() describes a code, and the decoder also
 * writes a message naming the offending field.
 */
#ifndef MRAD_PROTO_H
#define MRAD_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

enum proto_err {
    PROTO_OK = 0,
    PROTO_EBADREQ = -1, /* malformed or invalid body: HTTP 400 bad_request */
    PROTO_ETOOBIG =
        -2, /* tensor or problem over the limits: 413 payload_too_large */
    PROTO_ENOMEM = -3, /* allocation failure: 500 internal */
};

const char *proto_strerror(int err);

enum proto_format {
    PROTO_MSGPACK = 0,
    PROTO_JSON = 1,
};

/* Limits that stop allocation bombs.  A zero field means "no limit" except
 * max_head_dim, where 0 means ATTN_MAX_HEAD_DIM. */
struct proto_limits {
    uint64_t max_batch;    /* B */
    uint64_t max_heads;    /* H (and Hkv) */
    uint64_t max_tokens;   /* Nq and Nk, each */
    uint64_t max_head_dim; /* D, at most ATTN_MAX_HEAD_DIM */
    uint64_t max_elements; /* of any one tensor: B*H*Nq*D of q (and of the
                              output), B*Hkv*Nk*D of k and v */
};

/* Default limits used by mrad and mractl (documented in mrad --help). */
void proto_limits_default(struct proto_limits *lim);

#define PROTO_ID_MAX 128
/* A session id: 1 to 64 of [A-Za-z0-9_-]. */
#define PROTO_KV_ID_MAX 64

/* Nonzero when the n bytes of s are a session id. */
int proto_kv_id_valid(const char *s, size_t n);

/*
 * Where the answer's buffer prob.out comes from, for a caller that keeps
 * its own large buffers for reuse: alloc(bytes, ctx) returns a buffer of
 * at least `bytes` bytes aligned to 64, or NULL when out of memory, and
 * release(buf, ctx) takes one back (from any thread).
 */
struct proto_out_alloc {
    void *(*alloc)(size_t bytes, void *ctx);
    void (*release)(void *buf, void *ctx);
    void *ctx;
};

/*
 * A decoded request.  `prob` points either into the body passed to
 * proto_request_decode() (tensor data read in place when its alignment
 * allows) or into buffers the request owns; `prob.out` is always an owned,
 * 64-byte-aligned buffer for the answer.  The body must outlive the
 * request.  Release with proto_request_release(), on any thread.
 */
struct proto_request {
    struct attn_problem prob;
    enum proto_format format;  /* the format the answer must use */
    char id[PROTO_ID_MAX + 1]; /* echoed back when has_id */
    int has_id;
    uint64_t timeout_ms; /* 0 = not given */
    /* The session the request names ("kv", or the path's), when has_kv:
     * prob.k, prob.v and prob.mask are then unset, prob.append holds the
     * new tokens (prob.Hkv is theirs, 0 without), and the caller sets
     * prob.kv and prob.Nk from the session, then checks the problem
     * (attn_problem_check). */
    char kv[PROTO_KV_ID_MAX + 1];
    int has_kv;
    /* per_head_stats: the answer lists every head's statistics, which
     * the backend writes into heads[B*H] (prob.head_stats points there). */
    int per_head_stats;
    struct attn_head_stats *heads;
    void *owned[9]; /* internal: buffers to free */
    /* internal: where prob.out came from (zeroed: malloc) */
    struct proto_out_alloc out_alloc;
};

/*
 * Decodes and validates a request body.  On success fills *req and returns
 * PROTO_OK.  On failure returns PROTO_EBADREQ, PROTO_ETOOBIG or
 * PROTO_ENOMEM, writes a message naming the field and what was wrong into
 * err (at most errlen bytes, always terminated), and leaves nothing to
 * release.  `lim` may be NULL for the defaults.
 */
int proto_request_decode(const void *body, size_t len, enum proto_format fmt,
                         const struct proto_limits *lim,
                         struct proto_request *req, char *err, size_t errlen);

/*
 * proto_request_decode() with the answer's buffer from `oa` (NULL: from
 * malloc, as proto_request_decode()); proto_request_release() gives it
 * back through oa->release.
 */
int proto_request_decode_with(const void *body, size_t len,
                              enum proto_format fmt,
                              const struct proto_limits *lim,
                              const struct proto_out_alloc *oa,
                              struct proto_request *req, char *err,
                              size_t errlen);

/* The options of proto_request_decode_opts(); zeroed means the defaults
 * of proto_request_decode(). */
struct proto_decode_opts {
    const struct proto_limits *lim;    /* NULL: the defaults */
    const struct proto_out_alloc *out; /* NULL: malloc */
    /* The session named by the request's path (POST /v1/kv/{id}/attention),
     * or NULL: the body then must not name one. */
    const char *kv;
};

/* proto_request_decode() with options. */
int proto_request_decode_opts(const void *body, size_t len,
                              enum proto_format fmt,
                              const struct proto_decode_opts *opts,
                              struct proto_request *req, char *err,
                              size_t errlen);

/* Frees what the request owns (not the body).  Safe on a zeroed request. */
void proto_request_release(struct proto_request *req);

/* What the service adds to the attention statistics in the answer. */
struct proto_stats {
    struct attn_stats attn;
    const char *backend; /* "cpu", "cuda" */
    uint64_t queue_us;
    uint64_t compute_us;
    uint32_t batch_requests;
};

/*
 * Encodes the 200 answer for a computed request, in req->format:
 * {"out": tensor, "id": ..., "stats": {...}}.  On success stores a malloc'd
 * buffer in *buf (caller frees with free()) and its length in *len.
 * Returns PROTO_OK or PROTO_ENOMEM.
 */
int proto_response_encode(const struct proto_request *req,
                          const struct proto_stats *st, char **buf,
                          size_t *len);

/*
 * The msgpack 200 answer in pieces, for a server that sends the output
 * tensor from where it was computed instead of copying it into the body.
 * The body is the first head_len bytes of *buf, then the out_len bytes of
 * req->prob.out, then the tail_len bytes of *buf that follow the head:
 * byte for byte what proto_response_encode() writes.  head_len is a
 * multiple of 16, as the tensor data starts 16-byte aligned in every
 * msgpack body.  *buf is malloc'd (caller frees with free()).  Returns
 * PROTO_OK, PROTO_ENOMEM, or PROTO_EBADREQ when req->format is not
 * PROTO_MSGPACK (JSON answers have no payload to send apart).
 */
int proto_response_encode_split(const struct proto_request *req,
                                const struct proto_stats *st, char **buf,
                                size_t *head_len, size_t *out_len,
                                size_t *tail_len);

/*
 * Builds the JSON error body {"error": {"code": code, "message": message}}
 * with the message escaped as JSON.  Returns a malloc'd, NUL-terminated
 * string (length in *len if len != NULL), or NULL when out of memory.
 */
char *proto_error_body(const char *code, const char *message, size_t *len);

/*
 * Writes the n bytes of `s` as the inside of a JSON string (no quotes):
 * '"' and '\\' escaped, control characters and DEL as short or \u00XX
 * escapes, so the text stays on one line.  At most cap - 1 bytes are
 * written, never half an escape, and the text is always terminated (cap >
 * 0).  Returns the length written.  Pure, thread-safe.
 */
size_t proto_json_escape(char *dst, size_t cap, const char *s, size_t n);

/*
 * Encodes a request body (msgpack or JSON) from a problem, for clients and
 * tools: the inverse of proto_request_decode().  id may be NULL;
 * timeout_ms 0 leaves it out.  Parameters equal to their defaults are still
 * written when set in the problem; mask and q_mask are written when not
 * NULL, and causal as `true` when set (left out otherwise).  Returns PROTO_OK
 * or PROTO_ENOMEM with a malloc'd buffer in *buf, or PROTO_EBADREQ when the
 * problem itself is inconsistent (unknown dtype or method, NULL tensors, H %
 * Hkv != 0).  In msgpack, tensor data starts 16-byte aligned from the start of
 * the body, so that a decoder reads it in place.
 */
int proto_request_encode(const struct attn_problem *p, enum proto_format fmt,
                         const char *id, uint64_t timeout_ms, char **buf,
                         size_t *len);

/* The options of proto_request_encode_opts(); zeroed: none. */
struct proto_encode_opts {
    const char *id;      /* echoed back; NULL: none */
    uint64_t timeout_ms; /* 0: left out */
    /* A request on a session: k, v and mask are not written, p->append
     * (when append.n > 0) is written as k_append, v_append [B,Hkv,n,D] and
     * mask_append [B,n], and "kv" names the session unless kv_in_path (the
     * body of POST /v1/kv/{id}/attention).  NULL: a request with its own
     * keys. */
    const char *kv;
    int kv_in_path;
    /* per_head_stats: true, so the answer lists every head's statistics
     * (proto_response.heads).  The problem's min_blocks_per_row,
     * error_samples and target_error are written when set. */
    int per_head_stats;
};

/* proto_request_encode() with options. */
int proto_request_encode_opts(const struct attn_problem *p,
                              enum proto_format fmt,
                              const struct proto_encode_opts *o, char **buf,
                              size_t *len);

/* ---- sessions: POST /v1/kv, POST /v1/kv/{id}/append, GET /v1/kv/{id} ---- */

/*
 * The body of a create {k, v, mask?, ttl_ms?} or an append {k, v, mask?}:
 * k and v [B, Hkv, n, D] in one float dtype, mask [B, n] u8.  tokens.k,
 * tokens.v and tokens.mask point into the body when their alignment
 * allows (the body must outlive them), else into owned copies.
 */
struct proto_kv_body {
    enum proto_format format;
    struct attn_kv_shape shape;
    struct attn_kv_tokens tokens;
    uint64_t ttl_ms; /* 0: not given (always 0 for an append) */
    void *owned[3];  /* internal */
};

/* Decodes and checks a create (`create` set) or append body against the
 * limits (NULL: the defaults).  Returns PROTO_OK, or an error with a
 * message naming the field. */
int proto_kv_body_decode(const void *body, size_t len, enum proto_format fmt,
                         const struct proto_limits *lim, int create,
                         struct proto_kv_body *kb, char *err, size_t errlen);
/* Frees what the body owns (not the body).  Safe on a zeroed one. */
void proto_kv_body_release(struct proto_kv_body *kb);

/* Encodes a create (ttl_ms > 0 writes it) or append body, for clients:
 * t->k, t->v [B, Hkv, t->n, D] in shape->dtype, t->mask when not NULL.
 * Returns PROTO_OK with a malloc'd buffer, PROTO_ENOMEM, or PROTO_EBADREQ
 * for an inconsistent shape. */
int proto_kv_body_encode(const struct attn_kv_shape *shape,
                         const struct attn_kv_tokens *t, uint64_t ttl_ms,
                         enum proto_format fmt, char **buf, size_t *len);

/* What the service says of a session: the JSON answer of a create, an
 * append and GET /v1/kv/{id}. */
struct proto_kv_info {
    char kv[PROTO_KV_ID_MAX + 1];
    struct attn_kv_shape shape;
    uint64_t tokens;  /* held */
    uint64_t bytes;   /* counted against the service's budget */
    uint64_t ttl_ms;  /* idle time after which the session expires */
    uint64_t idle_ms; /* since its last use */
};

/* {"kv":..,"dtype":..,"shape":[B,Hkv,tokens,D],"tokens":..,"bytes":..,
 *  "ttl_ms":..,"idle_ms":..}: a malloc'd, terminated text (length in
 * *len), or NULL when out of memory. */
char *proto_kv_info_json(const struct proto_kv_info *in, size_t *len);
/* Reads such an answer (unknown keys are skipped; "kv", "dtype", "shape"
 * and "tokens" are required).  Returns PROTO_OK or PROTO_EBADREQ. */
int proto_kv_info_parse(const void *body, size_t len,
                        struct proto_kv_info *out);

/*
 * A decoded 200 answer, for clients.  `out` points into the body when its
 * alignment allows, else into an owned copy; the body must outlive the
 * response.  Release with proto_response_release().
 */
struct proto_response {
    enum attn_dtype dtype;
    uint32_t shape[4]; /* B, H, Nq, D */
    const void *out;
    size_t out_bytes;
    char id[PROTO_ID_MAX + 1];
    int has_id;
    char method[16];
    char backend[16];
    struct proto_stats stats;      /* stats.backend points at `backend`;
                                      stats.attn.est_rel_err is -1 when the
                                      answer has none */
    struct attn_head_stats *heads; /* stats.heads (owned), or NULL */
    size_t nheads;
    void *owned;
};

int proto_response_decode(const void *body, size_t len, enum proto_format fmt,
                          struct proto_response *resp, char *err,
                          size_t errlen);
void proto_response_release(struct proto_response *resp);

/*
 * Parses a JSON error body into code and message (each truncated to its
 * buffer).  Returns PROTO_OK or PROTO_EBADREQ when the body is not one.
 */
int proto_error_parse(const void *body, size_t len, char *code, size_t codelen,
                      char *message, size_t msglen);

/* ---- the KServe v2 / Open Inference Protocol (protocol/v2.c) ----------- */

/*
 * POST /v2/models/{model}/infer: a JSON object (the inference header) with
 * the tensors' bytes after it when they travel as binary data (Triton's
 * binary tensor data extension: the request's Inference-Header-Content-
 * Length says where the JSON ends), or in a system shared-memory region
 * the server registered.  The inputs are the /v1 tensors by name (q, k, v,
 * mask, q_mask, k_append, v_append, mask_append), FP32, FP16 or BF16 (the
 * masks UINT8 or BOOL); the request's parameters are the /v1 scalar keys
 * (block_per_row, num_blocks, prior_first, prior_diagonal, scale, causal,
 * timeout_ms, kv) plus binary_data_output and Triton's timeout
 * (microseconds); the model names the method.  protocol/SPEC.md, "KServe
 * v2", is the contract.
 */

#define PROTO_V2_NAME_MAX 127

/* Where a tensor lies in a registered shared-memory region. */
struct proto_v2_shm {
    char region[PROTO_V2_NAME_MAX + 1];
    uint64_t offset, byte_size;
};

/* Resolves a shared-memory reference for `need` bytes (input data to read,
 * or the output to write): stores the address in *ptr, or returns
 * PROTO_EBADREQ with a message naming `what` ("inputs[0]", ...) when the
 * region is unknown or too small, or does not hold need bytes at the
 * offset. */
typedef int (*proto_v2_shm_fn)(void *ctx, const struct proto_v2_shm *ref,
                               const char *what, uint64_t need, void **ptr,
                               char *err, size_t errlen);

struct proto_v2_opts {
    struct proto_decode_opts base; /* limits, output allocator, path kv */
    proto_v2_shm_fn shm;           /* NULL: shared memory is refused */
    void *shm_ctx;
};

/* A decoded v2 inference request: the problem and what the answer needs. */
struct proto_v2_request {
    struct proto_request req; /* the problem (as a /v1 request) */
    char model[PROTO_V2_NAME_MAX + 1];
    char out_name[8]; /* "out" */
    int binary_out;   /* the output goes back as binary data */
    int shm_out;      /* the output was written into out_shm */
    struct proto_v2_shm out_shm;
    char v2_id[PROTO_V2_NAME_MAX + 1]; /* the request's "id", echoed */
    int has_v2_id;
};

/*
 * Decodes an inference request: body[0 .. json_len) is the JSON header
 * (json_len = len without binary data), the rest the inputs' binary data
 * in the order of the inputs that have a binary_data_size.  `model` is the
 * method ("mra2", "mra2_sparse", "exact").  Returns PROTO_OK, or an error
 * with a message naming the field (inputs[1].shape, parameters.scale,
 * ...).  Release with proto_v2_request_release().
 */
int proto_v2_request_decode(const void *body, size_t len, size_t json_len,
                            const char *model, const struct proto_v2_opts *o,
                            struct proto_v2_request *r, char *err,
                            size_t errlen);
void proto_v2_request_release(struct proto_v2_request *r);

/*
 * The answer's JSON header (a malloc'd, terminated text, length in
 * *json_len): model_name, model_version "1", id, the statistics in
 * parameters, and the output "out": as binary data (binary_data_size; its
 * bytes, r->req.prob.out, follow the header in the body), in shared memory
 * (its name, datatype and shape only; nothing follows), or as a JSON array
 * of numbers.  Returns PROTO_OK or
 * PROTO_ENOMEM.
 */
int proto_v2_response_encode(const struct proto_v2_request *r,
                             const struct proto_stats *st, char **json,
                             size_t *json_len);

/* KServe's error body {"error": message}: malloc'd, terminated, or NULL
 * when out of memory. */
char *proto_v2_error_body(const char *message, size_t *len);

/* The body of POST /v2/systemsharedmemory/region/{name}/register:
 * {"key": "/name", "offset": n (0 when absent), "byte_size": n}.  The key
 * goes to key (keylen bytes, terminated), offset and byte_size to *ref.
 * Returns PROTO_OK or PROTO_EBADREQ with a message. */
int proto_v2_shm_register_decode(const void *body, size_t len, char *key,
                                 size_t keylen, struct proto_v2_shm *ref,
                                 char *err, size_t errlen);

/* The KServe datatype name of a dtype ("FP32", "FP16", "BF16"). */
const char *proto_v2_datatype(enum attn_dtype dt);

#ifdef __cplusplus
}
#endif
#endif /* MRAD_PROTO_H */
