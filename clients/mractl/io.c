/*
 * io.c - helpers the mractl subcommands share: reading a whole body from a
 * file or stdin, and reporting an error as the service's JSON error body.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/c/mraclient.h"
#include "clients/mractl/mractl.h"
#include "protocol/proto.h"

char *mractl_read_file(const char *path, size_t *len)
{
    if (strcmp(path, "-") == 0)
        return mrac_read_stream(stdin, len);
    return mrac_read_file(path, len);
}

int mractl_fail(int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *body = proto_error_body(code, msg, NULL);
    if (body != NULL) {
        fprintf(stderr, "%s\n", body);
        free(body);
    } else {
        fprintf(stderr, "mractl: %s: %s\n", code, msg);
    }
    return status;
}
