/*
 * auth.h - the API keys of mrad: the key file and the check of a request's
 * Authorization header.
 *
 * Kept apart from http.c so that the comparison itself is unit-tested
 * (tests/unit/server/test-auth.c).
 */
#ifndef MRAD_SERVER_AUTH_H
#define MRAD_SERVER_AUTH_H

#include <stddef.h>
#include <stdint.h>

/*
 * Checks an Authorization header value ("Bearer <key>", scheme name in any
 * case) against the configured key `want` of `wantlen` bytes.  The time
 * taken depends only on `wantlen` (never on where the bytes differ, nor on
 * the presented key's length or contents), so the key cannot be guessed
 * byte by byte from answer timings.  auth may be NULL.  Returns 1 when the
 * keys are equal, else 0.  Thread-safe (no state).
 */
int mrad_key_matches(const char *want, size_t wantlen, const char *auth);

/* What a key file may hold. */
#define MRAD_KEY_MAX 4096 /* bytes of one key */
#define MRAD_KEYS_MAX 256 /* keys in one file */

struct mrad_keyring; /* the keys of one key file, read-only once loaded */

/*
 * Reads a key file: one key per line (a final line ending optional, "\r\n"
 * accepted), blank lines skipped.  A key is 1 to MRAD_KEY_MAX bytes of
 * printable ASCII without spaces; a longer key, a key with other bytes, a
 * file with no key or more than MRAD_KEYS_MAX keys is refused, never
 * truncated.  Returns 0 and stores the ring in *out, or -1 with a sentence
 * naming the line in err (errlen bytes, terminated).
 */
int mrad_keyring_load(const char *path, struct mrad_keyring **out, char *err,
                      size_t errlen);
void mrad_keyring_free(struct mrad_keyring *k);
size_t mrad_keyring_count(const struct mrad_keyring *k);

/*
 * Checks an Authorization header value against every key of the ring,
 * each with mrad_key_matches(), so the time taken depends only on the
 * keys' lengths.  Returns 1 when one matches and stores its identity in
 * *id (a 64-bit digest of the key: the same key has the same identity
 * after a reload, and identities are never shown), else 0.  Thread-safe.
 */
int mrad_keyring_check(const struct mrad_keyring *k, const char *auth,
                       uint64_t *id);

#endif /* MRAD_SERVER_AUTH_H */
