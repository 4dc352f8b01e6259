/*
 * http.h - the HTTP front of mrad (libmicrohttpd).
 *
 * HTTP threads read bodies (enforcing the size limit while reading),
 * authenticate and hand each request to the route of its API surface
 * (server/route.h): a computing route decodes and validates, submits a job
 * to the scheduler and suspends the request; the job's completion resumes
 * it and the answer is encoded on the HTTP thread.  Probes, metrics and
 * information endpoints are answered directly from snapshots and never
 * wait for compute.
 */
#ifndef MRAD_SERVER_HTTP_H
#define MRAD_SERVER_HTTP_H

#include <stdint.h>

#include "server/config.h"
#include "server/route.h"
#include "server/sched.h"

struct mrad_http; /* opaque */

/*
 * Binds cfg->host:cfg->port and starts serving.  `cfg`, `s`, the session
 * table `kv`, the shared-memory regions `shm` (NULL: off) and the strings
 * of `info` must outlive the server; the server takes ownership of
 * cfg->keys.  Returns 0 or -1 (logged).
 */
int mrad_http_start(struct mrad_http **out, const struct mrad_config *cfg,
                    struct mrad_sched *s, struct mrad_kv_table *kv,
                    struct mrad_shm_table *shm,
                    const struct mrad_http_info *info);

/* The bound TCP port (the chosen one when cfg->port was 0). */
uint16_t mrad_http_port(const struct mrad_http *h);
/* The bound admin port (--admin-port), or 0 without one. */
uint16_t mrad_http_admin_port(const struct mrad_http *h);

/* /readyz answers 200 only once this is set (after startup). */
void mrad_http_set_ready(struct mrad_http *h, int ready);

/* From now on /healthz and /readyz answer 503 and new POSTs get 503
 * unavailable; accepted requests carry on.  Thread-safe. */
void mrad_http_drain(struct mrad_http *h);

/* Requests that were queued and whose answer is not yet fully sent. */
uint64_t mrad_http_pending_answers(const struct mrad_http *h);

/* Nonzero while a request is being read or answered, or bytes are
 * counted against --max-inflight-bytes. */
int mrad_http_busy(const struct mrad_http *h);

/* Replaces the API keys (SIGHUP): takes ownership of `keys` and frees
 * the previous ones once no request reads them.  NULL is refused by the
 * caller: a server started with keys keeps needing one.  Thread-safe. */
void mrad_http_set_keys(struct mrad_http *h, struct mrad_keyring *keys);

/* Stops serving and frees the server.  Every job must be finished first
 * (suspended connections are resumed by their job's completion). */
void mrad_http_stop(struct mrad_http *h);

#endif /* MRAD_SERVER_HTTP_H */
