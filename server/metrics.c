/*
 * metrics.c - counters, histograms and the Prometheus text renderer.
 *
 * One mutex guards every series: updates are a handful of additions per
 * request, far below anything that would contend, and a scrape sees one
 * consistent snapshot.  Process metrics are read from /proc at scrape
 * time, as the Prometheus client libraries do.
 */
#include "server/metrics.h"

#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MAX_BUCKETS 16

struct histogram {
    const char *name;
    const char *help;
    const double *bounds; /* upper bounds, ascending; +Inf implied */
    size_t nbounds;
    uint64_t counts[MAX_BUCKETS]; /* not cumulative; rendered cumulative */
    uint64_t count;
    double sum;
};

static const double seconds_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                        0.025,  0.05,  0.1,    0.25,  0.5,
                                        1,      2.5,   5,      10,    30};
static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128};
static const double density_bounds[] = {0.01, 0.02, 0.05, 0.1, 0.2,
                                        0.3,  0.5,  0.75, 1};
#define NB(a) (sizeof(a) / sizeof(a[0]))

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char build_version[64], build_backend[32];
static double start_time;

/* The API surfaces of the `api` label (server/route.h); the last is for
 * requests no surface took. */
static const char *const api_names[] = {"ops", "v1", "v2", "none"};
#define NAPIS (sizeof api_names / sizeof api_names[0])
static uint64_t requests_by_status[NAPIS][600];
static uint64_t tokens_total, blocks_selected_total, blocks_total_total;

#define REQUEST_HISTOGRAM                                                      \
    {"mrad_request_duration_seconds",                                          \
     "Time from the first byte of a request to its answer.",                   \
     seconds_bounds,                                                           \
     NB(seconds_bounds),                                                       \
     {0},                                                                      \
     0,                                                                        \
     0}
static struct histogram h_request[NAPIS] = {
    REQUEST_HISTOGRAM, REQUEST_HISTOGRAM, REQUEST_HISTOGRAM, REQUEST_HISTOGRAM};
static struct histogram h_queue = {
    "mrad_queue_duration_seconds",
    "Time a request waited for a compute worker.",
    seconds_bounds,
    NB(seconds_bounds),
    {0},
    0,
    0};
static struct histogram h_compute = {"mrad_compute_duration_seconds",
                                     "Compute time of one batch.",
                                     seconds_bounds,
                                     NB(seconds_bounds),
                                     {0},
                                     0,
                                     0};
static struct histogram h_batch = {"mrad_batch_requests",
                                   "Requests computed together in one batch.",
                                   batch_bounds,
                                   NB(batch_bounds),
                                   {0},
                                   0,
                                   0};
static struct histogram h_density = {
    "mrad_block_density",
    "Fraction of blocks computed at full resolution, per request.",
    density_bounds,
    NB(density_bounds),
    {0},
    0,
    0};

static void observe(struct histogram *h, double v)
{
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

void mrad_metrics_init(const char *version, const char *backend)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    pthread_mutex_lock(&lock);
    snprintf(build_version, sizeof(build_version), "%s", version);
    snprintf(build_backend, sizeof(build_backend), "%s", backend);
    start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    pthread_mutex_unlock(&lock);
}

void mrad_metrics_request(const char *api, unsigned status, double seconds)
{
    size_t a = 0;
    while (a < NAPIS - 1 && strcmp(api_names[a], api))
        a++;
    pthread_mutex_lock(&lock);
    if (status < NB(requests_by_status[a]))
        requests_by_status[a][status]++;
    observe(&h_request[a], seconds);
    pthread_mutex_unlock(&lock);
}

void mrad_metrics_queue(double seconds)
{
    pthread_mutex_lock(&lock);
    observe(&h_queue, seconds);
    pthread_mutex_unlock(&lock);
}

void mrad_metrics_batch(uint32_t requests, double compute_seconds)
{
    pthread_mutex_lock(&lock);
    observe(&h_batch, (double)requests);
    observe(&h_compute, compute_seconds);
    pthread_mutex_unlock(&lock);
}

void mrad_metrics_problem(uint64_t tokens, uint64_t blocks_selected,
                          uint64_t blocks_total, double density)
{
    pthread_mutex_lock(&lock);
    tokens_total += tokens;
    blocks_selected_total += blocks_selected;
    blocks_total_total += blocks_total;
    observe(&h_density, density);
    pthread_mutex_unlock(&lock);
}

/* A growable text buffer; `failed` makes every later append a no-op so
 * the renderer checks for out-of-memory once at the end. */
struct text {
    char *buf;
    size_t len, cap;
    int failed;
};

