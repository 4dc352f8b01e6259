/*
 * hist.h - a log-linear latency histogram for mra-load, in the manner of
 * HdrHistogram: values below 2^SUB_BITS are counted exactly, and every
 * power-of-two range above is split into 2^(SUB_BITS-1) equal buckets, so
 * any recorded value is known to within 1/64 (about 1.6%) while the whole
 * range of microsecond latencies fits in a few thousand counters.
 *
 * Not thread-safe; one histogram belongs to one thread (mra-load records
 * from its event loop only).
 */
#ifndef MRAD_LOAD_HIST_H
#define MRAD_LOAD_HIST_H

#include <stddef.h>
#include <stdint.h>

#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS) /* 128 exact values */
#define HIST_HALF (HIST_SUB / 2)       /* 64 buckets per power of two */
#define HIST_BUCKETS (HIST_SUB + (64 - HIST_SUB_BITS) * HIST_HALF)

struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t min, max;
    double sum;
};

/* Empties the histogram. */
void hist_reset(struct hist *h);
/* Counts one value (any uint64_t). */
void hist_record(struct hist *h, uint64_t v);
/* Adds every count of `src` into `dst`. */
void hist_merge(struct hist *dst, const struct hist *src);

/* Bucket of a value, and the lowest and highest value a bucket holds. */
size_t hist_index(uint64_t v);
uint64_t hist_bucket_low(size_t idx);
uint64_t hist_bucket_high(size_t idx);

/* The value at quantile q in [0, 1]: the highest value of the bucket that
 * holds the ceil(q * total)-th smallest value, capped at the exact maximum
 * (so it never reports more than what was recorded and errs high by at
 * most one bucket width).  0 for an empty histogram. */
uint64_t hist_quantile(const struct hist *h, double q);
/* Mean of the recorded values; 0 when empty. */
double hist_mean(const struct hist *h);

#endif /* MRAD_LOAD_HIST_H */
