/*
 * api-v2.c - the /v2 surface: the KServe v2 / Open Inference Protocol as
 * Triton serves it, so that tritonclient, perf_analyzer and KServe call
 * mrad unchanged (protocol/SPEC.md, "KServe v2").
 *
 * The models are the methods: mra2, mra2_sparse and exact, version "1".
 * Inference decodes the body with protocol/v2.c (JSON tensors, binary
 * data after the JSON header, tensors in registered shared memory) and
 * then goes exactly as POST /v1/attention: the same session binding,
 * admission, batching and deadlines (server/call.h).  Errors are KServe's
 * {"error": message} with the /v1 statuses.  Shared memory (Triton's
 * system shared-memory extension) is served with --allow-shm; the regions
 * are server/shm.c's.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "protocol/proto.h"
#include "server/call.h"
#include "server/route.h"

static const char *const models[] = {"mra2", "mra2_sparse", "exact"};
#define NMODELS (sizeof models / sizeof models[0])

/* The model of a path's segment `seg` (its index), or -1. */
static int path_model(struct mrad_req *r, int seg)
{
    char name[PROTO_V2_NAME_MAX + 2];
    if (mrad_req_path_segment(r, seg, name, sizeof name) < 0)
        return -1;
    for (size_t i = 0; i < NMODELS; i++)
        if (!strcmp(name, models[i]))
            return (int)i;
    return -1;
}

/* /v2/models/{m}[/versions/{v}]/...: the model, or -1 with 404 answered
 * (an unknown model, or a version other than "1"). */
static int model_of(struct mrad_req *r, int *rc)
{
    int m = path_model(r, 2);
    char v[16];
    int versioned = mrad_req_path_segment(r, 3, v, sizeof v) >= 0 &&
                    !strcmp(v, "versions");
    if (m >= 0 && versioned &&
        (mrad_req_path_segment(r, 4, v, sizeof v) < 0 || strcmp(v, "1")))
        m = -1;
    if (m < 0)
        *rc = mrad_req_error(r, MRAD_SRC_SERVER, MRAD_ENOTFOUND,
                             "unknown model or version: the models are mra2, "
                             "mra2_sparse and exact, version 1");
    return m;
}

/* ---- per-model statistics (GET .../stats) -------------------------------- */

struct duration {
    uint64_t count, ns;
};

static struct model_stats {
    uint64_t last_inference_ms; /* since the epoch */
    uint64_t inference_count;   /* batch entries computed */
    uint64_t execution_count;   /* requests computed */
    struct duration success, fail, queue, compute_infer;
} stats[NMODELS];
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;

static void count_request(int m, int ok, uint64_t total_us,
                          const struct mrad_job *job, uint32_t B)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    pthread_mutex_lock(&stats_lock);
    struct model_stats *s = &stats[m];
    struct duration *d = ok ? &s->success : &s->fail;
    d->count++;
    d->ns += total_us * 1000;
    if (ok) {
        s->last_inference_ms =
            (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
        s->inference_count += B;
        s->execution_count++;
        s->queue.count++;
        s->queue.ns += job->queue_us * 1000;
        s->compute_infer.count++;
        s->compute_infer.ns += job->compute_us * 1000;
    }
    pthread_mutex_unlock(&stats_lock);
}

/* ---- POST /v2/models/{m}/infer ---------------------------------------------- */

/* Inputs and the output: up to 8 regions in use by one request. */
#define MAX_REGIONS 9

struct v2_call {
    struct mrad_call c; /* first */
    struct proto_v2_request req;
    int model;
    uint64_t owner;  /* the API key's identity: whose regions */
    size_t json_len; /* Inference-Header-Content-Length, or the body */
    int has_header_len;
    struct mrad_shm_region *regions[MAX_REGIONS];
    size_t nregions;
    char *answer; /* the JSON header of the answer */
};

static void v2_cleanup(struct mrad_call *c)
{
    struct v2_call *call = (struct v2_call *)c;
    proto_v2_request_release(&call->req);
    for (size_t i = 0; i < call->nregions; i++)
        mrad_shm_release(c->srv->shm, call->regions[i]);
    free(call->answer);
}