__attribute__((format(printf, 2, 3))) static void put(struct text *t,
                                                      const char *fmt, ...)
{
    if (t->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->failed = 1;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

/* The samples of a histogram; `label` ("api=\"v1\"", or "" for none) is
 * added to each. */
static void put_samples(struct text *t, const struct histogram *h,
                        const char *label)
{
    const char *sep = *label ? "," : "";
    uint64_t cum = 0;
    for (size_t i = 0; i < h->nbounds; i++) {
        cum += h->counts[i];
        put(t, "%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n", h->name, label, sep,
            h->bounds[i], cum);
    }
    put(t, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", h->name, label, sep,
        h->count);
    if (*label)
        put(t, "%s_sum{%s} %.9g\n%s_count{%s} %" PRIu64 "\n", h->name, label,
            h->sum, h->name, label, h->count);
    else
        put(t, "%s_sum %.9g\n%s_count %" PRIu64 "\n", h->name, h->sum,
            h->name, h->count);
}

static void put_histogram(struct text *t, const struct histogram *h)
{
    put(t, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    put_samples(t, h, "");
}

static void put_simple(struct text *t, const char *name, const char *type,
                       const char *help, double value)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type,
        name, value);
}

/* Process metrics from /proc/self, as the Prometheus clients export them. */
static void put_process(struct text *t)
{
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    unsigned long utime = 0, stime = 0, vsize = 0;
    long rss = 0;
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        /* Fields after the parenthesised command name, which may hold
         * spaces: state is field 3, utime 14, stime 15, vsize 23, rss 24. */
        char *p = strrchr(buf, ')');
        if (p && sscanf(p + 2,
                        "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu "
                        "%*d %*d %*d %*d %*d %*d %*u %lu %ld",
                        &utime, &stime, &vsize, &rss) != 4)
            utime = stime = vsize = 0, rss = 0;
    }
    size_t fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                fds++;
        closedir(d);
        if (fds)
            fds--; /* the descriptor of the directory stream itself */
    }
    struct rlimit rl = {0, 0};
    getrlimit(RLIMIT_NOFILE, &rl);

    /* The process CPU clock has nanoseconds; /proc's ticks are 10 ms. */
    struct timespec cpu;
    double cpu_s = tick > 0 ? (double)(utime + stime) / (double)tick : 0;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu) == 0)
        cpu_s = (double)cpu.tv_sec + (double)cpu.tv_nsec / 1e9;
    put_simple(t, "process_cpu_seconds_total", "counter",
               "Total user and system CPU time spent in seconds.", cpu_s);
    put_simple(t, "process_resident_memory_bytes", "gauge",
               "Resident memory size in bytes.", (double)rss * (double)page);
    put_simple(t, "process_virtual_memory_bytes", "gauge",
               "Virtual memory size in bytes.", (double)vsize);
    put_simple(t, "process_open_fds", "gauge",
               "Number of open file descriptors.", (double)fds);
    put_simple(t, "process_max_fds", "gauge",
               "Maximum number of open file descriptors.",
               rl.rlim_cur == RLIM_INFINITY ? 1e9 : (double)rl.rlim_cur);
    put_simple(t, "process_start_time_seconds", "gauge",
               "Start time of the process since unix epoch in seconds.",
               start_time);
}

/* One gauge per device that reports memory: the uint64_t field at `field`
 * of struct mrad_metrics_device.  Nothing when no device reports. */
