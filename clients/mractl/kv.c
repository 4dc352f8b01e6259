/*
 * kv.c - `mractl kv`: sessions, keys and values kept in the service
 * (protocol/SPEC.md, "Sessions"), from the command line:
 *
 *   kv create   POST /v1/kv                 the session answer on stdout
 *   kv append   POST /v1/kv/{id}/append     the session answer on stdout
 *   kv get      GET /v1/kv/{id}             the session answer on stdout
 *   kv delete   DELETE /v1/kv/{id}          nothing on stdout
 *   kv attend   POST /v1/attention, "kv"    the answer body on stdout
 *
 * The tensors come from a problem: a random one made with the options of
 * `mractl random` (the same flags and seed give the same values), or the
 * request body of a file (--from, e.g. written by `mractl random`).
 * create and append send its keys, values and key mask (--tokens A:B for
 * the keys A to B-1); attend sends its queries with its query mask,
 * causality, method and parameters, and appends --append A:B of its keys
 * in the same round trip.  So a problem can be split across the calls of
 * a session and its answer compared with `mractl run --local` of the whole.
 * Errors go to stderr as the service's JSON error, with the exit statuses
 * of every subcommand.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/c/mraclient.h"
#include "clients/mractl/mractl.h"
#include "clients/mractl/remote.h"

static void usage_kv(FILE *f)
{
    fprintf(
        f,
        "usage: mractl kv create  [PROBLEM] [--tokens A:B] [--ttl-ms T]\n"
        "       mractl kv append  --kv ID [PROBLEM] [--tokens A:B]\n"
        "       mractl kv get     --kv ID\n"
        "       mractl kv delete  --kv ID\n"
        "       mractl kv attend  --kv ID [PROBLEM] [--append A:B] [--id ID]\n"
        "                         [--json]\n"
        "each with [--url URL] [--api-key-file F] [--timeout S]\n"
        "\n"
        "Sessions keep keys and values in the service, so that requests on\n"
        "them send only their queries and new tokens.\n"
        "  create   sends the problem's keys, values and key mask; prints the\n"
        "           session answer {\"kv\": ID, \"tokens\": N, ...}\n"
        "  append   appends them to session ID; prints the session answer\n"
        "  get      prints what session ID holds\n"
        "  delete   ends session ID\n"
        "  attend   sends the problem's queries (query mask, --causal,\n"
        "           method, parameters) to session ID and writes the answer\n"
        "           body to stdout (msgpack, or JSON with --json)\n"
        "\n"
        "PROBLEM is a random problem, made as `mractl random` makes it:\n"
        "  --shape B,H,Nq,D [--kv-len Nk] [--hkv N] [--dtype f32|f16|bf16]\n"
        "  [--seed S] [--mask KIND] [--q-mask KIND] [--causal]\n"
        "  [--method mra2|mra2_sparse|exact] [--block-per-row K]\n"
        "or --from FILE, a request body (msgpack or JSON; - for stdin).\n"
        "The session holds k, v [B,Hkv,n,D] and their mask; q [B,H,Nq,D].\n"
        "  --tokens A:B   create, append: the keys A..B-1 (default all)\n"
        "  --append A:B   attend: append the keys A..B-1 first, in the same\n"
        "                 round trip (default none)\n"
        "  --ttl-ms T     create: idle lifetime (capped by the service)\n"
        "\n"
        "Exit status: 0 success; 2 for bad usage or a 4xx answer (404\n"
        "kv_not_found: the session is gone), 1 otherwise (507 kv_cache_full,\n"
        "transport).  Errors go to stderr as {\"error\": {\"code\", "
        "\"message\"}}.\n");
}

enum kv_verb { KV_CREATE, KV_APPEND, KV_GET, KV_DELETE, KV_ATTEND };

static const char *const verbs[] = {"create", "append", "get", "delete",
                                    "attend"};

struct kv_opts {
    enum kv_verb verb;
    struct mractl_remote r;
    struct mrac_random_spec sp;
    int have_shape, random_opts; /* --shape given; options of a random one */
    const char *from;
    const char *id;
    const char *req_id;
    uint64_t ttl_ms;
    uint32_t range[2];
    int have_range;
    int json;
};

