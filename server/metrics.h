/*
 * metrics.h - the Prometheus metrics of the daemon (GET /metrics, text
 * exposition format 0.0.4).
 *
 * Counters and histograms live here and are updated by the HTTP threads
 * and the compute workers; gauges that belong to other parts (queue depth,
 * in-flight requests, device memory) are passed in at render time, so
 * this file depends on nothing else of the server.  Every function is
 * thread-safe.
 */
#ifndef MRAD_SERVER_METRICS_H
#define MRAD_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* Records the build labels and the process start time.  Call once, before
 * other threads start. */
void mrad_metrics_init(const char *version, const char *backend);

/* A finished HTTP request. */
struct mrad_metrics_req {
    int probe;          /* a probe or /metrics: counted apart, not timed */
    const char *api;    /* the surface: "v1", "v2" (NULL: "none") */
    const char *route;  /* "POST /v1/attention" (NULL: "none") */
    const char *method; /* the attention method (NULL: "none") */
    unsigned status;
    double seconds;                       /* first byte to the answer's end */
    double receive_seconds, send_seconds; /* < 0: none (no body, no answer) */
    uint64_t bytes_in, bytes_out;
};
void mrad_metrics_request(const struct mrad_metrics_req *q);
/* Time a computed request waited in the queue. */
void mrad_metrics_queue(double seconds);
/* One batch: how many requests it held, their tokens, how long it
 * computed. */
void mrad_metrics_batch(uint32_t requests, uint64_t tokens,
                        double compute_seconds);
/* One computed problem: its method, tokens (B*max(Nq,Nk)), block
 * statistics and estimated error (< 0: none). */
void mrad_metrics_problem(const char *method, uint64_t tokens,
                          uint64_t blocks_selected, uint64_t blocks_total,
                          double density, double est_rel_err);

/* Device memory of one worker's backend, when it reports it. */
struct mrad_metrics_device {
    int device;
    int ok; /* 0: the backend has no device memory (CPU); not exported */
    uint64_t used, total;
};

/* Gauges owned by the scheduler, sampled by the caller. */
struct mrad_metrics_gauges {
    uint64_t queue_depth;
    uint64_t inflight;
    uint64_t queue_capacity; /* --max-queue */
    uint64_t open_connections;
    uint64_t inflight_bytes, max_inflight_bytes;
    /* connections closed by the daemon, by reason */
    uint64_t head_timeouts, slow_uploads, lingering_closes, refused;
    const struct mrad_metrics_device *devices;
    size_t ndevices;
    /* The sessions (server/kv.h): gauges, then counters. */
    uint64_t kv_sessions, kv_bytes, kv_budget_bytes;
    uint64_t kv_created, kv_deleted, kv_evicted, kv_expired;
    uint64_t kv_hits, kv_misses, kv_append_tokens, kv_full;
};

/*
 * Renders every metric.  Returns a malloc'd text (length in *len) the
 * caller frees, or NULL when out of memory.
 */
char *mrad_metrics_render(const struct mrad_metrics_gauges *g, size_t *len);

#endif /* MRAD_SERVER_METRICS_H */
