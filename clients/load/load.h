/*
 * load.h - internals of mra-load shared by its command line (options.c),
 * its driver (main.c), its event-loop engine (engine.c), its decode
 * sessions (decode.c) and its reports (report.c).
 *
 * One run = one arrival schedule (a fixed rate, a Poisson process, or a
 * closed loop of C workers) played against the server for warmup +
 * duration seconds.  Everything happens on one thread: a libuv loop drives
 * libcurl's multi interface, so no locks are needed.  With --decode the
 * requests are decoding steps on sessions the tool creates before the
 * runs and deletes after them, and makes lost ones again from the tokens
 * they held.
 */
#ifndef MRAD_LOAD_H
#define MRAD_LOAD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "clients/c/mraclient.h"
#include "clients/load/hist.h"

/* One prepared request body; requests cycle through the bodies. */
struct load_body {
    char *data;
    size_t len;
    int json;    /* 1 = application/json, else msgpack */
    char *label; /* what it is, for reports ("1,8,1024,64 mra2 f32", a path) */
};

struct load_decode; /* below */

struct load_config {
    const char *url;          /* base URL */
    const char *api_key;      /* NULL = none */
    double rate;              /* requests per second (open loop); 0 = closed */
    int poisson;              /* exponential inter-arrival times */
    int concurrency;          /* closed loop: this many requests in flight */
    double duration_s;        /* measured phase */
    double warmup_s;          /* before it, not recorded */
    double timeout_s;         /* per request, client side; 0 = none */
    int max_inflight;         /* open loop: connections at most; later arrivals
                                 wait (their latency still counts from their
                                 intended time) */
    uint64_t seed;            /* Poisson arrivals */
    int progress;             /* live line on stderr */
    struct load_body *bodies; /* with decode: the steps, without "kv" */
    size_t nbodies;
    struct load_decode *decode; /* NULL: requests with their own keys */
};

#define LOAD_TRANSPORT_KINDS 128

/* What a run measured.  Latency in microseconds from each request's
 * intended send time to its completion, for requests whose intended time
 * fell in the measured phase. */
struct load_result {
    double offered_rate;  /* configured rate (0 for closed loop) */
    double elapsed_s;     /* measured phase, including the drain */
    uint64_t sent;        /* requests intended in the measured phase */
    uint64_t warmup_sent; /* requests intended in the warm-up (not measured) */
    uint64_t completed;   /* of which answered or failed */
    uint64_t n200, n503, n504, nother, ntransport;
    uint64_t by_status[600]; /* every HTTP status seen, for the report */
    /* transport failures by libcurl's code (CURLcode; larger codes in the
     * last slot) */
    uint64_t by_transport[LOAD_TRANSPORT_KINDS];
    uint64_t backlog_max; /* most arrivals waiting for a free connection */
    double throughput;    /* 200 answers per second of the measured phase */
    struct hist lat_ok;   /* latencies of 200 answers */
    struct hist lat_all;  /* latencies of every completed request */
    struct hist lat_503;  /* latencies of 503 answers (load shedding) */
    /* --decode: what happened to the sessions during the run (warmup
     * included); 404 and 507 answers to steps also count as statuses. */
    uint64_t kv_lost;            /* 404 answers to steps (tries included) */
    uint64_t kv_recreated;       /* sessions created again after a 404 */
    uint64_t kv_recreate_failed; /* re-creates that failed (then retried) */
    uint64_t kv_retried;         /* steps sent again on a re-created session */
    uint64_t kv_full;            /* 507 answers, to steps and re-creates */
    /* Arrivals of the measured phase still waiting for a session when the
     * drain gave up (--timeout after the end): in `sent`, never
     * completed. */
    uint64_t abandoned;
};

/* Most --shape and --file options. */
#define LOAD_MAX_SHAPES 16
#define LOAD_MAX_FILES 64

/* The command line, as options.c reads it.  cfg holds the run settings
 * (rate, poisson, concurrency, duration_s, warmup_s, timeout_s,
 * max_inflight, seed); main.c fills in its url, api_key, bodies and
 * progress.  The strings point into argv. */
struct load_options {
    struct load_config cfg;
    const char *url;      /* base URL of the server */
    const char *key_file; /* NULL = no key */
    const char *sweep;    /* rates to sweep, see load_sweep_parse(); NULL =
                             one run at cfg.rate */
    const char *csv;      /* --csv, --plot: NULL = none */
    const char *plot;
    char *shapes[LOAD_MAX_SHAPES]; /* B,H,Nq,D of the random problems */
    int nshapes;
    uint32_t kv_len;             /* Nk of the random problems; 0 = their Nq */
    int causal;                  /* the random problems are causal */
    char *files[LOAD_MAX_FILES]; /* request body files instead */
    int nfiles;
    char methods[256]; /* comma lists of names */
    char dtypes[256];
    uint32_t hkv, bpr, variants; /* of the random problems */
    int decode;                  /* --decode: steps on sessions */
    uint32_t decode_context;     /* tokens each session starts with */
    uint32_t sessions;           /* sessions; 0 = the default */
    int rate_set;                /* --rate was given */
    int json, quiet;
};

/* Reads the command line into *o, with the defaults for what it leaves
 * out, and checks that the options go together.  Returns -1 when mra-load
 * should go on, else the exit status to end with: 0 after --help, 2 on a
 * usage error (message on stderr). */
