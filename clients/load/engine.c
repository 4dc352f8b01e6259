/*
 * engine.c - the event loop of mra-load: libuv drives libcurl's multi
 * interface (curl_multi_socket_action with one uv_poll per socket and one
 * uv_timer for curl's timeouts), and a second uv_timer fires the arrivals.
 *
 * Open loop without coordinated omission: every request has an intended
 * send time taken from the arrival schedule, fixed before anything is
 * sent.  When the timer fires late, or every connection is busy, the
 * request still counts its latency from that intended time, so a stalled
 * server shows up as latency instead of as fewer requests.
 *
 * With --decode (cfg->decode) each step goes to a session of decode.c
 * that has none in flight, on that session's URL; arrivals that find
 * every session busy or backing off wait like those that find every
 * connection busy.  A session lost to a 404 is created again here, as a
 * request of its own that is not measured, and the step that got the 404
 * waits for it and is sent once more (its latency, from its intended
 * time, includes the re-create: the re-prefill a client pays); a timer
 * looks every few milliseconds for sessions whose back-off has passed.
 *
 * Everything runs on the loop thread; nothing here needs a lock.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <uv.h>

#include "clients/load/load.h"

struct req {
    CURL *easy;
    struct engine *eng;
    uint64_t intended_ns;
    int session;  /* decode: the session it works on; -1 without */
    int create;   /* decode: a session's re-create, not measured */
    int retried;  /* decode: a step sent again after a re-create */
    size_t body;  /* the index of its body in cfg->bodies */
    char *answer; /* a re-create's answer body (malloc'd) */
    size_t answer_len;
    int answer_oom;
    struct req *next_free;
    char errbuf[CURL_ERROR_SIZE];
};

struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct engine *eng;
};

struct engine {
    const struct load_config *cfg;
    struct load_result *res;
    uv_loop_t loop;
    uv_timer_t curl_timer, arrival_timer, progress_timer, session_timer;
    CURLM *multi;
    struct curl_slist *hdr_msgpack, *hdr_json;
    uint64_t t0, t_measure, t_end, last_done;
    uint64_t next_arrival;
    uint64_t rng;
    size_t next_body;
    int inflight;
    int arrivals_over;
    int failed;
    uint64_t *backlog; /* ring of intended times waiting for a connection */
    size_t bl_head, bl_len, bl_cap;
    struct req *free_reqs;
    struct req **all_reqs;
    size_t nreqs, cap_reqs;
    struct req **held; /* decode: per session, the step waiting for its
                          re-create, or NULL */
    size_t nheld;
};

static void check_done(struct engine *e);
static void maybe_finish(struct engine *e);
static void start_request(struct engine *e, uint64_t intended);

/* --- libcurl <-> libuv glue ------------------------------------------ */

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sock_ctx *sc = h->data;
    int flags = 0, running;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(sc->eng->multi, sc->fd, flags, &running);
    check_done(sc->eng);
}

static void free_on_close(uv_handle_t *h)
{
    free(h->data);
}

static int on_socket(CURL *easy, curl_socket_t s, int action, void *userp,
                     void *socketp)
{
    (void)easy;
    struct engine *e = userp;
    struct sock_ctx *sc = socketp;
    if (action == CURL_POLL_REMOVE) {
        if (sc) {
            uv_poll_stop(&sc->poll);
            curl_multi_assign(e->multi, s, NULL);
            uv_close((uv_handle_t *)&sc->poll, free_on_close);
        }
        return 0;
    }
    if (!sc) {
        sc = calloc(1, sizeof *sc);
        if (!sc)
            return -1;
        sc->fd = s;
        sc->eng = e;
        if (uv_poll_init_socket(&e->loop, &sc->poll, s) != 0) {
            free(sc);
            return -1;
        }
        sc->poll.data = sc;
        curl_multi_assign(e->multi, s, sc);
    }
    int ev = 0;
    if (action == CURL_POLL_IN || action == CURL_POLL_INOUT)
        ev |= UV_READABLE;
    if (action == CURL_POLL_OUT || action == CURL_POLL_INOUT)
        ev |= UV_WRITABLE;
    uv_poll_start(&sc->poll, ev, on_poll);
    return 0;
}

static void on_curl_timeout(uv_timer_t *t)
{
    struct engine *e = t->data;
    int running;
    curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(e);
}

