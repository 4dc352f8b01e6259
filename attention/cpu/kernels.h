/*
 * kernels.h - the CPU backend's micro-kernels behind a function table.
 *
 * Everything the inner loops of the CPU backend do goes through one
 * struct cpu_kernels, so an ISA-specific variant (AVX2, AVX-512) can be
 * compiled from its own file and chosen at run time without touching the
 * algorithm.  A backend uses one table for all its work, which keeps its
 * results bitwise reproducible.
 *
 * Shapes: a tile is 32 query rows by 32 keys (ATTN_BLOCK).  Row-major f32
 * buffers have a row stride Dp (the head dimension D rounded up to
 * CPU_DPAD, zero-padded) so the loops over D run on whole vectors.  A query
 * block is stored transposed, qt[d][i] (D rows of 32), and the logits of a
 * tile come out transposed, st[j][i]: query rows run across the vector
 * lanes, so the online softmax (max, exp, sum per row) is purely
 * lane-wise, with no horizontal reductions.
 */
#ifndef MRAD_ATTN_CPU_KERNELS_H
#define MRAD_ATTN_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define CPU_TILE 32
#define CPU_DPAD 32
#define CPU_FOLD_CHUNK 256
/* Block rows per call of the low-resolution kernels (and per work item of
 * their phases), which share each vector of khT or vh they load. */
#define CPU_LR_ROWS 4
/* Query rows of the few-row kernels (decoding: a handful of queries
 * against many keys), whose lanes run over the head dimension instead. */
#define CPU_FEW_ROWS 8

struct cpu_half_kernels;

struct cpu_kernels {
    const char *name; /* "portable", ... */
    /* bf16 (and f16) problems on a matrix engine (kernels-amx.c), or NULL:
     * every dtype is computed in f32 by the entries below. */
    const struct cpu_half_kernels *half;
    /* Transposed logits of a tile: st[j][i] = scale * sum_d k[j][d] *
     * qt[d][i] + kbias[j] (kbias: 0, or -inf for a masked key), and the
     * tile's maximum per query row, tmax[i] = max_j st[j][i].  k: 32 key
     * rows of stride Dp; qt: D rows of 32 query components. */
    void (*qk_tile)(const float *k, const float *qt, uint32_t D, uint32_t Dp,
                    float scale, const float *kbias, float *st, float *tmax);
    /* Online-softmax step on a transposed tile from qk_tile: raises the
     * running maximum m[i] of each query row to tmax[i], writes alpha[i] =
     * exp(m_old - m_new), replaces st by p = exp(st - m_new) and updates
     * l[i] = l[i] * alpha[i] + sum_j p. */
    void (*softmax_tile)(float *st, const float *tmax, float *m, float *l,
                         float *alpha);
    /* acc[i][:] = acc[i][:] * alpha[i] + sum_j p[j][i] * v[j][:], with p
     * transposed as above and acc, v of stride Dp. */
    void (*pv_tile)(const float *p, const float *v, uint32_t Dp,
                    const float *alpha, float *acc);
    /* Mean of the 32 rows of x (stride Dp) divided by cnt (0 when cnt is
     * 0): out[d], d < Dp. */
    void (*block_mean)(const float *x, uint32_t Dp, float cnt, float *out);
    /* Low-resolution terms of `rows` (1..CPU_LR_ROWS) consecutive block
     * rows, folded: for row r, every J with sel[r*nb + J] == 0 and cnt[J]
     * > 0 is a term with logit L[r*nb + J] + lnc[J] and value vh[J][:]
     * (stride Dp).  On return m[r] is the row's largest logit (-inf when
     * it has no term), sum[r] = sum_J exp(logit_J - m[r]) and
     * vacc[r*Dp .. r*Dp+Dp) = sum_J exp(logit_J - m[r]) * vh[J][:].  Terms
     * go in chunks of CPU_FOLD_CHUNK in increasing J, rescaled online
     * between chunks: a fixed order per row, whatever rows share the
     * call.  Dp is a multiple of CPU_DPAD. */
    void (*lowres_fold_rows)(const float *L, const float *lnc,
                             const uint8_t *sel, const float *cnt,
                             const float *vh, uint32_t nb, uint32_t Dp,
                             uint32_t rows, float *vacc, float *m, float *sum);
    /* `rows` (1..CPU_LR_ROWS) rows of low-resolution logits: L[r*nb + J] =
     * scale * sum_d qh[r*Dp + d] * khT[d*ldk + J] for J < nb (khT of
     * stride ldk >= nb), and rmax[r] = the largest non-NaN L[r*nb + J] (-inf if
     * none). */
    void (*lowres_rows)(const float *qh, uint32_t Dp, uint32_t rows,
                        const float *khT, size_t ldk, uint32_t D, uint32_t nb,
                        float scale, float *L, float *rmax);
    /* attn_select_keys_row_at() (attention/internal.h), the same keys bit
     * for bit, compiled for this ISA. */
    void (*select_keys_row)(const float *L_row, float r, const float *cnt,
                            float cI, uint32_t I, int64_t center, uint32_t vis,
                            uint32_t nb, uint32_t prior_first,
                            uint32_t prior_diagonal, uint64_t *key);
    /* attn_to_f32(): n elements of dtype dt (enum attn_dtype) at src into
     * f32 at dst, vectorised; the same values (every conversion to f32 is
     * exact). */
    void (*to_f32)(int dt, const void *src, float *dst, size_t n);
    /* attn_from_f32(): n f32 values at src into dtype dt at dst,
     * vectorised; the same bits. */
    void (*from_f32)(int dt, const float *src, void *dst, size_t n);
    /* Few-row kernels, for a handful of query rows against many keys:
     * the same products as qk_tile, softmax_tile and pv_tile, but row-major
     * (s[r][j], r < rows <= CPU_FEW_ROWS) with lanes over the head
     * dimension, so no lane is spent on an absent query row.  q: rows of
     * stride Dp (zero-padded); k, v: 32 rows of stride Dp.
     *   qk_rows:      s[r][j] = scale * q_r . k_j + kbias[j], smax[r] =
     *                 max_j s[r][j];
     *   softmax_rows: m[r] raised to smax[r], alpha[r] = exp(m_old - m),
     *                 s replaced by exp(s - m) (a row with m = -inf uses
     *                 0 for m, so its terms are 0), l[r] = l[r] * alpha[r]
     *                 + sum_j;
     *   pv_rows:      acc[r][:] = acc[r][:] * alpha[r] + sum_j s[r][j] *
     *                 v[j][:] (acc of stride Dp). */
    void (*qk_rows)(const float *k, const float *q, uint32_t rows, uint32_t Dp,
                    float scale, const float *kbias, float *s, float *smax);
    void (*softmax_rows)(float *s, const float *smax, uint32_t rows, float *m,
                         float *l, float *alpha);
    void (*pv_rows)(const float *p, const float *v, uint32_t rows, uint32_t Dp,
                    const float *alpha, float *acc);
};

