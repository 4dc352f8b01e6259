/*
 * attn.h - public interface of the attention library.
 *
 * The library computes the three methods of MRA-2 attention ("exact",
 * "mra2", "mra2_sparse"; see attention/README.md for the equations) on a
 * backend.  A backend is an opaque handle created by attn_backend_new();
 * the CPU backend is always available, others (CUDA) when they were built
 * and a device is present.
 *
 * Errors are values: every function that can fail returns an `int` that is
 * ATTN_OK (0) or one of the negative `enum attn_err` codes; attn_strerror()
 * turns a code into a sentence.  Nothing in this library aborts on bad input.
 *
 * Threading: a backend handle may be used by one thread at a time (the
 * caller serialises calls to attn_backend_compute()); the backend runs its
 * own worker threads internally.  Different handles are independent.
 * The dtype helpers and attn_problem_check() are pure and thread-safe.
 */
#ifndef MRAD_ATTN_H
#define MRAD_ATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ATTN_BLOCK 32 /* block size b of the spec */
#define ATTN_MAX_HEAD_DIM 256

enum attn_err {
    ATTN_OK = 0,
    ATTN_EINVAL = -1, /* a problem field is out of range or inconsistent */
    ATTN_ENOMEM = -2, /* an allocation failed */
    ATTN_ENOTSUP =
        -3, /* the backend does not support this (method, dtype, ...) */
    ATTN_EBACKEND = -4, /* the device failed (launch error, lost device) */
    ATTN_ENODEV = -5, /* the requested backend is not built or has no device */
    /* an injected fault: only the test hook attn_backend_inject_fault()
     * (attention/attn-test.h) produces it */
    ATTN_EFAULT = -6,
    /* the problem's cancel flag was set: it stopped part-way */
    ATTN_ECANCELED = -7,
};

/* Returns a static, human-readable description of an attn_err code. */
const char *attn_strerror(int err);

enum attn_dtype {
    ATTN_F32 = 0,
    ATTN_F16 = 1,
    ATTN_BF16 = 2,
};

enum attn_method {
    ATTN_EXACT = 0,
    ATTN_MRA2 = 1, /* MRA-2, "full" mode: selected blocks + low-res terms */
    ATTN_MRA2_SPARSE = 2, /* MRA-2-s: selected blocks only */
};

/* Size in bytes of one element of `dt` (4, 2, 2), 0 for an unknown dtype. */
size_t attn_dtype_size(enum attn_dtype dt);
/* Wire names "f32", "f16", "bf16"; NULL for an unknown value. */
const char *attn_dtype_name(enum attn_dtype dt);
/* Wire names "exact", "mra2", "mra2_sparse"; NULL for an unknown value. */
const char *attn_method_name(enum attn_method m);

/* IEEE half and bfloat16 conversions; f32 -> 16 bit rounds to nearest even
 * (NaN stays NaN, overflow gives infinity). */
float attn_f16_to_f32(uint16_t h);
uint16_t attn_f32_to_f16(float f);
float attn_bf16_to_f32(uint16_t h);
uint16_t attn_f32_to_bf16(float f);
/* Convert n elements between a dtype and f32 (src/dst need the natural
 * alignment of their element type). */
void attn_to_f32(enum attn_dtype dt, const void *src, float *dst, size_t n);
void attn_from_f32(enum attn_dtype dt, const float *src, void *dst, size_t n);

/*
 * One attention problem: a batch of B entries, H query heads, Hkv key/value
 * heads (H % Hkv == 0), Nq queries and Nk keys, head dimension D.  Tensors
 * are dense, row-major, in `dtype`, aligned to their element size:
 *   q, out: [B, H, Nq, D]    k, v: [B, Hkv, Nk, D]
 *   mask: [B, Nk] (0/1) or NULL    q_mask: [B, Nq] (0/1) or NULL
 * With causal set, query i sees key j only when j <= i + Nk - Nq (the
 * queries are the last Nq positions of the keys', as in KV-cache decoding).
 * attention/README.md has the exact semantics.  The problem does not own
 * any of the memory it points to.
 */
struct attn_kv; /* a store of keys and values, below */

