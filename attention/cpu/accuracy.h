/*
 * accuracy.h - the accuracy controls on the CPU (attention/README.md,
 * "Accuracy controls"): the row minimum, the rows sampled for the error
 * estimate, target_error's search over its ladder of budgets, and the
 * statistics of every head.
 *
 * A head with the controls (struct cpu_head.acc) adds to the phases of
 * head.h:
 *   3. select  cpu_acc_select(): the row minimum, the selection of the
 *              budget (with target_error: of the ladder's first step) and
 *              the rows sampled from the rows U it leaves approximate;
 *   3a. sample (per 32 sampled rows) cpu_acc_sample(): their exact
 *              attention, from every key, on the tile kernels;
 *   3b. choose (target_error, per head) cpu_acc_choose(): each step of the
 *              ladder evaluated on the sampled rows, the first whose
 *              estimate meets the target kept as the selection;
 *   6. stats   (per head, after the rows) cpu_acc_stats(): the estimate
 *              from the answer's sampled rows and the head's statistics,
 *              into p->head_stats.
 * Everything is per head or per sampled row, in a fixed order, so the
 * results (the budget picked included) are the same bits on any number
 * of threads.
 */
#ifndef MRAD_ATTN_CPU_ACCURACY_H
#define MRAD_ATTN_CPU_ACCURACY_H

#include <stddef.h>
#include <stdint.h>

#include "attention/cpu/head.h"
#include "attention/cpu/kernels.h"

void cpu_acc_select(struct cpu_head *hd);
/* Items of the sample phase: ceil(rows sampled / 32). */
size_t cpu_acc_sample_items(const struct cpu_head *hd);
void cpu_acc_sample(struct cpu_head *hd, uint32_t item,
                    const struct cpu_kernels *kern);
void cpu_acc_choose(struct cpu_head *hd, const struct cpu_kernels *kern);
/* Also for an exact head of a problem with the controls (estimate 0). */
void cpu_acc_stats(struct cpu_head *hd, const struct cpu_kernels *kern);

#endif /* MRAD_ATTN_CPU_ACCURACY_H */