static int on_curl_timer(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    struct engine *e = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&e->curl_timer);
    else
        uv_timer_start(&e->curl_timer, on_curl_timeout, (uint64_t)timeout_ms,
                       0);
    return 0;
}

/* Answers are dropped, except a re-create's, which names the session. */
static size_t on_answer(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct req *r = ud;
    size_t n = size * nmemb;
    if (!r->create || r->answer_oom)
        return n;
    char *a = n < 65536 - r->answer_len
                  ? realloc(r->answer, r->answer_len + n + 1)
                  : NULL;
    if (!a) {
        r->answer_oom = 1; /* an answer of a session is a few hundred bytes */
        return n;
    }
    memcpy(a + r->answer_len, ptr, n);
    r->answer = a;
    r->answer_len += n;
    a[r->answer_len] = '\0';
    return n;
}

/* --- requests ------------------------------------------------------- */

static struct req *req_get(struct engine *e)
{
    struct req *r = e->free_reqs;
    if (r) {
        e->free_reqs = r->next_free;
        return r;
    }
    if (e->nreqs == e->cap_reqs) {
        size_t cap = e->cap_reqs ? e->cap_reqs * 2 : 64;
        if (cap > SIZE_MAX / sizeof *e->all_reqs)
            return NULL;
        struct req **a = realloc(e->all_reqs, cap * sizeof *a);
        if (!a)
            return NULL;
        e->all_reqs = a;
        e->cap_reqs = cap;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->easy = curl_easy_init();
    if (!r->easy) {
        free(r);
        return NULL;
    }
    r->eng = e;
    e->all_reqs[e->nreqs++] = r;
    /* What never changes between requests is set once: a reused easy
     * handle keeps its options. */
    CURL *h = r->easy;
    curl_easy_setopt(h, CURLOPT_URL, e->cfg->url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PRIVATE, r);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_answer);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(e->cfg->timeout_s * 1000.0));
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    return r;
}

/* Nonzero when a step could start now: a connection, and with --decode
 * a session ready for it. */
static int can_start(struct engine *e)
{
    return e->inflight < e->cfg->max_inflight &&
           (!e->cfg->decode ||
            load_decode_available(e->cfg->decode, uv_hrtime()));
}

/* Hands a request to curl. */
static void submit(struct engine *e, struct req *r, const char *url,
                   const char *body, size_t len, int json)
{
    r->errbuf[0] = '\0';
    if (url)
        curl_easy_setopt(r->easy, CURLOPT_URL, url);
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER,
                     json ? e->hdr_json : e->hdr_msgpack);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    e->inflight++;
    curl_multi_add_handle(e->multi, r->easy);
}

static void record(struct engine *e, struct req *r, CURLcode rc, long status);

/* A step is done: a closed loop starts the next one at once. */
static void next_closed(struct engine *e)
{
    if (e->bl_len || e->cfg->rate > 0 || e->arrivals_over)
        return;
    uint64_t now = uv_hrtime();
    if (now < e->t_end)
        start_request(e, now);
    else
        e->arrivals_over = 1;
}

/* --decode: session i's re-create ended (status 0: no answer).  The step
 * that waits for it, if any, is sent again on the new session, or, when
 * the re-create failed, completes with the 404 it had. */
static void created(struct engine *e, int i, long status, const char *body,
                    size_t len)
{
    struct load_decode *d = e->cfg->decode;
    struct req *h = e->held[i];
    int made = load_decode_create_done(d, i, status, body, len, h != NULL,
                                       uv_hrtime(), e->res);
    if (!h)
        return;
    e->held[i] = NULL;
    e->nheld--;
    if (made) {
        const struct load_body *b = &e->cfg->bodies[h->body];
        h->retried = 1;
        e->res->kv_retried++;
        submit(e, h, d->s[i].step_url, b->data, b->len, b->json);
        return;
    }
    record(e, h, CURLE_OK, 404);
    h->next_free = e->free_reqs;
    e->free_reqs = h;
    next_closed(e);
}

/* --decode: creates again each lost session whose back-off has passed. */
static void start_creates(struct engine *e)
{
    struct load_decode *d = e->cfg->decode;
    int i;
    while (d && (i = load_decode_next_create(d, uv_hrtime())) >= 0) {
        struct req *r = req_get(e);
        if (!r) {
            fprintf(stderr, "mra-load: out of memory for a request\n");
            e->failed = 1;
            e->arrivals_over = 1;
            created(e, i, 0, NULL, 0);
            return;
        }
        r->session = i;
        r->create = 1;
        r->intended_ns = 0;
        submit(e, r, d->create_url, d->s[i].create_body, d->s[i].create_len, 0);
    }
}

