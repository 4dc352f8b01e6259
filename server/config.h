/*
 * config.h - the daemon's settings: one table of flags, each also read from
 * an environment variable MRAD_<FLAG> (dashes become underscores); a flag
 * on the command line overrides its variable.
 *
 * Not thread-safe while parsing; once parsed, the struct is read-only and
 * shared by every thread.
 */
#ifndef MRAD_SERVER_CONFIG_H
#define MRAD_SERVER_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "protocol/proto.h"
#include "server/log.h"

/* The version string comes from the file VERSION, through the Makefile. */
#ifndef MRAD_VERSION
#error "MRAD_VERSION is defined by the Makefile from the file VERSION"
#endif
#define MRAD_MAX_DEVICES 16
/* --max-problem-flops when not set: about 30 s of a 2-core CPU host, and
 * about as long on a GPU. */
#define MRAD_CPU_MAX_FLOPS 5000000000000ull
#define MRAD_GPU_MAX_FLOPS 1000000000000000ull
/* Connections kept beyond --max-connections for probes and /metrics. */
#define MRAD_PROBE_CONNECTIONS 16

struct mrad_keyring;

struct mrad_config {
    char host[256];
    uint32_t port;
    char backend[16];              /* "auto", "cpu", "cuda" */
    int devices[MRAD_MAX_DEVICES]; /* GPU ordinals, one worker each */
    uint32_t ndevices;
    int all_devices;       /* --devices all: every usable GPU; devices unused */
    uint32_t threads;      /* compute threads, 0 = all cores */
    uint32_t http_threads; /* libmicrohttpd thread pool size */
    uint64_t max_queue;    /* requests waiting for a worker */
    uint64_t max_batch_requests;
    uint64_t max_batch_tokens; /* sum of B*max(Nq,Nk) in one batch */
    uint64_t batch_window_us;
    uint64_t max_body_bytes;
    uint64_t max_json_bytes;
    uint64_t request_timeout_ms;
    char api_key_file[1024];
    struct mrad_keyring *keys; /* loaded from api_key_file, or NULL */
    uint64_t drain_timeout_ms;
    enum mrad_log_format log_format;
    enum mrad_log_level log_level;
    struct proto_limits limits;
    uint32_t conn_timeout_s;  /* idle limit per connection; body deadline */
    uint32_t max_connections; /* for requests; probes have more */
    uint32_t admin_port;      /* probes and /metrics; 0 = none */
    uint32_t max_connections_per_ip; /* 0 = no limit */
    uint64_t header_timeout_ms;      /* a request head's deadline */
    uint64_t min_upload_rate;        /* bytes/s after a grace; 0 = none */
    uint64_t max_inflight_bytes;     /* admission; 0 = from the memory */
    uint64_t max_problem_flops;      /* admission; 0 = from the backend */
    char log_file[1024];             /* empty: stderr */
    uint64_t idle_release_ms; /* idle this long: cached memory released */
    char isa[16];             /* CPU kernel path (CPU_ISA_NAMES) */
    char tls_cert[1024];      /* PEM certificate file; empty = plain HTTP */
    char tls_key[1024];       /* PEM private key file */
    uint64_t kv_cache_bytes;  /* sessions' budget; 0 = from the memory */
    uint64_t kv_max_sessions; /* 0 = no sessions */
    uint64_t kv_ttl_ms;       /* default idle lifetime of a session */
    uint64_t kv_max_ttl_ms;   /* the longest one a create may ask for */
    int allow_shm;            /* /v2 system shared memory */
};

/* What mrad_config_parse() asks the caller to do. */
enum mrad_config_result {
    MRAD_CONFIG_RUN = 0,     /* serve with the parsed settings */
    MRAD_CONFIG_EXIT_OK = 1, /* --help or --version was printed */
    MRAD_CONFIG_ERROR = -1,  /* a message was written to `err` */
};

/*
 * Fills *cfg from the defaults, then the environment (`envp`-style lookups
 * through getenv), then argv.  Loads the API key file when one is set.
 * Writes --help / --version to `out` and errors to `err`.  Returns an
 * enum mrad_config_result.
 */
int mrad_config_parse(struct mrad_config *cfg, int argc, char **argv, FILE *out,
                      FILE *err);

/* Fills the settings whose default depends on the machine or the backend
 * ("cpu", "cuda"), when they were left at 0: --max-inflight-bytes (half
 * the memory, or of the cgroup's limit), --max-problem-flops, and
 * --kv-cache-bytes (a quarter of the memory on the CPU, half of
 * `device_bytes`, the devices' memory, on a GPU). */
void mrad_config_resolve(struct mrad_config *cfg, const char *backend,
                         uint64_t device_bytes);

/* Prints the --help text (every flag, its default and its variable). */
void mrad_config_usage(FILE *out);

#endif /* MRAD_SERVER_CONFIG_H */
