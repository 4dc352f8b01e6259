/*
 * main.c - mra-load, the load generator of the attention service: reads
 * the command line, prepares the request bodies (random problems from
 * --shape, or request files), runs one load phase or a sweep of rates,
 * and prints the report.  See `mra-load --help`.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "clients/c/mraclient.h"
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
            "  --shape B,H,N,D      random problem (repeatable; default "
            "1,8,1024,64)\n"
            "  --hkv N              key/value heads (default H)\n"
            "  --method M[,M...]    mra2, mra2_sparse, exact (default mra2)\n"
            "  --dtype T[,T...]     f32, f16, bf16 (default f32)\n"
            "  --block-per-row K    budget per block row\n"
            "  --variants V         distinct random bodies per shape (default "
            "1)\n"
            "  --seed S             random seed (default 1)\n"
            "  --file F             a request body file instead (repeatable)\n"
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
            "Exit status: 0 when the runs completed (whatever the server "
            "answered), 1 on setup errors, 2 on usage errors.\n");
}

/* Reads a whole file into a malloc'd buffer (NUL-terminated). */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        size_t got = fread(b + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
        if (n + 1 == cap) {
            char *nb = cap <= SIZE_MAX / 2 ? realloc(b, cap * 2) : NULL;
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!b || bad) {
        free(b);
        return NULL;
    }
    b[n] = '\0';
    *len = n;
    return b;
}

static int parse_shape(const char *s, uint32_t dims[4])
{
    char *end;
    for (int i = 0; i < 4; i++) {
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || errno || v == 0 || v > UINT32_MAX ||
            (i < 3 && *end != ',') || (i == 3 && *end))
            return -1;
        dims[i] = (uint32_t)v;
        s = end + 1;
    }
    return 0;
}

static int parse_method(const char *s, enum attn_method *m)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(s, attn_method_name((enum attn_method)i)) == 0) {
            *m = (enum attn_method)i;
            return 0;
        }
    return -1;
}

static int parse_dtype(const char *s, enum attn_dtype *d)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(s, attn_dtype_name((enum attn_dtype)i)) == 0) {
            *d = (enum attn_dtype)i;
            return 0;
        }
    return -1;
}

/* Splits a comma list into at most `max` pieces of a copy of s; returns the
 * count, or -1 when too many. */
static int split(char *s, char **out, int max)
{
    int n = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        if (n == max)
            return -1;
        out[n++] = tok;
    }
    return n;
}

/* Parses R1,R2,... or START:STOP:STEP into rates (malloc'd). */
static int parse_sweep(const char *s, double **rates, size_t *n)
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
    return *n ? 0 : -1;
}

#define MAX_SHAPES 16
#define MAX_FILES 64

