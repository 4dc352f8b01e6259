/*
 * io.c - helpers the mractl subcommands share: reading a whole body from a
 * file or stdin, and reporting an error as the service's JSON error body.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/mractl/mractl.h"
#include "protocol/proto.h"

char *mractl_read_file(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        if (cap > SIZE_MAX / 2) {
            free(buf);
            buf = NULL;
            errno = EFBIG;
            break;
        }
        char *more = realloc(buf, cap * 2);
        if (more == NULL)
            free(buf);
        buf = more;
        cap *= 2;
    }
    int failed = buf == NULL || ferror(f);
    int saved = errno;
    if (f != stdin)
        fclose(f);
    if (failed) {
        free(buf);
        errno = saved ? saved : EIO;
        return NULL;
    }
    *len = n;
    return buf;
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
