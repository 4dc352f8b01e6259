/*
 * decode.c - the sessions of `mra-load --decode`: the context they start
 * with and the step bodies (one query per head and one appended token,
 * causal, on POST /v1/kv/{id}/attention), their creation before the runs
 * and deletion after them (blocking, with the C client library), and the
 * state the engine keeps of each during a run.
 *
 * A session has at most one step in flight, as a sequence decodes one
 * token at a time.  A step answered 404 means the service lost the
 * session (expired, evicted, or the replica that held it restarted): it
 * is created again, asynchronously on the engine's loop, with what it
 * held (the context and the token of every step answered 200 since, as a
 * client that keeps its context re-prefills), and the step is sent once
 * more on it.  A 507 (no room for a token or a context) backs the session
 * off, 50 ms doubling up to 2 s; so does a failed re-create.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/load/load.h"

#define BACKOFF_FIRST_MS 50
#define BACKOFF_MAX_MS 2000

/* "prefix" + "middle" + "suffix" in a malloc'd string, or NULL. */
static char *concat(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

/* Gives session i the id of a create's answer. */
static int set_id(struct load_decode *d, struct load_session *s, const char *id)
{
    char *url = concat(d->base, "/v1/kv/", id);
    char *step = url ? concat(url, "/attention", "") : NULL;
    free(url);
    if (!step)
        return -1;
    free(s->step_url);
    s->step_url = step;
    snprintf(s->id, sizeof s->id, "%s", id);
    return 0;
}

static void back_off(struct load_session *s, uint64_t now)
{
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : BACKOFF_FIRST_MS;
    if (s->backoff_ms > BACKOFF_MAX_MS)
        s->backoff_ms = BACKOFF_MAX_MS;
    s->ready_ns = now + (uint64_t)s->backoff_ms * 1000000u;
}

/* The bytes of k (or v) of n tokens of the sessions' shape, or 0 when
 * that overflows. */
static size_t tokens_bytes(const struct attn_kv_shape *sh, uint64_t n)
{
    uint64_t row =
        (uint64_t)sh->B * sh->Hkv * sh->D * attn_dtype_size(sh->dtype);
    if (!row || !n || n > SIZE_MAX / row)
        return 0;
    return (size_t)(row * n);
}

/* The step bodies: a random problem of one --shape per method and
 * variant, its k and v (one token) sent as the appended token, and kept
 * in d->step_tokens for re-creates. */
static int step_bodies(struct load_options *o, struct load_decode *d,
                       const uint32_t dims[4], enum attn_dtype dt,
                       char **methods, int nm)
{
    struct load_config *cfg = &o->cfg;
    d->step_tokens = calloc((size_t)nm * o->variants, sizeof *d->step_tokens);
    if (!d->step_tokens) {
        fprintf(stderr, "mra-load: out of memory\n");
        return 1;
    }
    for (int m = 0; m < nm; m++)
        for (uint32_t v = 0; v < o->variants; v++) {
            struct mrac_random_spec sp = {
                .B = dims[0],
                .H = dims[1],
                .Nq = dims[2],
                .Nk = 1,
                .D = dims[3],
                .Hkv = o->hkv,
                .dtype = dt,
                .causal = 1,
                .block_per_row = o->bpr,
                .seed = cfg->seed + 1000 + v,
            };
            if (mrac_method_parse(methods[m], &sp.method)) {
                fprintf(stderr, "mra-load: unknown method '%s'\n", methods[m]);
                return 2;
            }
            struct attn_problem p;
            void *mem;
            if (mrac_random_problem(&sp, &p, &mem) != MRAC_OK) {
                fprintf(stderr, "mra-load: bad --shape or --hkv for "
                                "--decode\n");
                return 2;
            }
            p.append = (struct attn_kv_tokens){p.k, p.v, NULL, 1};
            struct proto_encode_opts eo = {.kv = "step", .kv_in_path = 1};
            struct load_body *b = &cfg->bodies[cfg->nbodies];
            int rc = proto_request_encode_opts(&p, PROTO_MSGPACK, &eo, &b->data,
                                               &b->len);
            struct attn_kv_shape sh = {dt, p.B, p.Hkv, p.D};
            size_t tb = tokens_bytes(&sh, 1);
            char *tok = tb && tb <= SIZE_MAX / 2 ? malloc(2 * tb) : NULL;
            if (tok) {
                memcpy(tok, p.k, tb);
                memcpy(tok + tb, p.v, tb);
                d->step_tokens[d->nstep_tokens++] = tok;
            }
            free(mem);
            if (rc != PROTO_OK || !tok) {
                fprintf(stderr, "mra-load: out of memory\n");
                return 1;
            }
            b->label = o->shapes[0];
            cfg->nbodies++;
        }
    return 0;
}

/* The context: random keys and values of decode_context tokens. */
static int context(struct load_options *o, struct load_decode *d,
                   const uint32_t dims[4], enum attn_dtype dt)
{
    struct mrac_random_spec sp = {
        .B = dims[0],
        .H = dims[1],
        .Nq = 1,
        .Nk = o->decode_context,
        .D = dims[3],
        .Hkv = o->hkv,
        .dtype = dt,
        .method = ATTN_MRA2,
        .seed = o->cfg.seed,
    };
    struct attn_problem p;
    if (mrac_random_problem(&sp, &p, &d->mem) != MRAC_OK) {
        fprintf(stderr, "mra-load: bad --shape, --hkv or --decode-context\n");
        return 2;
    }
    d->shape = (struct attn_kv_shape){dt, p.B, p.Hkv, p.D};
    d->tokens = (struct attn_kv_tokens){p.k, p.v, NULL, p.Nk};
    d->context = p.Nk;
    if (proto_kv_body_encode(&d->shape, &d->tokens, 0, PROTO_MSGPACK,
                             &d->create_body, &d->create_len) != PROTO_OK) {
        fprintf(stderr, "mra-load: out of memory\n");
        return 1;
    }
    return 0;
}

/* Splits a comma list in place; returns the count, -1 when over max. */
static int split(char *s, char **out, int max)
{
    int n = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        if (n == max)
            return -1;
        out[n++] = tok;
    }
    return n;
}