int main(int argc, char **argv)
{
    struct load_config cfg = {
        .rate = 10,
        .duration_s = 10,
        .warmup_s = 1,
        .timeout_s = 30,
        .max_inflight = 256,
        .seed = 1,
    };
    const char *url = "http://127.0.0.1:8080", *key_file = NULL;
    const char *sweep = NULL, *csv = NULL, *plot = NULL;
    char *shapes[MAX_SHAPES], *files[MAX_FILES];
    int nshapes = 0, nfiles = 0, json = 0, quiet = 0, rate_set = 0;
    char methods_s[256] = "mra2", dtypes_s[256] = "f32";
    uint32_t hkv = 0, bpr = 0, variants = 1;

    enum {
        O_RATE = 256,
        O_POISSON,
        O_CONC,
        O_SWEEP,
        O_DUR,
        O_WARM,
        O_SHAPE,
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
        O_HELP,
    };
    static const struct option opts[] = {
        {"rate", 1, 0, O_RATE},         {"poisson", 0, 0, O_POISSON},
        {"concurrency", 1, 0, O_CONC},  {"sweep", 1, 0, O_SWEEP},
        {"duration", 1, 0, O_DUR},      {"warmup", 1, 0, O_WARM},
        {"shape", 1, 0, O_SHAPE},       {"hkv", 1, 0, O_HKV},
        {"method", 1, 0, O_METHOD},     {"dtype", 1, 0, O_DTYPE},
        {"block-per-row", 1, 0, O_BPR}, {"variants", 1, 0, O_VARIANTS},
        {"seed", 1, 0, O_SEED},         {"file", 1, 0, O_FILE},
        {"url", 1, 0, O_URL},           {"api-key-file", 1, 0, O_KEY},
        {"timeout", 1, 0, O_TIMEOUT},   {"max-inflight", 1, 0, O_MAXIN},
        {"json", 0, 0, O_JSON},         {"csv", 1, 0, O_CSV},
        {"plot", 1, 0, O_PLOT},         {"quiet", 0, 0, O_QUIET},
        {"help", 0, 0, O_HELP},         {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case O_RATE:
            cfg.rate = strtod(optarg, &end);
            rate_set = 1;
            if (*end || cfg.rate <= 0)
                goto bad;
            break;
        case O_POISSON:
            cfg.poisson = 1;
            break;
        case O_CONC:
            cfg.concurrency = (int)strtol(optarg, &end, 10);
            if (*end || cfg.concurrency < 1 || cfg.concurrency > 100000)
                goto bad;
            break;
        case O_SWEEP:
            sweep = optarg;
            break;
        case O_DUR:
            cfg.duration_s = strtod(optarg, &end);
            if (*end || cfg.duration_s <= 0)
                goto bad;
            break;
        case O_WARM:
            cfg.warmup_s = strtod(optarg, &end);
            if (*end || cfg.warmup_s < 0)
                goto bad;
            break;
        case O_SHAPE:
            if (nshapes == MAX_SHAPES)
                goto bad;
            shapes[nshapes++] = optarg;
            break;
        case O_HKV:
            hkv = (uint32_t)strtoul(optarg, &end, 10);
            if (*end || hkv == 0)
                goto bad;
            break;
        case O_METHOD:
            snprintf(methods_s, sizeof methods_s, "%s", optarg);
            break;
        case O_DTYPE:
            snprintf(dtypes_s, sizeof dtypes_s, "%s", optarg);
            break;
        case O_BPR:
            bpr = (uint32_t)strtoul(optarg, &end, 10);
            if (*end || bpr == 0)
                goto bad;
            break;
        case O_VARIANTS:
            variants = (uint32_t)strtoul(optarg, &end, 10);
            if (*end || variants == 0 || variants > 1024)
                goto bad;
            break;
        case O_SEED:
            cfg.seed = strtoull(optarg, &end, 10);
            if (*end)
                goto bad;
            break;
        case O_FILE:
            if (nfiles == MAX_FILES)
                goto bad;
            files[nfiles++] = optarg;
            break;
        case O_URL:
            url = optarg;
            break;
        case O_KEY:
            key_file = optarg;
            break;
        case O_TIMEOUT:
            cfg.timeout_s = strtod(optarg, &end);
            if (*end || cfg.timeout_s < 0)
                goto bad;
            break;
        case O_MAXIN:
            cfg.max_inflight = (int)strtol(optarg, &end, 10);
            if (*end || cfg.max_inflight < 1 || cfg.max_inflight > 65536)
                goto bad;
            break;
        case O_JSON:
            json = 1;
            break;
        case O_CSV:
            csv = optarg;
            break;
        case O_PLOT:
            plot = optarg;
            break;
        case O_QUIET:
            quiet = 1;
            break;
        case O_HELP:
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "mra-load: bad value for --%s: '%s'\n",
                opts[c - O_RATE].name, optarg ? optarg : "");
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "mra-load: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (cfg.concurrency && (rate_set || sweep || cfg.poisson)) {
        fprintf(stderr, "mra-load: --concurrency is a closed loop; it does "
                        "not combine with --rate, --poisson or --sweep\n");
        return 2;
    }
    if (cfg.concurrency) {
        cfg.rate = 0;
        /* A closed loop needs a connection per request in flight. */
        if (cfg.max_inflight < cfg.concurrency)
            cfg.max_inflight = cfg.concurrency;
    }
    if ((csv || plot) && !sweep) {
        fprintf(stderr, "mra-load: --csv and --plot go with --sweep\n");
        return 2;
    }
    if (nfiles && nshapes) {
        fprintf(stderr, "mra-load: use --shape or --file, not both\n");
        return 2;
    }

    /* The URL of the endpoint and the key. */
    size_t ul = strlen(url);
    while (ul && url[ul - 1] == '/')
        ul--;
    char *endpoint = malloc(ul + sizeof "/v1/attention");
    char *key = NULL;
    if (!endpoint)
        return 1;
    snprintf(endpoint, ul + sizeof "/v1/attention", "%.*s/v1/attention",
             (int)ul, url);
    cfg.url = endpoint;
    if (key_file) {
        size_t kl;
        key = read_file(key_file, &kl);
        if (!key) {
            fprintf(stderr, "mra-load: cannot read %s: %s\n", key_file,
                    strerror(errno));
            return 1;
        }
        key[strcspn(key, "\r\n")] = '\0';
        cfg.api_key = key;
    }

    /* The bodies: at most MAX_FILES files, or shapes x methods x dtypes x
     * variants (16 * 3 * 3 * 1024) random ones, so the count cannot overflow.
     */
    size_t most = nfiles ? (size_t)nfiles
                         : (size_t)(nshapes ? nshapes : 1) * 9 * variants;
    struct load_body *bodies = calloc(most, sizeof *bodies);
    size_t nb = 0;
    if (!bodies) {
        fprintf(stderr, "mra-load: out of memory\n");
        return 1;
    }
    if (nfiles) {
        for (int i = 0; i < nfiles; i++) {
            struct load_body *b = &bodies[nb++];
            b->data = read_file(files[i], &b->len);
            if (!b->data) {
                fprintf(stderr, "mra-load: cannot read %s: %s\n", files[i],
                        strerror(errno));
                return 1;
            }
            size_t sk = strspn(b->data, " \t\r\n");
            b->json = b->data[sk] == '{';
            b->label = files[i];
        }
    } else {
        char *default_shape = "1,8,1024,64";
        if (!nshapes)
            shapes[nshapes++] = default_shape;
        char *mlist[3], *dlist[3];
        int nm = split(methods_s, mlist, 3), nd = split(dtypes_s, dlist, 3);
        if (nm <= 0 || nd <= 0) {
            fprintf(stderr, "mra-load: bad --method or --dtype list\n");
            return 2;
        }
        for (int s = 0; s < nshapes; s++) {
            uint32_t dims[4];
            if (parse_shape(shapes[s], dims) != 0) {
                fprintf(stderr, "mra-load: bad --shape '%s' (want B,H,N,D)\n",
                        shapes[s]);
                return 2;
            }
            for (int m = 0; m < nm; m++)
                for (int d = 0; d < nd; d++)
                    for (uint32_t v = 0; v < variants; v++) {
                        struct mrac_random_spec sp = {
                            .B = dims[0],
                            .H = dims[1],
                            .N = dims[2],
                            .D = dims[3],
                            .Hkv = hkv,
                            .block_per_row = bpr,
                            .seed = cfg.seed + v,
                        };
                        if (parse_method(mlist[m], &sp.method) ||
                            parse_dtype(dlist[d], &sp.dtype)) {
                            fprintf(stderr,
                                    "mra-load: unknown method '%s' or dtype "
                                    "'%s'\n",
                                    mlist[m], dlist[d]);
                            return 2;
                        }
                        struct attn_problem p;
                        void *mem;
                        int rc = mrac_random_problem(&sp, &p, &mem);
                        if (rc != MRAC_OK) {
                            fprintf(stderr, "mra-load: shape %s: %s\n",
                                    shapes[s], mrac_strerror(rc));
                            return 2;
                        }
                        struct load_body *b = &bodies[nb++];
                        rc = proto_request_encode(&p, PROTO_MSGPACK, NULL, 0,
                                                  &b->data, &b->len);
                        free(mem);
                        if (rc != PROTO_OK) {
                            fprintf(stderr, "mra-load: out of memory\n");
                            return 1;
                        }
                        b->label = shapes[s];
                    }
        }
    }
    cfg.bodies = bodies;
    cfg.nbodies = nb;
    cfg.progress = !quiet && isatty(STDERR_FILENO);

    if (mrac_global_init() != MRAC_OK) {
        fprintf(stderr, "mra-load: libcurl failed to initialise\n");
        return 1;
    }

    double *rates = NULL;
    size_t nrates = 1;
    if (sweep && parse_sweep(sweep, &rates, &nrates) != 0) {
        fprintf(stderr, "mra-load: bad --sweep '%s'\n", sweep);
        return 2;
    }
    struct load_result *res = calloc(nrates, sizeof *res);
    const struct load_result **rp = calloc(nrates, sizeof *rp);
    if (!res || !rp)
        return 1;
    FILE *cf = NULL;
    if (csv) {
        cf = fopen(csv, "w");
        if (!cf) {
            fprintf(stderr, "mra-load: cannot write %s: %s\n", csv,
                    strerror(errno));
            return 1;
        }
        load_csv_header(cf);
    }
    int status = 0;
    for (size_t i = 0; i < nrates; i++) {
        if (rates)
            cfg.rate = rates[i];
        if (load_run(&cfg, &res[i]) != 0) {
            status = 1;
            break;
        }
        rp[i] = &res[i];
        if (cf) {
            load_csv_row(cf, &res[i]);
            fflush(cf);
        }
        if (!json) {
            if (nrates > 1)
                printf("== rate %.1f/s\n", cfg.rate);
            load_report_text(&cfg, &res[i]);
            fflush(stdout);
        }
    }
    if (cf)
        fclose(cf);
    if (!status && json)
        load_report_json(&cfg, rp, nrates);
    if (!status && plot) {
        const char *src = csv;
        char tmp[] = "/tmp/mra-load-XXXXXX";
        if (!src) { /* --plot alone: write the CSV to a temporary file */
            int fd = mkstemp(tmp);
            FILE *tf = fd >= 0 ? fdopen(fd, "w") : NULL;
            if (!tf)
                return 1;
            load_csv_header(tf);
            for (size_t i = 0; i < nrates; i++)
                load_csv_row(tf, &res[i]);
            fclose(tf);
            src = tmp;
        }
        char title[256];
        snprintf(title, sizeof title, "mra-load against %s (%s)", url,
                 nfiles ? "request files" : shapes[0]);
        if (load_plot(src, plot, title) != 0)
            status = 1;
        if (src == tmp)
            unlink(tmp);
    }
    free(rates);
    free(res);
    free(rp);
    for (size_t i = 0; i < nb; i++)
        free(bodies[i].data);
    free(bodies);
    free(endpoint);
    free(key);
    mrac_global_cleanup();
    return status;
}