static int parse_range(const char *s, uint32_t r[2])
{
    char *end;
    errno = 0;
    unsigned long a = strtoul(s, &end, 10);
    if (end == s || *end != ':' || errno)
        return -1;
    const char *t = end + 1;
    unsigned long b = strtoul(t, &end, 10);
    if (end == t || *end || errno || a >= b || b > UINT32_MAX)
        return -1;
    r[0] = (uint32_t)a;
    r[1] = (uint32_t)b;
    return 0;
}

/* Which options a verb takes, beyond the connection's. */
static int takes(enum kv_verb v, const char *a)
{
    int problem = v == KV_CREATE || v == KV_APPEND || v == KV_ATTEND;
    if (!strcmp(a, "--url") || !strcmp(a, "--api-key-file") ||
        !strcmp(a, "--timeout"))
        return 1;
    if (!strcmp(a, "--kv"))
        return v != KV_CREATE;
    if (!strcmp(a, "--tokens"))
        return v == KV_CREATE || v == KV_APPEND;
    if (!strcmp(a, "--ttl-ms"))
        return v == KV_CREATE;
    if (!strcmp(a, "--append") || !strcmp(a, "--id") || !strcmp(a, "--json"))
        return v == KV_ATTEND;
    return problem; /* --from, --causal, the random problem's */
}

/* Reads the command line after `kv VERB`.  Returns -1 to go on, else an
 * exit status. */
static int parse(int argc, char **argv, struct kv_opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_kv(stdout);
            return MRACTL_EXIT_OK;
        }
        if (a[0] != '-' || !takes(o->verb, a))
            return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                               "kv %s: unexpected argument '%s' (mractl kv "
                               "--help)",
                               verbs[o->verb], a);
        if (!strcmp(a, "--causal")) {
            o->sp.causal = 1;
            o->random_opts = 1;
            continue;
        }
        if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        }
        if (i + 1 == argc)
            return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                               "%s needs a value", a);
        const char *v = argv[++i];
        int got = mractl_remote_option(&o->r, a, v);
        if (!got) {
            got = mractl_random_option(&o->sp, a, v);
            o->random_opts |= got != 0 && strcmp(a, "--shape") != 0;
            o->have_shape |= got > 0 && !strcmp(a, "--shape");
        }
        if (got == 0 && !strcmp(a, "--from")) {
            o->from = v;
        } else if (got == 0 && !strcmp(a, "--kv")) {
            o->id = v;
            got = proto_kv_id_valid(v, strlen(v)) ? 1 : -1;
        } else if (got == 0 && !strcmp(a, "--id")) {
            o->req_id = v;
            got = strlen(v) <= PROTO_ID_MAX ? 1 : -1;
        } else if (got == 0 &&
                   (!strcmp(a, "--tokens") || !strcmp(a, "--append"))) {
            got = parse_range(v, o->range) ? -1 : 1;
            o->have_range = 1;
        } else if (got == 0 && !strcmp(a, "--ttl-ms")) {
            char *end;
            errno = 0;
            o->ttl_ms = strtoull(v, &end, 10);
            got = end == v || *end || errno || !o->ttl_ms ? -1 : 1;
        } else if (got == 0) {
            return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                               "kv %s: unknown option '%s' (mractl kv "
                               "--help)",
                               verbs[o->verb], a);
        }
        if (got < 0)
            return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                               "bad value for %s: '%s'", a, v);
    }
    if (o->verb != KV_CREATE && !o->id)
        return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                           "kv %s: --kv ID is required", verbs[o->verb]);
    int problem = takes(o->verb, "--from");
    if (problem && !o->from == !o->have_shape)
        return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                           "kv %s: give the problem as --shape B,H,Nq,D or "
                           "--from FILE (one of them)",
                           verbs[o->verb]);
    if (o->from && o->random_opts)
        return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                           "--from FILE brings its own problem: the options "
                           "of a random one do not apply");
    return -1;
}

