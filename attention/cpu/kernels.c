/*
 * kernels.c - the portable micro-kernels of the CPU backend: the shared
 * body (kernels-body.h) at 4 floats per vector, which is SSE2 on x86-64
 * (part of the base ISA, so this runs on any x86-64) and plain scalar code
 * elsewhere.
 */
#define KVEC 4
#define KNAME "portable"
#define KTABLE cpu_kernels_portable
#include "attention/cpu/kernels-body.h"
