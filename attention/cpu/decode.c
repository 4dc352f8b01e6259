/*
 * decode.c - the decode path of the CPU backend: few queries per head
 * against many keys (see decode.h).
 *
 * A unit is one KV head of one batch entry; its G = H / Hkv query heads
 * share its keys.  Phases, each a parallel loop on the pool:
 *   exact:  attend (unit x chunk): the unit's stacked real query rows, in
 *           tiles of CPU_FEW_ROWS, over the chunk's key blocks into a
 *           partial softmax (m, l, acc) per row; merge (unit x tile): the
 *           chunks' partials combined in chunk order, the output written.
 *   MRA:    means (unit x chunk): each key block's count, key mean
 *           (transposed) and value mean; head (query head): block means
 *           of Q, low-resolution logits, selection, the fold of the
 *           low-resolution terms, then the selected blocks at full
 *           resolution and the output.
 * Workspace: the partials or the unit means, and per worker the buffers
 * of one item (a block converted to f32, a tile, the selection's arrays).
 */
#include "attention/cpu/decode.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attention/cpu/kv.h"
#include "attention/internal.h"

#define ALIGN 64
#define FEW CPU_FEW_ROWS
#define TILE CPU_TILE

/* One problem on the decode path. */
struct dec {
    const struct attn_problem *p;
    const struct cpu_kernels *kern;
    struct attn_grid grid;
    uint32_t G, U, D, Dp, Nq, Nk, nbk, nch;
    uint32_t tw;    /* exact: query rows per tile, CPU_FEW_ROWS or 32 */
    uint32_t ntile; /* exact: tiles of a unit */
    float scale;
    uint64_t budget;
    int64_t shift;
    int kv_direct; /* f32 rows of stride D = Dp, 4-byte aligned */
    /* workspace */
    float *part;      /* exact: [U][ntile][nch][tw * (Dp + 2)] */
    float *cnt, *lnc; /* MRA: [U][nbk] (none on a store: its own) */
    float *khT;       /* MRA: [U][D][nbk] */
    float *vh;        /* mra2: [U][nbk][Dp] */
    char *worker;     /* per worker: worker_bytes each */
    size_t worker_bytes;
};

/* The buffers of one worker, carved from its share of the workspace. */
struct wbuf {
    float *kb, *vb;    /* a block of K and V converted: [TILE][Dp] each */
    float *kbias;      /* [TILE] */
    float *q;          /* [ntile * tw][Dp]: the unit's stacked query rows */
    float *qt;         /* [ntile][D][32]: the tiles transposed (tw = 32) */
    int64_t *pos;      /* [ntile * tw]: their positions among the keys */
    uint32_t *rows;    /* [ntile]: rows in each tile */
    float *s;          /* [tw][TILE]: logits, then weights */
    float *acc;        /* [tw][Dp] */
    float *L;          /* MRA: [nbk] */
    uint64_t *key;     /* MRA: [nbk] */
    uint8_t *sel;      /* MRA: [nbk] */
    uint32_t *scratch; /* MRA: [ATTN_SELECT_SCRATCH(nbk)] */
    float *qh, *vlow;  /* MRA: [Dp] each */
};

int cpu_decode_fits(const struct attn_problem *p)
{
    /* the accuracy controls work on the block rows of head.h */
    return p->Nq <= CPU_DECODE_MAX_Q && !attn_problem_accuracy(p);
}

/* ---- sizes ----------------------------------------------------------------
 */

static size_t round_up(size_t n)
{
    return (n + ALIGN - 1) / ALIGN * ALIGN;
}

/* a * b, or SIZE_MAX when it overflows */
static size_t mul(size_t a, size_t b)
{
    return b != 0 && a > SIZE_MAX / b ? SIZE_MAX : a * b;
}

static size_t add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

