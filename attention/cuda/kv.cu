/*
 * kv.cu - the CUDA backend's stores of keys and values (attn.h, "Resident
 * keys and values"): pages in device memory, appends that upload only the
 * new tokens and never move what is held, and block sums kept up to date
 * on the device, so that MRA reads a block's mean from its sums.
 *
 * Pages.  A page holds 32 tokens of every unit u = b * Hkv + h: keys,
 * values, the f32 sums of the real keys and values, the mask and the
 * count, kept in two pieces (struct kv_page of common.cuh) so that the
 * rows stay 64-byte aligned (16-byte loads, cp.async) and the sums 4-byte
 * aligned whatever the shape.  An append that needs m new pages takes one
 * allocation, a slab of m pages: their kv pieces, then their meta pieces,
 * m * attn_kv_page_bytes() bytes in all.  A slab never moves, so a store
 * of n tokens holds exactly ceil(n / 32) * attn_kv_page_bytes() bytes of
 * pages, the CPU's count (attn_kv_bytes_for()).  The page table (one
 * kv_page per page, 16 bytes per 32 tokens) lives in device memory with a
 * host copy; when full it doubles, with one device-to-device copy of the
 * entries it held: amortised O(1) per page.
 *
 * Appends.  The tokens of an append (keys and values [units][n][D] as the
 * caller gives them, the mask [B][n]) and the table entries of the pages
 * they land in are packed into a pinned buffer and go up in one copy;
 * k_kv_place then writes the rows into their pages and the new table
 * entries into the device table, and k_kv_sums adds the real tokens to the
 * sums, mask and count of each page they land in (the last partial page's
 * included), in token order from zero, as plan.cu's k_means sums a block.
 * An append larger than the staging buffer goes up in pieces of whole
 * tokens, each a copy and the same two kernels.  Nothing comes back.
 *
 * Compiled against the primitives of prims.cuh, or of the file
 * MRAD_CUDA_PRIMS names: tests/cuda/test-kv-emul.cpp runs this file on
 * the host, allocations, copies and kernels included.
 */
#include <stdlib.h>
#include <string.h>

#include "attention/attn-impl.h"
#ifdef MRAD_CUDA_PRIMS
#include MRAD_CUDA_PRIMS
#else
#include "attention/cuda/prims.cuh"
#endif

