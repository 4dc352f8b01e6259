/*
 * load.h - internals of mra-load shared by its command line (options.c),
 * its driver (main.c), its event-loop engine (engine.c) and its reports
 * (report.c).
 *
 * One run = one arrival schedule (a fixed rate, a Poisson process, or a
 * closed loop of C workers) played against the server for warmup +
 * duration seconds.  Everything happens on one thread: a libuv loop drives
 * libcurl's multi interface, so no locks are needed.
 */
#ifndef MRAD_LOAD_H
#define MRAD_LOAD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "clients/load/hist.h"

/* One prepared request body; requests cycle through the bodies. */
struct load_body {
    char *data;
    size_t len;
    int json;    /* 1 = application/json, else msgpack */
    char *label; /* what it is, for reports ("1,8,1024,64 mra2 f32", a path) */
};

struct load_config {
    const char *url;     /* base URL */
    const char *api_key; /* NULL = none */
    double rate;         /* requests per second (open loop); 0 = closed */
    int poisson;         /* exponential inter-arrival times */
    int concurrency;     /* closed loop: this many requests in flight */
    double duration_s;   /* measured phase */
    double warmup_s;     /* before it, not recorded */
    double timeout_s;    /* per request, client side; 0 = none */
    int max_inflight;    /* open loop: connections at most; later arrivals
                            wait (their latency still counts from their
                            intended time) */
    uint64_t seed;       /* Poisson arrivals */
    int progress;        /* live line on stderr */
    struct load_body *bodies;
    size_t nbodies;
};

/* What a run measured.  Latency in microseconds from each request's
 * intended send time to its completion, for requests whose intended time
 * fell in the measured phase. */
struct load_result {
    double offered_rate; /* configured rate (0 for closed loop) */
    double elapsed_s;    /* measured phase, including the drain */
    uint64_t sent;       /* requests intended in the measured phase */
    uint64_t completed;  /* of which answered or failed */
    uint64_t n200, n503, n504, nother, ntransport;
    uint64_t by_status[600]; /* every HTTP status seen, for the report */
    uint64_t backlog_max;    /* most arrivals waiting for a free connection */
    double throughput;       /* 200 answers per second of the measured phase */
    struct hist lat_ok;      /* latencies of 200 answers */
    struct hist lat_all;     /* latencies of every completed request */
    struct hist lat_503;     /* latencies of 503 answers (load shedding) */
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
/* Writes a PNG of p50/p99 latency against achieved throughput with
 * gnuplot from the CSV at csv_path.  Returns 0, or -1 (message on stderr). */
int load_plot(const char *csv_path, const char *png_path, const char *title);

#endif /* MRAD_LOAD_H */