static void dec_init(struct dec *d, const struct attn_problem *p)
{
    memset(d, 0, sizeof *d);
    d->p = p;
    attn_grid_init(&d->grid, p);
    d->G = p->H / p->Hkv;
    d->U = p->B * p->Hkv;
    d->D = p->D;
    d->Dp = (p->D + CPU_DPAD - 1) / CPU_DPAD * CPU_DPAD;
    d->Nq = p->Nq;
    d->Nk = p->Nk;
    d->nbk = d->grid.nbk;
    d->nch = (d->nbk + CPU_DECODE_CHUNK - 1) / CPU_DECODE_CHUNK;
    /* Many stacked rows fill the 32 lanes of the tile kernels, which then
     * cost less per row than the few-row kernels (about 8 against 32
     * operations per row and key at D = 128); few rows take the few-row
     * kernels, which spend nothing on absent rows. */
    d->tw = d->G * d->Nq >= 2 * FEW ? TILE : FEW;
    d->ntile = (d->G * d->Nq + d->tw - 1) / d->tw;
    d->scale = attn_scale(p);
    d->budget = attn_budget(p);
    d->shift = attn_grid_diag_shift(&d->grid);
    d->kv_direct =
        p->dtype == ATTN_F32 && d->D == d->Dp &&
        (p->kv || (((uintptr_t)p->k & 3) == 0 && ((uintptr_t)p->v & 3) == 0));
}

static size_t worker_size(const struct dec *d)
{
    size_t Dp = d->Dp, n = 0;
    n = add(n, round_up(mul(2 * TILE, mul(Dp, sizeof(float)))));
    n = add(n, round_up(TILE * sizeof(float)));
    n = add(n, round_up(mul(mul(d->ntile, d->tw), mul(Dp, sizeof(float)))));
    if (d->tw == TILE)
        n = add(n, round_up(mul(d->ntile, mul(Dp, TILE * sizeof(float)))));
    n = add(n, round_up(mul(mul(d->ntile, d->tw), sizeof(int64_t))));
    n = add(n, round_up(mul(d->ntile, sizeof(uint32_t))));
    n = add(n, round_up(TILE * TILE * sizeof(float)));
    n = add(n, round_up(mul(TILE, mul(Dp, sizeof(float)))));
    if (d->p->method != ATTN_EXACT) {
        n = add(n, round_up(mul(d->nbk, sizeof(float))));
        n = add(n, round_up(mul(d->nbk, sizeof(uint64_t))));
        n = add(n, round_up(d->nbk));
        n = add(n,
                round_up(mul(ATTN_SELECT_SCRATCH(d->nbk), sizeof(uint32_t))));
        n = add(n, round_up(mul(2, mul(Dp, sizeof(float)))));
    }
    return n;
}

static size_t shared_size(const struct dec *d)
{
    size_t n = 0, U = d->U, nbk = d->nbk;
    if (d->p->method == ATTN_EXACT) {
        size_t per = mul(d->tw, d->Dp + 2);
        n = round_up(
            mul(mul(mul(U, d->ntile), d->nch), mul(per, sizeof(float))));
        return n;
    }
    if (d->p->kv) /* the store keeps the block means */
        return 0;
    n = add(n, round_up(mul(mul(U, nbk), sizeof(float)))); /* cnt */
    n = add(n, round_up(mul(mul(U, nbk), sizeof(float)))); /* lnc */
    n = add(n, round_up(mul(mul(mul(U, d->D), nbk), sizeof(float))));
    if (d->p->method == ATTN_MRA2)
        n = add(n, round_up(mul(mul(mul(U, nbk), d->Dp), sizeof(float))));
    return n;
}

size_t cpu_decode_bytes(const struct attn_problem *p, int threads)
{
    struct dec d;
    dec_init(&d, p);
    size_t n = add(shared_size(&d), mul((size_t)threads, worker_size(&d)));
    return n == SIZE_MAX ? 0 : n;
}

