/*
 * options.c - the command line of mra-load: its flags, their defaults and
 * checks (--decode's included), read into a struct load_options
 * (load_options_parse), the rates of --sweep (load_sweep_parse) and
 * --help.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/load/load.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mra-load [options]\n"
            "Sends attention requests to mrad and reports throughput and "
            "latency.\n\n"
            "Arrivals (one of):\n"
            "  --rate R             open loop, R requests per second (default "
            "10)\n"
            "  --poisson            with exponential gaps (a Poisson process)\n"
            "  --concurrency C      closed loop: C requests always in flight\n"
            "  --sweep LIST         open loop at each rate of R1,R2,... or "
            "START:STOP:STEP\n"
            "Phases:\n"
            "  --duration S         measured seconds per run (default 10)\n"
            "  --warmup S           seconds before, not recorded (default 1)\n"
            "Requests (cycled through):\n"
            "  --shape B,H,Nq,D     random problem (repeatable; default "
            "1,8,1024,64)\n"
            "  --kv-len Nk          keys of every random problem (default "
            "Nq):\n"
            "                       e.g. --shape 1,8,1,64 --kv-len 8192 for "
            "decoding\n"
            "  --causal             causal attention (query i sees keys j <= "
            "i + Nk - Nq)\n"
            "  --hkv N              key/value heads (default H)\n"
            "  --method M[,M...]    mra2, mra2_sparse, exact (default mra2)\n"
            "  --dtype T[,T...]     f32, f16, bf16 (default f32)\n"
            "  --block-per-row K    budget per block row\n"
            "  --variants V         distinct random bodies per shape (default "
            "1)\n"
            "  --seed S             random seed (default 1)\n"
            "  --file F             a request body file instead (repeatable)\n"
            "Decoding on sessions (keys and values kept in the server):\n"
            "  --decode             requests are decoding steps on sessions:\n"
            "                       the Nq queries of --shape (default\n"
            "                       1,8,1,64) and one appended token, causal;\n"
            "                       one step in flight per session (arrivals\n"
            "                       wait for one, and the wait counts); a\n"
            "                       session the server lost (404) is made\n"
            "                       again with all it held and the step\n"
            "                       sent once more, a 507 backs it off; the\n"
            "                       sessions are deleted at the end\n"
            "  --decode-context N   tokens each session starts with (1024)\n"
            "  --sessions S         sessions (default 4, or --concurrency)\n"
            "Connection:\n"
            "  --url URL            server (default http://127.0.0.1:8080)\n"
            "  --api-key-file F     send the key in F as a bearer token\n"
            "  --timeout S          per-request client timeout (default 30)\n"
            "  --max-inflight N     open loop: connections at most (default "
            "256)\n"
            "Output:\n"
            "  --json               machine-readable report on stdout\n"
            "  --csv FILE           sweep: one row per rate\n"
            "  --plot FILE          sweep: PNG of p50/p99 against throughput "
            "(gnuplot)\n"
            "  --quiet              no progress line\n"
            "  --version            print the version and exit\n"
            "Exit status: 0 when the runs completed (whatever the server "
            "answered), 1 on setup errors, 2 on usage errors.\n");
}

enum {
    O_RATE = 256,
    O_POISSON,
    O_CONC,
    O_SWEEP,
    O_DUR,
    O_WARM,
    O_SHAPE,
    O_KVLEN,
    O_CAUSAL,
    O_HKV,
    O_METHOD,
    O_DTYPE,
    O_BPR,
    O_VARIANTS,
    O_SEED,
    O_FILE,
    O_URL,
    O_KEY,
    O_TIMEOUT,
    O_MAXIN,
    O_JSON,
    O_CSV,
    O_PLOT,
    O_QUIET,
    O_DECODE,
    O_DCTX,
    O_SESSIONS,
    O_HELP,
    O_VERSION,
};

/* In the order of the enum: a bad value names its flag by index. */
static const struct option opts[] = {
    {"rate", 1, 0, O_RATE},
    {"poisson", 0, 0, O_POISSON},
    {"concurrency", 1, 0, O_CONC},
    {"sweep", 1, 0, O_SWEEP},
    {"duration", 1, 0, O_DUR},
    {"warmup", 1, 0, O_WARM},
    {"shape", 1, 0, O_SHAPE},
    {"kv-len", 1, 0, O_KVLEN},
    {"causal", 0, 0, O_CAUSAL},
    {"hkv", 1, 0, O_HKV},
    {"method", 1, 0, O_METHOD},
    {"dtype", 1, 0, O_DTYPE},
    {"block-per-row", 1, 0, O_BPR},
    {"variants", 1, 0, O_VARIANTS},
    {"seed", 1, 0, O_SEED},
    {"file", 1, 0, O_FILE},
    {"url", 1, 0, O_URL},
    {"api-key-file", 1, 0, O_KEY},
    {"timeout", 1, 0, O_TIMEOUT},
    {"max-inflight", 1, 0, O_MAXIN},
    {"json", 0, 0, O_JSON},
    {"csv", 1, 0, O_CSV},
    {"plot", 1, 0, O_PLOT},
    {"quiet", 0, 0, O_QUIET},
    {"decode", 0, 0, O_DECODE},
    {"decode-context", 1, 0, O_DCTX},
    {"sessions", 1, 0, O_SESSIONS},
    {"help", 0, 0, O_HELP},
    {"version", 0, 0, O_VERSION},
    {0, 0, 0, 0},
};

