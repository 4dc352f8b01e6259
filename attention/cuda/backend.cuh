/*
 * backend.cuh - the state of one CUDA backend instance, shared by
 * backend.cu (its life cycle: creation, faults and the rebuilt context,
 * memory given back, stores, the device-pointer entry point) and batch.cu
 * (the batch pipeline).  Internal to attention/cuda/.
 *
 * Threading: a backend is used by one thread at a time (attn.h), except
 * attn_kv_free(), which touches only the store.  The generation counter of
 * each device (device_epoch()) is the one thing shared between backends:
 * it changes when a backend resets the device's context after a fault.
 */
#ifndef MRAD_CUDA_BACKEND_CUH
#define MRAD_CUDA_BACKEND_CUH

#include "attention/attn-impl.h"
#ifdef MRAD_CUDA_PRIMS
#include MRAD_CUDA_PRIMS
#else
#include "attention/cuda/prims.cuh"
#endif

namespace mrad_cuda
{

/* Sizes of the batch pipeline.  The tests make them small so that a few
 * small problems exercise every piece. */
struct tunables {
    size_t ring_slot;  /* bytes of one pinned staging slot (two up, two
                          down): the host memory the pipeline pins */
    size_t wave_bytes; /* inputs of a wave: once a wave has this many, the
                          next problems form the next wave */
};
extern tunables g_tune;

/* A device or pinned host allocation that grows on demand and is given
 * back by trim(). */
struct arena {
    void *base;
    size_t cap;
    bool host;
};

struct cuda_ctx {
    int device;
    char desc[320];
    size_t smem_optin; /* shared memory a block may opt in to */
    uint64_t epoch;    /* the device context its handles belong to */
    int sticky;        /* its context was lost (and is not rebuilt yet) */
    uint64_t heals;    /* contexts rebuilt after a fault */
    double heal_retry; /* a failed rebuild is not retried before */
    /* compute, host-to-device and device-to-host streams */
    cudaStream_t comp, up, down;
    /* Recorded after the last work that used `work`, on whichever stream
     * it ran: later work on another stream waits for it, so callers'
     * streams and the compute stream never share the buffers at once. */
    cudaEvent_t last;
    /* the staging slots: their last copy done */
    cudaEvent_t up_slot[2], down_slot[2];
    /* per wave of a batch: its inputs up, its outputs computed */
    cudaEvent_t *wave_up, *wave_done;
    uint32_t nwave_ev;
    cublasHandle_t blas;
    void *blas_ws;
    arena work;         /* work buffers of the problems of one wave */
    arena din;          /* a batch's inputs, then its outputs */
    arena tbl_host;     /* tables of the grouped launches, pinned ... */
    arena tbl_dev;      /* ... and on the device */
    arena ring_up[2];   /* pinned staging of the inputs */
    arena ring_down[2]; /* pinned staging of the outputs */
    /* Uploads of the appends to stores (kv.cu): pinned and device
     * buffers, and the event of the last upload out of the pinned one. */
    arena kv_host, kv_dev;
    cudaEvent_t kv_up;
};

/* The generation of a device's context in this process: raised by each
 * reset after a fault. */
uint64_t device_epoch(int device);
/* Makes the context usable for a call: rebuilds it after a fault (or
 * after another backend reset the device) and makes the device current.
 * ATTN_OK or ATTN_EBACKEND. */
int ctx_enter(cuda_ctx *c);
/* After a failed call: a non-sticky error is cleared; if the device does
 * not synchronise, the context is lost (c->sticky).  Returns rc, or
 * ATTN_EBACKEND when the context is lost. */
int contain(cuda_ctx *c, int rc);
/* Makes the arena hold `need` bytes; ATTN_OK, ATTN_ENOMEM (nothing held
 * then) or ATTN_EBACKEND.  Growing frees the old memory: nothing in
 * flight may use it (ctx_quiesce()). */
int arena_reserve(cuda_ctx *c, arena *a, size_t need);
/* Gives the memory back (forgets it when its context is gone). */
void arena_release(cuda_ctx *c, arena *a);
/* Waits for everything the backend enqueued, on its streams and on
 * callers' (the event `last`). */
int ctx_quiesce(cuda_ctx *c);
/* Orders work about to be enqueued on `st` after all earlier work, and
 * records that work on `st` is the latest. */
int order_after_last(cuda_ctx *c, cudaStream_t st);
int mark_last(cuda_ctx *c, cudaStream_t st);
/* Points cuBLAS at `st` and at our workspace. */
int bind_blas(cuda_ctx *c, cudaStream_t st);
/* Makes at least n pairs of wave events exist. */
int wave_events(cuda_ctx *c, uint32_t n);
/* Whether [p, p + n) is pinned host memory that copies may use directly. */
bool host_pinned(const void *p, size_t n);

/* batch.cu: computes a batch of checked problems (host tensors), errs[i]
 * per problem; ATTN_OK, or an error that failed the whole batch. */
int batch_compute(cuda_ctx *c, const attn_problem *const *probs, size_t n,
                  int *errs);
/* batch.cu: computes one checked problem whose q, q_mask and out are in
 * device memory, keys and values at `kv`, enqueued on `st` after `last`. */
int device_compute(cuda_ctx *c, const attn_problem *p, const kv_src &kv,
                   cudaStream_t st);

} // namespace mrad_cuda

#endif /* MRAD_CUDA_BACKEND_CUH */
