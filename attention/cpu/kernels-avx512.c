/*
 * kernels-avx512.c - the CPU micro-kernels for AVX-512F: the shared body
 * (kernels-body.h) at 16 floats per vector.  Built with -mavx512f -mfma
 * (see attention/module.mk) and only called after the backend checked
 * the CPU and OS support AVX-512F.  Blocking 8 x 32 for both products:
 * sixteen accumulators of the 32 registers.
 */
#if defined(__x86_64__) && defined(__AVX512F__)
#define KVEC 16
#define QK_ROWS 8
#define QK_KEYS 32
#define PV_ROWS 8
#define PV_COLS 32
#define KNAME "avx512"
#define KTABLE cpu_kernels_avx512
#include "attention/cpu/kernels-body.h"
#endif
