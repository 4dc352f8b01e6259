/*
 * test-mraclient.c - tests the C client library (clients/c/) against a
 * scripted HTTP server on a loopback socket in a thread of this test: the
 * request it sends (path, headers, body decoding to the same problem), the
 * answer it decodes (into the caller's buffer or its own), keep-alive
 * reuse, and every error path (HTTP errors with the wire code and
 * Retry-After, bad answers, refused connections, client timeouts, bad
 * arguments), and its helpers for command lines (method and dtype names,
 * reading files).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clients/c/mraclient.h"

/* --- the scripted server ----------------------------------------------- */

enum reply_kind {
    REPLY_ECHO_Q, /* decode the request; answer with out = q */
    REPLY_CANNED, /* answer status/headers/body as set */
    REPLY_SILENT, /* read the request, never answer */
};

static struct {
    pthread_mutex_t mu;
    int listen_fd, port, stop;
    pthread_t thread;
    /* script */
    enum reply_kind kind;
    int status;
    char headers[256];
    char body[1024];
    uint32_t echo_shape_d; /* when nonzero, answer with this D instead */
    /* what the last request looked like */
    char method[8], path[64], auth[128], ctype[64];
    int accepts, requests;
    char decode_err[256];
    int decode_rc;
    struct attn_problem got; /* shape and params of the decoded problem */
    char got_id[PROTO_ID_MAX + 1];
    uint64_t got_timeout;
} srv = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void header_value(const char *hdrs, const char *name, char *out,
                         size_t outlen)
{
    out[0] = '\0';
    size_t n = strlen(name);
    for (const char *p = hdrs; p && *p; p = strstr(p, "\r\n")) {
        if (p[0] == '\r')
            p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            p += n + 1;
            while (*p == ' ')
                p++;
            size_t len = strcspn(p, "\r\n");
            snprintf(out, outlen, "%.*s", (int)len, p);
            return;
        }
    }
}

static void send_all(int fd, const char *b, size_t len)
{
    while (len) {
        ssize_t w = send(fd, b, len, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        b += w;
        len -= (size_t)w;
    }
}

static void reply(int fd, int status, const char *ctype, const char *extra,
                  const char *body, size_t len)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d X\r\nContent-Type: %s\r\n%sContent-Length: "
                     "%zu\r\n\r\n",
                     status, ctype, extra, len);
    send_all(fd, head, (size_t)n);
    send_all(fd, body, len);
}