static void put_devices(struct text *t, const struct mrad_metrics_gauges *g,
                        const char *name, const char *help, size_t field)
{
    int any = 0;
    for (size_t i = 0; i < g->ndevices; i++)
        any |= g->devices[i].ok;
    if (!any)
        return;
    put(t, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
    for (size_t i = 0; i < g->ndevices; i++) {
        const struct mrad_metrics_device *d = &g->devices[i];
        uint64_t v;
        memcpy(&v, (const char *)d + field, sizeof(v));
        if (d->ok)
            put(t, "%s{device=\"%d\"} %" PRIu64 "\n", name, d->device, v);
    }
}

char *mrad_metrics_render(const struct mrad_metrics_gauges *g, size_t *len)
{
    struct text t = {malloc(16384), 0, 16384, 0};
    if (!t.buf)
        return NULL;
    pthread_mutex_lock(&lock);
    put(&t, "# HELP mrad_requests_total HTTP requests answered, by API "
            "surface and status.\n"
            "# TYPE mrad_requests_total counter\n");
    for (size_t a = 0; a < NAPIS; a++)
        for (unsigned s = 0; s < NB(requests_by_status[a]); s++)
            if (requests_by_status[a][s])
                put(&t,
                    "mrad_requests_total{api=\"%s\",code=\"%u\"} %" PRIu64
                    "\n",
                    api_names[a], s, requests_by_status[a][s]);
    put(&t, "# HELP %s %s\n# TYPE %s histogram\n", h_request[0].name,
        h_request[0].help, h_request[0].name);
    for (size_t a = 0; a < NAPIS; a++) {
        char label[32];
        snprintf(label, sizeof label, "api=\"%s\"", api_names[a]);
        put_samples(&t, &h_request[a], label);
    }
    put_histogram(&t, &h_queue);
    put_histogram(&t, &h_compute);
    put_histogram(&t, &h_batch);
    put_histogram(&t, &h_density);
    put_simple(&t, "mrad_tokens_total", "counter",
               "Tokens computed (B*max(Nq,Nk) summed over requests).",
               (double)tokens_total);
    put_simple(&t, "mrad_blocks_selected_total", "counter",
               "Blocks computed at full resolution.",
               (double)blocks_selected_total);
    put_simple(&t, "mrad_blocks_total", "counter",
               "Blocks considered by block selection.",
               (double)blocks_total_total);
    put(&t,
        "# HELP mrad_build_info Version and backend of the running daemon.\n"
        "# TYPE mrad_build_info gauge\n"
        "mrad_build_info{version=\"%s\",backend=\"%s\"} 1\n",
        build_version, build_backend);
    pthread_mutex_unlock(&lock);

    put_simple(&t, "mrad_queue_depth", "gauge",
               "Requests waiting for a compute worker.",
               (double)g->queue_depth);
    put_simple(&t, "mrad_inflight_requests", "gauge",
               "Requests accepted and not yet answered.", (double)g->inflight);
    put_simple(&t, "mrad_queue_capacity", "gauge",
               "Requests the queue holds before answering 503 (--max-queue).",
               (double)g->queue_capacity);
    put_simple(&t, "mrad_open_connections", "gauge",
               "Client connections open now.", (double)g->open_connections);
    put_simple(&t, "mrad_inflight_bytes", "gauge",
               "Bytes of request bodies and answers held now.",
               (double)g->inflight_bytes);
    put_simple(&t, "mrad_inflight_bytes_limit", "gauge",
               "Bytes held at most before answering 503 "
               "(--max-inflight-bytes).",
               (double)g->max_inflight_bytes);
    put(&t,
        "# HELP mrad_connections_closed_total Connections the daemon "
        "closed or refused, by reason.\n"
        "# TYPE mrad_connections_closed_total counter\n"
        "mrad_connections_closed_total{reason=\"head_timeout\"} %" PRIu64 "\n"
        "mrad_connections_closed_total{reason=\"slow_upload\"} %" PRIu64 "\n"
        "mrad_connections_closed_total{reason=\"lingering_close\"} %" PRIu64
        "\n"
        "mrad_connections_closed_total{reason=\"over_limit\"} %" PRIu64 "\n",
        g->head_timeouts, g->slow_uploads, g->lingering_closes, g->refused);
    put_simple(&t, "mrad_kv_sessions", "gauge",
               "Sessions held (keys and values kept in the service).",
               (double)g->kv_sessions);
    put_simple(&t, "mrad_kv_bytes", "gauge",
               "Bytes the sessions hold, counted against the budget.",
               (double)g->kv_bytes);
    put_simple(&t, "mrad_kv_budget_bytes", "gauge",
               "Bytes the sessions may hold together (--kv-cache-bytes).",
               (double)g->kv_budget_bytes);
    put_simple(&t, "mrad_kv_created_total", "counter", "Sessions created.",
               (double)g->kv_created);
    put(&t,
        "# HELP mrad_kv_ended_total Sessions ended, by reason.\n"
        "# TYPE mrad_kv_ended_total counter\n"
        "mrad_kv_ended_total{reason=\"deleted\"} %" PRIu64 "\n"
        "mrad_kv_ended_total{reason=\"evicted\"} %" PRIu64 "\n"
        "mrad_kv_ended_total{reason=\"expired\"} %" PRIu64 "\n",
        g->kv_deleted, g->kv_evicted, g->kv_expired);
    put(&t,
        "# HELP mrad_kv_lookups_total Requests naming a session, by whether "
        "it was found.\n"
        "# TYPE mrad_kv_lookups_total counter\n"
        "mrad_kv_lookups_total{result=\"hit\"} %" PRIu64 "\n"
        "mrad_kv_lookups_total{result=\"miss\"} %" PRIu64 "\n",
        g->kv_hits, g->kv_misses);
    put_simple(&t, "mrad_kv_append_tokens_total", "counter",
               "Tokens admitted into sessions (creates and appends).",
               (double)g->kv_append_tokens);
    put_simple(&t, "mrad_kv_full_total", "counter",
               "Creates and appends refused for want of room (507).",
               (double)g->kv_full);
    put_devices(&t, g, "mrad_gpu_memory_used_bytes", "Device memory in use.",
                offsetof(struct mrad_metrics_device, used));
    put_devices(&t, g, "mrad_gpu_memory_total_bytes", "Device memory in all.",
                offsetof(struct mrad_metrics_device, total));
    put_process(&t);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    *len = t.len;
    return t.buf;
}
