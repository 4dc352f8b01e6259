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

static uint64_t tokens_total, blocks_selected_total, blocks_total_total;

/* One series of the request metrics: its labels (api, route, attention
 * method), the answers by status and their durations.  At most MAX_SERIES
 * (the routes times the methods stay far below); later ones are counted
 * under the last. */
#define MAX_SERIES 96
#define MAX_CODES 24
struct series {
    char api[8], route[64], method[16];
    struct {
        unsigned code;
        uint64_t n;
    } codes[MAX_CODES];
    size_t ncodes;
    struct histogram duration;
};
static struct series series[MAX_SERIES];
static size_t nseries;

/* The probes and /metrics: counted apart, never timed. */
struct probe {
    char route[48];
    unsigned code;
    uint64_t n;
};
static struct probe probes[32];
static size_t nprobes;

static const double bytes_bounds[] = {1024,     16384,     262144,
                                      1048576,  4194304,   16777216,
                                      67108864, 268435456, 1073741824};
static const double token_bounds[] = {32,    128,   512,    2048,  8192,
                                      32768, 65536, 131072, 524288};
static struct histogram h_bytes[2] = {
    {"mrad_request_bytes",
     "Bytes of a request's body (in) and answer (out).",
     bytes_bounds,
     NB(bytes_bounds),
     {0},
     0,
     0},
    {"mrad_request_bytes", "", bytes_bounds, NB(bytes_bounds), {0}, 0, 0}};
static struct histogram h_transport[2] = {
    {"mrad_transport_duration_seconds",
     "Time receiving a request's body (receive) and sending its answer "
     "(send).",
     seconds_bounds,
     NB(seconds_bounds),
     {0},
     0,
     0},
    {"mrad_transport_duration_seconds",
     "",
     seconds_bounds,
     NB(seconds_bounds),
     {0},
     0,
     0}};
static struct histogram h_batch_tokens = {
    "mrad_batch_tokens",
    "Tokens (B*max(Nq,Nk) summed) in one batch.",
    token_bounds,
    NB(token_bounds),
    {0},
    0,
    0};
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
/* Block density by method: mra2 and mra2_sparse (exact computes every
 * block). */
static const char *const density_methods[] = {"mra2", "mra2_sparse"};
/* The error estimated on sampled rows (error_samples, target_error), by
 * method. */
static const double err_bounds[] = {0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3};
static struct histogram h_est_err[2] = {
    {"mrad_estimated_relative_error",
     "Relative error of a request's output estimated on its sampled rows "
     "(error_samples, target_error).",
     err_bounds,
     NB(err_bounds),
     {0},
     0,
     0},
    {"mrad_estimated_relative_error",
     "",
     err_bounds,
     NB(err_bounds),
     {0},
     0,
     0}};
static struct histogram h_density[2] = {
    {"mrad_block_density",
     "Fraction of blocks computed at full resolution, per request.",
     density_bounds,
     NB(density_bounds),
     {0},
     0,
     0},
    {"mrad_block_density", "", density_bounds, NB(density_bounds), {0}, 0, 0}};

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

static void copy_label(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src && *src ? src : "none");
}

void mrad_metrics_request(const struct mrad_metrics_req *q)
{
    pthread_mutex_lock(&lock);
    if (q->probe) {
        size_t i = 0;
        while (i < nprobes && (probes[i].code != q->status ||
                               strcmp(probes[i].route, q->route)))
            i++;
        if (i == nprobes && nprobes < NB(probes)) {
            copy_label(probes[i].route, sizeof probes[i].route, q->route);
            probes[i].code = q->status;
            nprobes++;
        }
        if (i < nprobes)
            probes[i].n++;
        pthread_mutex_unlock(&lock);
        return;
    }
    char api[8], route[64], method[16];
    copy_label(api, sizeof api, q->api);
    copy_label(route, sizeof route, q->route);
    copy_label(method, sizeof method, q->method);
    size_t i = 0;
    while (i < nseries &&
           (strcmp(series[i].api, api) || strcmp(series[i].route, route) ||
            strcmp(series[i].method, method)))
        i++;
    if (i == nseries) {
        if (nseries == MAX_SERIES)
            i = MAX_SERIES - 1;
        else {
            struct series *s = &series[nseries++];
            memcpy(s->api, api, sizeof api);
            memcpy(s->route, route, sizeof route);
            memcpy(s->method, method, sizeof method);
            s->duration = (struct histogram){
                "mrad_request_duration_seconds",
                "Time from the first byte of a request to the end of its "
                "answer (probes and /metrics apart).",
                seconds_bounds,
                NB(seconds_bounds),
                {0},
                0,
                0};
        }
    }
    struct series *s = &series[i];
    size_t c = 0;
    while (c < s->ncodes && s->codes[c].code != q->status)
        c++;
    if (c == s->ncodes && s->ncodes < MAX_CODES)
        s->codes[s->ncodes++].code = q->status;
    if (c < s->ncodes)
        s->codes[c].n++;
    observe(&s->duration, q->seconds);
    observe(&h_bytes[0], (double)q->bytes_in);
    observe(&h_bytes[1], (double)q->bytes_out);
    if (q->receive_seconds >= 0)
        observe(&h_transport[0], q->receive_seconds);
    if (q->send_seconds >= 0)
        observe(&h_transport[1], q->send_seconds);
    pthread_mutex_unlock(&lock);
}