/* Serves one request from `fd`; returns 0 to keep the connection. */
static int serve_one(int fd, char *buf, size_t cap, size_t *have)
{
    char *end;
    while (!(end = memmem(buf, *have, "\r\n\r\n", 4))) {
        if (*have == cap)
            return -1;
        ssize_t r = recv(fd, buf + *have, cap - *have, 0);
        if (r <= 0)
            return -1;
        *have += (size_t)r;
    }
    size_t hlen = (size_t)(end - buf) + 4;
    char hdrs[2048];
    snprintf(hdrs, sizeof hdrs, "%.*s", (int)hlen, buf);
    char cl[32];
    header_value(hdrs, "Content-Length", cl, sizeof cl);
    size_t blen = cl[0] ? strtoul(cl, NULL, 10) : 0;
    while (*have < hlen + blen) {
        if (*have == cap)
            return -1;
        ssize_t r = recv(fd, buf + *have, cap - *have, 0);
        if (r <= 0)
            return -1;
        *have += (size_t)r;
    }

    pthread_mutex_lock(&srv.mu);
    srv.requests++;
    sscanf(hdrs, "%7s %63s", srv.method, srv.path);
    header_value(hdrs, "Authorization", srv.auth, sizeof srv.auth);
    header_value(hdrs, "Content-Type", srv.ctype, sizeof srv.ctype);
    enum reply_kind kind = srv.kind;
    pthread_mutex_unlock(&srv.mu);

    const char *body = buf + hlen;
    if (kind == REPLY_SILENT) {
        usleep(500 * 1000);
    } else if (kind == REPLY_CANNED) {
        reply(fd, srv.status,
              srv.status == 200 ? "text/plain" : "application/json",
              srv.headers, srv.body, strlen(srv.body));
    } else {
        struct proto_request req;
        enum proto_format fmt =
            strstr(srv.ctype, "json") ? PROTO_JSON : PROTO_MSGPACK;
        int rc = proto_request_decode(body, blen, fmt, NULL, &req,
                                      srv.decode_err, sizeof srv.decode_err);
        srv.decode_rc = rc;
        if (rc != PROTO_OK) {
            const char *e = "{\"error\":{\"code\":\"bad_request\","
                            "\"message\":\"test server could not decode\"}}";
            reply(fd, 400, "application/json", "", e, strlen(e));
        } else {
            srv.got = req.prob;
            srv.got_timeout = req.timeout_ms;
            snprintf(srv.got_id, sizeof srv.got_id, "%s",
                     req.has_id ? req.id : "");
            size_t n = (size_t)req.prob.B * req.prob.H * req.prob.Nq *
                       req.prob.D * attn_dtype_size(req.prob.dtype);
            memcpy(req.prob.out, req.prob.q, n);
            if (srv.echo_shape_d)
                req.prob.D = srv.echo_shape_d;
            struct proto_stats st = {
                .attn = {.blocks_selected = 3,
                         .blocks_total = 4,
                         .density = 0.75},
                .backend = "cpu",
                .queue_us = 11,
                .compute_us = 22,
                .batch_requests = 2,
            };
            char *out;
            size_t olen;
            proto_response_encode(&req, &st, &out, &olen);
            reply(fd, 200,
                  fmt == PROTO_JSON ? "application/json"
                                    : "application/msgpack",
                  "", out, olen);
            free(out);
            proto_request_release(&req);
        }
    }
    memmove(buf, buf + hlen + blen, *have - hlen - blen);
    *have -= hlen + blen;
    return 0;
}