static const struct mrad_job_ops v2_ops = {.done = mrad_call_done,
                                           .cancelled = mrad_call_cancelled,
                                           .release = mrad_call_release};

/* The request's shared-memory references, resolved for its owner's key;
 * each region stays in use until the call is freed. */
static int resolve_shm(void *ctx, const struct proto_v2_shm *ref,
                       const char *what, uint64_t need, void **ptr, char *err,
                       size_t errlen)
{
    struct v2_call *call = ctx;
    struct mrad_call *c = &call->c;
    if (call->nregions == MAX_REGIONS) {
        snprintf(err, errlen, "%s: too many shared-memory tensors", what);
        return PROTO_EBADREQ;
    }
    struct mrad_shm_region *reg =
        mrad_shm_use(c->srv->shm, call->owner, ref->region, ref->offset, need,
                     what, ptr, err, errlen);
    if (!reg)
        return PROTO_EBADREQ;
    call->regions[call->nregions++] = reg;
    return PROTO_OK;
}

static int infer_begin(struct mrad_req *r)
{
    int rc;
    int m = model_of(r, &rc);
    if (m < 0)
        return rc;
    struct mrad_call *c = mrad_call_begin(r, sizeof(struct v2_call), &v2_ops,
                                          MRAD_CALL_ANY_MEDIA, &rc);
    if (!c)
        return rc;
    struct v2_call *call = (struct v2_call *)c;
    c->cleanup = v2_cleanup;
    call->model = m;
    call->owner = mrad_req_key_id(r);
    /* Binary data after a JSON header: the header's length says where it
     * starts, which is laid 64-byte aligned in memory so that the tensors
     * are read in place. */
    const char *hl = mrad_req_header(r, "Inference-Header-Content-Length");
    if (hl) {
        char *end;
        unsigned long long n = strtoull(hl, &end, 10);
        if (*hl < '0' || *hl > '9' || *end) {
            return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ,
                                  "Inference-Header-Content-Length: must be "
                                  "a byte count");
        }
        call->json_len = (size_t)n;
        call->has_header_len = 1;
        mrad_req_set_body_skew(r, n);
    }
    return 0;
}

static int infer_handle(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    struct v2_call *call = mrad_req_data(r);
    struct mrad_call *c = &call->c;
    char err[256];
    mrad_call_take_body(r, c);
    size_t json_len = call->has_header_len ? call->json_len : c->body_len;
    if (json_len > srv->cfg->max_json_bytes) {
        snprintf(err, sizeof err,
                 "the JSON header of %zu bytes exceeds --max-json-bytes "
                 "(%" PRIu64 "): send tensors as binary data",
                 json_len, srv->cfg->max_json_bytes);
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_ETOOBIG, err);
    }
    struct proto_v2_opts o = {
        {&srv->cfg->limits, &mrad_call_out_alloc, NULL},
        srv->shm ? resolve_shm : NULL,
        call,
    };
    int rc = proto_v2_request_decode(mrad_call_body(c), c->body_len, json_len,
                                     models[call->model], &o, &call->req, err,
                                     sizeof err);
    uint64_t total_us = (mrad_now_ns() - mrad_req_start_ns(r)) / 1000;
    if (rc != PROTO_OK) {
        count_request(call->model, 0, total_us, &c->job, 0);
        return mrad_req_error(r, MRAD_SRC_PROTO, rc, err);
    }
    struct proto_request *req = &call->req.req;
    if ((req->has_kv && mrad_call_bind_session(r, c, req, 0)) ||
        mrad_call_admit(r, c, &req->prob, !call->req.shm_out)) {
        count_request(call->model, 0, total_us, &c->job, 0);
        return 0;
    }
    return mrad_call_submit(r, c, req->timeout_ms);
}

/* The free callback of an answer sent from the call's buffers. */
static void release_call(void *cls)
{
    struct v2_call *call = cls;
    mrad_job_unref(&call->c.job);
}