void mrad_metrics_queue(double seconds)
{
    pthread_mutex_lock(&lock);
    observe(&h_queue, seconds);
    pthread_mutex_unlock(&lock);
}

void mrad_metrics_batch(uint32_t requests, uint64_t tokens,
                        double compute_seconds)
{
    pthread_mutex_lock(&lock);
    observe(&h_batch, (double)requests);
    observe(&h_batch_tokens, (double)tokens);
    observe(&h_compute, compute_seconds);
    pthread_mutex_unlock(&lock);
}

void mrad_metrics_problem(const char *method, uint64_t tokens,
                          uint64_t blocks_selected, uint64_t blocks_total,
                          double density, double est_rel_err)
{
    pthread_mutex_lock(&lock);
    tokens_total += tokens;
    blocks_selected_total += blocks_selected;
    blocks_total_total += blocks_total;
    for (size_t m = 0; m < NB(density_methods); m++)
        if (method && !strcmp(method, density_methods[m])) {
            observe(&h_density[m], density);
            if (est_rel_err >= 0.0)
                observe(&h_est_err[m], est_rel_err);
        }
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
        put(t, "%s_sum %.9g\n%s_count %" PRIu64 "\n", h->name, h->sum, h->name,
            h->count);
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
    put(&t, "# HELP mrad_requests_total HTTP requests answered (probes and "
            "/metrics apart), by API surface, route, attention method and "
            "status.\n"
            "# TYPE mrad_requests_total counter\n");
    for (size_t i = 0; i < nseries; i++)
        for (size_t c = 0; c < series[i].ncodes; c++)
            put(&t,
                "mrad_requests_total{api=\"%s\",route=\"%s\",method=\"%s\","
                "code=\"%u\"} %" PRIu64 "\n",
                series[i].api, series[i].route, series[i].method,
                series[i].codes[c].code, series[i].codes[c].n);
    put(&t,
        "# HELP mrad_request_duration_seconds Time from the first byte of a "
        "request to the end of its answer (probes and /metrics apart).\n"
        "# TYPE mrad_request_duration_seconds histogram\n");
    for (size_t i = 0; i < nseries; i++) {
        char label[sizeof series[0].api + sizeof series[0].route +
                   sizeof series[0].method + 32];
        snprintf(label, sizeof label,
                 "api=\"%.7s\",route=\"%.63s\",method=\"%.15s\"", series[i].api,
                 series[i].route, series[i].method);
        put_samples(&t, &series[i].duration, label);
    }
    put(&t, "# HELP mrad_probe_requests_total Probes and scrapes answered, by "
            "route and status.\n"
            "# TYPE mrad_probe_requests_total counter\n");
    for (size_t i = 0; i < nprobes; i++)
        put(&t,
            "mrad_probe_requests_total{route=\"%s\",code=\"%u\"} %" PRIu64 "\n",
            probes[i].route, probes[i].code, probes[i].n);
    put(&t, "# HELP %s %s\n# TYPE %s histogram\n", h_bytes[0].name,
        h_bytes[0].help, h_bytes[0].name);
    put_samples(&t, &h_bytes[0], "direction=\"in\"");
    put_samples(&t, &h_bytes[1], "direction=\"out\"");
    put(&t, "# HELP %s %s\n# TYPE %s histogram\n", h_transport[0].name,
        h_transport[0].help, h_transport[0].name);
    put_samples(&t, &h_transport[0], "direction=\"receive\"");
    put_samples(&t, &h_transport[1], "direction=\"send\"");
    put_histogram(&t, &h_queue);
    put_histogram(&t, &h_compute);
    put_histogram(&t, &h_batch);
    put_histogram(&t, &h_batch_tokens);
    put(&t, "# HELP %s %s\n# TYPE %s histogram\n", h_density[0].name,
        h_density[0].help, h_density[0].name);
    for (size_t m = 0; m < NB(density_methods); m++) {
        char label[32];
        snprintf(label, sizeof label, "method=\"%s\"", density_methods[m]);
        put_samples(&t, &h_density[m], label);
    }
    put(&t, "# HELP %s %s\n# TYPE %s histogram\n", h_est_err[0].name,
        h_est_err[0].help, h_est_err[0].name);
    for (size_t m = 0; m < NB(density_methods); m++) {
        char label[32];
        snprintf(label, sizeof label, "method=\"%s\"", density_methods[m]);
        put_samples(&t, &h_est_err[m], label);
    }
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
