/*
 * remote.c - mractl's subcommands that talk to a running mrad through the
 * C client library: `run --url`, `health`, `info` and `metrics`, and the
 * connection options, client and error report they share with `kv`.
 *
 * Answers go to stdout byte for byte, so `mractl run --url` and
 * `mractl run --local` can be compared with cmp(1) on their out tensors;
 * failures go to stderr as the service's JSON error body.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/c/mraclient.h"
#include "clients/mractl/mractl.h"
#include "clients/mractl/remote.h"

struct remote_opts {
    struct mractl_remote r;
    const char *file; /* run: the body */
};

/* Parsing is over and the command ends with status 0 (after --help). */
#define DONE (-1)

static void usage_remote(FILE *f, const char *cmd)
{
    if (strcmp(cmd, "run") == 0) {
        mractl_run_usage(f);
        return;
    }
    fprintf(
        f,
        "usage: mractl %s [--url URL] [--api-key-file F] [--timeout S]\n"
        "\n"
        "Prints the body of %s of a server (--url, default\n"
        "http://127.0.0.1:8080) to stdout.  --api-key-file F sends the key\n"
        "on the first line of F as a bearer token; --timeout S gives up\n"
        "after S seconds (default 300).\n"
        "Exit status: 0 on a 200 answer, 2 on a 4xx answer or bad usage, 1\n"
        "otherwise.\n",
        cmd,
        !strcmp(cmd, "health") ? "GET /healthz"
        : !strcmp(cmd, "info") ? "GET /v1/info"
                               : "GET /metrics");
}

void mractl_remote_init(struct mractl_remote *r)
{
    r->url = "http://127.0.0.1:8080";
    r->key_file = NULL;
    r->timeout_s = 300;
}

int mractl_remote_option(struct mractl_remote *r, const char *a, const char *v)
{
    if (!strcmp(a, "--url")) {
        r->url = v;
    } else if (!strcmp(a, "--api-key-file")) {
        r->key_file = v;
    } else if (!strcmp(a, "--timeout")) {
        char *end;
        r->timeout_s = strtod(v, &end);
        if (end == v || *end || r->timeout_s < 0)
            return -1;
    } else {
        return 0;
    }
    return 1;
}

/* Parses the options every remote subcommand shares.  Returns 0 to go on,
 * DONE after --help, or an exit status after printing why. */
static int parse_opts(int argc, char **argv, int want_file,
                      struct remote_opts *o)
{
    memset(o, 0, sizeof *o);
    mractl_remote_init(&o->r);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int got =
            i + 1 < argc ? mractl_remote_option(&o->r, a, argv[i + 1]) : 0;
        if (got > 0) {
            i++;
        } else if (got < 0) {
            return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                               "%s wants seconds, not '%s'", a, argv[i + 1]);
        } else if (!strcmp(a, "--url") || !strcmp(a, "--api-key-file") ||
                   !strcmp(a, "--timeout")) {
            usage_remote(stderr, argv[0]);
            return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                               "%s needs a value", a);
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_remote(stdout, argv[0]);
            return DONE;
        } else if (want_file && !o->file && (a[0] != '-' || !strcmp(a, "-"))) {
            o->file = a;
        } else {
            usage_remote(stderr, argv[0]);
            return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                               "unexpected argument '%s'", a);
        }
    }
    if (want_file && !o->file) {
        usage_remote(stderr, argv[0]);
        return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                           "no request file given");
    }
    return 0;
}

int mractl_open_client(const struct mractl_remote *o, struct mrac_client **c)
{
    char *key = NULL;
    if (o->key_file) {
        size_t len;
        key = mractl_read_file(o->key_file, &len);
        if (!key)
            return mractl_fail(MRACTL_EXIT_FAIL, "io_error",
                               "cannot read %s: %s", o->key_file,
                               strerror(errno));
        key[strcspn(key, "\r\n")] = '\0';
    }
    if (mrac_global_init() != MRAC_OK) {
        free(key);
        return mractl_fail(MRACTL_EXIT_FAIL, "internal",
                           "libcurl failed to initialise");
    }
    struct mrac_options opt = {
        .url = o->url,
        .api_key = key,
        .timeout_ms = (uint32_t)(o->timeout_s * 1000.0),
    };
    struct mrac_error err;
    int rc = mrac_client_new(&opt, c, &err);
    free(key);
    if (rc != MRAC_OK) {
        mrac_global_cleanup();
        return mractl_fail(rc == MRAC_EINVAL ? MRACTL_EXIT_USAGE
                                             : MRACTL_EXIT_FAIL,
                           err.code, "%s", err.message);
    }
    return 0;
}