namespace mrad_cuda
{

/* Entries of the first page table. */
constexpr uint32_t KV_TABLE_MIN = 16;

struct kv_store {
    int dtype; /* enum attn_dtype */
    uint32_t B, Hkv, D, units;
    size_t es;         /* bytes per element */
    size_t rows;       /* bytes of the keys (or values) of a page */
    size_t meta_bytes; /* bytes of a page's meta piece */
    kv_pages pg;       /* offsets; pg.table is dtable */
    kv_page *table;    /* host copy of the page table, cap entries */
    kv_page *dtable;   /* the page table in device memory */
    uint32_t npages, cap;
    uint32_t *slab_first; /* the first page of each slab (cap entries) */
    uint32_t nslabs;
    bool broken;    /* an append failed on the device part-way */
    uint64_t epoch; /* the device context the pages belong to */
};

namespace
{

constexpr unsigned KV_THREADS = 256;

size_t align16(size_t x)
{
    return (x + 15) & ~(size_t)15;
}

/* Where the parts of one piece of an append sit in the staging buffer:
 * the table entries of the np pages from P0 that its tokens land in, the
 * keys and values [units][n][D], the mask [B][n]. */
struct stage_layout {
    uint64_t P0;
    uint32_t np;
    size_t koff, voff, moff, bytes;
};

/* The layout of n tokens from token T; bytes = SIZE_MAX on overflow. */
stage_layout layout_for(const kv_store *s, uint64_t T, uint32_t n)
{
    stage_layout l;
    l.P0 = T / BLK;
    l.np = (uint32_t)((T + n - 1) / BLK - l.P0 + 1);
    size_t rows;
    l.koff = align16((size_t)l.np * sizeof(kv_page));
    if (__builtin_mul_overflow((size_t)s->units * s->D * s->es, (size_t)n,
                               &rows) ||
        rows > SIZE_MAX / 4) {
        l.voff = l.moff = l.bytes = SIZE_MAX;
        return l;
    }
    l.voff = l.koff + align16(rows);
    l.moff = l.voff + align16(rows);
    l.bytes = l.moff + (size_t)s->B * n;
    return l;
}

/* Writes the piece's rows into their pages (bitwise copies) and the
 * table entries of the pages it lands in into the device table.  One
 * thread per (unit, token, d). */
template <typename T>
__global__ void k_kv_place(const char *stage, kv_pages pg, kv_page *dtable,
                           uint64_t P0, uint32_t np, uint64_t t0, uint32_t n,
                           size_t units, uint32_t D, size_t koff, size_t voff)
{
    const kv_page *pages = (const kv_page *)stage;
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x < np)
        dtable[P0 + x] = pages[x];
    size_t per = (size_t)n * D;
    if (x >= units * per)
        return;
    size_t u = x / per, r = x % per;
    uint32_t i = (uint32_t)(r / D), d = (uint32_t)(r % D);
    uint64_t tok = t0 + i;
    const kv_page &to = pages[tok / BLK - P0];
    size_t at = u * pg.unit + ((size_t)(tok % BLK) * D + d) * sizeof(T);
    *(T *)(to.kv + at) = ((const T *)(stage + koff))[x];
    *(T *)(to.kv + pg.vals + at) = ((const T *)(stage + voff))[x];
}

/* Adds the piece's real tokens to the pages they land in: per (page,
 * unit, d) the key and value sums, token by token in order; per (page,
 * entry) the mask bytes and the count. */
template <typename T>
__global__ void k_kv_sums(const char *stage, kv_pages pg, uint64_t P0,
                          uint32_t np, uint64_t t0, uint32_t n, uint32_t B,
                          uint32_t Hkv, uint32_t D, size_t koff, size_t voff,
                          size_t moff)
{
    const kv_page *pages = (const kv_page *)stage;
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t ud = (size_t)B * Hkv * D, nsum = ud * np;
    uint32_t q;
    if (x < nsum)
        q = (uint32_t)(x / ud);
    else if (x < nsum + (size_t)B * np)
        q = (uint32_t)((x - nsum) / B);
    else
        return;
    /* the tokens of the piece in page P0 + q: [lo, hi) */
    uint64_t first = (P0 + q) * BLK, end = t0 + n;
    uint64_t lo = t0 > first ? t0 : first;
    uint64_t hi = end < first + BLK ? end : first + BLK;
    const uint8_t *real = (const uint8_t *)stage + moff;
    char *meta = pages[q].meta;
    if (x < nsum) {
        size_t rem = x % ud, u = rem / D;
        uint32_t d = (uint32_t)(rem % D), b = (uint32_t)(u / Hkv);
        float *ks = (float *)meta + u * D + d;
        float *vs = (float *)(meta + pg.vsum) + u * D + d;
        const T *kin = (const T *)(stage + koff) + u * n * D + d;
        const T *vin = (const T *)(stage + voff) + u * n * D + d;
        float sk = *ks, sv = *vs;
        for (uint64_t tok = lo; tok < hi; tok++) {
            size_t i = (size_t)(tok - t0);
            if (real[(size_t)b * n + i]) {
                sk += to_f32(kin[i * D]);
                sv += to_f32(vin[i * D]);
            }
        }
        *ks = sk;
        *vs = sv;
    } else {
        uint32_t b = (uint32_t)((x - nsum) % B);
        uint8_t *m = (uint8_t *)meta + pg.mask + (size_t)b * BLK;
        float *cnt = (float *)(meta + pg.cnt) + b;
        float c = *cnt;
        for (uint64_t tok = lo; tok < hi; tok++) {
            bool r = real[(size_t)b * n + (size_t)(tok - t0)] != 0;
            m[tok % BLK] = r;
            c += r ? 1.0f : 0.0f;
        }
        *cnt = c;
    }
}

/* out[b, t] = the store's mask of token t of entry b. */
__global__ void k_kv_gather_mask(kv_pages pg, uint32_t B, uint32_t N,
                                 uint8_t *out)
{
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (size_t)B * N)
        return;
    uint32_t b = (uint32_t)(x / N), t = (uint32_t)(x % N);
    const uint8_t *m = (const uint8_t *)pg.table[t / BLK].meta + pg.mask;
    out[x] = m[(size_t)b * BLK + t % BLK];
}

