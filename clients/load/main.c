/*
 * main.c - mra-load, the load generator of the attention service: reads
 * the command line (options.c), prepares the endpoint, the key and the
 * request bodies (random problems from --shape, or request files), runs
 * one load phase or a sweep of rates (engine.c), and reports (report.c).
 * See `mra-load --help`.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clients/c/mraclient.h"
#include "clients/load/load.h"

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

/* Sets o->cfg.url to the attention endpoint of --url and o->cfg.api_key
 * to the key in --api-key-file, if any (both malloc'd, freed by the
 * caller).  Returns 0, or the exit status 1 (message on stderr). */
static int set_target(struct load_options *o)
{
    size_t ul = strlen(o->url);
    while (ul && o->url[ul - 1] == '/')
        ul--;
    char *endpoint = malloc(ul + sizeof "/v1/attention");
    if (!endpoint)
        return 1;
    snprintf(endpoint, ul + sizeof "/v1/attention", "%.*s/v1/attention",
             (int)ul, o->url);
    o->cfg.url = endpoint;
    if (o->key_file) {
        size_t kl;
        char *key = mrac_read_file(o->key_file, &kl);
        if (!key) {
            fprintf(stderr, "mra-load: cannot read %s: %s\n", o->key_file,
                    strerror(errno));
            return 1;
        }
        key[strcspn(key, "\r\n")] = '\0';
        o->cfg.api_key = key;
    }
    return 0;
}

/* Reads each --file into the next body.  Returns 0 or an exit status. */
static int read_bodies(const struct load_options *o, struct load_body *bodies,
                       size_t *nb)
{
    for (int i = 0; i < o->nfiles; i++) {
        struct load_body *b = &bodies[(*nb)++];
        b->data = mrac_read_file(o->files[i], &b->len);
        if (!b->data) {
            fprintf(stderr, "mra-load: cannot read %s: %s\n", o->files[i],
                    strerror(errno));
            return 1;
        }
        size_t sk = strspn(b->data, " \t\r\n");
        b->json = b->data[sk] == '{';
        b->label = o->files[i];
    }
    return 0;
}

/* Encodes one random problem of shape `shape` as the next body.  Returns 0
 * or an exit status. */
static int random_body(const struct mrac_random_spec *sp, char *shape,
                       struct load_body *bodies, size_t *nb)
{
    struct attn_problem p;
    void *mem;
    int rc = mrac_random_problem(sp, &p, &mem);
    if (rc != MRAC_OK) {
        fprintf(stderr, "mra-load: shape %s: %s\n", shape, mrac_strerror(rc));
        return 2;
    }
    struct load_body *b = &bodies[(*nb)++];
    rc = proto_request_encode(&p, PROTO_MSGPACK, NULL, 0, &b->data, &b->len);
    free(mem);
    if (rc != PROTO_OK) {
        fprintf(stderr, "mra-load: out of memory\n");
        return 1;
    }
    b->label = shape;
    return 0;
}

/* Generates a random body for every shape x method x dtype x variant
 * (--shape, default 1,8,1024,64).  Returns 0 or an exit status. */
static int random_bodies(struct load_options *o, struct load_body *bodies,
                         size_t *nb)
{
    if (!o->nshapes)
        o->shapes[o->nshapes++] = "1,8,1024,64";
    char *mlist[3], *dlist[3];
    int nm = split(o->methods, mlist, 3), nd = split(o->dtypes, dlist, 3);
    if (nm <= 0 || nd <= 0) {
        fprintf(stderr, "mra-load: bad --method or --dtype list\n");
        return 2;
    }
    for (int s = 0; s < o->nshapes; s++) {
        uint32_t dims[4];
        if (parse_shape(o->shapes[s], dims) != 0) {
            fprintf(stderr, "mra-load: bad --shape '%s' (want B,H,Nq,D)\n",
                    o->shapes[s]);
            return 2;
        }
        for (int m = 0; m < nm; m++)
            for (int d = 0; d < nd; d++)
                for (uint32_t v = 0; v < o->variants; v++) {
                    struct mrac_random_spec sp = {
                        .B = dims[0],
                        .H = dims[1],
                        .Nq = dims[2],
                        .Nk = o->kv_len,
                        .D = dims[3],
                        .causal = o->causal,
                        .Hkv = o->hkv,
                        .block_per_row = o->bpr,
                        .seed = o->cfg.seed + v,
                    };
                    if (mrac_method_parse(mlist[m], &sp.method) ||
                        mrac_dtype_parse(dlist[d], &sp.dtype)) {
                        fprintf(stderr,
                                "mra-load: unknown method '%s' or dtype "
                                "'%s'\n",
                                mlist[m], dlist[d]);
                        return 2;
                    }
                    int rc = random_body(&sp, o->shapes[s], bodies, nb);
                    if (rc)
                        return rc;
                }
    }
    return 0;
}

/* Prepares the bodies the requests cycle through into o->cfg.bodies and
 * o->cfg.nbodies (each body's data malloc'd, and the array; freed by the
 * caller even on failure).  Returns 0 or an exit status. */
