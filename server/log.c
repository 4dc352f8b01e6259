/*
 * log.c - text or JSON log lines on stderr or in a file.
 *
 * Lines are formatted into a local buffer and written with one write(2)
 * under a mutex: stderr may be a pipe read by a log collector, and a line
 * must arrive whole.  Every field that can hold bytes from a client (the
 * path, the id, a message quoting a library) is escaped, so no request
 * can forge a line: control characters never reach the log raw.
 */
#include "server/log.h"

#include <errno.h>
#include <fcntl.h>
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
static int log_fd = STDERR_FILENO; /* guarded by log_lock */
static char log_path[1024];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void mrad_log_init(enum mrad_log_format fmt, enum mrad_log_level level)
{
    log_fmt = fmt;
    log_min = level;
}

int mrad_log_open(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    pthread_mutex_lock(&log_lock);
    int old = log_fd;
    log_fd = fd;
    snprintf(log_path, sizeof(log_path), "%s", path);
    pthread_mutex_unlock(&log_lock);
    if (old != STDERR_FILENO)
        close(old);
    return 0;
}

int mrad_log_reopen(void)
{
    char path[sizeof(log_path)];
    pthread_mutex_lock(&log_lock);
    snprintf(path, sizeof(path), "%s", log_path);
    pthread_mutex_unlock(&log_lock);
    return path[0] ? mrad_log_open(path) : 0;
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

/* A line being built: appends never overflow (what does not fit is cut). */
struct line {
    char buf[2048];
    size_t n;
};

static void add(struct line *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void add(struct line *l, const char *fmt, ...)
{
    if (l->n >= sizeof(l->buf) - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(l->buf + l->n, sizeof(l->buf) - l->n, fmt, ap);
    va_end(ap);
    if (k > 0)
        l->n += (size_t)k < sizeof(l->buf) - l->n ? (size_t)k
                                                  : sizeof(l->buf) - 1 - l->n;
}

/* `s` inside a JSON string. */
static void add_json(struct line *l, const char *s)
{
    if (l->n < sizeof(l->buf) - 1)
        l->n += proto_json_escape(l->buf + l->n, sizeof(l->buf) - l->n, s,
                                  strlen(s));
}

/* `s` for a text line: control characters, DEL, and also the backslash
 * and (when `field` is set: the value sits between spaces) the space and
 * non-ASCII bytes as \xNN, so a field stays one token on one line. */
static void add_text(struct line *l, const char *s, int field)
{
    for (; *s && l->n + 5 < sizeof(l->buf); s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f || c == '\\' ||
            (field && (c == ' ' || c >= 0x80)))
            l->n += (size_t)snprintf(l->buf + l->n, 5, "\\x%02x", c);
        else
            l->buf[l->n++] = (char)c;
    }
    l->buf[l->n] = '\0';
}

static void emit(struct line *l)
{
    if (l->n > sizeof(l->buf) - 2)
        l->n = sizeof(l->buf) - 2;
    l->buf[l->n++] = '\n';
    pthread_mutex_lock(&log_lock);
    ssize_t w = write(log_fd, l->buf, l->n);
    (void)w; /* nothing useful to do when the log is gone */
    pthread_mutex_unlock(&log_lock);
}

void mrad_log(enum mrad_log_level level, const char *fmt, ...)
{
    if (level < log_min)
        return;
    char msg[1024], ts[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    timestamp(ts, sizeof(ts));
    struct line l = {.n = 0};
    if (log_fmt == MRAD_LOG_JSON) {
        add(&l, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts,
            level_names[level]);
        add_json(&l, msg);
        add(&l, "\"}");
    } else {
        add(&l, "%s %-5s ", ts, level_names[level]);
        add_text(&l, msg, 0);
    }
    emit(&l);
}

void mrad_log_access(const struct mrad_access *a)
{
    enum mrad_log_level level = a->debug ? MRAD_LOG_DEBUG : MRAD_LOG_INFO;
    if (level < log_min)
        return;
    char ts[40];
    timestamp(ts, sizeof(ts));
    struct line l = {.n = 0};
    if (log_fmt == MRAD_LOG_JSON) {
        add(&l,
            "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"access\","
            "\"request_id\":\"",
            ts, level_names[level]);
        add_json(&l, a->rid ? a->rid : "");
        add(&l, "\",\"method\":\"");
        add_json(&l, a->method);
        add(&l, "\",\"path\":\"");
        add_json(&l, a->path);
        add(&l,
            "\",\"status\":%u,\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64
            ",\"queue_us\":%" PRIu64 ",\"compute_us\":%" PRIu64
            ",\"total_us\":%" PRIu64 ",\"id\":",
            a->status, a->bytes_in, a->bytes_out, a->queue_us, a->compute_us,
            a->total_us);
        if (a->id) {
            add(&l, "\"");
            add_json(&l, a->id);
            add(&l, "\"");
        } else {
            add(&l, "null");
        }
        if (a->error_code) {
            add(&l, ",\"error\":\"");
            add_json(&l, a->error_code);
            add(&l, "\"");
        }
        add(&l, "}");
    } else {
        add(&l, "%s %-5s access ", ts, level_names[level]);
        add_text(&l, a->method, 1);
        add(&l, " ");
        add_text(&l, a->path, 1);
        add(&l,
            " %u in=%" PRIu64 " out=%" PRIu64 " queue_us=%" PRIu64
            " compute_us=%" PRIu64 " total_us=%" PRIu64 " id=",
            a->status, a->bytes_in, a->bytes_out, a->queue_us, a->compute_us,
            a->total_us);
        add_text(&l, a->id ? a->id : "-", 1);
        add(&l, " rid=");
        add_text(&l, a->rid && *a->rid ? a->rid : "-", 1);
        if (a->error_code) {
            add(&l, " error=");
            add_text(&l, a->error_code, 1);
        }
    }
    emit(&l);
}
