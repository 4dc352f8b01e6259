/*
 * loopback.h - a minimal keep-alive HTTP/1.1 client over loopback, for the
 * benchmarks that time mrad end to end (bench-http.c, bench-session.c): a
 * plain blocking socket, so that the client costs as little as possible
 * next to the server it measures.  Static functions: each benchmark is one
 * program.
 */
#ifndef MRAD_BENCH_LOOPBACK_H
#define MRAD_BENCH_LOOPBACK_H

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

struct client {
    int fd;
    char *buf; /* response bytes read so far */
    size_t len, cap;
};

static int client_connect(struct client *c, uint16_t port)
{
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(0x7f000001);
    return connect(c->fd, (struct sockaddr *)&a, sizeof(a));
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Grows the buffer to hold at least `want` bytes (plus a terminator). */
static int reserve(struct client *c, size_t want)
{
    if (want + 1 <= c->cap)
        return 0;
    size_t cap = c->cap ? c->cap : 65536;
    while (cap < want + 1)
        cap *= 2;
    char *b = realloc(c->buf, cap);
    if (!b)
        return -1;
    c->buf = b;
    c->cap = cap;
    return 0;
}

/* Reads until the buffer holds at least `want` bytes. */
static int fill(struct client *c, size_t want)
{
    if (reserve(c, want))
        return -1;
    while (c->len < want) {
        ssize_t r = recv(c->fd, c->buf + c->len, c->cap - 1 - c->len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c->len += (size_t)r;
    }
    return 0;
}

/* Sends one request: `method` with a body when body is not NULL, its
 * headers `extra` (each ending in CRLF; NULL: a msgpack Content-Type); on
 * success returns the status and points *resp at the response body
 * (valid until the next call); -1 on a transport error. */
static int client_request_h(struct client *c, const char *method,
                            const char *path, const char *extra,
                            const char *body, size_t len, const char **resp,
                            size_t *resp_len)
{
    char head[512];
    int hn = body
                 ? snprintf(head, sizeof(head),
                            "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            "%sContent-Length: %zu\r\n\r\n",
                            method, path,
                            extra ? extra
                                  : "Content-Type: application/msgpack\r\n",
                            len)
                 : snprintf(head, sizeof(head),
                            "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n",
                            method, path, extra ? extra : "");
    if (write_all(c->fd, head, (size_t)hn) ||
        (body && write_all(c->fd, body, len)))
        return -1;
    /* Read until the end of the headers. */
    char *end;
    for (;;) {
        if (c->len >= 4 && (end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
            break;
        if (fill(c, c->len + 1))
            return -1;
    }
    c->buf[c->len] = '\0'; /* for the header scan below */
    size_t hlen = (size_t)(end - c->buf) + 4;
    int status = atoi(c->buf + 9);
    size_t clen = 0;
    for (char *p = c->buf; p < end;) {
        char *eol = strstr(p, "\r\n"); /* found: end is one */
        if (!strncasecmp(p, "Content-Length:", 15)) {
            clen = strtoull(p + 15, NULL, 10);
            break;
        }
        p = eol + 2;
    }
    if (fill(c, hlen + clen))
        return -1;
    *resp = c->buf + hlen;
    *resp_len = clen;
    /* Keep what follows for the next answer (nothing, without
     * pipelining). */
    memmove(c->buf, c->buf + hlen + clen, c->len - hlen - clen);
    c->len -= hlen + clen;
    return status;
}

/* client_request_h() with a msgpack body (or none). */
static inline int client_request(struct client *c, const char *method,
                                 const char *path, const char *body,
                                 size_t len, const char **resp,
                                 size_t *resp_len)
{
    return client_request_h(c, method, path, NULL, body, len, resp, resp_len);
}

static void client_close(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    c->buf = NULL;
    c->fd = -1;
}

#endif /* MRAD_BENCH_LOOPBACK_H */
