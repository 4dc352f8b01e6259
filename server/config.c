/*
 * config.c - the flag table of mrad and its parser.
 *
 * Every setting is described once, in `options` below: its flag, its type,
 * where it is stored and its help line.  The environment variable and the
 * --help text are derived from that one table, so they cannot drift apart.
 */
#include "server/config.h"

#include "server/auth.h"

#include "attention/cpu/kernels.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum opt_type {
    OPT_STR,    /* char[] of `size` bytes */
    OPT_U32,    /* uint32_t */
    OPT_U64,    /* uint64_t */
    OPT_DEVS,   /* comma-separated list into devices/ndevices */
    OPT_LOGFMT, /* text|json */
    OPT_LOGLVL, /* debug|info|warn|error */
    OPT_BOOL,   /* int: a flag alone is 1; =1/0, =true/false */
};

struct option_def {
    const char *name; /* flag without the leading dashes */
    enum opt_type type;
    size_t offset; /* into struct mrad_config */
    size_t size;   /* for OPT_STR */
    const char *help;
};

#define CFG(field) offsetof(struct mrad_config, field)
#define CFGSTR(field) CFG(field), sizeof(((struct mrad_config *)0)->field)

static const struct option_def options[] = {
    {"host", OPT_STR, CFGSTR(host), "address to listen on"},
    {"port", OPT_U32, CFG(port), 0,
     "TCP port; 0 picks a free one (logged at startup)"},
    {"backend", OPT_STR, CFGSTR(backend),
     "auto|cpu|cuda (auto: the best available)"},
    {"devices", OPT_DEVS, CFG(devices), 0,
     "GPU ordinals, one compute worker each (e.g. 0,1), or all: every "
     "usable GPU (up to 16; auto takes the CPU without one); CPU: one worker"},
    {"threads", OPT_U32, CFG(threads), 0, "compute threads, 0 = all cores"},
    {"isa", OPT_STR, CFGSTR(isa),
     "CPU kernel path: " CPU_ISA_NAMES " (/v1/info shows it)"},
    {"http-threads", OPT_U32, CFG(http_threads), 0,
     "HTTP threads (read, decode, encode; never compute)"},
    {"max-queue", OPT_U64, CFG(max_queue), 0,
     "requests waiting for a worker; beyond it 503 overloaded"},
    {"max-batch-requests", OPT_U64, CFG(max_batch_requests), 0,
     "requests in one batch"},
    {"max-batch-tokens", OPT_U64, CFG(max_batch_tokens), 0,
     "sum of B*max(Nq,Nk) over the requests of one batch (0 = no limit)"},
    {"batch-window-us", OPT_U64, CFG(batch_window_us), 0,
     "how long an idle worker may wait to fill a batch (0: never; whole ms)"},
    {"max-body-bytes", OPT_U64, CFG(max_body_bytes), 0,
     "request body limit (413 beyond, checked while reading)"},
    {"max-json-bytes", OPT_U64, CFG(max_json_bytes), 0,
     "body limit for application/json requests"},
    {"request-timeout-ms", OPT_U64, CFG(request_timeout_ms), 0,
     "default deadline; a request's timeout_ms may only shorten it"},
    {"api-key-file", OPT_STR, CFGSTR(api_key_file),
     "file of API keys, one per line; when set /v1/* needs "
     "Authorization: Bearer <key> (SIGHUP reloads it)"},
    {"max-connections", OPT_U32, CFG(max_connections), 0,
     "open connections for requests; a few more are kept for probes and "
     "/metrics"},
    {"admin-port", OPT_U32, CFG(admin_port), 0,
     "serve /healthz, /readyz and /metrics on this port too, apart from "
     "request traffic (0 = none)"},
    {"max-connections-per-ip", OPT_U32, CFG(max_connections_per_ip), 0,
     "open connections from one client address (0 = no limit)"},
    {"header-timeout-ms", OPT_U64, CFG(header_timeout_ms), 0,
     "a request's head must arrive within this of its first byte"},
    {"min-upload-rate", OPT_U64, CFG(min_upload_rate), 0,
     "bytes/s a body must average after its first 5 s (0 = no limit)"},
    {"max-inflight-bytes", OPT_U64, CFG(max_inflight_bytes), 0,
     "bytes of bodies and answers held at once; beyond, 503 (0 = half the "
     "memory)"},
    {"max-problem-flops", OPT_U64, CFG(max_problem_flops), 0,
     "largest estimated cost of one problem (0 = 5e12 on the CPU, 1e15 on "
     "a GPU)"},
    {"idle-release-ms", OPT_U64, CFG(idle_release_ms), 0,
     "after this long without requests, cached buffers and free heap "
     "pages go back to the system"},
    {"kv-cache-bytes", OPT_U64, CFG(kv_cache_bytes), 0,
     "bytes all sessions may hold together (0 = a quarter of the memory on "
     "the CPU, half of the devices' memory on a GPU)"},
    {"kv-max-sessions", OPT_U64, CFG(kv_max_sessions), 0,
     "sessions at once (0 = no sessions)"},
    {"kv-ttl-ms", OPT_U64, CFG(kv_ttl_ms), 0,
     "a session unused this long ends, unless its create asked otherwise"},
    {"kv-max-ttl-ms", OPT_U64, CFG(kv_max_ttl_ms), 0,
     "the longest idle lifetime a create may ask for"},
    {"allow-shm", OPT_BOOL, CFG(allow_shm), 0,
     "serve Triton's system shared-memory extension on /v2 (clients on "
     "this host map their tensors; behind the API key when one is set)"},
    {"log-file", OPT_STR, CFGSTR(log_file),
     "write the log to this file instead of stderr (SIGHUP reopens it)"},
    {"conn-timeout-s", OPT_U32, CFG(conn_timeout_s), 0,
     "close a connection silent this long; a body must arrive within it"},
    {"tls-cert", OPT_STR, CFGSTR(tls_cert),
     "PEM certificate file: serve HTTPS (needs --tls-key)"},
    {"tls-key", OPT_STR, CFGSTR(tls_key), "PEM private key file of --tls-cert"},
    {"drain-timeout-ms", OPT_U64, CFG(drain_timeout_ms), 0,
     "on SIGTERM, how long to finish accepted requests"},
    {"log-format", OPT_LOGFMT, CFG(log_format), 0, "text|json"},
    {"log-level", OPT_LOGLVL, CFG(log_level), 0, "debug|info|warn|error"},
    {"max-batch", OPT_U64, CFG(limits.max_batch), 0,
     "largest B of a problem (0 = no limit)"},
    {"max-heads", OPT_U64, CFG(limits.max_heads), 0,
     "largest H of a problem (0 = no limit)"},
    {"max-tokens", OPT_U64, CFG(limits.max_tokens), 0,
     "largest N of a problem (0 = no limit)"},
    {"max-head-dim", OPT_U64, CFG(limits.max_head_dim), 0,
     "largest D of a problem (at most 256)"},
    {"max-elements", OPT_U64, CFG(limits.max_elements), 0,
     "largest B*H*N*D of a problem (0 = no limit)"},
};

