/*
 * hist.c - the log-linear latency histogram of hist.h.
 *
 * Bucket layout: index v for v < 128; above, with m the position of the
 * highest set bit, the value is shifted right by m-6 so that it falls in
 * [64, 128), and each shift owns 64 consecutive buckets.
 */
#include <math.h>
#include <string.h>

#include "clients/load/hist.h"

void hist_reset(struct hist *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

size_t hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (size_t)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - (HIST_SUB_BITS - 1);
    return HIST_SUB + (size_t)(shift - 1) * HIST_HALF +
           (size_t)((v >> shift) - HIST_HALF);
}

uint64_t hist_bucket_low(size_t idx)
{
    if (idx < HIST_SUB)
        return idx;
    size_t rel = idx - HIST_SUB;
    unsigned shift = (unsigned)(rel / HIST_HALF) + 1;
    uint64_t sub = HIST_HALF + rel % HIST_HALF;
    return sub << shift;
}

uint64_t hist_bucket_high(size_t idx)
{
    if (idx < HIST_SUB)
        return idx;
    size_t rel = idx - HIST_SUB;
    unsigned shift = (unsigned)(rel / HIST_HALF) + 1;
    return hist_bucket_low(idx) + ((uint64_t)1 << shift) - 1;
}

void hist_record(struct hist *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->total++;
    h->sum += (double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void hist_merge(struct hist *dst, const struct hist *src)
{
    for (size_t i = 0; i < HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->sum += src->sum;
    if (src->total) {
        if (src->min < dst->min)
            dst->min = src->min;
        if (src->max > dst->max)
            dst->max = src->max;
    }
}

uint64_t hist_quantile(const struct hist *h, double q)
{
    if (!h->total)
        return 0;
    if (q < 0)
        q = 0;
    if (q > 1)
        q = 1;
    uint64_t rank = (uint64_t)ceil(q * (double)h->total);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_bucket_high(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}

double hist_mean(const struct hist *h)
{
    return h->total ? h->sum / (double)h->total : 0.0;
}
