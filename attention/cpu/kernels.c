/*
 * kernels.c - the portable micro-kernels of the CPU backend: the shared
 * body (kernels-body.h) at 4 floats per vector, which is SSE2 on x86-64
 * (part of the base ISA, so this runs on any x86-64) and plain scalar code
 * elsewhere; and the choice of kernels by ISA name and CPU features,
 * including whether the OS lets this process use AMX tiles.
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

#ifdef CPU_KERNELS_X86
#include <cpuid.h>
#include <pthread.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* arch_prctl(2) request for an extended state component, and the tile
 * data's component number (Linux 5.16 and later). */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_ok;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void amx_probe(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return;
    int amx = (d >> 22 & 1) && (d >> 24 & 1); /* AMX-BF16, AMX-TILE */
    int bw = b >> 30 & 1;                     /* AVX-512BW */
    if (!amx || !bw || !__builtin_cpu_supports("avx512f"))
        return;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a >> 5 & 1))
        return; /* AVX512-BF16 */
    /* the OS saves the tile configuration and data (XCR0 bits 17, 18) */
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c >> 27 & 1)) /* OSXSAVE */
        return;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17))
        return;
#if defined(__linux__)
    /* and grants this process the tile data, whose 8 KiB of state every
     * thread then saves on a context switch once it used the tiles */
    amx_ok =
        syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#endif
}

int cpu_amx_usable(void)
{
    pthread_once(&amx_once, amx_probe);
    return amx_ok;
}
#endif

int cpu_kernels_known(const char *isa)
{
    size_t n = strlen(isa);
    for (const char *p = CPU_ISA_NAMES;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, isa, n) == 0)
            return 1;
        if (!bar)
            return 0;
        p = bar + 1;
    }
}

const struct cpu_kernels *cpu_kernels_pick(const char *isa)
{
    int want_auto = !isa || strcmp(isa, "auto") == 0;
#ifdef CPU_KERNELS_X86
    __builtin_cpu_init();
    int has512 = __builtin_cpu_supports("avx512f");
    int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if ((want_auto || strcmp(isa, "amx") == 0) && cpu_amx_usable())
        return &cpu_kernels_amx;
    if ((want_auto || strcmp(isa, "avx512") == 0) && has512)
        return &cpu_kernels_avx512;
    if ((want_auto || strcmp(isa, "avx2") == 0) && has2)
        return &cpu_kernels_avx2;
#endif
    if (want_auto || strcmp(isa, "portable") == 0)
        return &cpu_kernels_portable;
    return NULL;
}