void mractl_close_client(struct mrac_client *c)
{
    mrac_client_free(c);
    mrac_global_cleanup();
}

int mractl_report(const struct mrac_error *err, const char *body)
{
    if (err->err == MRAC_EHTTP || err->err == MRAC_EKVNOTFOUND ||
        err->err == MRAC_EKVFULL) {
        /* The server's own JSON error body when it sent one (or its
         * code and message, when the call kept only those). */
        int wire = strncmp(err->code, "http_", 5) != 0;
        if (body && wire) {
            fputs(body, stderr);
            if (!*body || body[strlen(body) - 1] != '\n')
                fputc('\n', stderr);
        } else if (wire) {
            mractl_fail(0, err->code, "%s", err->message);
        } else {
            mractl_fail(0, err->code, "HTTP %ld: %s", err->status,
                        err->message);
        }
        return err->status >= 400 && err->status < 500 ? MRACTL_EXIT_USAGE
                                                       : MRACTL_EXIT_FAIL;
    }
    return mractl_fail(MRACTL_EXIT_FAIL, err->code, "%s", err->message);
}

static int write_all(const char *data, size_t len)
{
    if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0)
        return mractl_fail(MRACTL_EXIT_FAIL, "io_error",
                           "cannot write the answer: %s", strerror(errno));
    return MRACTL_EXIT_OK;
}

int mractl_cmd_run_remote(int argc, char **argv)
{
    struct remote_opts o;
    int st = parse_opts(argc, argv, 1, &o);
    if (st)
        return st == DONE ? MRACTL_EXIT_OK : st;
    size_t len;
    char *body = mractl_read_file(o.file, &len);
    if (!body)
        return mractl_fail(MRACTL_EXIT_FAIL, "io_error", "cannot read %s: %s",
                           o.file, strerror(errno));
    struct mrac_client *c;
    if ((st = mractl_open_client(&o.r, &c))) {
        free(body);
        return st;
    }
    size_t sk = strspn(body, " \t\r\n");
    enum proto_format fmt =
        sk < len && body[sk] == '{' ? PROTO_JSON : PROTO_MSGPACK;
    char *resp;
    size_t rlen;
    long status;
    struct mrac_error err;
    int rc = mrac_post_raw(c, body, len, fmt, &resp, &rlen, &status, &err);
    free(body);
    st = rc == MRAC_OK ? write_all(resp, rlen) : mractl_report(&err, resp);
    free(resp);
    mractl_close_client(c);
    return st;
}

int mractl_cmd_run_any(int argc, char **argv)
{
    int local = 0, url = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            mractl_run_usage(stdout);
            return MRACTL_EXIT_OK;
        }
        local |= !strcmp(argv[i], "--local");
        url |= !strcmp(argv[i], "--url");
    }
    if (local == url) {
        mractl_run_usage(stderr);
        return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                           local ? "run: --local and --url exclude each other"
                                 : "run: give --local (compute here) or --url "
                                   "URL (send to a server)");
    }
    return url ? mractl_cmd_run_remote(argc, argv) : mractl_cmd_run(argc, argv);
}

/* health, info and metrics differ only in the endpoint. */
static int get_cmd(int argc, char **argv,
                   int (*fn)(struct mrac_client *, char **,
                             struct mrac_error *))
{
    struct remote_opts o;
    int st = parse_opts(argc, argv, 0, &o);
    if (st)
        return st == DONE ? MRACTL_EXIT_OK : st;
    struct mrac_client *c;
    if ((st = mractl_open_client(&o.r, &c)))
        return st;
    char *text;
    struct mrac_error err;
    int rc = fn(c, &text, &err);
    if (rc == MRAC_OK) {
        st = write_all(text, strlen(text));
        if (st == MRACTL_EXIT_OK && *text && text[strlen(text) - 1] != '\n')
            putchar('\n');
    } else if (rc == MRAC_EHTTP && text && err.status == 503 &&
               fn == mrac_health) {
        /* A draining server still says so in its health body. */
        write_all(text, strlen(text));
        putchar('\n');
        st = MRACTL_EXIT_FAIL;
    } else {
        st = mractl_report(&err, text);
    }
    free(text);
    mractl_close_client(c);
    return st;
}

int mractl_cmd_health(int argc, char **argv)
{
    return get_cmd(argc, argv, mrac_health);
}

int mractl_cmd_info(int argc, char **argv)
{
    return get_cmd(argc, argv, mrac_info);
}

int mractl_cmd_metrics(int argc, char **argv)
{
    return get_cmd(argc, argv, mrac_metrics);
}