/* The problem of --shape or --from, in *p: tensors in *mem (random) or in
 * *req and the body *body (a file), for the caller to release. */
static int load_problem(const struct kv_opts *o, struct attn_problem *p,
                        void **mem, struct proto_request *req, char **body)
{
    if (!o->from)
        return mractl_random_make(&o->sp, p, mem);
    size_t len;
    *body = mractl_read_file(o->from, &len);
    if (!*body)
        return mractl_fail(MRACTL_EXIT_FAIL, "io_error", "cannot read %s: %s",
                           o->from, strerror(errno));
    size_t sk = strspn(*body, " \t\r\n");
    enum proto_format fmt =
        sk < len && (*body)[sk] == '{' ? PROTO_JSON : PROTO_MSGPACK;
    char err[512];
    int rc = proto_request_decode(*body, len, fmt, NULL, req, err, sizeof err);
    if (rc != PROTO_OK)
        return mractl_fail(rc == PROTO_ENOMEM ? MRACTL_EXIT_FAIL
                                              : MRACTL_EXIT_USAGE,
                           rc == PROTO_ETOOBIG  ? "payload_too_large"
                           : rc == PROTO_ENOMEM ? "internal"
                                                : "bad_request",
                           "%s: %s", o->from, err);
    if (req->has_kv)
        return mractl_fail(MRACTL_EXIT_USAGE, "bad_request",
                           "%s: a request on a session has no keys to take",
                           o->from);
    *p = req->prob;
    return MRACTL_EXIT_OK;
}

/* The keys [r[0], r[1]) of problem p, copied into *mem (malloc'd). */
static int slice(const struct attn_problem *p, const uint32_t r[2],
                 struct attn_kv_tokens *t, void **mem)
{
    if (r[1] > p->Nk)
        return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                           "the range %u:%u is beyond the problem's %u keys",
                           (unsigned)r[0], (unsigned)r[1], (unsigned)p->Nk);
    size_t n = r[1] - r[0], rows = (size_t)p->B * p->Hkv;
    size_t row = (size_t)p->D * attn_dtype_size(p->dtype);
    /* The problem's k and v are in memory already: these fit. */
    size_t kv = rows * n * row, masks = (size_t)p->B * n;
    char *m = malloc(2 * kv + masks + 1);
    if (!m)
        return mractl_fail(MRACTL_EXIT_FAIL, "internal", "out of memory");
    for (size_t i = 0; i < rows; i++) {
        size_t src = (i * p->Nk + r[0]) * row;
        memcpy(m + i * n * row, (const char *)p->k + src, n * row);
        memcpy(m + kv + i * n * row, (const char *)p->v + src, n * row);
    }
    uint8_t *mask = NULL;
    if (p->mask) {
        mask = (uint8_t *)m + 2 * kv;
        for (size_t b = 0; b < p->B; b++)
            memcpy(mask + b * n, p->mask + b * p->Nk + r[0], n);
    }
    *t = (struct attn_kv_tokens){m, m + kv, mask, (uint32_t)n};
    *mem = m;
    return MRACTL_EXIT_OK;
}

/* Prints a session answer as the service writes it. */
static int print_info(const struct proto_kv_info *info)
{
    char *text = proto_kv_info_json(info, NULL);
    if (!text)
        return mractl_fail(MRACTL_EXIT_FAIL, "internal", "out of memory");
    int bad = printf("%s\n", text) < 0 || fflush(stdout) != 0;
    free(text);
    return bad ? mractl_fail(MRACTL_EXIT_FAIL, "io_error",
                             "cannot write the answer: %s", strerror(errno))
               : MRACTL_EXIT_OK;
}

/* attend: the problem's queries on the session, the answer body to
 * stdout. */