static void carve(struct dec *d, char *mem, int threads)
{
    size_t U = d->U, nbk = d->nbk;
    char *at = mem;
    if (d->p->method == ATTN_EXACT) {
        d->part = (float *)(void *)at;
        at += shared_size(d);
    } else if (!d->p->kv) {
        d->cnt = (float *)(void *)at;
        at += round_up(U * nbk * sizeof(float));
        d->lnc = (float *)(void *)at;
        at += round_up(U * nbk * sizeof(float));
        d->khT = (float *)(void *)at;
        at += round_up(U * d->D * nbk * sizeof(float));
        if (d->p->method == ATTN_MRA2) {
            d->vh = (float *)(void *)at;
            at += round_up(U * nbk * d->Dp * sizeof(float));
        }
    }
    d->worker = at;
    d->worker_bytes = worker_size(d);
    (void)threads;
}

static struct wbuf worker_bufs(const struct dec *d, int worker)
{
    struct wbuf w;
    size_t Dp = d->Dp;
    char *at = d->worker + (size_t)worker * d->worker_bytes;
    memset(&w, 0, sizeof w);
    w.kb = (float *)(void *)at;
    w.vb = w.kb + TILE * Dp;
    at += round_up(2 * TILE * Dp * sizeof(float));
    w.kbias = (float *)(void *)at;
    at += round_up(TILE * sizeof(float));
    w.q = (float *)(void *)at;
    at += round_up((size_t)d->ntile * d->tw * Dp * sizeof(float));
    w.qt = (float *)(void *)at;
    if (d->tw == TILE)
        at += round_up((size_t)d->ntile * Dp * TILE * sizeof(float));
    w.pos = (int64_t *)(void *)at;
    at += round_up((size_t)d->ntile * d->tw * sizeof(int64_t));
    w.rows = (uint32_t *)(void *)at;
    at += round_up((size_t)d->ntile * sizeof(uint32_t));
    w.s = (float *)(void *)at;
    at += round_up(TILE * TILE * sizeof(float));
    w.acc = (float *)(void *)at;
    at += round_up(TILE * Dp * sizeof(float));
    if (d->p->method != ATTN_EXACT) {
        w.L = (float *)(void *)at;
        at += round_up(d->nbk * sizeof(float));
        w.key = (uint64_t *)(void *)at;
        at += round_up(d->nbk * sizeof(uint64_t));
        w.sel = (uint8_t *)at;
        at += round_up(d->nbk);
        w.scratch = (uint32_t *)(void *)at;
        at += round_up(ATTN_SELECT_SCRATCH(d->nbk) * sizeof(uint32_t));
        w.qh = (float *)(void *)at;
        w.vlow = w.qh + Dp;
    }
    return w;
}

/* ---- reading the inputs -----------------------------------------------------
 */

static int cancelled(const struct dec *d)
{
    return d->p->cancel && *d->p->cancel;
}

/* Whether query t of batch entry b is real. */
static int query_real(const struct dec *d, uint32_t b, uint32_t t)
{
    return cpu_query_real(d->p, b, t);
}

/*
 * The f32 rows of key and value block J of unit u, stride Dp: pointers
 * into the inputs or the store when they have that layout (f32, D a
 * multiple of CPU_DPAD, a whole block of real keys), else rows converted
 * into w->kb and w->vb with masked and padded keys zeroed.  w->kbias gets 0
 * for a real key and -inf for the others.  Returns the count of real keys.
 */
static float block_rows(const struct dec *d, uint32_t u, uint32_t J,
                        struct wbuf *w, const float **k, const float **v)
{
    const struct attn_problem *p = d->p;
    uint32_t b = u / p->Hkv, h = u % p->Hkv, t0 = J * TILE, D = d->D;
    uint32_t Dp = d->Dp;
    if (d->kv_direct && cpu_kv_block_whole(p, b, J)) {
        *k = (const float *)(const void *)cpu_kv_row(p, 0, b, h, t0);
        *v = (const float *)(const void *)cpu_kv_row(p, 1, b, h, t0);
        memset(w->kbias, 0, TILE * sizeof(float));
        return (float)TILE;
    }
    float c = 0.0f;
    for (uint32_t jj = 0; jj < TILE; jj++) {
        uint32_t t = t0 + jj;
        int real = t < d->Nk && cpu_kv_real(p, b, t);
        float *kr = w->kb + (size_t)jj * Dp, *vr = w->vb + (size_t)jj * Dp;
        if (real) {
            d->kern->to_f32(p->dtype, cpu_kv_row(p, 0, b, h, t), kr, D);
            d->kern->to_f32(p->dtype, cpu_kv_row(p, 1, b, h, t), vr, D);
            memset(kr + D, 0, (Dp - D) * sizeof(float));
            memset(vr + D, 0, (Dp - D) * sizeof(float));
        } else {
            memset(kr, 0, Dp * sizeof(float));
            memset(vr, 0, Dp * sizeof(float));
        }
        w->kbias[jj] = real ? 0.0f : -INFINITY;
        c += real ? 1.0f : 0.0f;
    }
    *k = w->kb;
    *v = w->vb;
    return c;
}