#define NOPTIONS (sizeof(options) / sizeof(options[0]))

static void config_defaults(struct mrad_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    strcpy(cfg->host, "127.0.0.1");
    cfg->port = 8080;
    strcpy(cfg->backend, "auto");
    cfg->ndevices = 0; /* empty: device 0 for GPU backends */
    cfg->threads = 0;
    cfg->http_threads = 4;
    cfg->max_queue = 256;
    cfg->max_batch_requests = 16;
    cfg->max_batch_tokens = 65536;
    /* No waiting by default: a lone request goes out at once, and requests
     * that arrive while the workers are busy are batched anyway. */
    cfg->batch_window_us = 0;
    cfg->max_body_bytes = 512ull << 20;
    cfg->max_json_bytes = 8ull << 20;
    cfg->request_timeout_ms = 60000;
    cfg->drain_timeout_ms = 30000;
    cfg->conn_timeout_s = 30;
    cfg->max_connections = 1000;
    cfg->max_connections_per_ip = 128;
    cfg->header_timeout_ms = 10000;
    cfg->min_upload_rate = 16384;
    cfg->idle_release_ms = 10000;
    cfg->kv_max_sessions = 4096;
    cfg->kv_ttl_ms = 600000;
    cfg->kv_max_ttl_ms = 86400000;
    strcpy(cfg->isa, "auto");
    cfg->log_format = MRAD_LOG_TEXT;
    cfg->log_level = MRAD_LOG_INFO;
    proto_limits_default(&cfg->limits);
}

