/*
 * client.c - the libcurl side of libmraclient: one easy handle per client,
 * reused across calls so the TCP connection stays alive, plus the calls of
 * mraclient.h that talk to the server without a session (the calls on a
 * session are in kv.c).
 *
 * Every call resets the per-call options it sets (URL, method, body) and
 * leaves the connection cache alone; that is what makes keep-alive work
 * with a single easy handle.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "clients/c/internal.h"

const char *mrac_strerror(int err)
{
    switch (err) {
    case MRAC_OK:
        return "success";
    case MRAC_EINVAL:
        return "invalid argument";
    case MRAC_ENOMEM:
        return "out of memory";
    case MRAC_ETRANSPORT:
        return "could not reach the server";
    case MRAC_ETIMEDOUT:
        return "client-side timeout";
    case MRAC_EHTTP:
        return "the server answered an error status";
    case MRAC_EPROTO:
        return "the server's answer could not be decoded";
    case MRAC_EKVNOTFOUND:
        return "no such session (unknown, expired, evicted or deleted)";
    case MRAC_EKVFULL:
        return "the service's session cache is full";
    default:
        return "unknown error";
    }
}

int mrac_fail(struct mrac_error *err, int code, long status, const char *wire,
              const char *fmt, const char *detail)
{
    if (err) {
        err->err = code;
        err->status = status;
        err->retry_after_s = -1;
        snprintf(err->code, sizeof err->code, "%s", wire);
        snprintf(err->message, sizeof err->message, fmt, detail ? detail : "");
    }
    return code;
}

void mrac_err_clear(struct mrac_error *err)
{
    if (err) {
        memset(err, 0, sizeof *err);
        err->retry_after_s = -1;
    }
}

int mrac_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? MRAC_OK
                                                             : MRAC_ENOMEM;
}

void mrac_global_cleanup(void)
{
    curl_global_cleanup();
}

int mrac_client_new(const struct mrac_options *opt, struct mrac_client **out,
                    struct mrac_error *err)
{
    static const struct mrac_options defaults = {0};
    mrac_err_clear(err);
    if (!out)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "no place to store the client");
    *out = NULL;
    if (!opt)
        opt = &defaults;
    const char *url = opt->url ? opt->url : "http://127.0.0.1:8080";
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument",
                         "URL '%s' does not start with http:// or https://",
                         url);
    if (opt->api_key && strpbrk(opt->api_key, "\r\n"))
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "the API key contains a line break");

    struct mrac_client *c = calloc(1, sizeof *c);
    if (!c)
        return mrac_fail(err, MRAC_ENOMEM, 0, "out_of_memory", "%s", "client");
    c->base = strdup(url);
    c->curl = curl_easy_init();
    if (opt->api_key) {
        size_t n = strlen(opt->api_key) + sizeof "Authorization: Bearer ";
        c->auth_hdr = malloc(n);
        if (c->auth_hdr)
            snprintf(c->auth_hdr, n, "Authorization: Bearer %s", opt->api_key);
    }
    if (!c->base || !c->curl || (opt->api_key && !c->auth_hdr)) {
        mrac_client_free(c);
        return mrac_fail(err, MRAC_ENOMEM, 0, "out_of_memory", "%s", "client");
    }
    size_t n = strlen(c->base);
    while (n > 0 && c->base[n - 1] == '/')
        c->base[--n] = '\0';
    c->connect_timeout_ms =
        opt->connect_timeout_ms ? opt->connect_timeout_ms : 10000;
    c->timeout_ms = opt->timeout_ms;
    *out = c;
    return MRAC_OK;
}

void mrac_client_free(struct mrac_client *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    free(c->base);
    free(c->auth_hdr);
    free(c);
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct mrac_buf *b = ud;
    size_t n = size * nmemb; /* curl guarantees size == 1 */
    if (n > SIZE_MAX - b->len - 1) {
        b->oom = 1;
        return 0;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap = cap > SIZE_MAX / 2 ? b->len + n + 1 : cap * 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->oom = 1;
            return 0; /* makes curl fail the transfer */
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct mrac_answer *a = ud;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";
    if (n > sizeof name - 1 && strncasecmp(ptr, name, sizeof name - 1) == 0) {
        char tmp[32];
        size_t m = n - (sizeof name - 1);
        if (m >= sizeof tmp)
            m = sizeof tmp - 1;
        memcpy(tmp, ptr + sizeof name - 1, m);
        tmp[m] = '\0';
        char *end;
        long v = strtol(tmp, &end, 10);
        if (end != tmp && v >= 0)
            a->retry_after_s = v;
    }
    return n;
}

int mrac_perform(struct mrac_client *c, const char *method, const char *path,
                 const void *body, size_t len, enum proto_format fmt,
                 struct mrac_answer *a, long *status, struct mrac_error *err)
{
    CURL *h = c->curl;
    memset(a, 0, sizeof *a);
    a->retry_after_s = -1;
    *status = 0;