int load_decode_setup(struct load_options *o, struct mrac_client *c)
{
    struct load_config *cfg = &o->cfg;
    struct load_decode *d = calloc(1, sizeof *d);
    if (!d)
        return 1;
    cfg->decode = d;
    uint32_t dims[4];
    char extra;
    if (!o->nshapes)
        o->shapes[o->nshapes++] = "1,8,1,64";
    if (sscanf(o->shapes[0], "%u,%u,%u,%u%c", &dims[0], &dims[1], &dims[2],
               &dims[3], &extra) != 4 ||
        !dims[0] || !dims[1] || !dims[2] || !dims[3]) {
        fprintf(stderr, "mra-load: bad --shape '%s' (want B,H,Nq,D)\n",
                o->shapes[0]);
        return 2;
    }
    enum attn_dtype dt;
    if (mrac_dtype_parse(o->dtypes, &dt) != MRAC_OK) {
        fprintf(stderr, "mra-load: --decode takes one --dtype, not '%s'\n",
                o->dtypes);
        return 2;
    }
    char *methods[3];
    int nm = split(o->methods, methods, 3);
    if (nm <= 0) {
        fprintf(stderr, "mra-load: bad --method list\n");
        return 2;
    }
    cfg->bodies = calloc((size_t)nm * o->variants, sizeof *cfg->bodies);
    d->n = o->sessions;
    d->s = calloc(d->n, sizeof *d->s);
    size_t ul = strlen(o->url);
    while (ul && o->url[ul - 1] == '/')
        ul--;
    d->base = strndup(o->url, ul);
    d->create_url = d->base ? concat(d->base, "/v1/kv", "") : NULL;
    if (!cfg->bodies || !d->s || !d->create_url) {
        fprintf(stderr, "mra-load: out of memory\n");
        return 1;
    }
    int st = step_bodies(o, d, dims, dt, methods, nm);
    if (!st)
        st = context(o, d, dims, dt);
    for (size_t i = 0; !st && i < d->n; i++) {
        struct proto_kv_info info;
        struct mrac_error err;
        int rc = mrac_kv_create(c, &d->shape, &d->tokens, 0, &info, &err);
        if (rc != MRAC_OK) {
            fprintf(stderr,
                    "mra-load: creating session %zu of %zu (%u tokens): "
                    "%s%s%s\n",
                    i + 1, d->n, (unsigned)d->context, err.code,
                    err.message[0] ? ": " : "", err.message);
            st = 1;
        } else if (set_id(d, &d->s[i], info.kv) != 0) {
            fprintf(stderr, "mra-load: out of memory\n");
            st = 1;
        }
    }
    return st;
}

void load_decode_teardown(struct load_decode *d, struct mrac_client *c)
{
    if (!d)
        return;
    for (size_t i = 0; c && i < d->n; i++) {
        if (!d->s[i].id[0])
            continue;
        int rc = mrac_kv_free(c, d->s[i].id, NULL);
        if (rc == MRAC_OK)
            d->deleted++;
        else if (rc == MRAC_EKVNOTFOUND)
            d->gone++;
    }
    for (size_t i = 0; d->s && i < d->n; i++) {
        free(d->s[i].step_url);
        free(d->s[i].steps);
        if (d->s[i].create_owned)
            free(d->s[i].create_body);
    }
    for (size_t i = 0; i < d->nstep_tokens; i++)
        free(d->step_tokens[i]);
    free(d->step_tokens);
    d->step_tokens = NULL;
    d->nstep_tokens = 0;
    free(d->s);
    free(d->base);
    free(d->create_url);
    free(d->create_body);
    free(d->mem);
    d->s = NULL;
    d->base = d->create_url = d->create_body = NULL;
    d->mem = NULL;
}