/* Starts the arrivals that wait, as far as connections and sessions
 * allow. */
static void drain_backlog(struct engine *e)
{
    while (e->bl_len && can_start(e)) {
        uint64_t t = e->backlog[e->bl_head];
        e->bl_head = (e->bl_head + 1) % e->bl_cap;
        e->bl_len--;
        start_request(e, t);
    }
}

static void start_request(struct engine *e, uint64_t intended)
{
    if (!can_start(e)) {
        if (e->bl_len == e->bl_cap) {
            size_t cap = e->bl_cap ? e->bl_cap * 2 : 1024;
            uint64_t *b =
                cap <= SIZE_MAX / sizeof *b ? malloc(cap * sizeof *b) : NULL;
            if (!b) {
                /* counted as a failed request */
                e->res->ntransport++;
                e->res->by_transport[CURLE_OUT_OF_MEMORY]++;
                return;
            }
            for (size_t i = 0; i < e->bl_len; i++)
                b[i] = e->backlog[(e->bl_head + i) % e->bl_cap];
            free(e->backlog);
            e->backlog = b;
            e->bl_cap = cap;
            e->bl_head = 0;
        }
        e->backlog[(e->bl_head + e->bl_len) % e->bl_cap] = intended;
        e->bl_len++;
        if (e->bl_len > e->res->backlog_max)
            e->res->backlog_max = e->bl_len;
        return;
    }
    struct req *r = req_get(e);
    if (!r) {
        fprintf(stderr, "mra-load: out of memory for a request\n");
        e->failed = 1;
        e->arrivals_over = 1;
        return;
    }
    const struct load_body *b = &e->cfg->bodies[e->next_body];
    r->body = e->next_body;
    e->next_body = (e->next_body + 1) % e->cfg->nbodies;
    r->intended_ns = intended;
    r->create = 0;
    r->retried = 0;
    r->session = -1;
    const char *url = NULL; /* the one set when the handle was made */
    if (e->cfg->decode) {
        r->session = load_decode_acquire(e->cfg->decode, uv_hrtime());
        url = e->cfg->decode->s[r->session].step_url;
    }
    if (intended < e->t_measure)
        e->res->warmup_sent++;
    else if (intended < e->t_end)
        e->res->sent++;
    submit(e, r, url, b->data, b->len, b->json);
}

static void record(struct engine *e, struct req *r, CURLcode rc, long status)
{
    uint64_t now = uv_hrtime();
    if (r->intended_ns < e->t_measure || r->intended_ns >= e->t_end)
        return; /* warmup, or past the end */
    struct load_result *res = e->res;
    uint64_t lat_us = (now - r->intended_ns) / 1000;
    res->completed++;
    e->last_done = now;
    hist_record(&res->lat_all, lat_us);
    if (rc != CURLE_OK) {
        res->ntransport++;
        res->by_transport[(unsigned)rc < LOAD_TRANSPORT_KINDS
                              ? (unsigned)rc
                              : LOAD_TRANSPORT_KINDS - 1]++;
        return;
    }
    if (status >= 0 && status < 600)
        res->by_status[status]++;
    if (status == 200) {
        res->n200++;
        hist_record(&res->lat_ok, lat_us);
    } else if (status == 503) {
        res->n503++;
        hist_record(&res->lat_503, lat_us);
    } else if (status == 504) {
        res->n504++;
    } else {
        res->nother++;
    }
}

static void check_done(struct engine *e)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(e->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *h = msg->easy_handle;
        CURLcode rc = msg->data.result;
        char *priv = NULL;
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_PRIVATE, &priv);
        struct req *r = (struct req *)priv;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(e->multi, h);
        struct load_decode *d = e->cfg->decode;
        if (rc != CURLE_OK)
            status = 0;
        int step = !r->create, wait = 0;
        e->inflight--;
        if (r->create) {
            created(e, r->session, status, r->answer,
                    r->answer_oom ? 0 : r->answer_len);
            free(r->answer);
            r->answer = NULL;
            r->answer_len = 0;
            r->answer_oom = 0;
        } else {
            if (d)
                wait = load_decode_step_done(d, r->session, r->body, status,
                                             r->retried, uv_hrtime(), e->res);
            if (wait) { /* until its session is made again */
                e->held[r->session] = r;
                e->nheld++;
            } else {
                record(e, r, rc, status);
            }
        }
        if (!wait) {
            r->next_free = e->free_reqs;
            e->free_reqs = r;
        }
        start_creates(e);
        drain_backlog(e);
        if (step && !wait)
            next_closed(e);
    }
    maybe_finish(e);
}