static int infer_resume(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    struct v2_call *call = mrad_req_data(r);
    struct mrad_call *c = &call->c;
    const struct mrad_job *job = &c->job;
    struct proto_v2_request *v2 = &call->req;
    int rc;
    int failed = mrad_call_failed(r, c, v2->has_v2_id ? v2->v2_id : NULL, &rc);
    mrad_call_end_session(c);
    uint64_t total_us = (mrad_now_ns() - mrad_req_start_ns(r)) / 1000;
    count_request(call->model, !failed, total_us, job, v2->req.prob.B);
    if (failed)
        return rc;
    for (size_t i = 0; i < call->nregions; i++)
        if (mrad_shm_broken(call->regions[i])) {
            char msg[256];
            snprintf(msg, sizeof msg,
                     "shared-memory region %s shrank while the request used "
                     "it: its tensors were not read or written whole",
                     mrad_shm_name(call->regions[i]));
            return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ, msg);
        }
    struct proto_stats st = {
        .attn = job->stats,
        .backend = srv->info.backend,
        .queue_us = job->queue_us,
        .compute_us = job->compute_us,
        .batch_requests = job->batch_requests,
    };
    mrad_call_drop_body(c);
    size_t len;
    if (proto_v2_response_encode(v2, &st, &call->answer, &len) != PROTO_OK)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                              "out of memory encoding the answer");
    if (!v2->binary_out || v2->shm_out) {
        char *body = call->answer;
        call->answer = NULL;
        return mrad_req_send(r, 200, "application/json", body, len);
    }
    /* The JSON header, then the output's bytes from where they were
     * computed. */
    char hl[32];
    snprintf(hl, sizeof hl, "%zu", len);
    mrad_req_add_header(r, "Inference-Header-Content-Length", hl);
    const struct mrad_req_piece pieces[2] = {
        {call->answer, len},
        {v2->req.prob.out, mrad_call_out_bytes(&v2->req.prob)},
    };
    mrad_job_ref(&c->job);
    return mrad_req_send_pieces(r, 200, "application/octet-stream", pieces, 2,
                                release_call, call);
}

/* ---- health and metadata --------------------------------------------------- */

static int get_live(struct mrad_req *r)
{
    return mrad_req_send(r, 200, NULL, NULL, 0);
}

/* Ready as /readyz: started, not draining, healthy, the queue not full. */
static int server_ready(struct mrad_server *srv)
{
    struct mrad_sched_status st;
    mrad_sched_status(srv->sched, &st);
    return atomic_load(&srv->ready) && !atomic_load(&srv->draining) &&
           !st.draining && st.healthy && st.queue_depth < st.max_queue;
}

static int get_ready(struct mrad_req *r)
{
    if (!server_ready(mrad_req_server(r)))
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EUNAVAIL,
                              "the server is not ready");
    return mrad_req_send(r, 200, NULL, NULL, 0);
}

static int get_server(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    return mrad_req_send_json(
        r, 200,
        "{\"name\":\"mrad\",\"version\":\"%s\",\"extensions\":["
        "\"binary_tensor_data\",\"statistics\",\"model_repository\"%s]}",
        MRAD_VERSION, srv->shm ? ",\"system_shared_memory\"" : "");
}

static int get_model(struct mrad_req *r)
{
    int rc, m = model_of(r, &rc);
    if (m < 0)
        return rc;
    return mrad_req_send_json(
        r, 200,
        "{\"name\":\"%s\",\"versions\":[\"1\"],\"platform\":\"mrad\","
        "\"inputs\":["
        "{\"name\":\"q\",\"datatype\":\"FP32\",\"shape\":[-1,-1,-1,-1]},"
        "{\"name\":\"k\",\"datatype\":\"FP32\",\"shape\":[-1,-1,-1,-1]},"
        "{\"name\":\"v\",\"datatype\":\"FP32\",\"shape\":[-1,-1,-1,-1]}],"
        "\"outputs\":["
        "{\"name\":\"out\",\"datatype\":\"FP32\",\"shape\":[-1,-1,-1,-1]}]}",
        models[m]);
}

