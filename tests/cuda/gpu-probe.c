/*
 * gpu-probe.c - tells tests/cuda/run.sh whether a usable GPU is present:
 * prints the device the CUDA backend would use and exits 0, or says that
 * there is none and exits 1.
 */
#include <stdio.h>

#include "attention/attn.h"
#include "attention/cuda/attn-cuda.h"

int main(void)
{
    int n = attn_cuda_device_count();
    if (n < 1) {
        printf("gpu-probe: no CUDA device: %s\n", attn_strerror(n));
        return 1;
    }
    struct attn_config cfg = {0};
    struct attn_backend *be = NULL;
    int rc = attn_backend_new("cuda", &cfg, &be);
    if (rc != ATTN_OK) {
        printf("gpu-probe: %d device(s) but no CUDA backend: %s\n", n,
               attn_strerror(rc));
        return 1;
    }
    printf("gpu-probe: %d device(s); backend on %s\n", n,
           attn_backend_device(be));
    attn_backend_free(be);
    return 0;
}