struct attn_problem {
    enum attn_method method;
    enum attn_dtype dtype;
    uint32_t B, H, Hkv, Nq, Nk, D;
    const void *q, *k, *v;
    const uint8_t *mask; /* keys: NULL = every key real; nonzero = real */
    /* queries: NULL = the key mask when Nq == Nk (self-attention), else
     * every query real */
    const uint8_t *q_mask;
    void *out;
    int causal;              /* nonzero: bottom-right aligned causal mask */
    float scale;             /* logit scale; 0 = 1/sqrt(D) */
    uint64_t num_blocks;     /* total budget per head; 0 = use block_per_row */
    uint32_t block_per_row;  /* budget per block row; 0 = default (8) */
    uint32_t prior_first;    /* force the first n block rows and columns */
    uint32_t prior_diagonal; /* force a diagonal band of this width */
    /* Optional: when the int it points to turns nonzero (set from any
     * thread), the backend stops the problem between work items (a block
     * row, a head) within milliseconds and fails it with ATTN_ECANCELED;
     * the other problems of its batch go on.  NULL: never. */
    const volatile int *cancel;
    /* Optional: keys, values and key mask from a store of the backend
     * (attn_kv_new) instead of k, v and mask, which are then unused.  The
     * store's shape must match (dtype, B, Hkv, D) and Nk must be its token
     * count once `append` is applied, or 0 for "whatever the store holds
     * then" (for a caller that queues problems on a store without knowing
     * how many tokens the problems before will have appended). */
    struct attn_kv *kv;
    /* Optional, with kv: tokens appended to the store just before this
     * problem is computed, in the order of the problems of a batch (so a
     * decoding step is one call); append.n = 0 for none. */
    struct attn_kv_tokens {
        const void *k, *v;   /* [B, Hkv, n, D] in the store's dtype */
        const uint8_t *mask; /* [B, n], NULL: every token real */
        uint32_t n;
    } append;
    /*
     * Accuracy controls (attention/README.md, "Accuracy controls"); all 0
     * by default, ignored by exact but for the estimate (0).
     *   min_blocks_per_row: every block row with real queries gets at
     *     least this many of its visible pairs with real keys (those of
     *     largest score), counted in the budget first.
     *   error_samples: exact attention for this many query rows per head
     *     (at most ATTN_MAX_ERROR_SAMPLES), spread over the rows MRA does
     *     not compute exactly, gives est_rel_err in the statistics.
     *   target_error: > 0: each head takes the smallest budget of a fixed
     *     ladder whose error estimated on the sampled rows (error_samples,
     *     else ATTN_DEFAULT_ERROR_SAMPLES of them) is at most
     *     ATTN_TARGET_MARGIN * target_error; num_blocks or block_per_row,
     *     when set, cap the ladder, else it ends at every visible pair.
     */
    uint32_t min_blocks_per_row;
    uint32_t error_samples;
    float target_error;
    /* Optional: per-head statistics out, [B * H] in (b, h) order. */
    struct attn_head_stats *head_stats;
};

#define ATTN_DEFAULT_BLOCK_PER_ROW 8
#define ATTN_MAX_ERROR_SAMPLES 256
#define ATTN_DEFAULT_ERROR_SAMPLES 32
#define ATTN_TARGET_MARGIN 0.7

/* Per-problem statistics, summed over batch entries and query heads. */
struct attn_stats {
    uint64_t blocks_selected; /* |T| summed (forced partial pairs included);
                                 the pairs not hidden, for exact */
    uint64_t blocks_total;    /* pairs not hidden by causality, summed */
    double density;           /* blocks_selected / blocks_total */
    /* The relative Frobenius error estimated on the sampled rows of every
     * head, sqrt(sum err_num / sum err_den) over the heads; -1 when the
     * problem asked for no estimate (error_samples and target_error 0). */
    double est_rel_err;
};

/* The statistics of one query head. */
struct attn_head_stats {
    uint64_t budget;          /* k, the pairs picked by score (row
                                 minimum included, partial pairs not) */
    uint64_t blocks_selected; /* k plus the causal partial pairs */
    uint64_t blocks_total;    /* pairs not hidden */
    double density;           /* blocks_selected / blocks_total */
    double est_rel_err;       /* sqrt(err_num / err_den); -1: none */
    /* The estimate's sums: the squared error on the sampled rows scaled to
     * the rows they stand for, and the squared norm of the exact output
     * (sampled rows likewise, the rows MRA computes exactly as they are). */
    double err_num, err_den;
};

/* Checks the shape, pointers and parameters of a problem.  Returns ATTN_OK
 * or ATTN_EINVAL; on error writes a sentence naming the field to `msg`
 * (if msg != NULL, at most msglen bytes including the terminator). */