    size_t ulen = strlen(c->base) + strlen(path) + 1;
    char *url = malloc(ulen);
    if (!url)
        return mrac_fail(err, MRAC_ENOMEM, 0, "out_of_memory", "%s", "URL");
    snprintf(url, ulen, "%s%s", c->base, path);

    struct curl_slist *hdrs = NULL, *t;
    const char *ctype = fmt == PROTO_JSON ? "Content-Type: application/json"
                                          : "Content-Type: application/msgpack";
    int ok = 1;
    /* No "Expect: 100-continue": it costs a round trip per large body. */
    const char *lines[] = {"Expect:", body ? ctype : NULL, c->auth_hdr};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        if (!lines[i])
            continue;
        t = curl_slist_append(hdrs, lines[i]);
        if (!t) {
            ok = 0;
            break;
        }
        hdrs = t;
    }
    if (!ok) {
        curl_slist_free_all(hdrs);
        free(url);
        return mrac_fail(err, MRAC_ENOMEM, 0, "out_of_memory", "%s", "headers");
    }

    curl_easy_reset(h); /* keeps the connection cache */
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->curl_err);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &a->body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, a);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    } else {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    c->curl_err[0] = '\0';
    CURLcode rc = curl_easy_perform(h);
    curl_slist_free_all(hdrs);
    free(url);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);

    if (a->body.oom) {
        free(a->body.data);
        a->body.data = NULL;
        return mrac_fail(err, MRAC_ENOMEM, *status, "out_of_memory", "%s",
                         "response body");
    }
    if (rc != CURLE_OK) {
        free(a->body.data);
        a->body.data = NULL;
        const char *why = c->curl_err[0] ? c->curl_err : curl_easy_strerror(rc);
        if (rc == CURLE_OPERATION_TIMEDOUT)
            return mrac_fail(err, MRAC_ETIMEDOUT, 0, "timeout", "%s", why);
        return mrac_fail(err, MRAC_ETRANSPORT, 0, "transport", "%s", why);
    }
    if (!a->body.data) { /* an empty body: hand back "" */
        a->body.data = calloc(1, 1);
        if (!a->body.data)
            return mrac_fail(err, MRAC_ENOMEM, *status, "out_of_memory", "%s",
                             "response body");
    }
    return MRAC_OK;
}

int mrac_http_error(const struct mrac_answer *a, long status,
                    struct mrac_error *err)
{
    if (!err)
        return MRAC_EHTTP;
    err->err = MRAC_EHTTP;
    err->status = status;
    err->retry_after_s = a->retry_after_s;
    if (proto_error_parse(a->body.data, a->body.len, err->code,
                          sizeof err->code, err->message,
                          sizeof err->message) != PROTO_OK) {
        /* Not the JSON error shape (a proxy, or /healthz's own body):
         * keep the text as the message. */
        snprintf(err->code, sizeof err->code, "http_%ld", status);
        snprintf(err->message, sizeof err->message, "%.*s",
                 (int)(a->body.len < 400 ? a->body.len : 400),
                 a->body.data ? a->body.data : "");
    }
    return MRAC_EHTTP;
}

int mrac_post_raw(struct mrac_client *c, const void *body, size_t len,
                  enum proto_format fmt, char **resp, size_t *resp_len,
                  long *status, struct mrac_error *err)
{
    mrac_err_clear(err);
    long st = 0;
    if (resp)
        *resp = NULL;
    if (resp_len)
        *resp_len = 0;
    if (status)
        *status = 0;
    if (!c || !body || !resp)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "mrac_post_raw needs a client, a body and *resp");
    struct mrac_answer a;
    int rc =
        mrac_perform(c, "POST", "/v1/attention", body, len, fmt, &a, &st, err);
    if (status)
        *status = st;
    if (rc != MRAC_OK)
        return rc;
    *resp = a.body.data;
    if (resp_len)
        *resp_len = a.body.len;
    if (st < 200 || st > 299)
        return mrac_http_error(&a, st, err);
    return MRAC_OK;
}

/* The three GET endpoints share this. */
static int get_text(struct mrac_client *c, const char *path, char **text,
                    struct mrac_error *err)
{
    mrac_err_clear(err);
    if (text)
        *text = NULL;
    if (!c || !text)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "a client and a place for the text are required");
    struct mrac_answer a;
    long st = 0;
    int rc = mrac_perform(c, "GET", path, NULL, 0, PROTO_JSON, &a, &st, err);
    if (rc != MRAC_OK)
        return rc;
    *text = a.body.data;
    if (st < 200 || st > 299)
        return mrac_http_error(&a, st, err);
    return MRAC_OK;
}

