/*
 * mractl.h - what the subcommands of mractl share: their signature, and
 * helpers for reading bodies and reporting errors the way the service
 * does (a JSON error body), so scripts can treat mractl and mrad alike.
 *
 * Exit statuses of every subcommand: 0 success, 1 an internal or I/O
 * failure, 2 a bad request body or bad usage.
 */
#ifndef MRAD_MRACTL_H
#define MRAD_MRACTL_H

#include <stddef.h>
#include <stdio.h>

enum {
    MRACTL_EXIT_OK = 0,
    MRACTL_EXIT_FAIL = 1,  /* internal failure, I/O error */
    MRACTL_EXIT_USAGE = 2, /* bad request body or bad arguments */
};

/* A subcommand: argv[0] is its name; returns an exit status. */
typedef int (*mractl_cmd_fn)(int argc, char **argv);

/* `mractl run --local`: computes one request body on this machine. */
int mractl_cmd_run(int argc, char **argv);
/* The usage of `mractl run`, both its modes (--local and --url), to f. */
void mractl_run_usage(FILE *f);

/*
 * Reads a whole file ("-" for stdin) into a malloc'd buffer, NUL-terminated
 * (mrac_read_file()); *len receives its length.  Returns NULL with errno
 * set on failure.  Not thread-safe (uses stdio on stdin).
 */
char *mractl_read_file(const char *path, size_t *len);

/*
 * Writes the JSON error body {"error": {"code", "message"}} and a newline
 * to stderr, as the service would answer.  Returns `status` so callers can
 * `return mractl_fail(...)`.
 */
int mractl_fail(int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* MRAD_MRACTL_H */
