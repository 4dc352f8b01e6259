/*
 * random.c - `mractl random`: writes the body of a random attention
 * request (msgpack, or JSON with --json) for trying the service and for
 * load tests: self- or cross-attention (--kv-len), causal or not, with
 * generated key and query masks.  The values come from mrac_random_problem(),
 * the generator mra-load uses too, so the same flags and seed give the same
 * bytes.  Its option parsing and the generation with its error report
 * serve `mractl kv` too.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/c/mraclient.h"
#include "clients/mractl/mractl.h"
#include "clients/mractl/remote.h"

static void usage_random(FILE *f)
{
    fprintf(
        f,
        "usage: mractl random --shape B,H,Nq,D [--kv-len Nk] [--hkv N]\n"
        "           [--causal] [--mask KIND] [--q-mask KIND]\n"
        "           [--method mra2|mra2_sparse|exact] "
        "[--dtype f32|f16|bf16]\n"
        "           [--seed S] [--block-per-row K] [--min-blocks-per-row M]\n"
        "           [--error-samples N] [--target-error E] "
        "[--per-head-stats]\n"
        "           [--id ID] [--json] [-o FILE]\n"
        "Writes a request body with q [B,H,Nq,D] and k, v "
        "[B,Hkv,Nk,D] uniform\n"
        "in [-1, 1) to FILE (default stdout).\n"
        "  --kv-len Nk    keys of k and v (default Nq)\n"
        "  --causal       query i sees keys j <= i + Nk - Nq\n"
        "  --mask KIND    key mask [B,Nk]: none (default), ones, random, "
        "blocks, zeros\n"
        "  --q-mask KIND  query mask [B,Nq], the same kinds\n"
        "  --min-blocks-per-row M  every block row of real queries "
        "gets M blocks\n"
        "  --error-samples N       the error estimated on N rows per "
        "head (<= 256)\n"
        "  --target-error E        each head's budget picked for an "
        "error <= E\n"
        "  --per-head-stats        the answer lists every head's "
        "statistics\n");
}

static int parse_u32(const char *s, uint32_t *v)
{
    char *end;
    errno = 0;
    unsigned long x = strtoul(s, &end, 10);
    if (end == s || *end || errno || x == 0 || x > UINT32_MAX)
        return -1;
    *v = (uint32_t)x;
    return 0;
}

int mractl_random_option(struct mrac_random_spec *sp, const char *a,
                         const char *v)
{
    int bad = 0;
    if (!strcmp(a, "--shape")) {
        char extra;
        unsigned b, h, n, d;
        bad = sscanf(v, "%u,%u,%u,%u%c", &b, &h, &n, &d, &extra) != 4 || !b ||
              !h || !n || !d;
        sp->B = b, sp->H = h, sp->Nq = n, sp->D = d;
    } else if (!strcmp(a, "--kv-len")) {
        bad = parse_u32(v, &sp->Nk);
    } else if (!strcmp(a, "--mask")) {
        bad = mrac_mask_parse(v, &sp->mask) != MRAC_OK;
    } else if (!strcmp(a, "--q-mask")) {
        bad = mrac_mask_parse(v, &sp->q_mask) != MRAC_OK;
    } else if (!strcmp(a, "--hkv")) {
        bad = parse_u32(v, &sp->Hkv);
    } else if (!strcmp(a, "--block-per-row")) {
        bad = parse_u32(v, &sp->block_per_row);
    } else if (!strcmp(a, "--min-blocks-per-row")) {
        bad = parse_u32(v, &sp->min_blocks_per_row);
    } else if (!strcmp(a, "--error-samples")) {
        bad = parse_u32(v, &sp->error_samples) ||
              sp->error_samples > ATTN_MAX_ERROR_SAMPLES;
    } else if (!strcmp(a, "--target-error")) {
        char *end;
        errno = 0;
        float e = strtof(v, &end);
        bad = end == v || *end || errno || !(e > 0.0f) || e > 1e30f;
        sp->target_error = e;
    } else if (!strcmp(a, "--seed")) {
        char *end;
        errno = 0;
        sp->seed = strtoull(v, &end, 10);
        bad = end == v || *end || errno;
    } else if (!strcmp(a, "--method")) {
        bad = mrac_method_parse(v, &sp->method) != MRAC_OK;
    } else if (!strcmp(a, "--dtype")) {
        bad = mrac_dtype_parse(v, &sp->dtype) != MRAC_OK;
    } else {
        return 0;
    }
    return bad ? -1 : 1;
}

int mractl_random_make(const struct mrac_random_spec *sp,
                       struct attn_problem *p, void **mem)
{
    int rc = mrac_random_problem(sp, p, mem);
    if (rc == MRAC_OK)
        return MRACTL_EXIT_OK;
    /* Say which field is wrong: the problem check has the words. */
    char msg[256] = "";
    static const char stand_in[8];
    struct attn_problem chk = {
        .method = sp->method,
        .dtype = sp->dtype,
        .B = sp->B,
        .H = sp->H,
        .Hkv = sp->Hkv ? sp->Hkv : sp->H,
        .Nq = sp->Nq,
        .Nk = sp->Nk ? sp->Nk : sp->Nq,
        .D = sp->D,
        .causal = sp->causal,
        .q = stand_in,
        .k = stand_in,
        .v = stand_in,
        .out = (void *)stand_in,
        .block_per_row = sp->block_per_row,
        .min_blocks_per_row = sp->min_blocks_per_row,
        .error_samples = sp->error_samples,
        .target_error = sp->target_error,
    };
    attn_problem_check(&chk, msg, sizeof msg);
    return mractl_fail(rc == MRAC_ENOMEM ? MRACTL_EXIT_FAIL : MRACTL_EXIT_USAGE,
                       rc == MRAC_ENOMEM ? "internal" : "bad_request", "%s",
                       msg[0] ? msg : mrac_strerror(rc));
}