/* "max-queue" -> "MRAD_MAX_QUEUE" */
static void env_name(const char *flag, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "MRAD_");
    for (const char *p = flag; *p && n + 1 < len; p++)
        buf[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    buf[n] = '\0';
}

static int parse_u64(const char *s, uint64_t *v)
{
    char *end;
    if (!*s || *s == '-')
        return -1;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *v = x;
    return 0;
}

/* Stores `val` into the field of `o`.  Returns 0 or -1 (message in err). */
static int set_option(struct mrad_config *cfg, const struct option_def *o,
                      const char *val, const char *from, FILE *err)
{
    char *base = (char *)cfg + o->offset;
    uint64_t v;
    switch (o->type) {
    case OPT_STR:
        if (strlen(val) >= o->size) {
            fprintf(err, "mrad: %s: value too long\n", from);
            return -1;
        }
        strcpy(base, val);
        return 0;
    case OPT_U32:
        if (parse_u64(val, &v) || v > UINT32_MAX) {
            fprintf(err, "mrad: %s: '%s' is not a valid count\n", from, val);
            return -1;
        }
        *(uint32_t *)base = (uint32_t)v;
        return 0;
    case OPT_U64:
        if (parse_u64(val, &v)) {
            fprintf(err, "mrad: %s: '%s' is not a valid count\n", from, val);
            return -1;
        }
        *(uint64_t *)base = v;
        return 0;
    case OPT_DEVS: {
        uint32_t n = 0;
        const char *p = val;
        cfg->all_devices = !strcmp(val, "all");
        if (cfg->all_devices) {
            cfg->ndevices = 0;
            return 0;
        }
        while (*p) {
            char *end;
            errno = 0;
            long d = strtol(p, &end, 10);
            if (end == p || errno || d < 0 || d > 1024 ||
                (*end && *end != ',') || n == MRAD_MAX_DEVICES) {
                fprintf(err,
                        "mrad: %s: '%s' is not a list of device ordinals\n",
                        from, val);
                return -1;
            }
            cfg->devices[n++] = (int)d;
            p = *end ? end + 1 : end;
        }
        cfg->ndevices = n;
        return 0;
    }
    case OPT_LOGFMT:
        if (!strcmp(val, "text"))
            cfg->log_format = MRAD_LOG_TEXT;
        else if (!strcmp(val, "json"))
            cfg->log_format = MRAD_LOG_JSON;
        else {
            fprintf(err, "mrad: %s: expected text or json\n", from);
            return -1;
        }
        return 0;
    case OPT_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes"))
            *(int *)base = 1;
        else if (!strcmp(val, "0") || !strcmp(val, "false") ||
                 !strcmp(val, "no"))
            *(int *)base = 0;
        else {
            fprintf(err, "mrad: %s: expected 1 or 0 (true or false)\n", from);
            return -1;
        }
        return 0;
    case OPT_LOGLVL: {
        static const char *const names[] = {"debug", "info", "warn", "error"};
        for (int i = 0; i < 4; i++)
            if (!strcmp(val, names[i])) {
                cfg->log_level = (enum mrad_log_level)i;
                return 0;
            }
        fprintf(err, "mrad: %s: expected debug, info, warn or error\n", from);
        return -1;
    }
    }
    return -1;
}

