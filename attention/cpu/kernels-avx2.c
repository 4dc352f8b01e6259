/*
 * kernels-avx2.c - the CPU micro-kernels for AVX2 + FMA: the shared body
 * (kernels-body.h) at 8 floats per vector.  Built with -mavx2 -mfma (see
 * attention/module.mk) and only called after the backend checked the CPU
 * supports both, so the binary as a whole still runs on any x86-64.
 */
#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#define KVEC 8
#define QK_ROWS 2
#define QK_KEYS 32
#define PV_ROWS 2
#define PV_COLS 32
#define KNAME "avx2"
#define KTABLE cpu_kernels_avx2
#include "attention/cpu/kernels-body.h"
#endif
