/*
 * shim.c - a flat C surface of the CUDA backend for bench/cuda/bench.py
 * (loaded with ctypes into the same process as PyTorch, so both work on
 * the same device tensors).  Linked into build/libmrad-bench.so together
 * with the attention library by `make bench-cuda`; not part of libattn.
 */
#include <stddef.h>
#include <stdint.h>

#include "attention/attn.h"
#include "attention/cuda/attn-cuda.h"

/* Opens a CUDA backend on `device`; NULL when there is none.  Free with
 * mrad_bench_close(). */
void *mrad_bench_open(int device)
{
    struct attn_config cfg = {.device = device};
    struct attn_backend *be = NULL;
    if (attn_backend_new("cuda", &cfg, &be) != ATTN_OK)
        return NULL;
    return be;
}

void mrad_bench_close(void *be)
{
    attn_backend_free(be);
}

const char *mrad_bench_device(void *be)
{
    return attn_backend_device(be);
}

const char *mrad_bench_strerror(int err)
{
    return attn_strerror(err);
}

/* Why the backend can or cannot open (attn_cuda_describe()). */
int mrad_bench_describe(char *buf, size_t len)
{
    return attn_cuda_describe(buf, len);
}

/* Fills a problem from flat arguments (device pointers as integers):
 * Nq queries, Nk keys, causal or not; no masks. */
static struct attn_problem problem(int method, int dtype, uint32_t B,
                                   uint32_t H, uint32_t Hkv, uint32_t Nq,
                                   uint32_t Nk, uint32_t D, int causal,
                                   uintptr_t q, uintptr_t k, uintptr_t v,
                                   uintptr_t out, uint32_t bpr,
                                   uint64_t num_blocks)
{
    struct attn_problem p = {0};
    p.method = (enum attn_method)method;
    p.dtype = (enum attn_dtype)dtype;
    p.B = B;
    p.H = H;
    p.Hkv = Hkv;
    p.Nq = Nq;
    p.Nk = Nk;
    p.D = D;
    p.causal = causal;
    p.q = (const void *)q;
    p.k = (const void *)k;
    p.v = (const void *)v;
    p.out = (void *)out;
    p.block_per_row = bpr;
    p.num_blocks = num_blocks;
    return p;
}

/* Enqueues one problem on `stream` (a cudaStream_t; NULL = the backend's
 * own, synchronously).  Returns an attn_err code. */
int mrad_bench_run(void *be, int method, int dtype, uint32_t B, uint32_t H,
                   uint32_t Hkv, uint32_t Nq, uint32_t Nk, uint32_t D,
                   int causal, uintptr_t q, uintptr_t k, uintptr_t v,
                   uintptr_t out, uint32_t bpr, uint64_t num_blocks,
                   void *stream)
{
    struct attn_problem p = problem(method, dtype, B, H, Hkv, Nq, Nk, D, causal,
                                    q, k, v, out, bpr, num_blocks);
    return attn_cuda_compute_device(be, &p, stream);
}

/* The spec's FLOP count of that problem (attn_flops). */
double mrad_bench_flops(int method, uint32_t B, uint32_t H, uint32_t Nq,
                        uint32_t Nk, uint32_t D, int causal, uint32_t bpr,
                        uint64_t num_blocks)
{
    struct attn_problem p = problem(method, ATTN_BF16, B, H, H, Nq, Nk, D,
                                    causal, 0, 0, 0, 0, bpr, num_blocks);
    return attn_flops(&p);
}
