/*
 * kernels-avx512.c - the CPU micro-kernels for AVX-512F: the shared body
 * (kernels-body.h) at 16 floats per vector.  Built with -mavx512f -mfma
 * (see attention/module.mk) and only called after the backend checked
 * the CPU and OS support AVX-512F.  Blocking 8 x 32 for both products:
 * sixteen accumulators of the 32 registers.  The same functions also make
 * the "amx" table, whose bf16 and f16 problems go to the AMX tile kernels
 * of kernels-amx.c: its f32 results are bitwise those of "avx512".
 */
#if defined(__x86_64__) && defined(__AVX512F__)
#define KVEC 16
#define QK_ROWS 8
#define QK_KEYS 32
#define PV_ROWS 8
#define PV_COLS 32
#define KNAME "avx512"
#define KTABLE cpu_kernels_avx512
#define KTABLE_HALF cpu_kernels_amx
#define KNAME_HALF "amx"
#define KHALF cpu_half_amx
#include "attention/cpu/kernels-body.h"
#endif