/* Query row i of head h of entry b, in f32 into dst (Dp, zero-padded). */
static void query_row(const struct dec *d, uint32_t b, uint32_t h, uint32_t i,
                      float *dst)
{
    const struct attn_problem *p = d->p;
    size_t es = attn_dtype_size(p->dtype);
    const char *at =
        (const char *)p->q + ((((size_t)b * p->H + h) * d->Nq + i) * d->D) * es;
    d->kern->to_f32(p->dtype, at, dst, d->D);
    memset(dst + d->D, 0, (d->Dp - d->D) * sizeof(float));
}

/* Output row i of head h of entry b, from f32 (NULL: zeros). */
static void write_out(const struct dec *d, uint32_t b, uint32_t h, uint32_t i,
                      const float *row)
{
    const struct attn_problem *p = d->p;
    size_t es = attn_dtype_size(p->dtype);
    char *o =
        (char *)p->out + ((((size_t)b * p->H + h) * d->Nq + i) * d->D) * es;
    float zeros[ATTN_MAX_HEAD_DIM];
    if (!row) {
        memset(zeros, 0, d->D * sizeof(float));
        row = zeros;
    }
    d->kern->from_f32(p->dtype, row, o, d->D);
}

/* Hides the keys of block J beyond each row's position: key 32J + j is
 * seen by row r when it is <= pos[r].  smax is taken again. */
void cpu_causal_mask_rows(float *s, float *smax, const int64_t *pos,
                          uint32_t rows, uint32_t J)
{
    int64_t k0 = (int64_t)J * TILE;
    for (uint32_t r = 0; r < rows; r++) {
        float *row = s + (size_t)r * TILE, mx = -INFINITY;
        for (int j = 0; j < TILE; j++) {
            if (k0 + j > pos[r])
                row[j] = -INFINITY;
            mx = row[j] > mx ? row[j] : mx;
        }
        smax[r] = mx;
    }
}

/* The stacked real query rows of unit u: row n of the unit is the n-th
 * (head, query) pair with a real query, heads outer.  Fills the rows
 * [first, first + tw) that exist: their head and query into hs/is, their
 * position into pos; returns how many. */
static uint32_t tile_rows(const struct dec *d, uint32_t u, uint32_t first,
                          uint32_t *hs, uint32_t *is, int64_t *pos)
{
    uint32_t b = u / d->p->Hkv, kvh = u % d->p->Hkv, n = 0, at = 0;
    for (uint32_t g = 0; g < d->G && n < d->tw; g++)
        for (uint32_t i = 0; i < d->Nq && n < d->tw; i++) {
            if (!query_real(d, b, i))
                continue;
            if (at++ < first)
                continue;
            hs[n] = kvh * d->G + g;
            is[n] = i;
            pos[n] = (int64_t)i + d->grid.off;
            n++;
        }
    return n;
}

/* ---- exact -------------------------------------------------------------- */

static float *partial(const struct dec *d, uint32_t u, uint32_t tile,
                      uint32_t c)
{
    size_t per = (size_t)d->tw * (d->Dp + 2);
    return d->part + (((size_t)u * d->ntile + tile) * d->nch + c) * per;
}

/* Hides, in a transposed tile st[j][i], the keys of block J beyond each
 * lane's position (pos[i]; absent lanes carry INT64_MAX); tmax is taken
 * again. */
