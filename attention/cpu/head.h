/*
 * head.h - one query head of one batch entry, the CPU backend's unit of
 * work, and the phases that compute it.
 *
 * A head goes through up to five phases, each a parallel loop over
 * independent items (see cpu-backend.c):
 *   1. load    (per key block J): f32 working copies of K and V (where
 *              they cannot be read in place) with masked and padded keys
 *              zeroed, the key bias, key block counts, and for MRA the
 *              block means of K;
 *   2. lowres  (MRA, per CPU_LR_ROWS query block rows): the rows' block
 *              means of Q (and a share of V's), L_IJ for all J, each
 *              row's max, and the selection keys of the scores S_IJ;
 *   3. select  (MRA, per head): the top-k blocks over the whole grid, then
 *              the causally partial pairs marked computed and the hidden
 *              ones marked skipped;
 *   4. fold    (MRA, per CPU_LR_ROWS block rows): the low-resolution terms
 *              of each block row (visible pairs not selected) folded into a
 *              (max, weight sum, weighted value sum) triple;
 *   5. rows    (per query block row I): the outputs of the 32 query rows,
 *              from the block of Q transposed on the spot
 *              (cpu_head_q_block()); causally hidden key blocks are never
 *              visited and partial ones are masked query by query.
 * A head with the accuracy controls adds a sample phase and a choose
 * phase after the selection and a stats phase after the rows
 * (accuracy.h).
 * Every item writes only its own slice, and its arithmetic never depends
 * on which thread runs it, so results are bitwise reproducible.
 *
 * Memory per head is O((Nq + Nk)*D + nbq*nbk) (cpu_head_bytes()), never
 * Nq x Nk.  Where the caller's K and V already have the working layout
 * (f32, no mask, whole blocks, D a multiple of CPU_DPAD) the kernels read
 * them in place instead of from a copy, which saves the copy's memory
 * traffic.
 *
 * A bf16 head (and an f16 one, where the kernels say so) on kernels with
 * half-precision tile kernels (kern->half) keeps bf16 working copies
 * instead of f32 ones: K as rows (read in place where the input has that
 * layout) and each block of V transposed, both in the layouts of
 * kernels.h; f16 keeps each value as two bf16, hi and lo.  Its block
 * means are computed in f32 from the same values as on the f32 path, so
 * MRA selects the same blocks on either.
 */
#ifndef MRAD_ATTN_CPU_HEAD_H
#define MRAD_ATTN_CPU_HEAD_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attn.h"
#include "attention/cpu/kernels.h"

struct cpu_head {
    const struct attn_problem *p;
    uint32_t b, h;         /* batch entry and query head */
    uint32_t Nq, Nk;       /* queries, keys */
    uint32_t D, Dp;        /* head dim, padded head dim */
    uint32_t nbq, nbk;     /* query and key blocks */
    struct attn_grid grid; /* which pairs causality hides */
    uint64_t budget;       /* k of the spec (MRA) */
    float scale;
    int method; /* enum attn_method */
    /* workspace, carved from the backend's arena by cpu_head_carve() */
    const float *k; /* [nbk*32][Dp], masked rows 0: kcopy or the input */
    const float *v; /* [nbk*32][Dp]: vcopy or the input */
    float *kcopy;   /* the working copies, when k/v are not read in place */
    float *vcopy;
    int kv_inplace; /* f32, no key mask, Nk % 32 == 0, D % CPU_DPAD == 0 */
    int q_inplace;  /* f32, every query real, Nq % 32 == 0, D % CPU_DPAD
                       == 0: Q's block means summed in place */
    /* the half-precision tile path (kern->half; kcopy and vcopy unused) */
    int half;                /* bf16, or f16 where kern->half->f16 */
    int split;               /* f16: every operand as bf16 hi and lo */
    int kh_inplace;          /* bf16, no key mask, no store, Nk % 32 == 0, D %
                                CPU_DPAD == 0: K's rows read in place */
    const uint16_t *kh, *kl; /* [nbk*32][Dp] keys in bf16, hi and lo (split) */
    uint16_t *kcopy16;       /* [1 + split][nbk*32][Dp], unless kh_inplace */
    uint16_t *vt16;          /* [1 + split][nbk][Dp][32]: blocks of V
                                transposed */
    float *kbias;            /* [nbk*32]: 0 for a real key, -inf otherwise */
    float *cnt;              /* [nbk]: c_J of the keys */
    float *cntq;             /* [nbq]: c_I of the queries (MRA) */
    float *lnc;              /* [nbk]: ln c_J (MRA; unused where c_J = 0) */
    float *qh;               /* [nbq][Dp]: query block means (MRA) */
    float *vh;               /* [nbk][Dp]: value block means (MRA) */
    float *khT;              /* [D][nbk]: key block means, transposed (MRA) */
    float *L;                /* [nbq][nbk]: low-resolution logits (MRA) */
    uint64_t *key;     /* [nbq][nbk]: selection keys of the scores (MRA) */
    uint32_t *scratch; /* [ATTN_SELECT_SCRATCH(nbq*nbk)]: top-k scratch */
    uint8_t *sel;      /* [nbq][nbk]: 0 = not selected, 1 = computed at full
                          resolution, 2 = hidden by causality (MRA) */
    float *vlow;       /* [nbq][Dp]: folded low-resolution values (MRA) */
    float *lm, *lsum;  /* [nbq]: their max logit and weight sum (MRA) */
    /* The accuracy controls (attn_problem_accuracy(); accuracy.h), for an
     * MRA head; acc is 0 and the rest unused otherwise. */
    int acc;
    uint32_t nsmax;   /* sample slots: attn_error_samples() */
    uint32_t ns, u;   /* rows sampled, rows U they stand for */
    uint32_t nreal;   /* real query rows */
    uint64_t nforced; /* pairs of the row minimum */
    uint8_t *forced;  /* [nbq][nbk]: 1 = in the row minimum (min_blocks) */
    uint8_t *loose;   /* [nbq]: 1 = a block row whose rows are in U */
    uint32_t *srow;   /* [nsmax]: the sampled query rows, ascending */
    double *wrow;     /* [nbq]: the sampling weight of a loose row's rows */
    double *sw;       /* [nsmax]: the weight of each sample */
    double wtot;      /* the weights of U summed */
    float *xs;        /* [nsmax][Dp]: their exact attention */
    /* target_error's search: each sampled row's high-resolution terms so
     * far (online softmax state) and which key blocks they hold */
    float *hm, *hl;  /* [nsmax] */
    float *hacc;     /* [nsmax][Dp] */
    uint8_t *merged; /* [nsmax][nbk] */
};