static int get_model_ready(struct mrad_req *r)
{
    int rc, m = model_of(r, &rc);
    if (m < 0)
        return rc;
    return get_ready(r);
}

/* Triton's model configuration: the inputs every request has and the
 * output, no batching dimension of Triton's own (B is a dimension of every
 * tensor).  The optional inputs (mask, q_mask, k_append, v_append,
 * mask_append) are left out of it and of the metadata, as load tools send
 * every input they are told of. */
static int get_config(struct mrad_req *r)
{
    int rc, m = model_of(r, &rc);
    if (m < 0)
        return rc;
    struct mrad_server *srv = mrad_req_server(r);
    return mrad_req_send_json(
        r, 200,
        "{\"name\":\"%s\",\"platform\":\"mrad\",\"backend\":\"mrad\","
        "\"version_policy\":{\"latest\":{\"num_versions\":1}},"
        "\"max_batch_size\":0,"
        "\"input\":["
        "{\"name\":\"q\",\"data_type\":\"TYPE_FP32\",\"dims\":[-1,-1,-1,-1]},"
        "{\"name\":\"k\",\"data_type\":\"TYPE_FP32\",\"dims\":[-1,-1,-1,-1]},"
        "{\"name\":\"v\",\"data_type\":\"TYPE_FP32\",\"dims\":[-1,-1,-1,-1]}],"
        "\"output\":["
        "{\"name\":\"out\",\"data_type\":\"TYPE_FP32\",\"dims\":[-1,-1,-1,-1]}],"
        "\"instance_group\":[{\"count\":%" PRIu32 ",\"kind\":\"%s\"}],"
        "\"dynamic_batching\":{\"max_queue_delay_microseconds\":%" PRIu64 "}}",
        models[m], srv->info.workers,
        strcmp(srv->info.backend, "cpu") ? "KIND_GPU" : "KIND_CPU",
        srv->cfg->batch_window_us);
}

static int post_index(struct mrad_req *r)
{
    return mrad_req_send_json(
        r, 200,
        "[{\"name\":\"exact\",\"version\":\"1\",\"state\":\"READY\"},"
        "{\"name\":\"mra2\",\"version\":\"1\",\"state\":\"READY\"},"
        "{\"name\":\"mra2_sparse\",\"version\":\"1\",\"state\":\"READY\"}]");
}

/* One model's statistics in Triton's shape, appended to buf. */
static size_t put_stats(char *buf, size_t cap, int m)
{
    pthread_mutex_lock(&stats_lock);
    struct model_stats s = stats[m];
    pthread_mutex_unlock(&stats_lock);
    int n = snprintf(
        buf, cap,
        "{\"name\":\"%s\",\"version\":\"1\",\"last_inference\":%" PRIu64
        ",\"inference_count\":%" PRIu64 ",\"execution_count\":%" PRIu64
        ",\"inference_stats\":{"
        "\"success\":{\"count\":%" PRIu64 ",\"ns\":%" PRIu64 "},"
        "\"fail\":{\"count\":%" PRIu64 ",\"ns\":%" PRIu64 "},"
        "\"queue\":{\"count\":%" PRIu64 ",\"ns\":%" PRIu64 "},"
        "\"compute_input\":{\"count\":%" PRIu64 ",\"ns\":0},"
        "\"compute_infer\":{\"count\":%" PRIu64 ",\"ns\":%" PRIu64 "},"
        "\"compute_output\":{\"count\":%" PRIu64 ",\"ns\":0},"
        "\"cache_hit\":{\"count\":0,\"ns\":0},"
        "\"cache_miss\":{\"count\":0,\"ns\":0}},"
        "\"batch_stats\":[]}",
        models[m], s.last_inference_ms, s.inference_count, s.execution_count,
        s.success.count, s.success.ns, s.fail.count, s.fail.ns, s.queue.count,
        s.queue.ns, s.compute_infer.count, s.compute_infer.count,
        s.compute_infer.ns, s.compute_infer.count);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static int get_stats(struct mrad_req *r)
{
    char seg[16];
    int all = mrad_req_path_segment(r, 2, seg, sizeof seg) >= 0 &&
              !strcmp(seg, "stats");
    int rc, m = all ? -1 : model_of(r, &rc);
    if (!all && m < 0)
        return rc;
    char *buf = malloc(4096);
    if (!buf)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                              "out of memory");
    size_t n = (size_t)snprintf(buf, 4096, "{\"model_stats\":[");
    for (int i = 0; i < (int)NMODELS; i++) {
        if (!all && i != m)
            continue;
        if (n > 16)
            buf[n++] = ',';
        n += put_stats(buf + n, 4096 - n - 4, i);
    }
    n += (size_t)snprintf(buf + n, 4096 - n, "]}");
    return mrad_req_send(r, 200, "application/json", buf, n);
}