static void causal_mask_lanes(float *st, float *tmax, const int64_t *pos,
                              uint32_t J)
{
    int64_t k0 = (int64_t)J * TILE;
    for (int i = 0; i < TILE; i++)
        tmax[i] = -INFINITY;
    for (int j = 0; j < TILE; j++) {
        float *row = st + j * TILE;
        for (int i = 0; i < TILE; i++) {
            if (k0 + j > pos[i])
                row[i] = -INFINITY;
            tmax[i] = row[i] > tmax[i] ? row[i] : tmax[i];
        }
    }
}

/* One tile of rows over key block J (k, v, w->kbias), into its partial
 * softmax P = (m[tw], l[tw], acc[tw][Dp]). */
static void tile_step(const struct dec *d, struct wbuf *w, uint32_t t,
                      uint32_t rows, uint32_t J, int mask, const float *k,
                      const float *v, float *P)
{
    uint32_t tw = d->tw, Dp = d->Dp;
    const int64_t *pos = w->pos + (size_t)t * tw;
    float mx[TILE], alpha[TILE];
    if (tw == FEW) {
        d->kern->qk_rows(k, w->q + (size_t)t * tw * Dp, rows, Dp, d->scale,
                         w->kbias, w->s, mx);
        if (mask)
            cpu_causal_mask_rows(w->s, mx, pos, rows, J);
        d->kern->softmax_rows(w->s, mx, rows, P, P + tw, alpha);
        d->kern->pv_rows(w->s, v, rows, Dp, alpha, P + 2 * tw);
        return;
    }
    /* 32 lanes: the tile's rows, transposed by exact_attend() */
    d->kern->qk_tile(k, w->qt + (size_t)t * Dp * TILE, d->D, Dp, d->scale,
                     w->kbias, w->s, mx);
    if (mask)
        causal_mask_lanes(w->s, mx, pos, J);
    d->kern->softmax_tile(w->s, mx, P, P + tw, alpha);
    d->kern->pv_tile(w->s, v, Dp, alpha, P + 2 * tw);
}

/* Item (unit, chunk): every tile of the unit over the chunk's blocks,
 * each block read (and converted) once for all tiles. */
static void exact_attend(void *arg, size_t item, int worker)
{
    struct dec *d = arg;
    uint32_t u = (uint32_t)(item / d->nch), c = (uint32_t)(item % d->nch);
    struct wbuf w = worker_bufs(d, worker);
    uint32_t J0 = c * CPU_DECODE_CHUNK;
    uint32_t J1 =
        J0 + CPU_DECODE_CHUNK < d->nbk ? J0 + CPU_DECODE_CHUNK : d->nbk;
    uint32_t b = u / d->p->Hkv, Dp = d->Dp, ntile = d->ntile, tw = d->tw;
    int64_t minpos = INT64_MAX, maxpos = INT64_MIN;
    uint32_t *rows = w.rows;
    for (uint32_t t = 0; t < ntile; t++) {
        uint32_t hs[TILE], is[TILE];
        int64_t *pos = w.pos + (size_t)t * tw;
        rows[t] = tile_rows(d, u, t * tw, hs, is, pos);
        for (uint32_t r = rows[t]; r < tw; r++)
            pos[r] = INT64_MAX;
        float *P = partial(d, u, t, c);
        for (uint32_t r = 0; r < tw; r++)
            P[r] = -INFINITY, P[tw + r] = 0.0f;
        memset(P + 2 * tw, 0, (size_t)tw * Dp * sizeof(float));
        for (uint32_t r = 0; r < rows[t]; r++) {
            query_row(d, b, hs[r], is[r], w.q + ((size_t)t * tw + r) * Dp);
            minpos = pos[r] < minpos ? pos[r] : minpos;
            maxpos = pos[r] > maxpos ? pos[r] : maxpos;
        }
        if (tw == TILE) { /* the tile kernels take the rows transposed */
            const float *q = w.q + (size_t)t * tw * Dp;
            float *qt = w.qt + (size_t)t * Dp * TILE;
            for (uint32_t x = 0; x < d->D; x++)
                for (uint32_t i = 0; i < TILE; i++)
                    qt[(size_t)x * TILE + i] =
                        i < rows[t] ? q[(size_t)i * Dp + x] : 0.0f;
        }
    }
    if (maxpos == INT64_MIN || cancelled(d))
        return; /* no real query in the unit */
    for (uint32_t J = J0; J < J1; J++) {
        int64_t k0 = (int64_t)J * TILE;
        if (d->grid.causal && k0 > maxpos)
            break;
        const float *k, *v;
        if (block_rows(d, u, J, &w, &k, &v) == 0.0f)
            continue;
        int mask = d->grid.causal && k0 + TILE - 1 > minpos;
        for (uint32_t t = 0; t < ntile && rows[t]; t++)
            tile_step(d, &w, t, rows[t], J, mask, k, v, partial(d, u, t, c));
    }
}

