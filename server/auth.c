/*
 * auth.c - the key file and the constant-time comparison of a presented
 * API key with the configured ones (see auth.h).
 */
#include "server/auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int mrad_key_matches(const char *want, size_t wantlen, const char *auth)
{
    static const char prefix[] = "Bearer ";
    if (!auth || strncasecmp(auth, prefix, sizeof(prefix) - 1))
        return 0;
    const char *key = auth + sizeof(prefix) - 1;
    /* The presented key is read byte by byte up to wantlen bytes without
     * stopping at a difference: every byte of `want` is always visited,
     * and a shorter key reads as zeros past its end (the length check
     * still fails it).  `volatile` keeps the compiler from turning the
     * accumulation into an early exit. */
    static const char zero = 0;
    volatile unsigned char diff = 0;
    size_t klen = 0, ended = 0;
    for (size_t i = 0; i < wantlen; i++) {
        /* one load per byte either way, so a short key costs the same
         * (also under instrumentation that checks every load) */
        const char *at = ended ? &zero : key + i;
        unsigned char k = (unsigned char)*at;
        ended |= k == 0;
        klen += !ended;
        diff |= (unsigned char)((unsigned char)want[i] ^ k);
    }
    /* Longer than the configured key: one byte past it is not the end. */
    if (!ended && key[wantlen] != '\0')
        diff |= 1;
    diff |= klen != wantlen;
    return diff == 0;
}

struct mrad_keyring {
    size_t n;
    char *key[MRAD_KEYS_MAX];
    size_t len[MRAD_KEYS_MAX];
    uint64_t id[MRAD_KEYS_MAX];
};

/* FNV-1a over the key, mixed: the identity of a key (never shown). */
static uint64_t key_id(const char *key, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)key[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

void mrad_keyring_free(struct mrad_keyring *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->n; i++) {
        /* Keys are secrets: not left in freed memory. */
        explicit_bzero(k->key[i], k->len[i]);
        free(k->key[i]);
    }
    free(k);
}

size_t mrad_keyring_count(const struct mrad_keyring *k)
{
    return k ? k->n : 0;
}

/* Adds the key of one line (without its line ending). */
static int add_key(struct mrad_keyring *k, const char *line, size_t n,
                   unsigned lineno, char *err, size_t errlen)
{
    if (n == 0)
        return 0;
    if (n > MRAD_KEY_MAX) {
        snprintf(err, errlen, "line %u: the key is longer than %d bytes",
                 lineno, MRAD_KEY_MAX);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)line[i] <= 0x20 || (unsigned char)line[i] >= 0x7f) {
            snprintf(err, errlen,
                     "line %u: a key is printable ASCII without spaces",
                     lineno);
            return -1;
        }
    if (k->n == MRAD_KEYS_MAX) {
        snprintf(err, errlen, "more than %d keys", MRAD_KEYS_MAX);
        return -1;
    }
    char *copy = malloc(n + 1);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(copy, line, n);
    copy[n] = '\0';
    k->key[k->n] = copy;
    k->len[k->n] = n;
    k->id[k->n++] = key_id(line, n);
    return 0;
}

int mrad_keyring_load(const char *path, struct mrad_keyring **out, char *err,
                      size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s", strerror(errno));
        return -1;
    }
    struct mrad_keyring *k = calloc(1, sizeof(*k));
    /* A line may be one byte longer than a key, to tell "too long". */
    char *buf = malloc(MRAD_KEY_MAX + 2);
    int rc = k && buf ? 0 : -1;
    if (rc)
        snprintf(err, errlen, "out of memory");
    size_t n = 0;
    unsigned lineno = 1;
    int c, too_long = 0;
    while (!rc && (c = fgetc(f)) != EOF) {
        if (c != '\n') {
            if (n <= MRAD_KEY_MAX)
                buf[n++] = (char)c;
            else
                too_long = 1;
            continue;
        }
        if (n && buf[n - 1] == '\r')
            n--;
        rc = add_key(k, buf, too_long ? MRAD_KEY_MAX + 1 : n, lineno++, err,
                     errlen);
        n = 0;
        too_long = 0;
    }
    if (!rc && ferror(f)) {
        snprintf(err, errlen, "%s", strerror(errno));
        rc = -1;
    }
    if (!rc && n && buf[n - 1] == '\r')
        n--;
    if (!rc)
        rc = add_key(k, buf, too_long ? MRAD_KEY_MAX + 1 : n, lineno, err,
                     errlen);
    if (!rc && k->n == 0) {
        snprintf(err, errlen, "no key in the file");
        rc = -1;
    }
    fclose(f);
    if (buf)
        explicit_bzero(buf, MRAD_KEY_MAX + 2);
    free(buf);
    if (rc) {
        mrad_keyring_free(k);
        return -1;
    }
    *out = k;
    return 0;
}

int mrad_keyring_check(const struct mrad_keyring *k, const char *auth,
                       uint64_t *id)
{
    /* Every key is compared, whichever matches. */
    int found = 0;
    uint64_t which = 0;
    for (size_t i = 0; i < k->n; i++) {
        int m = mrad_key_matches(k->key[i], k->len[i], auth);
        which |= (uint64_t)(0 - (uint64_t)(m & !found)) & k->id[i];
        found |= m;
    }
    if (found && id)
        *id = which;
    return found;
}
