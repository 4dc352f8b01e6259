/*
 * log.c - text or JSON log lines on stderr.
 *
 * Lines are formatted into a local buffer and written with one write(2)
 * under a mutex: stderr may be a pipe read by a log collector, and a line
 * must arrive whole.
 */
#include "server/log.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "protocol/proto.h"

static enum mrad_log_format log_fmt = MRAD_LOG_TEXT;
static enum mrad_log_level log_min = MRAD_LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void mrad_log_init(enum mrad_log_format fmt, enum mrad_log_level level)
{
    log_fmt = fmt;
    log_min = level;
}

/* RFC 3339 UTC time with milliseconds. */
static void timestamp(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* Appends `s` as the inside of a JSON string to buf at *n, leaving room
 * for the terminator (len is the room of buf). */
static void json_escape(char *buf, size_t len, size_t *n, const char *s)
{
    if (*n < len)
        *n += proto_json_escape(buf + *n, len - *n, s, strlen(s));
}

static void emit(char *line, size_t n, size_t cap)
{
    if (n >= cap - 1)
        n = cap - 2;
    line[n++] = '\n';
    pthread_mutex_lock(&log_lock);
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w; /* nothing useful to do when stderr is gone */
    pthread_mutex_unlock(&log_lock);
}

void mrad_log(enum mrad_log_level level, const char *fmt, ...)
{
    if (level < log_min)
        return;
    char msg[1024], ts[40], line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    timestamp(ts, sizeof(ts));
    size_t n;
    if (log_fmt == MRAD_LOG_JSON) {
        n = (size_t)snprintf(line, sizeof(line),
                             "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts,
                             level_names[level]);
        json_escape(line, sizeof(line) - 3, &n, msg);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\"}");
    } else {
        n = (size_t)snprintf(line, sizeof(line), "%s %-5s %s", ts,
                             level_names[level], msg);
    }
    emit(line, n < sizeof(line) ? n : sizeof(line) - 1, sizeof(line));
}

void mrad_log_access(const struct mrad_access *a)
{
    if (MRAD_LOG_INFO < log_min)
        return;
    char ts[40], line[1024];
    size_t n;
    timestamp(ts, sizeof(ts));
    if (log_fmt == MRAD_LOG_JSON) {
        n = (size_t)snprintf(line, sizeof(line),
                             "{\"ts\":\"%s\",\"level\":\"info\",\"msg\":"
                             "\"access\",\"method\":\"",
                             ts);
        json_escape(line, sizeof(line) - 300, &n, a->method);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\",\"path\":\"");
        json_escape(line, sizeof(line) - 300, &n, a->path);
        n += (size_t)snprintf(line + n, sizeof(line) - n,
                              "\",\"status\":%u,\"bytes_in\":%" PRIu64
                              ",\"bytes_out\":%" PRIu64 ",\"queue_us\":%" PRIu64
                              ",\"compute_us\":%" PRIu64
                              ",\"total_us\":%" PRIu64 ",\"id\":",
                              a->status, a->bytes_in, a->bytes_out, a->queue_us,
                              a->compute_us, a->total_us);
        if (a->id) {
            line[n++] = '"';
            json_escape(line, sizeof(line) - 80, &n, a->id);
            n += (size_t)snprintf(line + n, sizeof(line) - n, "\"");
        } else {
            n += (size_t)snprintf(line + n, sizeof(line) - n, "null");
        }
        if (a->error_code)
            n += (size_t)snprintf(line + n, sizeof(line) - n,
                                  ",\"error\":\"%s\"", a->error_code);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "}");
    } else {
        /* The id comes from the client: keep it on one line. */
        char id[PROTO_ID_MAX + 1];
        snprintf(id, sizeof(id), "%s", a->id ? a->id : "-");
        for (char *p = id; *p; p++)
            if ((unsigned char)*p < 0x21 || *p == 0x7f)
                *p = '?';
        n = (size_t)snprintf(
            line, sizeof(line),
            "%s info  access %s %s %u in=%" PRIu64 " out=%" PRIu64
            " queue_us=%" PRIu64 " compute_us=%" PRIu64 " total_us=%" PRIu64
            " id=%s%s%s",
            ts, a->method, a->path, a->status, a->bytes_in, a->bytes_out,
            a->queue_us, a->compute_us, a->total_us, id,
            a->error_code ? " error=" : "", a->error_code ? a->error_code : "");
    }
    emit(line, n < sizeof(line) ? n : sizeof(line) - 1, sizeof(line));
}