/* --- arrivals and progress ------------------------------------------ */

static uint64_t next_gap_ns(struct engine *e)
{
    double rate = e->cfg->rate;
    if (!e->cfg->poisson)
        return (uint64_t)(1e9 / rate);
    /* xorshift64*, then an exponential variate. */
    e->rng ^= e->rng >> 12;
    e->rng ^= e->rng << 25;
    e->rng ^= e->rng >> 27;
    double u = (double)((e->rng * 2685821657736338717ULL) >> 11) * 0x1p-53;
    return (uint64_t)(-log1p(-u) / rate * 1e9);
}

static void on_arrival(uv_timer_t *t)
{
    struct engine *e = t->data;
    uint64_t now = uv_hrtime();
    while (!e->arrivals_over && e->next_arrival <= now) {
        if (e->next_arrival >= e->t_end) {
            e->arrivals_over = 1;
            break;
        }
        start_request(e, e->next_arrival);
        e->next_arrival += next_gap_ns(e);
    }
    if (e->next_arrival >= e->t_end)
        e->arrivals_over = 1;
    if (!e->arrivals_over) {
        /* uv timers count milliseconds: round up and catch up on every
         * arrival that fell due when it fires. */
        uint64_t wait_ms = (e->next_arrival - now + 999999) / 1000000;
        uv_timer_start(&e->arrival_timer, on_arrival, wait_ms, 0);
    }
    maybe_finish(e);
}

static void on_progress(uv_timer_t *t)
{
    struct engine *e = t->data;
    const struct load_result *r = e->res;
    double el = (double)(uv_hrtime() - e->t0) / 1e9;
    if (el < e->cfg->warmup_s) {
        /* Nothing is measured yet: what the warm-up sent, and in flight. */
        fprintf(stderr,
                "\r\033[K[%6.1fs] warmup sent %llu (not measured)  in flight "
                "%d  waiting %zu",
                el, (unsigned long long)r->warmup_sent, e->inflight, e->bl_len);
        return;
    }
    fprintf(stderr,
            "\r\033[K[%6.1fs] run sent %llu  ok %llu  503 %llu  504 %llu  "
            "err %llu  in flight %d  waiting %zu  p99 %.1f ms",
            el, (unsigned long long)r->sent, (unsigned long long)r->n200,
            (unsigned long long)r->n503, (unsigned long long)r->n504,
            (unsigned long long)(r->nother + r->ntransport), e->inflight,
            e->bl_len, (double)hist_quantile(&r->lat_ok, 0.99) / 1000.0);
}

/* --decode: sessions whose back-off has passed take their re-create or
 * the arrivals that wait.  Once the arrivals are over, those still
 * waiting after --timeout are given up, so that sessions that never come
 * back cannot hold the run forever. */
static void on_session_timer(uv_timer_t *t)
{
    struct engine *e = t->data;
    start_creates(e);
    drain_backlog(e);
    uint64_t limit = (uint64_t)(e->cfg->timeout_s * 1e9);
    if (e->arrivals_over && e->bl_len && limit &&
        uv_hrtime() > e->t_end + limit) {
        /* Intended in the measured phase: sent, never completed. */
        for (size_t i = 0; i < e->bl_len; i++) {
            uint64_t t = e->backlog[(e->bl_head + i) % e->bl_cap];
            if (t >= e->t_measure && t < e->t_end) {
                e->res->sent++;
                e->res->abandoned++;
            }
        }
        e->bl_len = 0;
    }
    maybe_finish(e);
}

