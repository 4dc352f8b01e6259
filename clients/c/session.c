/*
 * session.c - struct mrac_session, a handle on one session of the service
 * that can outlive the session: with keep_context it keeps every token the
 * session holds (those of the create, then of each append that
 * succeeded), and a call answered 404 kv_not_found (the session expired,
 * was evicted, or the replica that held it restarted) creates the session
 * again from them and is sent once more.  The calls themselves are kv.c's.
 *
 * The kept tokens are a list of pieces, one per create or append, joined
 * into one piece only when a re-create needs them: a decoding step then
 * costs one small copy, and a re-create one pass over the context.
 */
#include <stdlib.h>
#include <string.h>

#include "clients/c/internal.h"

/* Tokens kept for a re-create: k, v [B, Hkv, n, D], mask [B, n] or NULL
 * (every token real). */
struct piece {
    void *k, *v;
    uint8_t *mask;
    uint32_t n;
};

struct mrac_session {
    struct mrac_client *c; /* borrowed */
    struct attn_kv_shape shape;
    struct mrac_session_options opt;
    char id[PROTO_KV_ID_MAX + 1];
    uint64_t tokens;
    uint64_t recreated;
    struct piece *pieces; /* with keep_context */
    size_t npieces, cap;
};

/* The bytes of k (or v) of n tokens, or 0 when the size overflows. */
static size_t piece_bytes(const struct attn_kv_shape *sh, uint64_t n)
{
    uint64_t es = attn_dtype_size(sh->dtype);
    uint64_t bh = (uint64_t)sh->B * sh->Hkv, row = (uint64_t)sh->D * es;
    if (!es || !bh || !row || !n || bh > SIZE_MAX / row ||
        n > SIZE_MAX / (bh * row))
        return 0;
    return (size_t)(bh * row * n);
}

/* 64-byte aligned memory of at least `bytes`, as the codec reads tensors. */
static void *tensor_alloc(size_t bytes)
{
    if (bytes > SIZE_MAX - 63)
        return NULL;
    return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

static void piece_free(struct piece *p)
{
    free(p->k);
    free(p->v);
    free(p->mask);
    memset(p, 0, sizeof *p);
}

/* Copies tokens t into a new last piece.  Returns MRAC_OK or
 * MRAC_ENOMEM. */
static int keep(struct mrac_session *s, const struct attn_kv_tokens *t)
{
    if (s->npieces == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        struct piece *np = cap <= SIZE_MAX / sizeof *np
                               ? realloc(s->pieces, cap * sizeof *np)
                               : NULL;
        if (!np)
            return MRAC_ENOMEM;
        s->pieces = np;
        s->cap = cap;
    }
    size_t bytes = piece_bytes(&s->shape, t->n);
    struct piece p = {.n = t->n};
    p.k = bytes ? tensor_alloc(bytes) : NULL;
    p.v = bytes ? tensor_alloc(bytes) : NULL;
    if (t->mask)
        p.mask = malloc((size_t)s->shape.B * t->n);
    if (!p.k || !p.v || (t->mask && !p.mask)) {
        piece_free(&p);
        return MRAC_ENOMEM;
    }
    memcpy(p.k, t->k, bytes);
    memcpy(p.v, t->v, bytes);
    if (t->mask)
        memcpy(p.mask, t->mask, (size_t)s->shape.B * t->n);
    s->pieces[s->npieces++] = p;
    return MRAC_OK;
}

/* Keeps tokens t after a call that appended them.  When memory runs out,
 * the handle stops keeping tokens (a re-create without them would give a
 * context other than the service's): a later loss is then returned as
 * MRAC_EKVNOTFOUND, as without keep_context. */
static void keep_or_stop(struct mrac_session *s, const struct attn_kv_tokens *t)
{
    if (!s->opt.keep_context || keep(s, t) == MRAC_OK)
        return;
    for (size_t i = 0; i < s->npieces; i++)
        piece_free(&s->pieces[i]);
    s->npieces = 0;
    s->opt.keep_context = 0;
}

/* Joins the pieces into one.  Returns MRAC_OK or MRAC_ENOMEM (then the
 * pieces are as they were). */
static int join(struct mrac_session *s)
{
    if (s->npieces < 2)
        return MRAC_OK;
    uint64_t n = 0;
    int masked = 0;
    for (size_t i = 0; i < s->npieces; i++) {
        n += s->pieces[i].n;
        masked |= s->pieces[i].mask != NULL;
    }
    const struct attn_kv_shape *sh = &s->shape;
    size_t bytes = n <= UINT32_MAX ? piece_bytes(sh, n) : 0;
    if (!bytes || (masked && n > SIZE_MAX / sh->B))
        return MRAC_ENOMEM;
    struct piece all = {.n = (uint32_t)n};
    all.k = tensor_alloc(bytes);
    all.v = tensor_alloc(bytes);
    all.mask = masked ? malloc((size_t)sh->B * n) : NULL;
    if (!all.k || !all.v || (masked && !all.mask)) {
        piece_free(&all);
        return MRAC_ENOMEM;
    }
    size_t row = (size_t)sh->D * attn_dtype_size(sh->dtype);
    size_t at = 0; /* tokens before piece i */
    for (size_t i = 0; i < s->npieces; i++) {
        const struct piece *p = &s->pieces[i];
        for (size_t bh = 0; bh < (size_t)sh->B * sh->Hkv; bh++) {
            size_t to = (bh * n + at) * row, from = bh * p->n * row;
            memcpy((char *)all.k + to, (char *)p->k + from, p->n * row);
            memcpy((char *)all.v + to, (char *)p->v + from, p->n * row);
        }
        for (size_t b = 0; masked && b < sh->B; b++) {
            uint8_t *m = all.mask + b * n + at;
            if (p->mask)
                memcpy(m, p->mask + b * p->n, p->n);
            else
                memset(m, 1, p->n);
        }
        at += p->n;
    }
    for (size_t i = 0; i < s->npieces; i++)
        piece_free(&s->pieces[i]);
    s->pieces[0] = all;
    s->npieces = 1;
    return MRAC_OK;
}

/* POST /v1/kv with the kept tokens; the session takes the new id. */
static int recreate(struct mrac_session *s, struct mrac_error *err)
{
    if (join(s) != MRAC_OK)
        return mrac_fail(err, MRAC_ENOMEM, 0, "out_of_memory", "%s",
                         "joining the kept tokens");
    const struct piece *p = &s->pieces[0];
    struct attn_kv_tokens t = {p->k, p->v, p->mask, p->n};
    struct proto_kv_info info;
    int rc = mrac_kv_create(s->c, &s->shape, &t, s->opt.ttl_ms, &info, err);
    if (rc != MRAC_OK)
        return rc;
    memcpy(s->id, info.kv, sizeof s->id);
    s->tokens = info.tokens;
    s->recreated++;
    return MRAC_OK;
}

/* After a call answered `rc`: nonzero when the session should be made
 * again and the call sent once more. */
static int lost(const struct mrac_session *s, int rc)
{
    return rc == MRAC_EKVNOTFOUND && s->opt.keep_context;
}

int mrac_session_new(struct mrac_client *c, const struct attn_kv_shape *shape,
                     const struct attn_kv_tokens *t,
                     const struct mrac_session_options *opt,
                     struct mrac_session **out, struct mrac_error *err)
{
    struct mrac_error local;
    if (!err)
        err = &local;
    mrac_err_clear(err);
    if (out)
        *out = NULL;
    if (!c || !shape || !t || !out)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "mrac_session_new needs a client, a shape, tokens "
                         "and *out");
    struct mrac_session *s = calloc(1, sizeof *s);
    if (!s)
        return mrac_fail(err, MRAC_ENOMEM, 0, "out_of_memory", "%s", "session");
    s->c = c;
    s->shape = *shape;
    if (opt)
        s->opt = *opt;
    struct proto_kv_info info;
    int rc = mrac_kv_create(c, shape, t, s->opt.ttl_ms, &info, err);
    if (rc != MRAC_OK) {
        free(s);
        return rc;
    }
    memcpy(s->id, info.kv, sizeof s->id);
    s->tokens = info.tokens;
    keep_or_stop(s, t);
    *out = s;
    return MRAC_OK;
}

