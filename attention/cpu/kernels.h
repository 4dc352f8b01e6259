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
 * CPU_DPAD, zero-padded) so the loops over D run on whole vectors.  A key
 * block is stored transposed, kt[d][j] (D rows of 32), so Q K^T is a run
 * of broadcast-multiply-adds over 32 contiguous keys.
 */
#ifndef MRAD_ATTN_CPU_KERNELS_H
#define MRAD_ATTN_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define CPU_TILE 32
#define CPU_DPAD 16

struct cpu_kernels {
    const char *name; /* "portable", ... */
    /* s[i][j] = scale * sum_d q[i][d] * kt[d][j], for a 32x32 tile.
     * q: 32 rows of stride Dp; kt: D rows of 32. */
    void (*qk_tile)(const float *q, const float *kt, uint32_t D, uint32_t Dp,
                    float scale, float *s);
    /* Online-softmax step for a tile: adds kbias[j] (0, or -inf for a
     * masked key) to s[i][j], raises the running row maximum m[i], writes
     * alpha[i] = exp(m_old - m_new), replaces s by p = exp(s - m_new), and
     * updates l[i] = l[i] * alpha[i] + sum_j p[i][j]. */
    void (*softmax_tile)(float *s, const float *kbias, float *m, float *l,
                         float *alpha);
    /* acc[i][:] = acc[i][:] * alpha[i] + sum_j p[i][j] * v[j][:], with acc
     * and v of stride Dp. */
    void (*pv_tile)(const float *p, const float *v, uint32_t Dp,
                    const float *alpha, float *acc);
    /* Mean of the 32 rows of x (stride Dp) divided by cnt (0 when cnt is
     * 0): out[d], d < Dp. */
    void (*block_mean)(const float *x, uint32_t Dp, float cnt, float *out);
    /* One row of low-resolution logits: L[J] = scale * sum_d qh[d] *
     * khT[d][J] for J < nb, khT of stride nb. */
    void (*lowres_row)(const float *qh, const float *khT, uint32_t D,
                       uint32_t nb, float scale, float *L);
};

/* The portable C kernels (any x86-64 or other target). */
extern const struct cpu_kernels cpu_kernels_portable;

#endif /* MRAD_ATTN_CPU_KERNELS_H */
