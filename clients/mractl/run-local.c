/*
 * run-local.c - `mractl run --local`: computes one request body on this
 * machine, without a server, and writes the answer body to stdout.
 *
 * It goes through the same codec as the daemon (protocol/) and the same
 * library (attention/), so its answer is what mrad answers for the same
 * body on the same backend, except for queue_us (0) and batch_requests (1).
 * That makes it the reference the integration tests and clients compare
 * the service with, and a way to try a request without starting anything.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention/attn.h"
#include "clients/mractl/mractl.h"
#include "protocol/proto.h"

void mractl_run_usage(FILE *f)
{
    fprintf(
        f,
        "usage: mractl run --local FILE|- [--threads N] [--backend B]\n"
        "                  [--json|--msgpack]\n"
        "       mractl run --url URL [--api-key-file F] [--timeout S] FILE|-\n"
        "\n"
        "Computes one POST /v1/attention body from FILE (- for stdin) and\n"
        "writes the answer body to stdout: --local computes it here, with\n"
        "the daemon's codec and attention library; --url sends it to a\n"
        "server.  One of the two is needed.  A body starting with '{' (after\n"
        "blanks) is JSON and gets a JSON answer, else msgpack.\n"
        "\n"
        "  --local          compute here\n"
        "  --threads N      CPU worker threads (default: all cores)\n"
        "  --backend B      cpu, cuda or auto (default cpu)\n"
        "  --json|--msgpack read the body as this format\n"
        "  --url URL        send to the server at URL instead\n"
        "  --api-key-file F send the key on the first line of F as a bearer\n"
        "                   token\n"
        "  --timeout S      give up after S seconds (default 300)\n"
        "\n"
        "A bad body writes {\"error\": {\"code\", \"message\"}} to stderr and\n"
        "exits 2 (with --url: the server's error body, exit 2 for a 4xx\n"
        "answer); an internal or transport failure exits 1.\n");
}

static int looks_like_json(const char *body, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = body[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            continue;
        return c == '{';
    }
    return 0;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Decodes, computes and answers one body; returns the exit status. */
static int run_body(const char *body, size_t len, enum proto_format fmt,
                    const char *backend, int threads)
{
    struct proto_request req;
    char err[512];
    int rc = proto_request_decode(body, len, fmt, NULL, &req, err, sizeof err);
    if (rc == PROTO_EBADREQ)
        return mractl_fail(MRACTL_EXIT_USAGE, "bad_request", "%s", err);
    if (rc == PROTO_ETOOBIG)
        return mractl_fail(MRACTL_EXIT_USAGE, "payload_too_large", "%s", err);
    if (rc != PROTO_OK)
        return mractl_fail(MRACTL_EXIT_FAIL, "internal", "%s", err);

    struct attn_config cfg = {.threads = threads};
    struct attn_backend *be = NULL;
    int status = MRACTL_EXIT_OK;
    rc = attn_backend_new(backend, &cfg, &be);
    if (rc != ATTN_OK) {
        status = mractl_fail(MRACTL_EXIT_FAIL, "internal", "backend \"%s\": %s",
                             backend, attn_strerror(rc));
        goto out;
    }
    struct proto_stats st = {
        .backend = attn_backend_name(be),
        .queue_us = 0,
        .batch_requests = 1,
    };
    uint64_t t0 = now_us();
    rc = attn_backend_compute(be, &req.prob, &st.attn);
    st.compute_us = now_us() - t0;
    if (rc != ATTN_OK) {
        status = mractl_fail(rc == ATTN_EINVAL ? MRACTL_EXIT_USAGE
                                               : MRACTL_EXIT_FAIL,
                             rc == ATTN_EINVAL ? "bad_request" : "internal",
                             "compute: %s", attn_strerror(rc));
        goto out;
    }
    char *ans;
    size_t alen;
    if (proto_response_encode(&req, &st, &ans, &alen) != PROTO_OK) {
        status = mractl_fail(MRACTL_EXIT_FAIL, "internal",
                             "encoding the answer: out of memory");
        goto out;
    }
    if (fwrite(ans, 1, alen, stdout) != alen || fflush(stdout) != 0)
        status = mractl_fail(MRACTL_EXIT_FAIL, "internal",
                             "writing the answer: %s", strerror(errno));
    free(ans);
out:
    attn_backend_free(be);
    proto_request_release(&req);
    return status;
}

int mractl_cmd_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"local", no_argument, NULL, 'l'},
        {"threads", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},
        {"msgpack", no_argument, NULL, 'm'},
        {"backend", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int local = 0, threads = 0, format = -1;
    const char *backend = "cpu";
    char *end;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            local = 1;
            break;
        case 't': {
            errno = 0;
            long t = strtol(optarg, &end, 10);
            if (errno || *end || t < 0 || t > 4096) {
                fprintf(stderr, "mractl run: --threads: bad count \"%s\"\n",
                        optarg);
                return MRACTL_EXIT_USAGE;
            }
            threads = (int)t;
            break;
        }
        case 'j':
            format = PROTO_JSON;
            break;
        case 'm':
            format = PROTO_MSGPACK;
            break;
        case 'b':
            backend = optarg;
            break;
        case 'h':
            mractl_run_usage(stdout);
            return MRACTL_EXIT_OK;
        default:
            mractl_run_usage(stderr);
            return MRACTL_EXIT_USAGE;
        }
    }
    if (!local || optind != argc - 1) {
        fprintf(stderr, "mractl run: %s\n\n",
                !local ? "give --local (compute here) or --url URL (send to "
                         "a server)"
                       : "expected one FILE (or -)");
        mractl_run_usage(stderr);
        return MRACTL_EXIT_USAGE;
    }
    const char *path = argv[optind];
    size_t len = 0;
    char *body = mractl_read_file(path, &len);
    if (body == NULL) {
        fprintf(stderr, "mractl run: cannot read %s: %s\n", path,
                strerror(errno));
        return MRACTL_EXIT_FAIL;
    }
    if (format < 0)
        format = looks_like_json(body, len) ? PROTO_JSON : PROTO_MSGPACK;
    int status =
        run_body(body, len, (enum proto_format)format, backend, threads);
    free(body);
    return status;
}
