/*
 * read-file.c - reads a whole file or stream into memory
 * (mrac_read_file, mrac_read_stream), the one way mractl and mra-load
 * read request bodies and key files.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "clients/c/mraclient.h"

/* Frees buf and returns NULL with errno set to err. */
static char *fail(char *buf, int err)
{
    free(buf);
    errno = err;
    return NULL;
}

char *mrac_read_stream(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (buf == NULL)
        return NULL;
    /* Reads until a short read (end of file or an error); one byte of the
     * buffer is always left for the NUL. */
    for (;;) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n + 1 < cap)
            break;
        if (cap > SIZE_MAX / 2)
            return fail(buf, EFBIG);
        char *more = realloc(buf, cap * 2);
        if (more == NULL)
            return fail(buf, ENOMEM);
        buf = more;
        cap *= 2;
    }
    if (ferror(f))
        return fail(buf, errno ? errno : EIO);
    buf[n] = '\0';
    *len = n;
    return buf;
}

char *mrac_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = mrac_read_stream(f, len);
    int saved = errno;
    fclose(f);
    errno = saved;
    return buf;
}