static void maybe_finish(struct engine *e)
{
    if (e->arrivals_over && e->inflight == 0 && e->bl_len == 0 && e->nheld == 0)
        uv_stop(&e->loop);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* --- the run -------------------------------------------------------- */

int load_run(const struct load_config *cfg, struct load_result *res)
{
    memset(res, 0, sizeof *res);
    hist_reset(&res->lat_ok);
    hist_reset(&res->lat_all);
    hist_reset(&res->lat_503);
    res->offered_rate = cfg->rate > 0 ? cfg->rate : 0;
    if (!cfg->nbodies)
        return -1;

    struct engine *e = calloc(1, sizeof *e);
    if (!e)
        return -1;
    e->cfg = cfg;
    e->res = res;
    if (cfg->decode && !(e->held = calloc(cfg->decode->n ? cfg->decode->n : 1,
                                          sizeof *e->held))) {
        free(e);
        return -1;
    }
    e->rng = cfg->seed ? cfg->seed : 0x2545f4914f6cdd1dULL;
    if (uv_loop_init(&e->loop) != 0) {
        free(e->held);
        free(e);
        return -1;
    }
    uv_timer_init(&e->loop, &e->curl_timer);
    uv_timer_init(&e->loop, &e->arrival_timer);
    uv_timer_init(&e->loop, &e->progress_timer);
    uv_timer_init(&e->loop, &e->session_timer);
    e->curl_timer.data = e->arrival_timer.data = e->progress_timer.data = e;
    e->session_timer.data = e;

    char auth[1024] = "";
    if (cfg->api_key)
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", cfg->api_key);
    const char *common[] = {"Expect:", auth[0] ? auth : NULL};
    struct curl_slist **lists[] = {&e->hdr_msgpack, &e->hdr_json};
    const char *ctype[] = {"Content-Type: application/msgpack",
                           "Content-Type: application/json"};
    int ok = 1;
    for (int l = 0; l < 2; l++) {
        struct curl_slist *s = curl_slist_append(NULL, ctype[l]);
        for (int i = 0; s && i < 2; i++) {
            if (!common[i])
                continue;
            struct curl_slist *n = curl_slist_append(s, common[i]);
            if (!n) {
                curl_slist_free_all(s);
                s = NULL;
            } else {
                s = n;
            }
        }
        *lists[l] = s;
        ok = ok && s;
    }
    e->multi = curl_multi_init();
    if (!ok || !e->multi) {
        fprintf(stderr, "mra-load: could not set up libcurl\n");
        e->failed = 1;
        goto out;
    }
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);
    /* One request per connection at a time (HTTP/1.1 without
     * pipelining); keep every connection we opened alive. */
    curl_multi_setopt(e->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                      (long)cfg->max_inflight);
    curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, (long)cfg->max_inflight);

    e->t0 = uv_hrtime();
    e->t_measure = e->t0 + (uint64_t)(cfg->warmup_s * 1e9);
    e->t_end = e->t_measure + (uint64_t)(cfg->duration_s * 1e9);
    e->next_arrival = e->t0;
    if (cfg->progress)
        uv_timer_start(&e->progress_timer, on_progress, 500, 500);
    if (cfg->decode)
        uv_timer_start(&e->session_timer, on_session_timer, 5, 5);
    if (cfg->rate > 0) {
        uv_timer_start(&e->arrival_timer, on_arrival, 0, 0);
    } else {
        for (int i = 0; i < cfg->concurrency; i++)
            start_request(e, e->t0);
    }
    uv_run(&e->loop, UV_RUN_DEFAULT);
    if (cfg->progress)
        fprintf(stderr, "\r\033[K");

    uint64_t end = e->last_done > e->t_end ? e->last_done : e->t_end;
    res->elapsed_s = (double)(end - e->t_measure) / 1e9;
    res->throughput =
        res->elapsed_s > 0 ? (double)res->n200 / res->elapsed_s : 0;

out:
    uv_timer_stop(&e->arrival_timer);
    uv_timer_stop(&e->progress_timer);
    uv_timer_stop(&e->session_timer);
    for (size_t i = 0; i < e->nreqs; i++) {
        if (e->multi)
            curl_multi_remove_handle(e->multi, e->all_reqs[i]->easy);
        curl_easy_cleanup(e->all_reqs[i]->easy);
        free(e->all_reqs[i]->answer);
        free(e->all_reqs[i]);
    }
    if (e->multi)
        curl_multi_cleanup(e->multi); /* closes sockets: REMOVE callbacks */
    curl_slist_free_all(e->hdr_msgpack);
    curl_slist_free_all(e->hdr_json);
    uv_walk(&e->loop, close_walk, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    uv_loop_close(&e->loop);
    int failed = e->failed;
    free(e->all_reqs);
    free(e->backlog);
    free(e->held);
    free(e);
    return failed ? -1 : 0;
}