static void *server_main(void *arg)
{
    (void)arg;
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    while (!srv.stop) {
        struct pollfd p = {.fd = srv.listen_fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int fd = accept(srv.listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        pthread_mutex_lock(&srv.mu);
        srv.accepts++;
        pthread_mutex_unlock(&srv.mu);
        size_t have = 0;
        while (!srv.stop) {
            struct pollfd c = {.fd = fd, .events = POLLIN};
            if (have == 0 && poll(&c, 1, 50) <= 0)
                continue;
            if (serve_one(fd, buf, cap, &have) != 0)
                break;
        }
        close(fd);
    }
    free(buf);
    return NULL;
}

static int server_start(void **state)
{
    (void)state;
    srv.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (srv.listen_fd < 0 || bind(srv.listen_fd, (void *)&a, sizeof a) ||
        listen(srv.listen_fd, 8) || getsockname(srv.listen_fd, (void *)&a, &al))
        return -1;
    srv.port = ntohs(a.sin_port);
    if (mrac_global_init() != MRAC_OK)
        return -1;
    return pthread_create(&srv.thread, NULL, server_main, NULL);
}

static int server_stop(void **state)
{
    (void)state;
    srv.stop = 1;
    pthread_join(srv.thread, NULL);
    close(srv.listen_fd);
    mrac_global_cleanup();
    return 0;
}

static struct mrac_client *client(const char *key, uint32_t timeout_ms)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", srv.port);
    struct mrac_options o = {
        .url = url, .api_key = key, .timeout_ms = timeout_ms};
    struct mrac_client *c = NULL;
    struct mrac_error err;
    assert_int_equal(mrac_client_new(&o, &c, &err), MRAC_OK);
    return c;
}

static void script(enum reply_kind kind, int status, const char *headers,
                   const char *body)
{
    pthread_mutex_lock(&srv.mu);
    srv.kind = kind;
    srv.status = status;
    srv.echo_shape_d = 0;
    snprintf(srv.headers, sizeof srv.headers, "%s", headers);
    snprintf(srv.body, sizeof srv.body, "%s", body);
    pthread_mutex_unlock(&srv.mu);
}

/* --- tests ------------------------------------------------------------- */

static void test_round_trip(void **state)
{
    (void)state;
    /* Cross-attention: 40 queries over 70 keys, causal, both masks; the
     * answer has q's shape. */
    struct mrac_random_spec sp = {.B = 2,
                                  .H = 2,
                                  .Hkv = 1,
                                  .Nq = 40,
                                  .Nk = 70,
                                  .D = 8,
                                  .method = ATTN_MRA2_SPARSE,
                                  .dtype = ATTN_BF16,
                                  .seed = 5,
                                  .block_per_row = 3,
                                  .causal = 1,
                                  .mask = MRAC_MASK_BLOCKS,
                                  .q_mask = MRAC_MASK_RANDOM};
    struct attn_problem p;
    void *mem;
    assert_int_equal(mrac_random_problem(&sp, &p, &mem), MRAC_OK);
    p.prior_first = 1;

    script(REPLY_ECHO_Q, 200, "", "");
    int accepts0 = srv.accepts;
    struct mrac_client *c = client("sekrit", 0);
    struct mrac_call call = {.id = "req-1", .timeout_ms = 750};
    struct mrac_result r;
    struct mrac_error err;
    assert_int_equal(mrac_attention(c, &p, &call, &r, &err), MRAC_OK);
    size_t n = 2 * 2 * 40 * 8 * 2;
    assert_int_equal(r.out_bytes, n);
    assert_int_equal(r.out_owned, 1);
    assert_memory_equal(r.out, p.q, n);
    assert_int_equal(r.stats.attn.blocks_selected, 3);
    assert_int_equal(r.stats.attn.blocks_total, 4);
    assert_true(r.stats.attn.density == 0.75);
    assert_int_equal(r.stats.queue_us, 11);
    assert_int_equal(r.stats.compute_us, 22);
    assert_int_equal(r.stats.batch_requests, 2);
    assert_string_equal(r.stats.backend, "cpu");
    assert_string_equal(r.method, "mra2_sparse");
    assert_true(r.has_id);
    assert_string_equal(r.id, "req-1");
    mrac_result_release(&r);
    assert_null(r.out);

    /* what went over the wire */
    assert_string_equal(srv.method, "POST");
    assert_string_equal(srv.path, "/v1/attention");
    assert_string_equal(srv.auth, "Bearer sekrit");
    assert_string_equal(srv.ctype, "application/msgpack");
    assert_int_equal(srv.decode_rc, PROTO_OK);
    assert_int_equal(srv.got.B, 2);
    assert_int_equal(srv.got.H, 2);
    assert_int_equal(srv.got.Hkv, 1);
    assert_int_equal(srv.got.Nq, 40);
    assert_int_equal(srv.got.Nk, 70);
    assert_int_equal(srv.got.causal, 1);
    assert_int_equal(srv.got.D, 8);
    assert_int_equal(srv.got.dtype, ATTN_BF16);
    assert_int_equal(srv.got.method, ATTN_MRA2_SPARSE);
    assert_int_equal(srv.got.block_per_row, 3);
    assert_int_equal(srv.got.prior_first, 1);
    assert_non_null(srv.got.mask);
    assert_non_null(srv.got.q_mask);
    assert_string_equal(srv.got_id, "req-1");
    assert_int_equal(srv.got_timeout, 750);

    /* into the caller's buffer, over the same connection, as JSON too */
    uint16_t out[2 * 2 * 40 * 8];
    p.out = out;
    for (int f = 0; f < 2; f++) {
        call.format = f ? PROTO_JSON : PROTO_MSGPACK;
        call.id = NULL;
        assert_int_equal(mrac_attention(c, &p, &call, &r, &err), MRAC_OK);
        assert_ptr_equal(r.out, out);
        assert_int_equal(r.out_owned, 0);
        assert_false(r.has_id);
        assert_memory_equal(out, p.q, n);
        mrac_result_release(&r);
    }
    assert_string_equal(srv.ctype, "application/json");
    assert_int_equal(srv.accepts - accepts0, 1); /* keep-alive */
    assert_int_equal(srv.requests >= 3, 1);

    /* an answer of the wrong shape is refused */
    pthread_mutex_lock(&srv.mu);
    srv.echo_shape_d = 4;
    pthread_mutex_unlock(&srv.mu);
    p.out = NULL;
    call.format = PROTO_MSGPACK;
    assert_int_equal(mrac_attention(c, &p, &call, &r, &err), MRAC_EPROTO);
    assert_int_equal(err.err, MRAC_EPROTO);
    assert_string_equal(err.code, "bad_response");
    mrac_client_free(c);
    free(mem);
}

static void test_http_errors(void **state)
{
    (void)state;
    struct mrac_random_spec sp = {
        .B = 1, .H = 1, .Nq = 32, .D = 4, .dtype = ATTN_F32};
    struct attn_problem p;
    void *mem;
    assert_int_equal(mrac_random_problem(&sp, &p, &mem), MRAC_OK);
    struct mrac_client *c = client(NULL, 0);
    struct mrac_result r;
    struct mrac_error err;

    script(REPLY_CANNED, 503, "Retry-After: 2\r\n",
           "{\"error\":{\"code\":\"overloaded\",\"message\":\"queue full "
           "(1 waiting)\"}}");
    assert_int_equal(mrac_attention(c, &p, NULL, &r, &err), MRAC_EHTTP);
    assert_int_equal(err.err, MRAC_EHTTP);
    assert_int_equal(err.status, 503);
    assert_string_equal(err.code, "overloaded");
    assert_string_equal(err.message, "queue full (1 waiting)");
    assert_int_equal(err.retry_after_s, 2);
    assert_string_equal(srv.auth, "");

    script(REPLY_CANNED, 502, "", "bad gateway");
    assert_int_equal(mrac_attention(c, &p, NULL, &r, &err), MRAC_EHTTP);
    assert_int_equal(err.status, 502);
    assert_string_equal(err.code, "http_502");
    assert_string_equal(err.message, "bad gateway");
    assert_int_equal(err.retry_after_s, -1);

    script(REPLY_CANNED, 200, "", "not msgpack at all");
    assert_int_equal(mrac_attention(c, &p, NULL, &r, &err), MRAC_EPROTO);

    /* the raw call hands back the error body as well */
    script(REPLY_CANNED, 413, "",
           "{\"error\":{\"code\":\"payload_too_large\",\"message\":\"m\"}}");
    char *resp;
    size_t rlen;
    long status;
    assert_int_equal(
        mrac_post_raw(c, "{}", 2, PROTO_JSON, &resp, &rlen, &status, &err),
        MRAC_EHTTP);
    assert_int_equal(status, 413);
    assert_string_equal(err.code, "payload_too_large");
    assert_non_null(resp);
    assert_true(strstr(resp, "payload_too_large") != NULL);
    assert_int_equal(rlen, strlen(resp));
    free(resp);
    mrac_client_free(c);
    free(mem);
}

static void test_get_endpoints(void **state)
{
    (void)state;
    struct mrac_client *c = client(NULL, 0);
    char *text;
    struct mrac_error err;
    script(REPLY_CANNED, 200, "", "{\"status\":\"ok\"}");
    assert_int_equal(mrac_health(c, &text, &err), MRAC_OK);
    assert_string_equal(text, "{\"status\":\"ok\"}");
    assert_string_equal(srv.method, "GET");
    assert_string_equal(srv.path, "/healthz");
    free(text);
    assert_int_equal(mrac_info(c, &text, &err), MRAC_OK);
    assert_string_equal(srv.path, "/v1/info");
    free(text);
    assert_int_equal(mrac_metrics(c, &text, &err), MRAC_OK);
    assert_string_equal(srv.path, "/metrics");
    free(text);
    script(REPLY_CANNED, 503, "", "{\"status\":\"draining\"}");
    assert_int_equal(mrac_health(c, &text, &err), MRAC_EHTTP);
    assert_int_equal(err.status, 503);
    assert_string_equal(text, "{\"status\":\"draining\"}");
    free(text);
    mrac_client_free(c);
}

static void test_transport_errors(void **state)
{
    (void)state;
    struct mrac_error err;
    char *text;
    /* a port nothing listens on: bind one and close it */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(fd, (void *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (void *)&a, &al), 0);
    close(fd);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(a.sin_port));
    struct mrac_options o = {.url = url};
    struct mrac_client *c;
    assert_int_equal(mrac_client_new(&o, &c, &err), MRAC_OK);
    assert_int_equal(mrac_health(c, &text, &err), MRAC_ETRANSPORT);
    assert_null(text);
    assert_int_equal(err.status, 0);
    assert_string_equal(err.code, "transport");
    mrac_client_free(c);

    /* a server that never answers, and a client that gives up */
    script(REPLY_SILENT, 0, "", "");
    c = client(NULL, 100);
    assert_int_equal(mrac_health(c, &text, &err), MRAC_ETIMEDOUT);
    assert_string_equal(err.code, "timeout");
    mrac_client_free(c);
    usleep(600 * 1000); /* let the silent reply finish */
}