/* Thread blocks of KV_THREADS for `threads` threads. */
size_t kv_blocks(size_t threads)
{
    return (threads + KV_THREADS - 1) / KV_THREADS;
}

/* Makes the page table hold `need` entries: the host copy and slab list
 * grow by realloc, the device table is replaced by one twice as large and
 * the entries it held are copied over on `st`. */
int grow_table(kv_store *s, uint32_t need, cudaStream_t st)
{
    uint64_t cap = s->cap ? s->cap : KV_TABLE_MIN;
    while (cap < need)
        cap *= 2;
    if (cap > UINT32_MAX)
        cap = UINT32_MAX;
    kv_page *t = (kv_page *)realloc(s->table, cap * sizeof *t);
    if (!t)
        return ATTN_ENOMEM;
    s->table = t;
    uint32_t *f = (uint32_t *)realloc(s->slab_first, cap * sizeof *f);
    if (!f)
        return ATTN_ENOMEM;
    s->slab_first = f;
    void *dt = nullptr;
    cudaError_t e = dev_malloc(&dt, cap * sizeof(kv_page));
    if (e != cudaSuccess) {
        launch_status(); /* out of memory is not sticky: clear it */
        return cuda_err(e);
    }
    if (s->npages)
        e = copy_async(dt, s->dtable, s->npages * sizeof(kv_page),
                       cudaMemcpyDeviceToDevice, st);
    /* the old table may still be read by queued work: let it finish */
    if (e == cudaSuccess)
        e = stream_sync(st);
    if (e != cudaSuccess) {
        dev_free(dt);
        return cuda_err(e);
    }
    dev_free(s->dtable);
    s->dtable = (kv_page *)dt;
    s->pg.table = s->dtable;
    s->cap = (uint32_t)cap;
    return ATTN_OK;
}

/* Makes the store hold the pages of `tokens` tokens: one new slab for
 * those it lacks, its meta pieces zeroed (no sums, no mask, no count) on
 * `st`.  ATTN_ENOMEM leaves the pages as they were. */
int reserve(kv_store *s, uint64_t tokens, cudaStream_t st)
{
    uint64_t need = (tokens + BLK - 1) / BLK;
    if (need <= s->npages)
        return ATTN_OK;
    if (need > UINT32_MAX)
        return ATTN_ENOMEM;
    if (need > s->cap) {
        int rc = grow_table(s, (uint32_t)need, st);
        if (rc)
            return rc;
    }
    size_t m = (size_t)(need - s->npages), kvb = 2 * s->rows, bytes;
    if (__builtin_mul_overflow(m, kvb + s->meta_bytes, &bytes))
        return ATTN_ENOMEM;
    void *slab = nullptr;
    cudaError_t e = dev_malloc(&slab, bytes);
    if (e != cudaSuccess) {
        launch_status();
        return cuda_err(e);
    }
    char *base = (char *)slab, *meta = base + m * kvb;
    e = memset_async(meta, 0, m * s->meta_bytes, st);
    if (e != cudaSuccess) {
        dev_free(slab);
        return cuda_err(e);
    }
    for (size_t i = 0; i < m; i++) {
        s->table[s->npages + i].kv = base + i * kvb;
        s->table[s->npages + i].meta = meta + i * s->meta_bytes;
    }
    s->slab_first[s->nslabs++] = s->npages;
    s->npages = (uint32_t)need;
    return ATTN_OK;
}

