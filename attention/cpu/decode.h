/*
 * decode.h - the CPU backend's path for problems with few queries per head
 * against many keys: a decoding step over a KV cache, cross-attention of a
 * short query.
 *
 * The block-row path (head.h) gives every query head its own pass over
 * the keys with 32 query lanes, most of them empty when a head has one
 * query, and converts K and V once per query head.  Here the keys and
 * values of each KV head are read once for all the query heads that share
 * them (grouped KV heads): their queries are stacked into rows of
 * CPU_FEW_ROWS and run through the few-row kernels, whose lanes run over
 * the head dimension.  The keys are cut into chunks of CPU_DECODE_CHUNK
 * blocks computed in parallel, each into a partial softmax that a last
 * phase merges in chunk order: the result depends on the chunking, fixed,
 * never on which thread computed what.  Exact attention therefore streams
 * K and V once, at memory speed.  MRA first reads each block's key and
 * value means per KV head (one pass, in chunks too), then selects, folds
 * and computes each query head's selected blocks.
 *
 * Same semantics as the block-row path (attention/README.md); results are
 * bitwise reproducible across threads and batches, though not bitwise
 * equal to the block-row path's (other kernels sum in another order).
 */
#ifndef MRAD_ATTN_CPU_DECODE_H
#define MRAD_ATTN_CPU_DECODE_H

#include <stddef.h>

#include "attention/attn.h"
#include "attention/cpu/kernels.h"
#include "attention/cpu/pool.h"

/* Problems with at most this many queries take the decode path. */
#define CPU_DECODE_MAX_Q 32
/* Key blocks per chunk of the decode path. */
#define CPU_DECODE_CHUNK 16

/* Under causality, for `rows` row-major rows of logits s[r][j] of key
 * block J (rows of CPU_TILE): hides the keys past each row's last key
 * pos[r] and takes the rows' maxima smax[r] again. */
void cpu_causal_mask_rows(float *s, float *smax, const int64_t *pos,
                          uint32_t rows, uint32_t J);

/* Nonzero when problem p takes the decode path. */
int cpu_decode_fits(const struct attn_problem *p);

/* Bytes of workspace cpu_decode_run() needs for p on `threads` workers
 * (64-byte aligned), or 0 if that does not fit in size_t. */
size_t cpu_decode_bytes(const struct attn_problem *p, int threads);

/* Computes p (which cpu_decode_fits) on the pool, in `mem` of
 * cpu_decode_bytes() bytes.  Returns ATTN_OK or ATTN_ECANCELED. */
int cpu_decode_run(const struct attn_problem *p, struct cpu_pool *pool,
                   const struct cpu_kernels *kern, void *mem);

#endif /* MRAD_ATTN_CPU_DECODE_H */