/* Item (unit, tile): the chunks' partials merged in chunk order. */
static void exact_merge(void *arg, size_t item, int worker)
{
    struct dec *d = arg;
    uint32_t u = (uint32_t)(item / d->ntile),
             tile = (uint32_t)(item % d->ntile);
    uint32_t b = u / d->p->Hkv, kvh = u % d->p->Hkv, Dp = d->Dp;
    struct wbuf w = worker_bufs(d, worker);
    if (tile == 0) /* the masked queries of the unit's heads are 0 */
        for (uint32_t g = 0; g < d->G; g++)
            for (uint32_t i = 0; i < d->Nq; i++)
                if (!query_real(d, b, i))
                    write_out(d, b, kvh * d->G + g, i, NULL);
    uint32_t hs[TILE], is[TILE], tw = d->tw;
    int64_t pos[TILE];
    uint32_t rows = tile_rows(d, u, tile * tw, hs, is, pos);
    for (uint32_t r = 0; r < rows; r++) {
        float M = -INFINITY;
        for (uint32_t c = 0; c < d->nch; c++) {
            float mc = partial(d, u, tile, c)[r];
            M = mc > M ? mc : M;
        }
        float *out = w.acc;
        memset(out, 0, Dp * sizeof(float));
        float L = 0.0f;
        if (M != -INFINITY)
            for (uint32_t c = 0; c < d->nch; c++) {
                const float *P = partial(d, u, tile, c);
                if (P[tw + r] == 0.0f)
                    continue;
                float e = expf(P[r] - M);
                L += P[tw + r] * e;
                const float *a = P + 2 * tw + (size_t)r * Dp;
                for (uint32_t x = 0; x < d->D; x++)
                    out[x] += a[x] * e;
            }
        if (L == 0.0f) {
            write_out(d, b, hs[r], is[r], NULL);
            continue;
        }
        float inv = 1.0f / L;
        for (uint32_t x = 0; x < d->D; x++)
            out[x] *= inv;
        write_out(d, b, hs[r], is[r], out);
    }
}

/* ---- MRA -------------------------------------------------------------- */

/* Item (unit, chunk): counts and block means of the chunk's key blocks. */
static void mra_means(void *arg, size_t item, int worker)
{
    struct dec *d = arg;
    uint32_t u = (uint32_t)(item / d->nch), c = (uint32_t)(item % d->nch);
    struct wbuf w = worker_bufs(d, worker);
    uint32_t J0 = c * CPU_DECODE_CHUNK;
    uint32_t J1 =
        J0 + CPU_DECODE_CHUNK < d->nbk ? J0 + CPU_DECODE_CHUNK : d->nbk;
    _Alignas(64) float kmean[ATTN_MAX_HEAD_DIM];
    float *cnt = d->cnt + (size_t)u * d->nbk,
          *lnc = d->lnc + (size_t)u * d->nbk;
    float *khT = d->khT + (size_t)u * d->D * d->nbk;
    if (cancelled(d))
        return;
    for (uint32_t J = J0; J < J1; J++) {
        const float *k, *v;
        float n = block_rows(d, u, J, &w, &k, &v);
        cnt[J] = n;
        lnc[J] = n > 0.0f ? logf(n) : 0.0f;
        d->kern->block_mean(k, d->Dp, n, kmean);
        for (uint32_t x = 0; x < d->D; x++)
            khT[(size_t)x * d->nbk + J] = kmean[x];
        if (d->vh)
            d->kern->block_mean(v, d->Dp, n,
                                d->vh + ((size_t)u * d->nbk + J) * d->Dp);
    }
}