static void default_text(const struct option_def *o, char *buf, size_t len)
{
    struct mrad_config d;
    config_defaults(&d);
    const char *base = (const char *)&d + o->offset;
    switch (o->type) {
    case OPT_STR:
        snprintf(buf, len, "%s", *base ? base : "unset");
        break;
    case OPT_U32:
        snprintf(buf, len, "%" PRIu32, *(const uint32_t *)base);
        break;
    case OPT_U64:
        snprintf(buf, len, "%" PRIu64, *(const uint64_t *)base);
        break;
    case OPT_DEVS:
        snprintf(buf, len, "0");
        break;
    case OPT_LOGFMT:
        snprintf(buf, len, "text");
        break;
    case OPT_LOGLVL:
        snprintf(buf, len, "info");
        break;
    case OPT_BOOL:
        snprintf(buf, len, "%s", *(const int *)base ? "on" : "off");
        break;
    }
}

void mrad_config_usage(FILE *out)
{
    fprintf(out,
            "usage: mrad [flags]\n"
            "Serves MRA-2 attention over HTTP (POST /v1/attention; GET "
            "/healthz,\n/readyz, /metrics, /v1/info).  Every flag can also "
            "be set with the\nenvironment variable shown; a flag overrides "
            "its variable.\n\n");
    for (size_t i = 0; i < NOPTIONS; i++) {
        char env[64], def[64];
        env_name(options[i].name, env, sizeof(env));
        default_text(&options[i], def, sizeof(def));
        fprintf(out, "  --%-20s %s\n  %-22s (default %s; env %s)\n",
                options[i].name, options[i].help, "", def, env);
    }
    fprintf(out, "  --%-20s %s\n  --%-20s %s\n", "version",
            "print the version and exit", "help", "print this text and exit");
}

static const struct option_def *find_option(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strlen(options[i].name) == len &&
            !strncmp(options[i].name, name, len))
            return &options[i];
    return NULL;
}

/* Loads the key file into cfg->keys. */
static int load_api_keys(struct mrad_config *cfg, FILE *err)
{
    char msg[160];
    if (mrad_keyring_load(cfg->api_key_file, &cfg->keys, msg, sizeof(msg))) {
        fprintf(err, "mrad: --api-key-file %s: %s\n", cfg->api_key_file, msg);
        return -1;
    }
    return 0;
}