static void test_bad_arguments(void **state)
{
    (void)state;
    struct mrac_error err;
    struct mrac_client *c;
    struct mrac_options o = {.url = "ftp://x"};
    assert_int_equal(mrac_client_new(&o, &c, &err), MRAC_EINVAL);
    assert_null(c);
    o.url = "http://x";
    o.api_key = "a\r\nInjected: 1";
    assert_int_equal(mrac_client_new(&o, &c, &err), MRAC_EINVAL);

    c = client(NULL, 0);
    int req0 = srv.requests;
    struct attn_problem p = {.method = ATTN_MRA2,
                             .dtype = ATTN_F32,
                             .B = 1,
                             .H = 3,
                             .Hkv = 2,
                             .Nq = 8,
                             .Nk = 8,
                             .D = 4};
    float buf[96] = {0};
    p.q = p.k = p.v = buf;
    struct mrac_result r;
    assert_int_equal(mrac_attention(c, &p, NULL, &r, &err), MRAC_EINVAL);
    assert_true(strlen(err.message) > 0);
    assert_int_equal(srv.requests, req0); /* nothing was sent */
    mrac_client_free(c);
    assert_string_equal(mrac_strerror(MRAC_EHTTP),
                        "the server answered an error status");
}

static void test_random_problem(void **state)
{
    (void)state;
    struct mrac_random_spec sp = {.B = 1,
                                  .H = 4,
                                  .Hkv = 2,
                                  .Nq = 50,
                                  .D = 16,
                                  .dtype = ATTN_F32,
                                  .seed = 9};
    struct attn_problem a, b;
    void *ma, *mb;
    assert_int_equal(mrac_random_problem(&sp, &a, &ma), MRAC_OK);
    assert_int_equal(mrac_random_problem(&sp, &b, &mb), MRAC_OK);
    assert_memory_equal(a.q, b.q, 4 * 50 * 16 * 4);
    assert_memory_equal(a.v, b.v, 2 * 50 * 16 * 4);
    const float *q = a.q;
    float lo = 1, hi = -1;
    for (int i = 0; i < 4 * 50 * 16; i++) {
        lo = q[i] < lo ? q[i] : lo;
        hi = q[i] > hi ? q[i] : hi;
    }
    assert_true(lo >= -1.0f && hi < 1.0f && hi - lo > 1.5f);
    assert_true(memcmp(a.q, a.k, 2 * 50 * 16 * 4) != 0);
    /* Nk 0 means Nq; no masks unless asked for */
    assert_int_equal(a.Nq, 50);
    assert_int_equal(a.Nk, 50);
    assert_false(a.causal);
    assert_null(a.mask);
    assert_null(a.q_mask);
    free(mb);

    /* 3 queries over 300 keys with both masks: q, k and v keep the bytes
     * of the same seed without masks (they are drawn first) */
    sp.Nq = 3;
    sp.Nk = 300;
    sp.causal = 1;
    sp.mask = MRAC_MASK_BLOCKS;
    sp.q_mask = MRAC_MASK_RANDOM;
    assert_int_equal(mrac_random_problem(&sp, &b, &mb), MRAC_OK);
    assert_int_equal(b.Nq, 3);
    assert_int_equal(b.Nk, 300);
    assert_true(b.causal);
    assert_memory_equal(a.q, b.q, 4 * 3 * 16 * 4);
    assert_non_null(b.mask);
    assert_non_null(b.q_mask);
    for (uint32_t j = 0; j < 300; j++)
        assert_int_equal(b.mask[j], !((j >= 32 && j < 64) || j == 299));
    for (uint32_t i = 0; i < 3; i++)
        assert_true(b.q_mask[i] <= 1);
    const float *k = b.k;
    for (size_t i = 0; i < (size_t)2 * 300 * 16; i++)
        assert_true(k[i] >= -1.0f && k[i] < 1.0f);
    free(ma);
    free(mb);
    sp.mask = (enum mrac_mask_kind)99;
    assert_int_equal(mrac_random_problem(&sp, &a, &ma), MRAC_EINVAL);
    assert_null(ma);
    sp.mask = MRAC_MASK_NONE;
    sp.H = 3; /* not a multiple of Hkv */
    assert_int_equal(mrac_random_problem(&sp, &a, &ma), MRAC_EINVAL);
    assert_null(ma);
}

