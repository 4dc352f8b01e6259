/*
 * gpu-probe.c - tells tests/cuda/run.sh whether the CUDA backend opens:
 * prints the device it would use and exits 0, or prints why it does not
 * (no driver, a driver older than the runtime, no device, devices too old,
 * or the backend's own error) and exits 1.  run.sh decides whether that is
 * a failure (a GPU is present) or nothing to test (there is none).
 */
#include <stdio.h>

#include "attention/attn.h"
#include "attention/cuda/attn-cuda.h"

int main(void)
{
    char why[1024];
    int n = attn_cuda_describe(why, sizeof why);
    if (n < 1) {
        printf("gpu-probe: the CUDA backend cannot open: %s: %s\n",
               attn_strerror(n), why);
        return 1;
    }
    struct attn_config cfg = {0};
    struct attn_backend *be = NULL;
    int rc = attn_backend_new("cuda", &cfg, &be);
    if (rc != ATTN_OK) {
        printf("gpu-probe: %s; but the CUDA backend does not open on "
               "device 0: %s\n",
               why, attn_strerror(rc));
        return 1;
    }
    printf("gpu-probe: %s backend on %s\n", why, attn_backend_device(be));
    attn_backend_free(be);
    return 0;
}