int load_decode_available(const struct load_decode *d, uint64_t now)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->s[i].state == LOAD_SESSION_IDLE && d->s[i].ready_ns <= now)
            return 1;
    return 0;
}

int load_decode_acquire(struct load_decode *d, uint64_t now)
{
    for (size_t k = 0; k < d->n; k++) {
        size_t i = (d->next + k) % d->n;
        struct load_session *s = &d->s[i];
        if (s->state == LOAD_SESSION_IDLE && s->ready_ns <= now) {
            s->state = LOAD_SESSION_BUSY;
            d->next = (i + 1) % d->n;
            return (int)i;
        }
    }
    return -1;
}

/* Records that the step of body `body` appended its token to session s.
 * Without memory for it, the session's re-creates send fewer tokens than
 * it held: a load generator goes on. */
static void step_kept(struct load_session *s, size_t body)
{
    if (s->nsteps == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        uint32_t *st = cap <= SIZE_MAX / sizeof *st
                           ? realloc(s->steps, cap * sizeof *st)
                           : NULL;
        if (!st)
            return;
        s->steps = st;
        s->cap = cap;
    }
    s->steps[s->nsteps++] = (uint32_t)body;
}

/* The body of a re-create of session s: the context, then the token of
 * each of its steps, for every (b, h) row.  Falls back on the context
 * alone when memory runs out. */
static void create_body(struct load_decode *d, struct load_session *s)
{
    s->create_body = d->create_body;
    s->create_len = d->create_len;
    s->create_owned = 0;
    uint64_t n = (uint64_t)d->context + s->nsteps;
    size_t bytes = n <= UINT32_MAX ? tokens_bytes(&d->shape, n) : 0;
    if (!s->nsteps || !bytes)
        return;
    const struct attn_kv_shape *sh = &d->shape;
    size_t row = (size_t)sh->D * attn_dtype_size(sh->dtype);
    size_t tb = tokens_bytes(sh, 1);
    char *k = malloc(bytes), *v = malloc(bytes);
    for (size_t bh = 0; k && v && bh < (size_t)sh->B * sh->Hkv; bh++) {
        char *ko = k + bh * n * row, *vo = v + bh * n * row;
        size_t ctx = (size_t)d->context * row, at = bh * ctx;
        memcpy(ko, (const char *)d->tokens.k + at, ctx);
        memcpy(vo, (const char *)d->tokens.v + at, ctx);
        for (size_t j = 0; j < s->nsteps; j++) {
            const char *tok = d->step_tokens[s->steps[j]];
            memcpy(ko + ctx + j * row, tok + bh * row, row);
            memcpy(vo + ctx + j * row, tok + tb + bh * row, row);
        }
    }
    struct attn_kv_tokens t = {k, v, NULL, (uint32_t)n};
    char *body = NULL;
    size_t len = 0;
    if (k && v &&
        proto_kv_body_encode(sh, &t, 0, PROTO_MSGPACK, &body, &len) ==
            PROTO_OK) {
        s->create_body = body;
        s->create_len = len;
        s->create_owned = 1;
    }
    free(k);
    free(v);
}

int load_decode_step_done(struct load_decode *d, int i, size_t body,
                          long status, int retried, uint64_t now,
                          struct load_result *res)
{
    struct load_session *s = &d->s[i];
    s->state = LOAD_SESSION_IDLE;
    if (status == 404) {
        res->kv_lost++;
        s->state = LOAD_SESSION_LOST;
        s->ready_ns = now;
        return !retried;
    }
    if (status == 507) {
        res->kv_full++;
        back_off(s, now);
    } else if (status == 200) {
        s->backoff_ms = 0;
        step_kept(s, body);
    }
    return 0;
}

int load_decode_next_create(struct load_decode *d, uint64_t now)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->s[i].state == LOAD_SESSION_LOST && d->s[i].ready_ns <= now) {
            d->s[i].state = LOAD_SESSION_CREATING;
            create_body(d, &d->s[i]);
            return (int)i;
        }
    return -1;
}

int load_decode_create_done(struct load_decode *d, int i, long status,
                            const char *body, size_t len, int held,
                            uint64_t now, struct load_result *res)
{
    struct load_session *s = &d->s[i];
    if (s->create_owned)
        free(s->create_body);
    s->create_body = NULL;
    s->create_len = 0;
    s->create_owned = 0;
    struct proto_kv_info info;
    if (status == 201 && body &&
        proto_kv_info_parse(body, len, &info) == PROTO_OK &&
        set_id(d, s, info.kv) == 0) {
        res->kv_recreated++;
        s->state = held ? LOAD_SESSION_BUSY : LOAD_SESSION_IDLE;
        s->backoff_ms = 0;
        s->ready_ns = now;
        /* What the session holds now: a re-create that fell back on the
         * context alone holds no steps. */
        if (info.tokens == d->context)
            s->nsteps = 0;
        return 1;
    }
    if (status == 507)
        res->kv_full++;
    res->kv_recreate_failed++;
    s->state = LOAD_SESSION_LOST;
    back_off(s, now);
    return 0;
}
