/*
 * auth.c - constant-time comparison of the presented API key with the
 * configured one (see auth.h).
 */
#include "server/auth.h"

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
