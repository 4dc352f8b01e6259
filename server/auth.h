/*
 * auth.h - the API-key check of mrad.
 *
 * Kept apart from http.c so that the comparison itself is unit-tested
 * (tests/unit/server/test-auth.c).
 */
#ifndef MRAD_SERVER_AUTH_H
#define MRAD_SERVER_AUTH_H

#include <stddef.h>

/*
 * Checks an Authorization header value ("Bearer <key>", scheme name in any
 * case) against the configured key `want` of `wantlen` bytes.  The time
 * taken depends only on `wantlen` (never on where the bytes differ, nor on
 * the presented key's length or contents), so the key cannot be guessed
 * byte by byte from answer timings.  auth may be NULL.  Returns 1 when the
 * keys are equal, else 0.  Thread-safe (no state).
 */
int mrad_key_matches(const char *want, size_t wantlen, const char *auth);

#endif /* MRAD_SERVER_AUTH_H */