/* Fills the shape fields of a head of problem p, to be computed with
 * `kern`.  p must have passed attn_problem_check(). */
void cpu_head_init(struct cpu_head *hd, const struct attn_problem *p,
                   uint32_t b, uint32_t h, const struct cpu_kernels *kern);
/* Bytes of workspace the head needs (each piece 64-byte aligned), or 0 if
 * the size does not fit in size_t. */
size_t cpu_head_bytes(const struct cpu_head *hd);
/* Points the workspace fields into `mem` (cpu_head_bytes() bytes, 64-byte
 * aligned). */
void cpu_head_carve(struct cpu_head *hd, void *mem);

/* Phase 1 for key blocks [J0, J1): ceil(nbk / chunk) items. */
void cpu_head_load(struct cpu_head *hd, uint32_t J0, uint32_t J1,
                   const struct cpu_kernels *kern);
/* Row groups of the lowres and fold phases: CPU_LR_ROWS query block rows
 * each. */
uint32_t cpu_head_row_groups(const struct cpu_head *hd);
/* Phase 2 for row group G (MRA only). */
void cpu_head_lowres(struct cpu_head *hd, uint32_t G,
                     const struct cpu_kernels *kern);
/* Phase 3 (MRA only): the selection, or with the accuracy controls the
 * row minimum, the selection of the budget (target_error: of the ladder's
 * first step) and the rows sampled from it (cpu_acc_pick()). */
void cpu_head_select(struct cpu_head *hd);
/* The selection of a budget of k pairs picked by score (the row minimum
 * first): sel of head.h's meaning, partial pairs 1 and hidden ones 2. */
void cpu_head_select_k(struct cpu_head *hd, uint64_t k);
/* Phase 4 for row group G (MRA only). */
void cpu_head_fold(struct cpu_head *hd, uint32_t G,
                   const struct cpu_kernels *kern);
/* Nonzero when query t is real: inside Nq and not masked out. */
int cpu_head_query_real(const struct cpu_head *hd, uint32_t t);
/* Query block I in f32, transposed: qt[d][i] for D rows of 32, zero for
 * masked and padded queries. */
void cpu_head_q_block(const struct cpu_head *hd, uint32_t I,
                      const struct cpu_kernels *kern, float *qt);
/* Phase 5 for query block row I: writes rows I*32 .. min(Nq, I*32+32) of
 * out. */
void cpu_head_rows(const struct cpu_head *hd, uint32_t I,
                   const struct cpu_kernels *kern);

#endif /* MRAD_ATTN_CPU_HEAD_H */
