/*
 * random-problem.c - deterministic random attention problems (any Nq and
 * Nk, key and query masks, causality), the one generator behind `mractl
 * random` and `mra-load --shape`, and the look-up of the method, dtype and
 * mask names those commands take.
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

/* Fills the n = rows * len bytes of a mask of `kind`, row by row. */
static void fill_mask(enum mrac_mask_kind kind, uint8_t *m, uint32_t rows,
                      uint32_t len, uint64_t *s)
{
    for (size_t r = 0; r < rows; r++) {
        uint8_t *row = m + r * (size_t)len;
        for (uint32_t i = 0; i < len; i++) {
            switch (kind) {
            case MRAC_MASK_RANDOM:
                row[i] = (splitmix64(s) >> 62) != 0; /* 3 in 4 */
                break;
            case MRAC_MASK_BLOCKS:
                row[i] = !((i >= 32 && i < 64) || i + 1 == len);
                break;
            case MRAC_MASK_ZEROS:
                row[i] = 0;
                break;
            default:
                row[i] = 1;
            }
        }
    }
}

/* Bytes of a mask of kind k over rows x len (0 for none), rounded up to 64
 * so what follows stays aligned; SIZE_MAX when it overflows. */
static size_t mask_bytes(enum mrac_mask_kind k, uint32_t rows, uint32_t len)
{
    if (k == MRAC_MASK_NONE)
        return 0;
    size_t n = (size_t)rows * len; /* two 32-bit factors fit 64 bits */
    return n > SIZE_MAX - 63 ? SIZE_MAX : (n + 63) & ~(size_t)63;
}

int mrac_random_problem(const struct mrac_random_spec *spec,
                        struct attn_problem *p, void **owned)
{
    if (!spec || !p || !owned)
        return MRAC_EINVAL;
    *owned = NULL;
    memset(p, 0, sizeof *p);
    if ((unsigned)spec->mask > MRAC_MASK_ZEROS ||
        (unsigned)spec->q_mask > MRAC_MASK_ZEROS)
        return MRAC_EINVAL;
    uint32_t hkv = spec->Hkv ? spec->Hkv : spec->H;
    uint32_t nkeys = spec->Nk ? spec->Nk : spec->Nq;
    size_t esz = attn_dtype_size(spec->dtype);
    size_t nq = count4(spec->B, spec->H, spec->Nq, spec->D);
    size_t nk = count4(spec->B, hkv, nkeys, spec->D);
    if (!esz || !nq || !nk)
        return MRAC_EINVAL;
    /* q, k, v, the masks back to back, each rounded up to 64 bytes for
     * alignment. */
    size_t qbytes, kbytes;
    if (nq > SIZE_MAX / esz || nk > SIZE_MAX / esz)
        return MRAC_EINVAL;
    qbytes = (nq * esz + 63) & ~(size_t)63;
    kbytes = (nk * esz + 63) & ~(size_t)63;
    size_t mbytes = mask_bytes(spec->mask, spec->B, nkeys);
    size_t qmbytes = mask_bytes(spec->q_mask, spec->B, spec->Nq);
    size_t total = qbytes;
    if (qbytes < nq * esz || kbytes < nk * esz ||
        __builtin_add_overflow(total, kbytes, &total) ||
        __builtin_add_overflow(total, kbytes, &total) ||
        __builtin_add_overflow(total, mbytes, &total) ||
        __builtin_add_overflow(total, qmbytes, &total))
        return MRAC_EINVAL;

    p->method = spec->method;
    p->dtype = spec->dtype;
    p->B = spec->B;
    p->H = spec->H;
    p->Hkv = hkv;
    p->Nq = spec->Nq;
    p->Nk = nkeys;
    p->D = spec->D;
    p->causal = spec->causal != 0;
    p->block_per_row = spec->block_per_row;
    p->min_blocks_per_row = spec->min_blocks_per_row;
    p->error_samples = spec->error_samples;
    p->target_error = spec->target_error;
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
    char *mem = aligned_alloc(64, total);
    float *tmp = malloc(most * sizeof(float));
    if (!mem || !tmp) {
        free(mem);
        free(tmp);
        return MRAC_ENOMEM;
    }
    /* q, k, v first, so that a problem without masks has the bytes it had
     * before masks existed. */
    uint64_t s = spec->seed;
    char *dst[3] = {mem, mem + qbytes, mem + qbytes + kbytes};
    size_t cnt[3] = {nq, nk, nk};
    for (int t = 0; t < 3; t++) {
        for (size_t i = 0; i < cnt[t]; i++)
            tmp[i] = uniform(&s);
        attn_from_f32(spec->dtype, tmp, dst[t], cnt[t]);
    }
    free(tmp);
    uint8_t *masks = (uint8_t *)mem + qbytes + 2 * kbytes;
    if (mbytes) {
        fill_mask(spec->mask, masks, spec->B, nkeys, &s);
        p->mask = masks;
    }
    if (qmbytes) {
        fill_mask(spec->q_mask, masks + mbytes, spec->B, spec->Nq, &s);
        p->q_mask = masks + mbytes;
    }
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

int mrac_mask_parse(const char *name, enum mrac_mask_kind *kind)
{
    static const char *const names[] = {"none", "ones", "random", "blocks",
                                        "zeros"};
    for (int i = MRAC_MASK_NONE; i <= MRAC_MASK_ZEROS; i++)
        if (strcmp(name, names[i]) == 0) {
            *kind = (enum mrac_mask_kind)i;
            return MRAC_OK;
        }
    return MRAC_EINVAL;
}