static int attend(struct mrac_client *c, const struct kv_opts *o,
                  struct attn_problem *p, const char *req_id,
                  uint64_t timeout_ms)
{
    struct proto_encode_opts eo = {
        .id = req_id, .timeout_ms = timeout_ms, .kv = o->id};
    enum proto_format fmt = o->json ? PROTO_JSON : PROTO_MSGPACK;
    char *body, *resp;
    size_t len, rlen;
    long status;
    if (proto_request_encode_opts(p, fmt, &eo, &body, &len) != PROTO_OK)
        return mractl_fail(MRACTL_EXIT_FAIL, "internal",
                           "the request does not encode");
    struct mrac_error err;
    int rc = mrac_post_raw(c, body, len, fmt, &resp, &rlen, &status, &err);
    free(body);
    int st = MRACTL_EXIT_OK;
    if (rc != MRAC_OK) {
        st = mractl_report(&err, resp);
    } else if (fwrite(resp, 1, rlen, stdout) != rlen || fflush(stdout) != 0) {
        st = mractl_fail(MRACTL_EXIT_FAIL, "io_error",
                         "cannot write the answer: %s", strerror(errno));
    }
    free(resp);
    return st;
}

/* Runs the verb with the client; the problem, when it takes one, in p. */
static int run(struct mrac_client *c, const struct kv_opts *o,
               struct attn_problem *p, const struct proto_request *req)
{
    struct proto_kv_info info;
    struct mrac_error err;
    int rc;
    if (o->verb == KV_GET) {
        rc = mrac_kv_info(c, o->id, &info, &err);
        return rc == MRAC_OK ? print_info(&info) : mractl_report(&err, NULL);
    }
    if (o->verb == KV_DELETE) {
        rc = mrac_kv_free(c, o->id, &err);
        return rc == MRAC_OK ? MRACTL_EXIT_OK : mractl_report(&err, NULL);
    }
    uint32_t all[2] = {0, p->Nk};
    const uint32_t *r = o->have_range ? o->range : all;
    struct attn_kv_tokens t = {0};
    void *mem = NULL;
    int st = MRACTL_EXIT_OK;
    if ((o->verb != KV_ATTEND || o->have_range) &&
        (st = slice(p, r, &t, &mem)) != MRACTL_EXIT_OK)
        return st;
    struct attn_kv_shape shape = {p->dtype, p->B, p->Hkv, p->D};
    if (o->verb == KV_ATTEND) {
        p->append = t;
        const char *id = o->req_id ? o->req_id : req->has_id ? req->id : NULL;
        st = attend(c, o, p, id, req->timeout_ms);
    } else {
        rc = o->verb == KV_CREATE
                 ? mrac_kv_create(c, &shape, &t, o->ttl_ms, &info, &err)
                 : mrac_kv_append(c, o->id, &shape, &t, &info, &err);
        st = rc == MRAC_OK ? print_info(&info) : mractl_report(&err, NULL);
    }
    free(mem);
    return st;
}

int mractl_cmd_kv(int argc, char **argv)
{
    struct kv_opts o = {.sp = {.method = ATTN_MRA2, .dtype = ATTN_F32}};
    mractl_remote_init(&o.r);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage_kv(argc < 2 ? stderr : stdout);
        return argc < 2 ? MRACTL_EXIT_USAGE : MRACTL_EXIT_OK;
    }
    size_t v = 0;
    while (v < sizeof verbs / sizeof verbs[0] && strcmp(argv[1], verbs[v]))
        v++;
    if (v == sizeof verbs / sizeof verbs[0]) {
        usage_kv(stderr);
        return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                           "kv: unknown command '%s'", argv[1]);
    }
    o.verb = (enum kv_verb)v;
    int st = parse(argc - 1, argv + 1, &o);
    if (st >= 0)
        return st;

    struct attn_problem p = {0};
    struct proto_request req = {0};
    void *mem = NULL;
    char *body = NULL;
    st = MRACTL_EXIT_OK;
    if (takes(o.verb, "--from"))
        st = load_problem(&o, &p, &mem, &req, &body);
    struct mrac_client *c = NULL;
    if (st == MRACTL_EXIT_OK && (st = mractl_open_client(&o.r, &c)) == 0) {
        st = run(c, &o, &p, &req);
        mractl_close_client(c);
    }
    proto_request_release(&req);
    free(body);
    free(mem);
    return st;
}