int mractl_cmd_random(int argc, char **argv)
{
    struct mrac_random_spec sp = {.method = ATTN_MRA2, .dtype = ATTN_F32};
    const char *out_path = NULL, *id = NULL;
    int json = 0, have_shape = 0, per_head = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (!strcmp(a, "--causal")) {
            sp.causal = 1;
            continue;
        }
        if (!strcmp(a, "--per-head-stats")) {
            per_head = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_random(stdout);
            return MRACTL_EXIT_OK;
        }
        if (i + 1 == argc) {
            usage_random(stderr);
            return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                               "unexpected or incomplete argument '%s'", a);
        }
        const char *v = argv[++i];
        int got = mractl_random_option(&sp, a, v), bad = got < 0;
        have_shape |= got > 0 && !strcmp(a, "--shape");
        if (got == 0 && !strcmp(a, "--id")) {
            id = v;
            bad = strlen(v) > PROTO_ID_MAX;
        } else if (got == 0 && (!strcmp(a, "-o") || !strcmp(a, "--output"))) {
            out_path = v;
        } else if (got == 0) {
            usage_random(stderr);
            return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                               "unknown option '%s'", a);
        }
        if (bad)
            return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                               "bad value for %s: '%s'", a, v);
    }
    if (!have_shape) {
        usage_random(stderr);
        return mractl_fail(MRACTL_EXIT_USAGE, "bad_usage",
                           "--shape B,H,Nq,D is required");
    }

    struct attn_problem p;
    void *mem;
    int rc = mractl_random_make(&sp, &p, &mem);
    if (rc != MRACTL_EXIT_OK)
        return rc;
    char *body;
    size_t len;
    struct proto_encode_opts eo = {.id = id, .per_head_stats = per_head};
    rc = proto_request_encode_opts(&p, json ? PROTO_JSON : PROTO_MSGPACK, &eo,
                                   &body, &len);
    free(mem);
    if (rc != PROTO_OK)
        return mractl_fail(MRACTL_EXIT_FAIL, "internal", "%s",
                           proto_strerror(rc));
    FILE *f = out_path ? fopen(out_path, "wb") : stdout;
    int st = MRACTL_EXIT_OK;
    if (f) {
        int bad = fwrite(body, 1, len, f) != len;
        bad |= (f == stdout ? fflush(f) : fclose(f)) != 0;
        if (bad)
            f = NULL;
    }
    if (!f)
        st = mractl_fail(MRACTL_EXIT_FAIL, "io_error", "cannot write %s: %s",
                         out_path ? out_path : "stdout", strerror(errno));
    free(body);
    return st;
}
