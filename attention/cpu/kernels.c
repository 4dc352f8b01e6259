/*
 * kernels.c - the portable micro-kernels of the CPU backend: the shared
 * body (kernels-body.h) at 4 floats per vector, which is SSE2 on x86-64
 * (part of the base ISA, so this runs on any x86-64) and plain scalar code
 * elsewhere; and the choice of kernels by ISA name and CPU features.
 */
#define KVEC 4
#define QK_ROWS 2
#define QK_KEYS 16
#define PV_ROWS 2
#define PV_COLS 16
#define KNAME "portable"
#define KTABLE cpu_kernels_portable
#include "attention/cpu/kernels-body.h"

#include <string.h>

const struct cpu_kernels *cpu_kernels_pick(const char *isa)
{
    int want_auto = !isa || strcmp(isa, "auto") == 0;
#ifdef CPU_KERNELS_X86
    __builtin_cpu_init();
    int has512 = __builtin_cpu_supports("avx512f");
    int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if ((want_auto || strcmp(isa, "avx512") == 0) && has512)
        return &cpu_kernels_avx512;
    if ((want_auto || strcmp(isa, "avx2") == 0) && has2)
        return &cpu_kernels_avx2;
#endif
    if (want_auto || strcmp(isa, "portable") == 0)
        return &cpu_kernels_portable;
    return NULL;
}