/*
 * Half-precision tile kernels: the high-resolution work of the block-row
 * path (head.h) for bf16 inputs, and f16 where `f16` says so, on AMX-BF16
 * tiles with f32 accumulation.  Everything else (loading, block means,
 * the low-resolution pass, the selection, the fold, the decode path) stays
 * with the f32 entries of the table that points here.
 *
 * Layouts (Dp a multiple of 32; "bf16" is its 16-bit pattern):
 *   keys     kh[j][d]           bf16 rows of stride Dp, as in the inputs
 *   queries  qb[d/2][i]         32-bit pairs (q[i][d], q[i][d+1]) for the
 *                               32 queries of a block row: the pair layout
 *                               (VNNI) the matrix engine multiplies
 *   values   vt[d][j]           each block of V transposed: Dp rows of 32
 *                               keys
 *   output   acct[d][i]         f32, Dp rows of 32 query lanes
 * With a split (f16 inputs) every operand is two bf16 arrays, hi and lo,
 * hi = bf16(x) and lo = bf16(x - hi), whose sum is the f16 value exactly;
 * products are hi*hi + hi*lo + lo*hi (the lo*lo term is below 2^-16 of
 * the product).  A NULL lo pointer means no split.
 */

/*
 * One block row of 32 queries on the half kernels: the online softmax
 * over every key block J < seen that is selected (sel[J] == 1, or every J
 * when sel is NULL) and not empty (cnt[J] > 0), in increasing J, into
 * acct, m and l (as set up by the caller: 0, -inf, 0 for a new row).
 * Logits are st[j][i] = scale2 * k_j . q_i + kbias[j] in base 2 (scale2 =
 * the scale times log2(e), > 0), and so are the maxima m; for J >= vis,
 * key 32J + j is hidden from query i when 32J + j > diag + i (causally
 * partial blocks).  m[i] is raised to a tile's maximum only when that
 * exceeds it by more than CPU_HALF_SLACK (so acct is rescaled rarely, and
 * every weight stays below 2^CPU_HALF_SLACK); p = 2^(st - m) in f32; l[i]
 * = l[i] * alpha[i] + sum_j p, and acct[d][i] = acct[d][i] * alpha[i] +
 * sum_j bf16(p[j][i]) * vt[d][j] (with a split, p as hi and lo too).
 */
