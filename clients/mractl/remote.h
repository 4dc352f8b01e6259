/*
 * remote.h - the server-facing subcommands of mractl (remote.c, random.c,
 * kv.c): `run --url`, `random`, `health`, `info`, `metrics`, `kv`, and
 * what they share: the connection options, the client, the report of a
 * failed call, the options of a random problem.  Same signature and exit
 * statuses as every subcommand (mractl.h).
 */
#ifndef MRAD_MRACTL_REMOTE_H
#define MRAD_MRACTL_REMOTE_H

#include "clients/c/mraclient.h"

/* `mractl run`: with --url sends the body to a server
 * (mractl_cmd_run_remote), with --local runs it here (mractl_cmd_run);
 * one of the two is needed, --help prints both modes. */
int mractl_cmd_run_any(int argc, char **argv);
/* `mractl run --url URL [--api-key-file F] [--timeout S] FILE`: POSTs a
 * request body and writes the answer body to stdout; an error answer goes
 * to stderr as the server's JSON error, exit 2 for 4xx and 1 otherwise. */
int mractl_cmd_run_remote(int argc, char **argv);
/* `mractl health|info|metrics [--url URL] [--api-key-file F]`: prints the
 * endpoint's body; exit 0 on 200 (and after --help), 2 on a 4xx answer or
 * bad usage, 1 otherwise. */
int mractl_cmd_health(int argc, char **argv);
int mractl_cmd_info(int argc, char **argv);
int mractl_cmd_metrics(int argc, char **argv);
/* `mractl random --shape B,H,Nq,D [--kv-len Nk] [...]`: writes a random
 * request body. */
int mractl_cmd_random(int argc, char **argv);

/* `mractl kv create|append|get|delete|attend ...`: sessions (kv.c). */
int mractl_cmd_kv(int argc, char **argv);

/* The connection options: --url (default http://127.0.0.1:8080),
 * --api-key-file, --timeout seconds (default 300).  The strings point
 * into argv. */
struct mractl_remote {
    const char *url;
    const char *key_file;
    double timeout_s;
};

/* Sets the defaults. */
void mractl_remote_init(struct mractl_remote *r);
/* Applies option `a` with its value `v` when it is a connection option.
 * Returns 1 when applied, 0 when `a` is not one, -1 for a bad value. */
int mractl_remote_option(struct mractl_remote *r, const char *a, const char *v);
/* Initialises libcurl and creates the client of the options (the key read
 * from its file).  Returns 0, or an exit status after reporting why.
 * Release with mractl_close_client(). */
int mractl_open_client(const struct mractl_remote *r, struct mrac_client **c);
void mractl_close_client(struct mrac_client *c);
/* Reports a failed call on stderr: the server's own JSON error body when
 * one came (`body`, may be NULL: then its code and message as JSON), else
 * the local error as JSON.  Returns the
 * exit status: 2 for a 4xx answer, 1 for anything else. */
int mractl_report(const struct mrac_error *err, const char *body);

/* Applies option `a` of a random problem (--shape, --kv-len, --hkv,
 * --mask, --q-mask, --block-per-row, --seed, --method, --dtype) with its
 * value `v` to *sp.  Returns 1 when applied, 0 when `a` is not one, -1 for
 * a bad value. */
int mractl_random_option(struct mrac_random_spec *sp, const char *a,
                         const char *v);
/* mrac_random_problem(), reporting a refusal on stderr with the field the
 * problem check names.  Returns 0, or the exit status. */
int mractl_random_make(const struct mrac_random_spec *sp,
                       struct attn_problem *p, void **mem);

#endif /* MRAD_MRACTL_REMOTE_H */
