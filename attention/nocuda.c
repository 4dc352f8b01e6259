/*
 * nocuda.c - the CUDA backend constructor of a build without CUDA: there is
 * no such backend here, so asking for it answers ATTN_ENODEV (and "auto"
 * falls back to the CPU).  attention/module.mk leaves this file out when
 * the CUDA backend is built.
 */
#include "attention/attn-impl.h"

int attn_cuda_backend_new(const struct attn_config *cfg,
                          const struct attn_backend_i **iface, void **ctx)
{
    (void)cfg;
    if (iface)
        *iface = NULL;
    if (ctx)
        *ctx = NULL;
    return ATTN_ENODEV;
}