struct cpu_half_row {
    const uint16_t *kh, *kl; /* keys of block J at kh + J * 32 * Dp */
    const uint16_t *vh, *vl; /* V^T of block J at vh + J * 32 * Dp */
    const uint32_t *qh, *ql; /* the 32 queries in pairs */
    uint32_t Dp;
    float scale2;
    const float *kbias; /* [seen * 32] */
    const float *cnt;   /* [seen] */
    const uint8_t *sel; /* [seen], or NULL: every block */
    uint32_t seen, vis;
    int64_t diag;
    float *acct;  /* [Dp][32] */
    float *m, *l; /* [32] */
};

struct cpu_half_kernels {
    const char *name; /* "amx" */
    /* What the path computes, for the device string. */
    const char *what;
    int f16; /* nonzero: f16 inputs take this path, split (see above) */
    /* n (a multiple of 32) f32 values into bf16 hi (and lo). */
    void (*pack_rows)(const float *x, size_t n, uint16_t *hi, uint16_t *lo);
    /* A block of 32 rows x[j][d] (stride Dp) transposed into vt[d][j]. */
    void (*pack_block_t)(const float *x, uint32_t Dp, uint16_t *hi,
                         uint16_t *lo);
    /* Queries given transposed, qt[d][i] (D rows of 32), into the pair
     * layout qb[d/2][i], rows d >= D zero. */
    void (*pack_pairs)(const float *qt, uint32_t D, uint32_t Dp, uint32_t *hi,
                       uint32_t *lo);
    /* The high-resolution tiles of one block row (struct cpu_half_row);
     * configures the calling thread's tiles and releases them. */
    void (*row)(const struct cpu_half_row *r);
};

/* How far (base 2) a row's maximum may run ahead of the m it subtracts
 * before the half kernels rescale: weights stay below 2^8. */
#define CPU_HALF_SLACK 8.0f

/* The portable C kernels (any x86-64 or other target). */
extern const struct cpu_kernels cpu_kernels_portable;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CPU_KERNELS_X86 1
/* AVX2 + FMA and AVX-512F variants; call only where the CPU has them. */
extern const struct cpu_kernels cpu_kernels_avx2;
extern const struct cpu_kernels cpu_kernels_avx512;
/* AVX-512F for f32 plus AMX-BF16 tiles for bf16 and f16 (cpu_half_amx);
 * call only where cpu_amx_usable(). */
extern const struct cpu_kernels cpu_kernels_amx;
extern const struct cpu_half_kernels cpu_half_amx;
/* Nonzero when this CPU has AMX-BF16, AVX512-BF16 and AVX-512BW, the OS
 * saves the tile state, and the kernel granted this process the tile data
 * (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)); asked once. */
int cpu_amx_usable(void);
#endif

/* Environment variable naming the kernels (one of CPU_ISA_NAMES) when
 * attn_config.isa is NULL or "auto". */
#define CPU_ISA_ENV "MRAD_ISA"

/* Every ISA name cpu_kernels_pick() takes, separated by '|', as a help
 * line shows them. */
#define CPU_ISA_NAMES "auto|amx|avx512|avx2|portable"

/* Nonzero when isa is one of CPU_ISA_NAMES, whether or not this CPU runs
 * it; so a caller can tell a misspelt name from a missing feature.  Pure. */
int cpu_kernels_known(const char *isa);

/* The kernels for an ISA name: NULL or "auto" (the best this CPU runs),
 * "portable", "avx2", "avx512", "amx".  Returns NULL for an unknown name or
 * one this CPU cannot run.  Thread-safe (the AMX probe runs once). */
const struct cpu_kernels *cpu_kernels_pick(const char *isa);

#endif /* MRAD_ATTN_CPU_KERNELS_H */