int attn_problem_check(const struct attn_problem *p, char *msg, size_t msglen);

/* Number of 32-token blocks nb = ceil(N / 32). */
uint32_t attn_num_blocks(uint32_t N);

/*
 * The block grid of one head: nbq x nbk pairs of query and key blocks.
 * With causal attention a pair (I, J) is visible (every key of J is seen
 * by every query of I), partial (some are) or hidden (none are), on the
 * padded grid; without, every pair is visible.  In block row I the pairs
 * J < vis(I) are visible, vis(I) <= J < seen(I) partial, J >= seen(I)
 * hidden.
 */
struct attn_grid {
    uint32_t nbq, nbk;
    int64_t off; /* Nk - Nq: query i sits at key position i + off */
    int causal;
    uint64_t visible, partial; /* pairs of the head */
};
void attn_grid_init(struct attn_grid *g, const struct attn_problem *p);
/* vis(I) and seen(I) of block row I (both nbk without causality). */
void attn_grid_row(const struct attn_grid *g, uint32_t I, uint32_t *vis,
                   uint32_t *seen);
/* floor((I*32 + off) / 32) - I: the key block of the diagonal of block
 * row I, relative to I (0 when Nq == Nk). */
int64_t attn_grid_diag_shift(const struct attn_grid *g);

/* The budget k of the spec for one head: num_blocks if set, else
 * block_per_row * nbq (default 8 per row), capped at the visible pairs
 * (all nbq * nbk without causality).  Causal partial pairs come on top. */
uint64_t attn_budget(const struct attn_problem *p);
/* The largest budget a head may take: attn_budget(), or with target_error
 * and neither num_blocks nor block_per_row set, every visible pair. */
uint64_t attn_budget_max(const struct attn_problem *p);
/* Query rows sampled per head for the error estimate: error_samples, or
 * ATTN_DEFAULT_ERROR_SAMPLES with target_error alone; 0 for exact. */
uint32_t attn_error_samples(const struct attn_problem *p);
/* The step of target_error's ladder of budgets, in blocks per row:
 * b + max(1, floor(b/4)) (1, 2, 3, ..., 8, 10, 12, 15, 18, 22, ...). */
uint64_t attn_ladder_next(uint64_t b);
/* Nonzero when problem p uses an accuracy control that makes its budget or
 * its statistics depend on the data (MRA with min_blocks_per_row,
 * error_samples or target_error; exact with error_samples or
 * target_error, whose estimate is 0). */
int attn_problem_accuracy(const struct attn_problem *p);
/* Nonzero when the built-in backend of this name ("cpu", "cuda")
 * computes the accuracy controls; the others fail such problems with
 * ATTN_ENOTSUP. */
int attn_backend_accuracy(const char *backend);
/* Resolved logit scale: p->scale, or 1/sqrt(D) when it is 0. */
float attn_scale(const struct attn_problem *p);
/* FLOP count of a problem as the spec counts it (all heads, all entries):
 * exact 4*b*b*D per computed pair of blocks (all pairs not hidden); mra
 * 4*(k + partial)*b*b*D + 2*nbq*nbk*D per head. */
double attn_flops(const struct attn_problem *p);

/* What a logit costs beyond its dot product (the exponential, the running
 * maximum and the rescaling of the softmax), in flop-equivalents: at small
 * D this, not the 4*D flops, is the work. */
#define ATTN_COST_PER_LOGIT 96.0
/* Work of a problem in flop-equivalents, for admission control: the
 * attn_flops() products plus ATTN_COST_PER_LOGIT per logit computed at
 * full resolution, and the block selection (3*D + 16 per pair of blocks).
 * The budget is capped by what the grid holds, as attn_budget() does, so
 * a huge block_per_row costs what exact attention costs, not more.
 * Pure. */
double attn_cost(const struct attn_problem *p);

/* Backend configuration; zero-initialise and set what you need. */
struct attn_config {
    int threads; /* CPU worker threads; 0 = number of online cores */
    /* CPU kernel path: "amx", "avx512", "avx2", "portable", or NULL/"auto": the
     * environment variable MRAD_ISA when set, else the best this CPU runs.
     * A path the CPU cannot run makes attn_backend_new fail with
     * ATTN_ENOTSUP. */
    const char *isa;
    int device; /* GPU ordinal for device backends */
};

struct attn_backend; /* opaque */