static void test_names(void **state)
{
    (void)state;
    enum attn_method m = ATTN_EXACT;
    enum attn_dtype dt = ATTN_F32;
    assert_int_equal(mrac_method_parse("mra2_sparse", &m), MRAC_OK);
    assert_int_equal(m, ATTN_MRA2_SPARSE);
    assert_int_equal(mrac_method_parse("mra", &m), MRAC_EINVAL);
    assert_int_equal(m, ATTN_MRA2_SPARSE); /* unchanged */
    assert_int_equal(mrac_dtype_parse("bf16", &dt), MRAC_OK);
    assert_int_equal(dt, ATTN_BF16);
    assert_int_equal(mrac_dtype_parse("f64", &dt), MRAC_EINVAL);
    assert_int_equal(dt, ATTN_BF16);
    enum mrac_mask_kind mk = MRAC_MASK_NONE;
    assert_int_equal(mrac_mask_parse("blocks", &mk), MRAC_OK);
    assert_int_equal(mk, MRAC_MASK_BLOCKS);
    assert_int_equal(mrac_mask_parse("zeros", &mk), MRAC_OK);
    assert_int_equal(mk, MRAC_MASK_ZEROS);
    assert_int_equal(mrac_mask_parse("half", &mk), MRAC_EINVAL);
    assert_int_equal(mk, MRAC_MASK_ZEROS);
}