/* Applies one flag (c, with its value in optarg) to *o.  Returns 0, or -1
 * when the value is out of range or does not parse. */
static int apply(struct load_options *o, int c)
{
    struct load_config *cfg = &o->cfg;
    char *end = NULL;
    switch (c) {
    case O_RATE:
        cfg->rate = strtod(optarg, &end);
        o->rate_set = 1;
        return *end || cfg->rate <= 0 ? -1 : 0;
    case O_POISSON:
        cfg->poisson = 1;
        return 0;
    case O_CONC:
        cfg->concurrency = (int)strtol(optarg, &end, 10);
        return *end || cfg->concurrency < 1 || cfg->concurrency > 100000 ? -1
                                                                         : 0;
    case O_SWEEP:
        o->sweep = optarg;
        return 0;
    case O_DUR:
        cfg->duration_s = strtod(optarg, &end);
        return *end || cfg->duration_s <= 0 ? -1 : 0;
    case O_WARM:
        cfg->warmup_s = strtod(optarg, &end);
        return *end || cfg->warmup_s < 0 ? -1 : 0;
    case O_SHAPE:
        if (o->nshapes == LOAD_MAX_SHAPES)
            return -1;
        o->shapes[o->nshapes++] = optarg;
        return 0;
    case O_KVLEN: {
        unsigned long long n = strtoull(optarg, &end, 10);
        o->kv_len = n <= UINT32_MAX ? (uint32_t)n : 0;
        return *end || *optarg == '-' || o->kv_len == 0 ? -1 : 0;
    }
    case O_CAUSAL:
        o->causal = 1;
        return 0;
    case O_HKV:
        o->hkv = (uint32_t)strtoul(optarg, &end, 10);
        return *end || o->hkv == 0 ? -1 : 0;
    case O_METHOD:
        snprintf(o->methods, sizeof o->methods, "%s", optarg);
        return 0;
    case O_DTYPE:
        snprintf(o->dtypes, sizeof o->dtypes, "%s", optarg);
        return 0;
    case O_BPR:
        o->bpr = (uint32_t)strtoul(optarg, &end, 10);
        return *end || o->bpr == 0 ? -1 : 0;
    case O_VARIANTS:
        o->variants = (uint32_t)strtoul(optarg, &end, 10);
        return *end || o->variants == 0 || o->variants > 1024 ? -1 : 0;
    case O_SEED:
        cfg->seed = strtoull(optarg, &end, 10);
        return *end ? -1 : 0;
    case O_FILE:
        if (o->nfiles == LOAD_MAX_FILES)
            return -1;
        o->files[o->nfiles++] = optarg;
        return 0;
    case O_URL:
        o->url = optarg;
        return 0;
    case O_KEY:
        o->key_file = optarg;
        return 0;
    case O_TIMEOUT:
        cfg->timeout_s = strtod(optarg, &end);
        return *end || cfg->timeout_s < 0 ? -1 : 0;
    case O_MAXIN:
        cfg->max_inflight = (int)strtol(optarg, &end, 10);
        return *end || cfg->max_inflight < 1 || cfg->max_inflight > 65536 ? -1
                                                                          : 0;
    case O_JSON:
        o->json = 1;
        return 0;
    case O_CSV:
        o->csv = optarg;
        return 0;
    case O_PLOT:
        o->plot = optarg;
        return 0;
    case O_QUIET:
        o->quiet = 1;
        return 0;
    case O_DECODE:
        o->decode = 1;
        return 0;
    case O_DCTX: {
        unsigned long long n = strtoull(optarg, &end, 10);
        o->decode_context = n <= UINT32_MAX ? (uint32_t)n : 0;
        return *end || *optarg == '-' || o->decode_context == 0 ? -1 : 0;
    }
    case O_SESSIONS: {
        unsigned long long n = strtoull(optarg, &end, 10);
        o->sessions = n <= 65536 ? (uint32_t)n : 0;
        return *end || *optarg == '-' || o->sessions == 0 ? -1 : 0;
    }
    }
    return -1;
}