/* MRA's block arrays of unit u: counts and their logs, key means
 * transposed (stride *ld) and value means [nbk][Dp]: the store's, or those
 * mra_means() computed. */
struct means {
    const float *cnt, *lnc, *khT, *vh;
    size_t ld;
};

static struct means unit_means(const struct dec *d, uint32_t u)
{
    const struct attn_problem *p = d->p;
    if (p->kv) {
        const struct cpu_kv *s = p->kv->impl;
        uint32_t b = u / p->Hkv;
        return (struct means){
            cpu_kv_cnt(s, b), cpu_kv_lnc(s, b), cpu_kv_kmT(s, u),
            d->p->method == ATTN_MRA2 ? cpu_kv_vmean(s, u) : NULL, s->capJ};
    }
    size_t nbk = d->nbk;
    return (struct means){d->cnt + u * nbk, d->lnc + u * nbk,
                          d->khT + (size_t)u * d->D * nbk,
                          d->vh ? d->vh + u * nbk * d->Dp : NULL, nbk};
}

/* Item (query head): selection, fold and the selected blocks of one head.
 * Its queries fit one block row (Nq <= CPU_DECODE_MAX_Q = 32). */
static void mra_head(void *arg, size_t item, int worker)
{
    struct dec *d = arg;
    const struct attn_problem *p = d->p;
    uint32_t b = (uint32_t)(item / p->H), h = (uint32_t)(item % p->H);
    uint32_t u = b * p->Hkv + h / d->G, nbk = d->nbk, Dp = d->Dp, D = d->D;
    struct wbuf w = worker_bufs(d, worker);
    struct means mu = unit_means(d, u);
    const float *cnt = mu.cnt;
    if (cancelled(d))
        return;
    /* Q's block mean over the real queries, in query order */
    float cq = 0.0f;
    _Alignas(64) float qrow[ATTN_MAX_HEAD_DIM + CPU_DPAD];
    memset(w.qh, 0, Dp * sizeof(float));
    for (uint32_t i = 0; i < d->Nq; i++) {
        if (!query_real(d, b, i))
            continue;
        query_row(d, b, h, i, qrow);
        for (uint32_t x = 0; x < D; x++)
            w.qh[x] += qrow[x];
        cq += 1.0f;
    }
    if (cq != 0.0f)
        for (uint32_t x = 0; x < D; x++)
            w.qh[x] /= cq;
    /* low resolution, selection */
    float rmax[CPU_LR_ROWS];
    d->kern->lowres_rows(w.qh, Dp, 1, mu.khT, mu.ld, D, nbk, d->scale, w.L,
                         rmax);
    uint32_t vis, seen;
    attn_grid_row(&d->grid, 0, &vis, &seen);
    float r = w.L[0] != w.L[0] ? w.L[0] : rmax[0];
    if (seen < nbk) {
        r = 0.0f;
        if (seen > 0) {
            r = w.L[0];
            for (uint32_t J = 1; J < seen; J++)
                r = w.L[J] > r ? w.L[J] : r;
        }
    }
    d->kern->select_keys_row(w.L, r, cnt, cq, 0, d->shift, vis, nbk,
                             p->prior_first, p->prior_diagonal, w.key);
    attn_select_topk(w.key, nbk, (size_t)d->budget, w.sel, w.scratch);
    memset(w.sel + vis, 1, seen - vis);
    memset(w.sel + seen, 2, nbk - seen);
    /* the low-resolution terms (mra2), folded */
    float lm = -INFINITY, lsum = 0.0f;
    if (mu.vh)
        d->kern->lowres_fold_rows(w.L, mu.lnc, w.sel, cnt, mu.vh, nbk, Dp, 1,
                                  w.vlow, &lm, &lsum);
    int lany = lm != -INFINITY;
    /* the selected blocks, for the head's real queries, FEW at a time */
    float m[FEW], l[FEW], smax[FEW], alpha[FEW];
    for (uint32_t i0 = 0; i0 < d->Nq;) {
        uint32_t qi[FEW], rows = 0;
        int64_t pos[FEW], minpos = INT64_MAX, maxpos = INT64_MIN;
        for (; i0 < d->Nq && rows < FEW; i0++) {
            if (!query_real(d, b, i0)) {
                write_out(d, b, h, i0, NULL);
                continue;
            }
            qi[rows] = i0;
            pos[rows] = (int64_t)i0 + d->grid.off;
            query_row(d, b, h, i0, w.q + (size_t)rows * Dp);
            minpos = pos[rows] < minpos ? pos[rows] : minpos;
            maxpos = pos[rows] > maxpos ? pos[rows] : maxpos;
            rows++;
        }
        if (!rows)
            continue;
        for (uint32_t x = 0; x < rows; x++)
            m[x] = -INFINITY, l[x] = 0.0f;
        memset(w.acc, 0, (size_t)rows * Dp * sizeof(float));
        for (uint32_t J = 0; J < seen; J++) {
            if (w.sel[J] != 1 || cnt[J] == 0.0f)
                continue;
            int64_t k0 = (int64_t)J * TILE;
            if (d->grid.causal && k0 > maxpos)
                break;
            const float *k, *v;
            block_rows(d, u, J, &w, &k, &v);
            d->kern->qk_rows(k, w.q, rows, Dp, d->scale, w.kbias, w.s, smax);
            if (d->grid.causal && J >= vis && k0 + TILE - 1 > minpos)
                cpu_causal_mask_rows(w.s, smax, pos, rows, J);
            d->kern->softmax_rows(w.s, smax, rows, m, l, alpha);
            d->kern->pv_rows(w.s, v, rows, Dp, alpha, w.acc);
        }
        /* each row: its high-resolution softmax merged with the folded
         * low-resolution terms, as in the block-row path */
        for (uint32_t x = 0; x < rows; x++) {
            float *ar = w.acc + (size_t)x * Dp;
            if (l[x] == 0.0f && !lany) {
                write_out(d, b, h, qi[x], NULL);
                continue;
            }
            float a = 0.0f, bl = 0.0f;
            float mx = lany && lm > m[x] ? lm : m[x];
            if (l[x] != 0.0f)
                a = expf(m[x] - mx);
            if (lany)
                bl = expf(lm - mx);
            float inv = 1.0f / (l[x] * a + lsum * bl);
            float ca = a * inv, cb = bl * inv;
            for (uint32_t e = 0; e < D; e++)
                ar[e] = lany ? ar[e] * ca + w.vlow[e] * cb : ar[e] * ca;
            write_out(d, b, h, qi[x], ar);
        }
    }
}

/* ---- the run ------------------------------------------------------------- */

int cpu_decode_run(const struct attn_problem *p, struct cpu_pool *pool,
                   const struct cpu_kernels *kern, void *mem)
{
    struct dec d;
    dec_init(&d, p);
    d.kern = kern;
    carve(&d, mem, cpu_pool_threads(pool));
    if (p->method == ATTN_EXACT) {
        cpu_pool_run(pool, (size_t)d.U * d.nch, exact_attend, &d);
        cpu_pool_run(pool, (size_t)d.U * d.ntile, exact_merge, &d);
    } else {
        if (!p->kv) /* else the store keeps the means */
            cpu_pool_run(pool, (size_t)d.U * d.nch, mra_means, &d);
        cpu_pool_run(pool, (size_t)p->B * p->H, mra_head, &d);
    }
    return cancelled(&d) ? ATTN_ECANCELED : ATTN_OK;
}