/* ---- system shared memory -------------------------------------------------- */

/* The region name of the path (segment 3), or -1 with 400 answered. */
static int region_of(struct mrad_req *r, char *name, size_t len, int *rc)
{
    if (mrad_req_path_segment(r, 3, name, len) < 0) {
        *rc = mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ,
                             "the region name is too long");
        return -1;
    }
    return 0;
}

static int shm_off(struct mrad_req *r)
{
    return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ,
                          "system shared memory is not enabled on this "
                          "server (mrad --allow-shm)");
}

static int shm_register(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    if (!srv->shm)
        return shm_off(r);
    char name[MRAD_SHM_NAME_MAX + 2], key[MRAD_SHM_NAME_MAX + 2], msg[256];
    int rc;
    if (region_of(r, name, sizeof name, &rc))
        return rc;
    size_t len;
    const char *body = mrad_req_body(r, &len);
    struct proto_v2_shm ref;
    if (proto_v2_shm_register_decode(body ? body : "", len, key, sizeof key,
                                     &ref, msg, sizeof msg) != PROTO_OK)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ, msg);
    if (mrad_shm_register(srv->shm, mrad_req_key_id(r), name, key, ref.offset,
                          ref.byte_size, msg, sizeof msg))
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ, msg);
    return mrad_req_send(r, 200, NULL, NULL, 0);
}

static int shm_unregister(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    if (!srv->shm)
        return shm_off(r);
    char name[MRAD_SHM_NAME_MAX + 2], seg[16], msg[256];
    int rc, one = mrad_req_path_segment(r, 2, seg, sizeof seg) >= 0 &&
                  !strcmp(seg, "region");
    if (one && region_of(r, name, sizeof name, &rc))
        return rc;
    if (mrad_shm_unregister(srv->shm, mrad_req_key_id(r), one ? name : NULL,
                            msg, sizeof msg))
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ, msg);
    return mrad_req_send(r, 200, NULL, NULL, 0);
}

static int shm_status(struct mrad_req *r)
{
    struct mrad_server *srv = mrad_req_server(r);
    if (!srv->shm)
        return shm_off(r);
    char name[MRAD_SHM_NAME_MAX + 2], seg[16];
    int rc, one = mrad_req_path_segment(r, 2, seg, sizeof seg) >= 0 &&
                  !strcmp(seg, "region");
    if (one && region_of(r, name, sizeof name, &rc))
        return rc;
    struct mrad_shm_info *info = calloc(MRAD_SHM_REGIONS, sizeof *info);
    if (!info)
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                              "out of memory");
    size_t n = mrad_shm_status(srv->shm, mrad_req_key_id(r), one ? name : NULL,
                               info, MRAD_SHM_REGIONS);
    if (one && n == 0) {
        free(info);
        char msg[200];
        snprintf(msg, sizeof msg, "region %s is not registered", name);
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ, msg);
    }
    /* names and keys are of [A-Za-z0-9._-] and '/': no escaping */
    size_t cap = 64 + n * (2 * MRAD_SHM_NAME_MAX + 96);
    char *buf = malloc(cap);
    if (!buf) {
        free(info);
        return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EINTERNAL,
                              "out of memory");
    }
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(
            buf + len, cap - len,
            "%s{\"name\":\"%s\",\"key\":\"%s\",\"offset\":%" PRIu64
            ",\"byte_size\":%" PRIu64 "}",
            i ? "," : "", info[i].name, info[i].key, info[i].offset,
            info[i].byte_size);
    len += (size_t)snprintf(buf + len, cap - len, "]");
    free(info);
    return mrad_req_send(r, 200, "application/json", buf, len);
}