static int make_bodies(struct load_options *o)
{
    /* At most LOAD_MAX_FILES files, or shapes x methods x dtypes x variants
     * (16 * 3 * 3 * 1024) random ones, so the count cannot overflow. */
    size_t most = o->nfiles
                      ? (size_t)o->nfiles
                      : (size_t)(o->nshapes ? o->nshapes : 1) * 9 * o->variants;
    struct load_body *bodies = calloc(most, sizeof *bodies);
    if (!bodies) {
        fprintf(stderr, "mra-load: out of memory\n");
        return 1;
    }
    o->cfg.bodies = bodies;
    if (o->nfiles)
        return read_bodies(o, bodies, &o->cfg.nbodies);
    return random_bodies(o, bodies, &o->cfg.nbodies);
}

/* Runs one load phase per rate of --sweep (or the one of --rate or
 * --concurrency) and reports each as it ends: its text block on stdout
 * unless --json, its row in the --csv file.  o->cfg.rate is left at the
 * last rate.  Stores the results in *res (malloc'd, caller frees) and
 * their count in *nres.  Returns 0 or an exit status. */
static int run_phases(struct load_options *o, struct load_result **res,
                      size_t *nres)
{
    struct load_config *cfg = &o->cfg;
    double *rates = NULL;
    size_t nrates = 1;
    if (o->sweep && load_sweep_parse(o->sweep, &rates, &nrates) != 0) {
        fprintf(stderr, "mra-load: bad --sweep '%s'\n", o->sweep);
        return 2;
    }
    *res = calloc(nrates, sizeof **res);
    *nres = nrates;
    if (!*res) {
        free(rates);
        return 1;
    }
    FILE *cf = NULL;
    if (o->csv) {
        cf = fopen(o->csv, "w");
        if (!cf) {
            fprintf(stderr, "mra-load: cannot write %s: %s\n", o->csv,
                    strerror(errno));
            free(rates);
            return 1;
        }
        load_csv_header(cf);
    }
    int status = 0;
    for (size_t i = 0; i < nrates; i++) {
        struct load_result *r = &(*res)[i];
        if (rates)
            cfg->rate = rates[i];
        if (load_run(cfg, r) != 0) {
            status = 1;
            break;
        }
        if (cf) {
            load_csv_row(cf, r);
            fflush(cf);
        }
        if (!o->json) {
            if (nrates > 1)
                printf("== rate %.1f/s\n", cfg->rate);
            load_report_text(cfg, r);
            fflush(stdout);
        }
    }
    if (cf)
        fclose(cf);
    free(rates);
    return status;
}

/* Writes the PNG of --plot.  Returns 0 or an exit status. */
static int plot(const struct load_options *o, const struct load_result *res,
                size_t n)
{
    char title[256];
    snprintf(title, sizeof title, "mra-load against %s (%s)", o->url,
             o->nfiles ? "request files" : o->shapes[0]);
    return load_plot(res, n, o->plot, title) != 0;
}

/* --decode: the client that creates the sessions before the runs and
 * deletes them after, then the sessions and their step bodies.  Returns 0
 * or an exit status. */
static int decode_setup(struct load_options *o, struct mrac_client **c)
{
    struct mrac_options opt = {
        .url = o->url,
        .api_key = o->cfg.api_key,
        .timeout_ms = (uint32_t)(o->cfg.timeout_s * 1000.0),
    };
    struct mrac_error err;
    if (mrac_client_new(&opt, c, &err) != MRAC_OK) {
        fprintf(stderr, "mra-load: %s\n", err.message);
        return err.err == MRAC_EINVAL ? 2 : 1;
    }
    return load_decode_setup(o, *c);
}

int main(int argc, char **argv)
{
    struct load_options o;
    int status = load_options_parse(argc, argv, &o);
    if (status >= 0)
        return status;
    status = set_target(&o);
    if (!status && !o.decode)
        status = make_bodies(&o);
    o.cfg.progress = !o.quiet && isatty(STDERR_FILENO);
    int curl = 0;
    if (!status) {
        curl = mrac_global_init() == MRAC_OK;
        if (!curl) {
            fprintf(stderr, "mra-load: libcurl failed to initialise\n");
            status = 1;
        }
    }
    struct mrac_client *mc = NULL;
    if (!status && o.decode)
        status = decode_setup(&o, &mc);
    struct load_result *res = NULL;
    size_t nres = 0;
    if (!status)
        status = run_phases(&o, &res, &nres);
    struct load_decode *d = o.cfg.decode;
    load_decode_teardown(d, mc);
    mrac_client_free(mc);
    if (!status && d && !o.json)
        printf("sessions   %llu deleted at the end, %llu already gone\n",
               (unsigned long long)d->deleted, (unsigned long long)d->gone);
    if (!status && o.json)
        load_report_json(&o.cfg, res, nres);
    if (!status && o.plot)
        status = plot(&o, res, nres);

    free(d);
    free(res);
    for (size_t i = 0; i < o.cfg.nbodies; i++)
        free(o.cfg.bodies[i].data);
    free(o.cfg.bodies);
    free((char *)o.cfg.url);
    free((char *)o.cfg.api_key);
    if (curl)
        mrac_global_cleanup();
    return status;
}