int mrac_health(struct mrac_client *c, char **text, struct mrac_error *err)
{
    return get_text(c, "/healthz", text, err);
}

int mrac_info(struct mrac_client *c, char **text, struct mrac_error *err)
{
    return get_text(c, "/v1/info", text, err);
}

int mrac_metrics(struct mrac_client *c, char **text, struct mrac_error *err)
{
    return get_text(c, "/metrics", text, err);
}

int mrac_answer_result(const struct attn_problem *p, enum proto_format fmt,
                       struct mrac_answer *a, long st, struct mrac_result *res,
                       struct mrac_error *err)
{
    int rc;
    if (st < 200 || st > 299) {
        rc = mrac_http_error(a, st, err);
        free(a->body.data);
        return rc;
    }
    size_t n = attn_dtype_size(p->dtype);
    const uint32_t dims[4] = {p->B, p->H, p->Nq, p->D}; /* the output's */
    for (int i = 0; i < 4; i++) {
        if (dims[i] && n > SIZE_MAX / dims[i]) {
            free(a->body.data);
            return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                             "the output size overflows");
        }
        n *= dims[i];
    }

    struct proto_response r;
    char perr[256];
    if (proto_response_decode(a->body.data, a->body.len, fmt, &r, perr,
                              sizeof perr) != PROTO_OK) {
        free(a->body.data);
        return mrac_fail(err, MRAC_EPROTO, st, "bad_response", "%s", perr);
    }
    if (r.dtype != p->dtype || r.shape[0] != p->B || r.shape[1] != p->H ||
        r.shape[2] != p->Nq || r.shape[3] != p->D || r.out_bytes != n) {
        proto_response_release(&r);
        free(a->body.data);
        return mrac_fail(err, MRAC_EPROTO, st, "bad_response", "%s",
                         "the output's shape or dtype differs from the "
                         "problem's");
    }

    void *out = p->out;
    if (!out) {
        out = malloc(n ? n : 1);
        if (!out) {
            proto_response_release(&r);
            free(a->body.data);
            return mrac_fail(err, MRAC_ENOMEM, st, "out_of_memory", "%s",
                             "output tensor");
        }
        res->out_owned = 1;
    }
    memcpy(out, r.out, n);
    res->out = out;
    res->out_bytes = n;
    res->stats = r.stats;
    snprintf(res->backend, sizeof res->backend, "%s", r.backend);
    snprintf(res->method, sizeof res->method, "%s", r.method);
    res->stats.backend = res->backend;
    memcpy(res->id, r.id, sizeof res->id);
    res->has_id = r.has_id;
    res->heads = r.heads; /* the result owns them now */
    res->nheads = r.nheads;
    r.heads = NULL;
    proto_response_release(&r);
    free(a->body.data);
    return MRAC_OK;
}

int mrac_attention(struct mrac_client *c, const struct attn_problem *p,
                   const struct mrac_call *call, struct mrac_result *res,
                   struct mrac_error *err)
{
    static const struct mrac_call no_call = {0};
    mrac_err_clear(err);
    if (res)
        memset(res, 0, sizeof *res);
    if (!c || !p || !res)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "mrac_attention needs a client, a problem and a "
                         "result");
    if (!call)
        call = &no_call;
    if (call->id && strlen(call->id) > PROTO_ID_MAX)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s",
                         "the id is longer than 128 bytes");

    /* attn_problem_check() wants an output pointer; the check must not
     * depend on whether the caller gave one. */
    struct attn_problem chk = *p;
    static _Alignas(64) char stand_in[64];
    if (!chk.out)
        chk.out = stand_in; /* aligned for any dtype; never written */
    char msg[256];
    if (attn_problem_check(&chk, msg, sizeof msg) != ATTN_OK)
        return mrac_fail(err, MRAC_EINVAL, 0, "invalid_argument", "%s", msg);

    char *body = NULL;
    size_t blen = 0;
    struct proto_encode_opts eo = {.id = call->id,
                                   .timeout_ms = call->timeout_ms,
                                   .per_head_stats = call->per_head_stats};
    if (proto_request_encode_opts(p, call->format, &eo, &body, &blen) !=
        PROTO_OK)
        return mrac_fail(err, MRAC_ENOMEM, 0, "out_of_memory", "%s",
                         "request body");

    struct mrac_answer a;
    long st = 0;
    int rc = mrac_perform(c, "POST", "/v1/attention", body, blen, call->format,
                          &a, &st, err);
    free(body);
    if (rc != MRAC_OK)
        return rc;
    return mrac_answer_result(p, call->format, &a, st, res, err);
}

void mrac_result_release(struct mrac_result *res)
{
    if (!res)
        return;
    if (res->out_owned)
        free(res->out);
    free(res->heads);
    memset(res, 0, sizeof *res);
}