/* Tokens of a piece from token T (of at most n) whose staging fits cap
 * bytes; 0 when not even one does. */
uint32_t piece_tokens(const kv_store *s, uint64_t T, uint32_t n, size_t cap)
{
    if (layout_for(s, T, n).bytes <= cap)
        return n;
    /* a token costs its rows and mask byte, and at most one table entry
     * per 32 tokens; two more entries and the section alignment on top */
    size_t per = 2 * (size_t)s->units * s->D * s->es + s->B + 1;
    size_t fixed = 2 * sizeof(kv_page) + 3 * 16;
    uint64_t k = cap > fixed ? (cap - fixed) / per : 0;
    uint32_t nc = k < n ? (uint32_t)k : n;
    while (nc > 0 && layout_for(s, T, nc).bytes > cap)
        nc--;
    return nc;
}

/* Copies tokens i0 .. i0 + n - 1 of t into the staging layout l at host. */
void pack(const kv_store *s, const kv_tokens *t, uint32_t i0, uint32_t n,
          const stage_layout &l, char *host)
{
    memcpy(host, s->table + l.P0, (size_t)l.np * sizeof(kv_page));
    size_t row = (size_t)s->D * s->es;
    for (size_t u = 0; u < s->units; u++) {
        size_t src = (u * t->n + i0) * row, dst = u * n * row;
        memcpy(host + l.koff + dst, (const char *)t->k + src, n * row);
        memcpy(host + l.voff + dst, (const char *)t->v + src, n * row);
    }
    for (uint32_t b = 0; b < s->B; b++) {
        uint8_t *m = (uint8_t *)host + l.moff + (size_t)b * n;
        if (t->mask)
            memcpy(m, t->mask + (size_t)b * t->n + i0, n);
        else
            memset(m, 1, n);
    }
}

/* Launches the two kernels of one piece of n tokens from t0 whose
 * staging (layout l) is at dev. */
template <typename T>
int place_and_sum(kv_store *s, const stage_layout &l, const char *dev,
                  uint64_t t0, uint32_t n, cudaStream_t st)
{
    size_t place = (size_t)s->units * n * s->D;
    size_t sums = (size_t)s->units * s->D * l.np + (size_t)s->B * l.np;
    if (place < l.np)
        place = l.np;
    if (kv_blocks(place) > 0x7fffffffu || kv_blocks(sums) > 0x7fffffffu)
        return ATTN_ENOTSUP;
    MRAD_LAUNCH(k_kv_place<T>, (unsigned)kv_blocks(place), KV_THREADS, st, dev,
                s->pg, s->dtable, l.P0, l.np, t0, n, (size_t)s->units, s->D,
                l.koff, l.voff);
    MRAD_LAUNCH(k_kv_sums<T>, (unsigned)kv_blocks(sums), KV_THREADS, st, dev,
                s->pg, l.P0, l.np, t0, n, s->B, s->Hkv, s->D, l.koff, l.voff,
                l.moff);
    return cuda_err(launch_status());
}

} // namespace