static int cuda_shm(struct mrad_req *r)
{
    return mrad_req_error(r, MRAD_SRC_SERVER, MRAD_EBADREQ,
                          "CUDA shared memory is not supported; use system "
                          "shared memory");
}

/* No CUDA region is ever registered: none to list, none to unregister. */
static int cuda_shm_status(struct mrad_req *r)
{
    return mrad_req_send_json(r, 200, "[]");
}

static int cuda_shm_unregister_all(struct mrad_req *r)
{
    return mrad_req_send(r, 200, NULL, NULL, 0);
}

static char *error_body(const char *code, const char *message, size_t *len)
{
    (void)code;
    return proto_v2_error_body(message, len);
}

static const struct mrad_route routes[] = {
    {"GET", "/v2", 0, NULL, get_server, NULL},
    {"GET", "/v2/health/live", 0, NULL, get_live, NULL},
    {"GET", "/v2/health/ready", 0, NULL, get_ready, NULL},
    {"GET", "/v2/models/stats", 0, NULL, get_stats, NULL},
    {"GET", "/v2/models/*", 0, NULL, get_model, NULL},
    {"GET", "/v2/models/*/versions/*", 0, NULL, get_model, NULL},
    {"GET", "/v2/models/*/ready", 0, NULL, get_model_ready, NULL},
    {"GET", "/v2/models/*/versions/*/ready", 0, NULL, get_model_ready, NULL},
    {"GET", "/v2/models/*/config", 0, NULL, get_config, NULL},
    {"GET", "/v2/models/*/versions/*/config", 0, NULL, get_config, NULL},
    {"GET", "/v2/models/*/stats", 0, NULL, get_stats, NULL},
    {"GET", "/v2/models/*/versions/*/stats", 0, NULL, get_stats, NULL},
    {"POST", "/v2/models/*/infer", MRAD_ROUTE_BODY, infer_begin, infer_handle,
     infer_resume},
    {"POST", "/v2/models/*/versions/*/infer", MRAD_ROUTE_BODY, infer_begin,
     infer_handle, infer_resume},
    {"POST", "/v2/repository/index", 0, NULL, post_index, NULL},
    {"GET", "/v2/systemsharedmemory/status", 0, NULL, shm_status, NULL},
    {"GET", "/v2/systemsharedmemory/region/*/status", 0, NULL, shm_status,
     NULL},
    {"POST", "/v2/systemsharedmemory/region/*/register", MRAD_ROUTE_BODY, NULL,
     shm_register, NULL},
    {"POST", "/v2/systemsharedmemory/region/*/unregister", 0, NULL,
     shm_unregister, NULL},
    {"POST", "/v2/systemsharedmemory/unregister", 0, NULL, shm_unregister,
     NULL},
    {"GET", "/v2/cudasharedmemory/status", 0, NULL, cuda_shm_status, NULL},
    {"POST", "/v2/cudasharedmemory/region/*/register", 0, NULL, cuda_shm,
     NULL},
    {"POST", "/v2/cudasharedmemory/region/*/unregister", 0, NULL, cuda_shm,
     NULL},
    {"GET", "/v2/cudasharedmemory/region/*/status", 0, NULL, cuda_shm, NULL},
    {"POST", "/v2/cudasharedmemory/unregister", 0, NULL,
     cuda_shm_unregister_all, NULL},
};

const struct mrad_api mrad_api_v2 = {
    .name = "v2",
    .key_prefix = "/v2",
    .routes = routes,
    .nroutes = sizeof(routes) / sizeof(routes[0]),
    .error_body = error_body,
};
