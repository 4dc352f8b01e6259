/*
 * log.h - the daemon's log: one line per event on stderr (or a file), as
 * text or JSON.
 *
 * Thread-safe: each line is written with a single locked write, so lines
 * of different threads never interleave.
 */
#ifndef MRAD_SERVER_LOG_H
#define MRAD_SERVER_LOG_H

#include <stdint.h>

enum mrad_log_format { MRAD_LOG_TEXT = 0, MRAD_LOG_JSON = 1 };
enum mrad_log_level {
    MRAD_LOG_DEBUG = 0,
    MRAD_LOG_INFO = 1,
    MRAD_LOG_WARN = 2,
    MRAD_LOG_ERROR = 3,
};

/* Sets the format and the lowest level written.  Call before any thread
 * logs. */
void mrad_log_init(enum mrad_log_format fmt, enum mrad_log_level level);

/* Sends the log to the file at `path` (appended, created 0640) instead of
 * stderr.  Returns 0, or -1 with errno set (the log is unchanged). */
int mrad_log_open(const char *path);
/* Reopens the file of mrad_log_open() (after a rotation, on SIGHUP); a
 * no-op when the log is stderr.  Returns 0 or -1 with errno set. */
int mrad_log_reopen(void);

/* Logs a message (printf format) at `level`. */
void mrad_log(enum mrad_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* One access-log line: what the request was and how it went. */
struct mrad_access {
    const char *method;
    const char *path;
    unsigned status;
    uint64_t bytes_in, bytes_out;
    uint64_t queue_us, compute_us, total_us;
    const char *id;         /* the body's id, or NULL */
    const char *rid;        /* the request id (X-Request-Id), or NULL */
    const char *error_code; /* wire error code, or NULL on success */
    int debug;              /* a probe: logged at debug level */
};

/* Logs one access line at info level (debug for probes). */
void mrad_log_access(const struct mrad_access *a);

#endif /* MRAD_SERVER_LOG_H */
