/*
 * api-ops.c - the operations surface: GET /healthz, /readyz, /metrics.
 *
 * Open without the API key (orchestrators and scrapers call them), and
 * answered from snapshots under short locks: they never wait behind the
 * batch queue.
 */
#include "server/metrics.h"
#include "server/route.h"

/* 503 unavailable with the reason when the server cannot serve: draining
 * or a broken backend; 0 when it can. */
static int refuse_unhealthy(struct mrad_req *r,
                            const struct mrad_sched_status *st, int *answered)
{
    const struct mrad_server *srv = mrad_req_server(r);
    *answered = 1;
    if (atomic_load(&srv->draining) || st->draining)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                              "the server is draining");
    if (!st->healthy)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                              "a compute backend reports a device fault");
    *answered = 0;
    return 0;
}

static int get_healthz(struct mrad_req *r)
{
    struct mrad_sched_status st;
    int answered;
    mrad_sched_status(mrad_req_server(r)->sched, &st);
    int rc = refuse_unhealthy(r, &st, &answered);
    if (answered)
        return rc;
    return mrad_req_send_json(r, 200, "{\"status\":\"ok\"}");
}

static int get_readyz(struct mrad_req *r)
{
    const struct mrad_server *srv = mrad_req_server(r);
    struct mrad_sched_status st;
    int answered;
    mrad_sched_status(srv->sched, &st);
    if (!atomic_load(&srv->ready))
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                              "the server is starting");
    int rc = refuse_unhealthy(r, &st, &answered);
    if (answered)
        return rc;
    if (st.queue_depth >= st.max_queue)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EOVERLOAD,
                              "the request queue is full");
    return mrad_req_send_json(r, 200, "{\"status\":\"ready\"}");
}

static int get_metrics(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    struct mrad_sched *sched = srv->sched;
    struct mrad_sched_status st;
    struct mrad_metrics_device devs[MRAD_MAX_DEVICES];
    mrad_sched_status(sched, &st);
    struct mrad_server_stats ss;
    mrad_server_stats(srv, &ss);
    struct mrad_metrics_gauges g = {
        .queue_depth = st.queue_depth,
        .inflight = st.inflight,
        .queue_capacity = st.max_queue,
        .open_connections = ss.open_connections,
        .inflight_bytes = atomic_load(&srv->inflight_bytes),
        .max_inflight_bytes = srv->max_inflight_bytes,
        .head_timeouts = ss.head_timeouts,
        .slow_uploads = ss.slow_uploads,
        .lingering_closes = ss.lingering_closes,
        .refused = ss.refused_connections,
        .devices = devs,
        .ndevices = mrad_sched_devices(sched, devs, MRAD_MAX_DEVICES),
    };
    struct mrad_kv_stats kv;
    mrad_kv_stats(srv->kv, &kv);
    g.kv_sessions = kv.sessions;
    g.kv_bytes = kv.bytes;
    g.kv_budget_bytes = kv.budget_bytes;
    g.kv_created = kv.created;
    g.kv_deleted = kv.deleted;
    g.kv_evicted = kv.evicted;
    g.kv_expired = kv.expired;
    g.kv_hits = kv.hits;
    g.kv_misses = kv.misses;
    g.kv_append_tokens = kv.append_tokens;
    g.kv_full = kv.full;
    size_t len;
    char *text = mrad_metrics_render(&g, &len);
    if (!text)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                              "out of memory rendering the metrics");
    return mrad_req_send(r, 200, "text/plain; version=0.0.4; charset=utf-8",
                         text, len);
}

static const struct mrad_route routes[] = {
    {"GET", "/healthz", MRAD_ROUTE_OPS, NULL, get_healthz, NULL},
    {"GET", "/readyz", MRAD_ROUTE_OPS, NULL, get_readyz, NULL},
    {"GET", "/metrics", MRAD_ROUTE_OPS, NULL, get_metrics, NULL},
};

const struct mrad_api mrad_api_ops = {
    .name = "ops",
    .key_prefix = NULL,
    .routes = routes,
    .nroutes = sizeof(routes) / sizeof(routes[0]),
};
