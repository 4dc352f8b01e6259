/*
 * random-problem.c - deterministic random attention problems, the one
 * generator behind `mractl random` and `mra-load --shape`, and the look-up
 * of the method and dtype names those commands take.
 *
 * The values come from splitmix64 so that the same seed gives the same
 * bytes on every platform and build (the C library's rand() would not).
 */
#include <stdlib.h>
#include <string.h>

#include "clients/c/mraclient.h"

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1) with 24 random bits: exactly representable in f32. */
static float uniform(uint64_t *s)
{
    return (float)(splitmix64(s) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

/* n = a*b*c*d with an overflow check; 0 on overflow. */
static size_t count4(uint32_t a, uint32_t b, uint32_t c, uint32_t d)
{
    size_t n = 1;
    const uint32_t x[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++) {
        if (x[i] && n > SIZE_MAX / x[i])
            return 0;
        n *= x[i];
    }
    return n;
}

int mrac_random_problem(const struct mrac_random_spec *spec,
                        struct attn_problem *p, void **owned)
{
    if (!spec || !p || !owned)
        return MRAC_EINVAL;
    *owned = NULL;
    memset(p, 0, sizeof *p);
    uint32_t hkv = spec->Hkv ? spec->Hkv : spec->H;
    size_t esz = attn_dtype_size(spec->dtype);
    size_t nq = count4(spec->B, spec->H, spec->N, spec->D);
    size_t nk = count4(spec->B, hkv, spec->N, spec->D);
    if (!esz || !nq || !nk)
        return MRAC_EINVAL;
    /* q, k, v back to back, each rounded up to 64 bytes for alignment. */
    size_t qbytes, kbytes;
    if (nq > SIZE_MAX / esz || nk > SIZE_MAX / esz)
        return MRAC_EINVAL;
    qbytes = (nq * esz + 63) & ~(size_t)63;
    kbytes = (nk * esz + 63) & ~(size_t)63;
    if (qbytes < nq * esz || kbytes < nk * esz ||
        kbytes > (SIZE_MAX - qbytes) / 2)
        return MRAC_EINVAL;

    p->method = spec->method;
    p->dtype = spec->dtype;
    p->B = spec->B;
    p->H = spec->H;
    p->Hkv = hkv;
    p->N = spec->N;
    p->D = spec->D;
    p->block_per_row = spec->block_per_row;
    /* Check the shape before allocating, with a stand-in for every
     * pointer. */
    static const char stand_in[8];
    p->q = p->k = p->v = stand_in;
    p->out = (void *)stand_in;
    int rc = attn_problem_check(p, NULL, 0);
    p->q = p->k = p->v = NULL;
    p->out = NULL;
    if (rc != ATTN_OK)
        return MRAC_EINVAL;

    size_t most = nq > nk ? nq : nk;
    if (most > SIZE_MAX / sizeof(float))
        return MRAC_EINVAL;
    char *mem = aligned_alloc(64, qbytes + 2 * kbytes);
    float *tmp = malloc(most * sizeof(float));
    if (!mem || !tmp) {
        free(mem);
        free(tmp);
        return MRAC_ENOMEM;
    }
    uint64_t s = spec->seed;
    char *dst[3] = {mem, mem + qbytes, mem + qbytes + kbytes};
    size_t cnt[3] = {nq, nk, nk};
    for (int t = 0; t < 3; t++) {
        for (size_t i = 0; i < cnt[t]; i++)
            tmp[i] = uniform(&s);
        attn_from_f32(spec->dtype, tmp, dst[t], cnt[t]);
    }
    free(tmp);
    p->q = dst[0];
    p->k = dst[1];
    p->v = dst[2];
    *owned = mem;
    return MRAC_OK;
}

int mrac_method_parse(const char *name, enum attn_method *m)
{
    for (int i = ATTN_EXACT; i <= ATTN_MRA2_SPARSE; i++)
        if (strcmp(name, attn_method_name((enum attn_method)i)) == 0) {
            *m = (enum attn_method)i;
            return MRAC_OK;
        }
    return MRAC_EINVAL;
}

int mrac_dtype_parse(const char *name, enum attn_dtype *dt)
{
    for (int i = ATTN_F32; i <= ATTN_BF16; i++)
        if (strcmp(name, attn_dtype_name((enum attn_dtype)i)) == 0) {
            *dt = (enum attn_dtype)i;
            return MRAC_OK;
        }
    return MRAC_EINVAL;
}