int mrad_config_parse(struct mrad_config *cfg, int argc, char **argv, FILE *out,
                      FILE *err)
{
    config_defaults(cfg);
    for (size_t i = 0; i < NOPTIONS; i++) {
        char env[64];
        env_name(options[i].name, env, sizeof(env));
        const char *v = getenv(env);
        if (v && *v && set_option(cfg, &options[i], v, env, err))
            return MRAD_CONFIG_ERROR;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            mrad_config_usage(out);
            return MRAD_CONFIG_EXIT_OK;
        }
        if (!strcmp(a, "--version")) {
            fprintf(out, "mrad %s\n", MRAD_VERSION);
            return MRAD_CONFIG_EXIT_OK;
        }
        if (strncmp(a, "--", 2)) {
            fprintf(err, "mrad: unexpected argument '%s' (see --help)\n", a);
            return MRAD_CONFIG_ERROR;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct option_def *o = find_option(name, len);
        if (!o) {
            fprintf(err, "mrad: unknown flag '%s' (see --help)\n", a);
            return MRAD_CONFIG_ERROR;
        }
        const char *val = eq ? eq + 1 : o->type == OPT_BOOL ? "1" : NULL;
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(err, "mrad: %s needs a value\n", a);
                return MRAD_CONFIG_ERROR;
            }
            val = argv[++i];
        }
        char from[96];
        snprintf(from, sizeof(from), "--%s", o->name);
        if (set_option(cfg, o, val, from, err))
            return MRAD_CONFIG_ERROR;
    }

    if (strcmp(cfg->backend, "auto") && strcmp(cfg->backend, "cpu") &&
        strcmp(cfg->backend, "cuda")) {
        fprintf(err, "mrad: --backend: expected auto, cpu or cuda\n");
        return MRAD_CONFIG_ERROR;
    }
    if (cfg->port > 65535 || cfg->admin_port > 65535) {
        fprintf(err, "mrad: --port, --admin-port: at most 65535\n");
        return MRAD_CONFIG_ERROR;
    }
    if (cfg->max_batch_requests == 0 || cfg->http_threads == 0 ||
        cfg->max_queue == 0 || cfg->max_body_bytes == 0 ||
        cfg->request_timeout_ms == 0) {
        fprintf(err, "mrad: --max-batch-requests, --http-threads, "
                     "--max-queue, --max-body-bytes and --request-timeout-ms "
                     "must be at least 1\n");
        return MRAD_CONFIG_ERROR;
    }
    /* The CPU backend's own list and probe decide, so every path it has
     * is accepted, and one this CPU cannot run is refused here by name
     * rather than as the backend's bare "not supported" after startup
     * began.  --backend cuda never runs the CPU kernels. */
    if (!cpu_kernels_known(cfg->isa)) {
        fprintf(err, "mrad: --isa %s: expected one of %s\n", cfg->isa,
                CPU_ISA_NAMES);
        return MRAD_CONFIG_ERROR;
    }
    if (strcmp(cfg->backend, "cuda") && !cpu_kernels_pick(cfg->isa)) {
        fprintf(err,
                "mrad: --isa %s: this CPU cannot run those kernels (auto "
                "takes the best it can)\n",
                cfg->isa);
        return MRAD_CONFIG_ERROR;
    }
    if (!cfg->tls_cert[0] != !cfg->tls_key[0]) {
        fprintf(err, "mrad: --tls-cert and --tls-key go together\n");
        return MRAD_CONFIG_ERROR;
    }
    if (cfg->conn_timeout_s == 0) {
        fprintf(err, "mrad: --conn-timeout-s must be at least 1\n");
        return MRAD_CONFIG_ERROR;
    }
    if (cfg->limits.max_head_dim > ATTN_MAX_HEAD_DIM) {
        fprintf(err, "mrad: --max-head-dim: at most %d\n", ATTN_MAX_HEAD_DIM);
        return MRAD_CONFIG_ERROR;
    }
    if (cfg->max_connections == 0 || cfg->header_timeout_ms == 0) {
        fprintf(err, "mrad: --max-connections and --header-timeout-ms must be "
                     "at least 1\n");
        return MRAD_CONFIG_ERROR;
    }
    if (cfg->api_key_file[0] && load_api_keys(cfg, err))
        return MRAD_CONFIG_ERROR;
    return MRAD_CONFIG_RUN;
}

/* Half the memory this process may use: the machine's, or its cgroup's
 * limit when lower. */
static uint64_t half_the_memory(void)
{
    uint64_t mem =
        (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/sys/fs/cgroup/memory.max", "r");
    unsigned long long lim;
    if (f && fscanf(f, "%llu", &lim) == 1 && lim < mem)
        mem = lim;
    if (f)
        fclose(f);
    return mem / 2;
}

void mrad_config_resolve(struct mrad_config *cfg, const char *backend,
                         uint64_t device_bytes)
{
    if (!cfg->max_inflight_bytes)
        cfg->max_inflight_bytes = half_the_memory();
    if (!cfg->kv_cache_bytes)
        cfg->kv_cache_bytes = strcmp(backend, "cpu") && device_bytes
                                  ? device_bytes / 2
                                  : half_the_memory() / 2;
    if (!cfg->max_problem_flops)
        cfg->max_problem_flops =
            strcmp(backend, "cpu") ? MRAD_GPU_MAX_FLOPS : MRAD_CPU_MAX_FLOPS;
}
