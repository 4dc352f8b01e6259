/*
 * attn-cuda.h - the C face of the CUDA backend (attention/cuda/).
 *
 * The backend itself is reached through the vtable of attn-impl.h
 * (attn_cuda_backend_new); this header adds the entry points that only
 * make sense for a GPU: asking how many devices there are (and why none
 * can be used), a test hook of the fault path, and computing a
 * problem whose tensors already live in device memory (used by the GPU
 * benchmark, which hands in PyTorch tensors, so that the figures measure
 * the kernels and not the PCIe copies).  Plain C, no CUDA types: callers
 * need not be compiled with nvcc.  Only available when the library was
 * built with CUDA (MRAD_HAVE_CUDA).
 */
#ifndef MRAD_ATTN_CUDA_H
#define MRAD_ATTN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "attention/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices usable by this process (>= 1), or ATTN_ENODEV when
 * there is none or no driver.  Thread-safe. */
int attn_cuda_device_count(void);

/* Writes into buf (len bytes, NUL-terminated, truncated to fit) why the
 * backend can or cannot open: the CUDA versions of the driver and of the
 * runtime (a driver older than the runtime shows here), and each device
 * with its compute capability.  Returns the number of devices the kernels
 * can run on (sm_80 or later, >= 1), ATTN_ENODEV (no driver, or no
 * device) or ATTN_ENOTSUP (devices, none recent enough).  Thread-safe. */
int attn_cuda_describe(char *buf, size_t len);

/*
 * Computes one problem whose q, k, v, mask, q_mask and out point to device
 * memory of the backend's GPU.  `be` must come from attn_backend_new("cuda" or
 * "auto") and be a CUDA backend (else ATTN_ENOTSUP).  The problem is
 * checked with attn_problem_check() (ATTN_EINVAL).  With p->kv (a store of
 * this backend) the keys and values come from the store, which is in
 * device memory already; p->append, if any, is host memory, appended
 * first as attn_backend_compute() does it (Nk must then be the store's
 * count after it, or 0 for that count).  `stream` is a
 * cudaStream_t to enqueue the work on: the call then returns once the work
 * is enqueued, and the caller synchronises that stream before reading
 * `out` or reusing the inputs.  With stream == NULL the backend's own
 * stream is used and the call returns when the output is complete.
 * Returns ATTN_OK, ATTN_ENOMEM (device pool could not grow), ATTN_ENOTSUP
 * (shape beyond the backend's limits) or ATTN_EBACKEND (launch error or a
 * sticky device fault).  A store read on a caller's stream must not be
 * freed before that stream has finished.  Same threading rule as
 * attn_backend_compute(): one thread at a time per backend.  Does not fill
 * statistics or consume injected faults.
 */
int attn_cuda_compute_device(struct attn_backend *be,
                             const struct attn_problem *p, void *stream);

/*
 * Test hook of the fault path: launches, on the backend's stream, a
 * kernel that writes outside every allocation, which makes the device
 * context unusable (a "sticky" error) exactly as a faulty kernel would.
 * With `wait` the call waits for it: it returns ATTN_EBACKEND, and the
 * backend has reset the device's context and rebuilt its own state (or
 * will retry at its next call or health()).  Without, it returns ATTN_OK
 * and the next call finds the fault.  Every backend of the process on
 * that device loses its context and stores of keys and values made
 * before fail with ATTN_EBACKEND.  For tests and tools/gpu-verify.sh
 * only; same threading rule as attn_backend_compute().  ATTN_ENOTSUP when
 * `be` is not a CUDA backend.
 */
int attn_cuda_test_fault(struct attn_backend *be, int wait);

/* How many times the backend rebuilt its device context after a fault
 * (its own, or one another backend on the device reset); 0 for a backend
 * that is not a CUDA one.  Read by the thread that uses the backend. */
uint64_t attn_cuda_heals(const struct attn_backend *be);

#ifdef __cplusplus
}
#endif
#endif /* MRAD_ATTN_CUDA_H */