int load_options_parse(int argc, char **argv, struct load_options *o);

/* Parses the rates of --sweep, R1,R2,... or START:STOP:STEP, into *rates
 * (malloc'd; caller frees) and *n.  Returns 0, or -1 when the list is
 * malformed (then *rates needs no freeing). */
int load_sweep_parse(const char *s, double **rates, size_t *n);

/* ---- --decode: the sessions steps run on (decode.c) ------------------ */

/* One session's state, as the engine sees it. */
enum load_session_state {
    LOAD_SESSION_IDLE,     /* ready for a step (from ready_ns on) */
    LOAD_SESSION_BUSY,     /* a step in flight */
    LOAD_SESSION_LOST,     /* gone (404): to create again from ready_ns */
    LOAD_SESSION_CREATING, /* its re-create in flight */
};

struct load_session {
    char id[PROTO_KV_ID_MAX + 1];
    char *step_url; /* POST /v1/kv/{id}/attention (malloc'd) */
    enum load_session_state state;
    uint64_t ready_ns;   /* backing off until then (uv_hrtime) */
    uint32_t backoff_ms; /* the next back-off; 0 after a success */
    /* The steps answered 200 since the context, as indices of their
     * bodies: the session holds the context and their tokens, in order,
     * and a re-create sends the same. */
    uint32_t *steps;
    size_t nsteps, cap;
    /* While its re-create is in flight: the body (malloc'd when owned,
     * else the decode's create_body). */
    char *create_body;
    size_t create_len;
    int create_owned;
};

struct load_decode {
    struct load_session *s;
    size_t n, next;    /* sessions; round-robin start */
    uint32_t context;  /* tokens each starts with */
    char *base;        /* the server's base URL, no trailing '/' */
    char *create_url;  /* POST /v1/kv */
    char *create_body; /* the context, encoded once (msgpack) */
    size_t create_len;
    struct attn_kv_shape shape;
    struct attn_kv_tokens tokens; /* the context, for the first creates */
    void *mem;                    /* holds it */
    void **step_tokens; /* per step body: its token's k then v ([B, Hkv,
                           1, D] each), malloc'd */
    size_t nstep_tokens;
    uint64_t deleted, gone; /* at the end: deleted, already gone */
};

/*
 * Prepares --decode: the context (random keys and values of the shape,
 * dtype, --hkv and --seed, decode_context tokens) and the step bodies
 * (one query per head of --shape and one appended token, causal; per
 * --method and --variants) into o->cfg.bodies, then creates o->sessions
 * sessions with client `c`.  Sets o->cfg.decode.  Returns 0 or an exit
 * status (message on stderr); load_decode_free() releases what it made
 * either way.
 */
int load_decode_setup(struct load_options *o, struct mrac_client *c);
/* Deletes the sessions (counting those already gone), then frees what
 * setup made.  NULL is ignored. */
void load_decode_teardown(struct load_decode *d, struct mrac_client *c);

/* The engine's side.  `now` is uv_hrtime().  Picks an idle session that
 * is ready and marks it busy; -1 when none is. */
int load_decode_acquire(struct load_decode *d, uint64_t now);
/* Nonzero when load_decode_acquire() would find one. */
int load_decode_available(const struct load_decode *d, uint64_t now);
/* A step (of body `body`) on session i ended with HTTP `status` (0: no
 * answer): a 200 adds its token to what the session holds, a 404 marks
 * the session lost (to create again), a 507 backs it off; counted in
 * *res.  Returns 1 when the step is to wait for the session's re-create
 * and be sent again (a 404 to a step not yet `retried`), else 0: the
 * step is done. */
int load_decode_step_done(struct load_decode *d, int i, size_t body,
                          long status, int retried, uint64_t now,
                          struct load_result *res);
/* A lost session whose back-off has passed, marked creating, with the
 * body of its re-create (the context and the tokens of its steps) in
 * s[i].create_body; -1 when none. */
int load_decode_next_create(struct load_decode *d, uint64_t now);
/* Its create ended: status and the answer body.  201 gives the session
 * its new id and returns 1; the session is then idle, or busy when `held`
 * (a step waits to be sent again on it).  Anything else backs it off,
 * leaves it lost and returns 0. */
int load_decode_create_done(struct load_decode *d, int i, long status,
                            const char *body, size_t len, int held,
                            uint64_t now, struct load_result *res);

/* Runs one load phase.  Returns 0, or -1 with a message on stderr when the
 * event loop or libcurl could not be set up. */
int load_run(const struct load_config *cfg, struct load_result *res);

/* Reports: a human-readable block, a JSON object, a CSV header and row. */
void load_report_text(const struct load_config *cfg,
                      const struct load_result *r);
void load_report_json(const struct load_config *cfg,
                      const struct load_result *rs, size_t n);
void load_csv_header(FILE *f);
void load_csv_row(FILE *f, const struct load_result *r);
/* Writes a PNG of p50/p99 latency against achieved throughput of the n
 * runs of a sweep with gnuplot, the points joined in the order of their
 * offered rates (each labelled with it).  Returns 0, or -1 (message on
 * stderr). */
int load_plot(const struct load_result *rs, size_t n, const char *png_path,
              const char *title);

#endif /* MRAD_LOAD_H */
