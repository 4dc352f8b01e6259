/*
 * dtype.c - element types of the attention library: sizes, wire names and
 * the IEEE half / bfloat16 <-> float conversions.
 *
 * Conversions to 16 bits round to nearest, ties to even, on the bit
 * pattern (no reliance on the FPU rounding mode or on _Float16 support);
 * NaN stays a (quiet) NaN, values past the largest finite number become
 * infinity, subnormals are produced and read exactly.
 */
#include <string.h>

#include "attention/attn.h"

size_t attn_dtype_size(enum attn_dtype dt)
{
    switch (dt) {
    case ATTN_F32:
        return 4;
    case ATTN_F16:
    case ATTN_BF16:
        return 2;
    }
    return 0;
}

const char *attn_dtype_name(enum attn_dtype dt)
{
    switch (dt) {
    case ATTN_F32:
        return "f32";
    case ATTN_F16:
        return "f16";
    case ATTN_BF16:
        return "bf16";
    }
    return NULL;
}

const char *attn_method_name(enum attn_method m)
{
    switch (m) {
    case ATTN_EXACT:
        return "exact";
    case ATTN_MRA2:
        return "mra2";
    case ATTN_MRA2_SPARSE:
        return "mra2_sparse";
    }
    return NULL;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float attn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    if (e == 0) {
        /* Zero or subnormal: m * 2^-24 is exact in float. */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31)
        return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t attn_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) {
        if (x == 0x7f800000u)
            return sign | 0x7c00u;
        /* NaN: keep the top payload bits, force the quiet bit. */
        return sign | 0x7e00u | (uint16_t)((x >> 13) & 0x3ffu);
    }
    if (x >= 0x477ff000u) /* >= 65520 rounds to infinity */
        return sign | 0x7c00u;
    if (x < 0x38800000u) {
        /* Below the smallest normal half (2^-14): subnormal or zero.
         * 2^-25 and below round to zero (2^-25 is a tie, to even 0). */
        if (x <= 0x33000000u)
            return sign;
        uint32_t m = (x & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - (x >> 23); /* value = m * 2^(e-150) */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u)))
            r++;
        return sign | (uint16_t)r;
    }
    uint32_t r = (x >> 13) - (112u << 10);
    uint32_t rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u)))
        r++; /* a carry into the exponent is the right answer */
    return sign | (uint16_t)r;
}

float attn_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t attn_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    uint32_t lsb = (x >> 16) & 1u;
    return (uint16_t)((x + 0x7fffu + lsb) >> 16);
}

void attn_to_f32(enum attn_dtype dt, const void *src, float *dst, size_t n)
{
    switch (dt) {
    case ATTN_F32:
        memmove(dst, src, n * sizeof(float));
        break;
    case ATTN_F16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = attn_f16_to_f32(s[i]);
        break;
    }
    case ATTN_BF16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = attn_bf16_to_f32(s[i]);
        break;
    }
    }
}

void attn_from_f32(enum attn_dtype dt, const float *src, void *dst, size_t n)
{
    switch (dt) {
    case ATTN_F32:
        memmove(dst, src, n * sizeof(float));
        break;
    case ATTN_F16: {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++)
            d[i] = attn_f32_to_f16(src[i]);
        break;
    }
    case ATTN_BF16: {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++)
            d[i] = attn_f32_to_bf16(src[i]);
        break;
    }
    }
}