int mrac_session_append(struct mrac_session *s, const struct attn_kv_tokens *t,
                        struct proto_kv_info *info, struct mrac_error *err)
{
    struct mrac_error local;
    struct proto_kv_info tmp;
    if (!err)
        err = &local;
    if (!info)
        info = &tmp;
    if (!s)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "mrac_session_append needs a session");
    int rc = mrac_kv_append(s->c, s->id, &s->shape, t, info, err);
    if (lost(s, rc)) {
        rc = recreate(s, err);
        if (rc == MRAC_OK)
            rc = mrac_kv_append(s->c, s->id, &s->shape, t, info, err);
    }
    if (rc != MRAC_OK)
        return rc;
    s->tokens = info->tokens;
    keep_or_stop(s, t);
    return MRAC_OK;
}

int mrac_session_attend(struct mrac_session *s, const struct attn_problem *p,
                        const struct mrac_call *call, struct mrac_result *res,
                        struct mrac_error *err)
{
    struct mrac_error local;
    if (!err)
        err = &local;
    if (!s || !p)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "mrac_session_attend needs a session and a problem");
    int rc = mrac_kv_attend(s->c, s->id, p, call, res, err);
    if (lost(s, rc)) {
        rc = recreate(s, err);
        if (rc == MRAC_OK)
            rc = mrac_kv_attend(s->c, s->id, p, call, res, err);
    }
    if (rc != MRAC_OK || !p->append.n)
        return rc;
    s->tokens += p->append.n;
    keep_or_stop(s, &p->append);
    return MRAC_OK;
}

const char *mrac_session_id(const struct mrac_session *s)
{
    return s->id;
}

uint64_t mrac_session_tokens(const struct mrac_session *s)
{
    return s->tokens;
}

uint64_t mrac_session_recreated(const struct mrac_session *s)
{
    return s->recreated;
}

int mrac_session_free(struct mrac_session *s, struct mrac_error *err)
{
    if (!s)
        return MRAC_OK;
    int rc = MRAC_OK;
    if (s->id[0]) {
        rc = mrac_kv_free(s->c, s->id, err);
        if (rc == MRAC_EKVNOTFOUND)
            rc = MRAC_OK;
    }
    for (size_t i = 0; i < s->npieces; i++)
        piece_free(&s->pieces[i]);
    free(s->pieces);
    free(s);
    return rc;
}