static void test_read_file(void **state)
{
    (void)state;
    /* Larger than the first buffer, so that it grows. */
    size_t n = (1 << 16) + 123;
    char path[] = "/tmp/test-mraclient-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w+");
    assert_non_null(f);
    for (size_t i = 0; i < n; i++)
        fputc('a' + (int)(i % 26), f);
    assert_int_equal(fflush(f), 0);
    size_t len = 0;
    char *buf = mrac_read_file(path, &len);
    assert_non_null(buf);
    assert_int_equal(len, n);
    assert_int_equal(buf[n - 1], 'a' + (int)((n - 1) % 26));
    assert_int_equal(buf[n], '\0');
    free(buf);
    rewind(f);
    assert_int_equal(fseek(f, (long)n - 3, SEEK_SET), 0);
    buf = mrac_read_stream(f, &len);
    assert_non_null(buf);
    assert_int_equal(len, 3);
    assert_string_equal(buf, "ghi");
    free(buf);
    fclose(f);
    unlink(path);
    assert_null(mrac_read_file(path, &len));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_http_errors),
        cmocka_unit_test(test_get_endpoints),
        cmocka_unit_test(test_transport_errors),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_random_problem),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_read_file),
    };
    return cmocka_run_group_tests(tests, server_start, server_stop);
}