/* The checks and defaults of --decode.  Returns -1 to go on, or 2. */
static int decode_options(struct load_options *o)
{
    if (!o->decode) {
        if (o->decode_context || o->sessions) {
            fprintf(stderr, "mra-load: --decode-context and --sessions go "
                            "with --decode\n");
            return 2;
        }
        return -1;
    }
    if (o->nfiles || o->kv_len || o->nshapes > 1 || strchr(o->dtypes, ',')) {
        fprintf(stderr, "mra-load: --decode takes one --shape and one "
                        "--dtype, and no --file or --kv-len (the context is "
                        "--decode-context)\n");
        return 2;
    }
    int conc = o->cfg.concurrency;
    if (o->sessions && conc && o->sessions < (uint32_t)conc) {
        fprintf(stderr,
                "mra-load: --concurrency %d needs --sessions >= %d "
                "(one step in flight per session)\n",
                conc, conc);
        return 2;
    }
    if (!o->sessions)
        o->sessions = conc ? (uint32_t)conc : 4;
    if (!o->decode_context)
        o->decode_context = 1024;
    return -1;
}

int load_options_parse(int argc, char **argv, struct load_options *o)
{
    memset(o, 0, sizeof *o);
    o->cfg.rate = 10;
    o->cfg.duration_s = 10;
    o->cfg.warmup_s = 1;
    o->cfg.timeout_s = 30;
    o->cfg.max_inflight = 256;
    o->cfg.seed = 1;
    o->url = "http://127.0.0.1:8080";
    snprintf(o->methods, sizeof o->methods, "mra2");
    snprintf(o->dtypes, sizeof o->dtypes, "f32");
    o->variants = 1;

    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == O_HELP) {
            usage(stdout);
            return 0;
        }
        if (c == O_VERSION) {
            printf("mra-load %s\n", MRAD_VERSION);
            return 0;
        }
        if (c < O_RATE || c > O_VERSION) {
            usage(stderr);
            return 2;
        }
        if (apply(o, c) != 0) {
            fprintf(stderr, "mra-load: bad value for --%s: '%s'\n",
                    opts[c - O_RATE].name, optarg ? optarg : "");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mra-load: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    struct load_config *cfg = &o->cfg;
    if (cfg->concurrency && (o->rate_set || o->sweep || cfg->poisson)) {
        fprintf(stderr, "mra-load: --concurrency is a closed loop; it does "
                        "not combine with --rate, --poisson or --sweep\n");
        return 2;
    }
    if (cfg->concurrency) {
        cfg->rate = 0;
        /* A closed loop needs a connection per request in flight. */
        if (cfg->max_inflight < cfg->concurrency)
            cfg->max_inflight = cfg->concurrency;
    }
    if ((o->csv || o->plot) && !o->sweep) {
        fprintf(stderr, "mra-load: --csv and --plot go with --sweep\n");
        return 2;
    }
    if (o->nfiles && (o->nshapes || o->kv_len || o->causal)) {
        fprintf(stderr, "mra-load: use --shape (with --kv-len, --causal) or "
                        "--file, not both\n");
        return 2;
    }
    return decode_options(o);
}

int load_sweep_parse(const char *s, double **rates, size_t *n)
{
    double a, b, st;
    char tail;
    if (sscanf(s, "%lf:%lf:%lf%c", &a, &b, &st, &tail) == 3) {
        if (a <= 0 || b < a || st <= 0 || (b - a) / st > 10000)
            return -1;
        size_t cnt = (size_t)((b - a) / st + 1e-9) + 1;
        *rates = malloc(cnt * sizeof **rates);
        if (!*rates)
            return -1;
        for (size_t i = 0; i < cnt; i++)
            (*rates)[i] = a + st * (double)i;
        *n = cnt;
        return 0;
    }
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    *rates = malloc(cap * sizeof **rates);
    if (!*rates)
        return -1;
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        double r = strtod(p, &end);
        if (end == p || r <= 0 || (*end && *end != ',')) {
            free(*rates);
            return -1;
        }
        (*rates)[(*n)++] = r;
        p = *end ? end + 1 : end;
    }
    if (*n == 0) {
        free(*rates);
        return -1;
    }
    return 0;
}