/* Creates a backend by name: "cpu", "cuda", or "auto" (the best available:
 * CUDA when built and a device is present, else CPU).  On success stores a
 * handle in *out and returns ATTN_OK; ATTN_ENODEV if that backend is not
 * available here.  Free with attn_backend_free(). */
int attn_backend_new(const char *name, const struct attn_config *cfg,
                     struct attn_backend **out);
void attn_backend_free(struct attn_backend *be);

/* Short name of the backend ("cpu", "cuda"). */
const char *attn_backend_name(const struct attn_backend *be);
/* A one-line description of the device (CPU model and ISA path, GPU name). */
const char *attn_backend_device(const struct attn_backend *be);
/* ATTN_OK while the backend can compute; an error once a sticky device
 * fault happened. */
int attn_backend_health(const struct attn_backend *be);

/* Device memory of the backend in bytes: what it holds now and the
 * device's total.  Returns ATTN_ENOTSUP for backends without device memory
 * (the CPU). */
int attn_backend_memory(const struct attn_backend *be, uint64_t *used,
                        uint64_t *total);

/* Gives back the working memory the backend keeps between calls for
 * reuse (host buffers, device pools); the next call allocates again.  Same
 * threading rule as the compute calls.  A no-op for backends that keep
 * none. */
void attn_backend_trim(struct attn_backend *be);

/*
 * Resident keys and values: a store the backend keeps between calls (host
 * memory on the CPU, device memory on a GPU), so that decoding steps send
 * only their queries and new tokens.  B entries, Hkv heads, head dimension
 * D, in one dtype; tokens are appended (with their key mask) and never
 * removed.  Appends cost the new tokens only (the store grows by blocks of
 * 32 tokens, never copying what it holds), and the store keeps each
 * block's key and value sums up to date, so MRA selects blocks from
 * ceil(Nk/32) block means instead of reading every key.
 *
 * Threading: a store belongs to the backend that made it; create, append
 * and compute with the backend's threading rule (one thread at a time).
 * attn_kv_free() may be called from any thread once no call that uses the
 * store is running.
 */
struct attn_kv_shape {
    enum attn_dtype dtype;
    uint32_t B, Hkv, D;
};

/* Creates an empty store.  Returns ATTN_OK, ATTN_EINVAL (a bad shape),
 * ATTN_ENOMEM, or ATTN_ENOTSUP when the backend keeps none. */
int attn_kv_new(struct attn_backend *be, const struct attn_kv_shape *shape,
                struct attn_kv **out);
/* Appends t->n tokens: t->k, t->v [B, Hkv, n, D] in the store's dtype,
 * t->mask [B, n] or NULL.  Returns ATTN_OK, ATTN_EINVAL or ATTN_ENOMEM (the
 * store then holds what it held). */
int attn_kv_append(struct attn_kv *kv, const struct attn_kv_tokens *t);
/* Frees a store (NULL is ignored). */
void attn_kv_free(struct attn_kv *kv);
/* Tokens held. */
uint32_t attn_kv_tokens(const struct attn_kv *kv);
const struct attn_kv_shape *attn_kv_shape_of(const struct attn_kv *kv);
/* Bytes the backend holds for the store now. */
uint64_t attn_kv_bytes(const struct attn_kv *kv);
/* Bytes a store of this shape holds with `tokens` tokens on a backend of
 * this name ("cpu", "cuda"): what attn_kv_bytes() will say, for a caller
 * that budgets before appending. */
uint64_t attn_kv_bytes_for(const char *backend,
                           const struct attn_kv_shape *shape, uint64_t tokens);

/* Computes one problem.  Fills *stats (may be NULL).  Returns ATTN_OK or an
 * error; on error the contents of p->out are unspecified. */
int attn_backend_compute(struct attn_backend *be, const struct attn_problem *p,
                         struct attn_stats *stats);

/* Computes n independent problems as one batch, sharing the backend's
 * workers between them.  errs[i] and stats[i] receive each problem's result
 * (stats may be NULL).  Each problem's output is bitwise the same as if it
 * had been computed alone.  Returns ATTN_OK if the batch ran (individual
 * problems may still have failed: see errs), or an error that failed all. */
int attn_backend_compute_batch(struct attn_backend *be,
                               const struct attn_problem *const *probs,
                               size_t n, struct attn_stats *stats, int *errs);

#ifdef __cplusplus
}
#endif
#endif /* MRAD_ATTN_H */