int kv_store_new(const attn_kv_shape *sh, uint64_t epoch, kv_store **out)
{
    kv_store *s = (kv_store *)calloc(1, sizeof *s);
    if (!s)
        return ATTN_ENOMEM;
    s->epoch = epoch;
    s->dtype = sh->dtype;
    s->B = sh->B;
    s->Hkv = sh->Hkv;
    s->D = sh->D;
    s->units = sh->B * sh->Hkv;
    s->es = attn_dtype_size(sh->dtype);
    s->rows = (size_t)s->units * BLK * sh->D * s->es;
    /* meta: ksum [units][D], vsum [units][D], mask [B][32], cnt [B] */
    s->pg.vals = s->rows;
    s->pg.unit = (size_t)BLK * sh->D * s->es;
    s->pg.vsum = (size_t)s->units * sh->D * sizeof(float);
    s->pg.mask = 2 * s->pg.vsum;
    s->pg.cnt = s->pg.mask + (size_t)sh->B * BLK;
    s->meta_bytes = s->pg.cnt + (size_t)sh->B * sizeof(float);
    *out = s;
    return ATTN_OK;
}

uint64_t kv_store_epoch(const kv_store *s)
{
    return s->epoch;
}

void kv_store_free(kv_store *s, bool alive)
{
    if (!s)
        return;
    if (alive) {
        for (uint32_t i = 0; i < s->nslabs; i++)
            dev_free(s->table[s->slab_first[i]].kv);
        dev_free(s->dtable);
    }
    free(s->table);
    free(s->slab_first);
    free(s);
}

size_t kv_stage_need(const kv_store *s, uint32_t n)
{
    /* the most pages n tokens can land in: from the last slot of a page */
    return layout_for(s, BLK - 1, n).bytes;
}

bool kv_store_ok(const kv_store *s)
{
    return !s->broken;
}

kv_src kv_store_src(const kv_store *s)
{
    kv_src k;
    memset(&k, 0, sizeof k);
    k.pg = s->pg;
    return k;
}

int kv_store_append(kv_store *s, uint64_t t0, const kv_tokens *t,
                    const kv_stage &stage, cudaStream_t st)
{
    if (s->broken)
        return ATTN_EBACKEND;
    uint32_t had = s->npages, nslabs = s->nslabs;
    int rc = reserve(s, t0 + t->n, st);
    if (rc)
        return rc;
    if (piece_tokens(s, t0, t->n, stage.cap) == 0) {
        /* the caller's staging is below kv_stage_need(s, 1): give the new
         * pages back */
        if (s->nslabs > nslabs) {
            stream_sync(st);
            dev_free(s->table[s->slab_first[--s->nslabs]].kv);
            s->npages = had;
        }
        return ATTN_ENOMEM;
    }
    for (uint32_t i0 = 0; i0 < t->n && !rc;) {
        uint64_t T = t0 + i0;
        uint32_t n = piece_tokens(s, T, t->n - i0, stage.cap);
        stage_layout l = layout_for(s, T, n);
        /* the previous upload must have left the pinned buffer */
        rc = cuda_err(event_sync(stage.uploaded));
        if (rc)
            break;
        pack(s, t, i0, n, l, (char *)stage.host);
        rc = cuda_err(copy_async(stage.dev, stage.host, l.bytes,
                                 cudaMemcpyHostToDevice, st));
        if (!rc)
            rc = cuda_err(event_record(stage.uploaded, st));
        if (rc)
            break;
        const char *dev = (const char *)stage.dev;
        if (s->dtype == ATTN_F32)
            rc = place_and_sum<float>(s, l, dev, T, n, st);
        else if (s->dtype == ATTN_F16)
            rc = place_and_sum<__half>(s, l, dev, T, n, st);
        else
            rc = place_and_sum<__nv_bfloat16>(s, l, dev, T, n, st);
        i0 += n;
    }
    if (rc)
        s->broken = true;
    return rc;
}

int kv_gather_mask(const kv_src &kv, uint32_t B, uint32_t N, uint8_t *out,
                   cudaStream_t st)
{
    size_t n = (size_t)B * N;
    if (kv_blocks(n) > 0x7fffffffu)
        return ATTN_ENOTSUP;
    MRAD_LAUNCH(k_kv_gather_mask, (unsigned)kv_blocks(n), KV_THREADS, st, kv.pg,
                B, N, out);
    return cuda_err(launch_status());
}

} // namespace mrad_cuda
