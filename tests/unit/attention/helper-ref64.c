/*
 * helper-ref64.c - the float64 reference of ref64.h.  Follows the spec's
 * steps literally: mask and pad (keys and queries apart), block means,
 * low-resolution logits, the causal classification of each pair, the
 * selection score, top-k by a full sort, then one softmax per query row
 * over its list of (logit, value) terms.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/attention/ref64.h"

#define RB ATTN_BLOCK

struct ref_rank {
    double s;
    size_t idx;
};

static int rank_cmp(const void *a, const void *b)
{
    const struct ref_rank *x = a, *y = b;
    if (x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* floor(a / b), b > 0 */
static long long floor_div(long long a, long long b)
{
    long long q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

enum pair_kind { VISIBLE, PARTIAL, HIDDEN };

/* The spec's classification of pair (I, J) on the padded grid. */
static enum pair_kind pair_kind(int causal, long long off, size_t I, size_t J)
{
    if (!causal)
        return VISIBLE;
    long long b = RB;
    if (b * ((long long)J + 1) - 1 <= b * (long long)I + off)
        return VISIBLE;
    if (b * (long long)J > b * ((long long)I + 1) - 1 + off)
        return HIDDEN;
    return PARTIAL;
}

/* The softmax of the nt terms (tl, tv) into out_row. */
static void softmax_terms(size_t nt, const double *tl, const double **tv,
                          size_t D, double *out_row)
{
    if (nt == 0)
        return;
    double mx = -INFINITY, den = 0;
    for (size_t t = 0; t < nt; t++)
        mx = tl[t] > mx ? tl[t] : mx;
    for (size_t t = 0; t < nt; t++)
        den += exp(tl[t] - mx);
    for (size_t t = 0; t < nt; t++) {
        double w = exp(tl[t] - mx) / den;
        for (size_t e = 0; e < D; e++)
            out_row[e] += w * tv[t][e];
    }
}

/* What one head needs beyond its inputs, to compute any of its rows under
 * any selection. */
struct ref_ctx {
    const struct attn_problem *p;
    size_t Nq, nbq, nbk, D;
    long long off;
    int causal;
    const double *q, *k, *v, *mq, *mk, *ck, *L, *vh;
    double s;
    double *tl;
    const double **tv;
};

/* Row i's output of the method under selection T (exact: every key). */
static void ref_row(const struct ref_ctx *c, const uint8_t *T, size_t i,
                    double *out_row)
{
    size_t D = c->D, I = i / RB, nt = 0;
    memset(out_row, 0, D * sizeof *out_row);
    if (c->mq[i] == 0)
        return;
    for (size_t J = 0; J < c->nbk; J++) {
        enum pair_kind kind = pair_kind(c->causal, c->off, I, J);
        if (kind == HIDDEN)
            continue;
        if (!T || T[I * c->nbk + J]) {
            for (size_t j = J * RB; j < (J + 1) * RB; j++) {
                if (c->mk[j] == 0 ||
                    (c->causal && (long long)j > (long long)i + c->off))
                    continue;
                double d = 0;
                for (size_t e = 0; e < D; e++)
                    d += c->q[i * D + e] * c->k[j * D + e];
                c->tl[nt] = c->s * d;
                c->tv[nt++] = c->v + j * D;
            }
        } else if (c->p->method == ATTN_MRA2 && kind == VISIBLE &&
                   c->ck[J] > 0) {
            c->tl[nt] = c->L[I * c->nbk + J] + log(c->ck[J]);
            c->tv[nt++] = c->vh + J * D;
        }
    }
    softmax_terms(nt, c->tl, c->tv, D, out_row);
}

/* The selection for budget kk: the row minimum F, then the kk - |F| best
 * other visible pairs of the sorted rk, then the partial pairs. */
static void ref_select(const struct ref_ctx *c, const struct ref_rank *rk,
                       size_t nrank, const uint8_t *F, size_t nF, size_t kk,
                       uint8_t *T)
{
    size_t n = c->nbq * c->nbk;
    for (size_t x = 0; x < n; x++)
        T[x] = F[x] ||
               pair_kind(c->causal, c->off, x / c->nbk, x % c->nbk) == PARTIAL;
    for (size_t t = 0, taken = 0; t < nrank && taken + nF < kk; t++)
        if (!F[rk[t].idx])
            T[rk[t].idx] = 1, taken++;
}

/* One head.  q: [Nqp, D], k, v: [Nkp, D], already masked and padded; mq:
 * [Nqp], mk: [Nkp]. */
static int ref_head(const struct attn_problem *p, size_t Nqp, size_t Nkp,
                    size_t D, const double *q, const double *k, const double *v,
                    const double *mq, const double *mk, double s, double *out,
                    struct attn_head_stats *hs)
{
    size_t Nq = p->Nq, nbq = Nqp / RB, nbk = Nkp / RB;
    long long off = (long long)p->Nk - (long long)p->Nq;
    int causal = p->causal != 0;
    int rc = -1;
    double *cq = calloc(nbq, sizeof *cq), *ck = calloc(nbk, sizeof *ck);
    double *qh = calloc(nbq * D, sizeof *qh), *kh = calloc(nbk * D, sizeof *kh);
    double *vh = calloc(nbk * D, sizeof *vh), *L = calloc(nbq * nbk, sizeof *L);
    struct ref_rank *rk = malloc(nbq * nbk * sizeof *rk);
    uint8_t *T = calloc(nbq * nbk, 1), *F = calloc(nbq * nbk, 1);
    /* per row terms: logits and value pointers */
    double *tl = malloc((Nkp + nbk) * sizeof *tl);
    const double **tv = malloc((Nkp + nbk) * sizeof *tv);
    size_t nsamp = ATTN_MAX_ERROR_SAMPLES;
    size_t *U = malloc((Nq + 1) * sizeof *U), S[ATTN_MAX_ERROR_SAMPLES];
    double *Uw = malloc((Nq + 1) * sizeof *Uw), Sw[ATTN_MAX_ERROR_SAMPLES];
    double Wtot = 0;
    double *X = malloc(nsamp * D * sizeof *X), *row = malloc(D * sizeof *row);
    if (!cq || !ck || !qh || !kh || !vh || !L || !rk || !T || !F || !tl ||
        !tv || !U || !Uw || !X || !row)
        goto out;
    struct ref_ctx c = {p, Nq, nbq, nbk, D, off, causal, q,  k,
                        v, mq, mk,  ck,  L, vh,  s,      tl, tv};

    uint64_t total = 0, nvis = 0, npart = 0;
    for (size_t I = 0; I < nbq; I++)
        for (size_t J = 0; J < nbk; J++) {
            enum pair_kind kind = pair_kind(causal, off, I, J);
            total += kind != HIDDEN;
            nvis += kind == VISIBLE;
            npart += kind == PARTIAL;
        }
    *hs = (struct attn_head_stats){.blocks_total = total, .est_rel_err = -1};
    int estimate = p->error_samples || p->target_error > 0;
    if (p->method == ATTN_EXACT) {
        for (size_t i = 0; i < Nq; i++)
            ref_row(&c, NULL, i, out + i * D);
        hs->budget = nvis;
        hs->blocks_selected = total;
        hs->density = total ? 1.0 : 0.0;
        if (estimate)
            hs->est_rel_err = 0;
        rc = 0;
        goto out;
    }

    for (size_t I = 0; I < nbq; I++) {
        for (size_t t = 0; t < RB; t++)
            cq[I] += mq[I * RB + t];
        for (size_t t = 0; t < RB; t++)
            for (size_t e = 0; e < D; e++)
                qh[I * D + e] += q[(I * RB + t) * D + e];
        for (size_t e = 0; e < D; e++)
            qh[I * D + e] = cq[I] > 0 ? qh[I * D + e] / cq[I] : 0;
    }
    for (size_t J = 0; J < nbk; J++) {
        for (size_t t = 0; t < RB; t++)
            ck[J] += mk[J * RB + t];
        for (size_t t = 0; t < RB; t++)
            for (size_t e = 0; e < D; e++) {
                kh[J * D + e] += k[(J * RB + t) * D + e];
                vh[J * D + e] += v[(J * RB + t) * D + e];
            }
        for (size_t e = 0; e < D; e++) {
            kh[J * D + e] = ck[J] > 0 ? kh[J * D + e] / ck[J] : 0;
            vh[J * D + e] = ck[J] > 0 ? vh[J * D + e] / ck[J] : 0;
        }
    }
    long long shift = floor_div(off, RB); /* the diagonal of the priors */
    size_t nrank = 0, nF = 0;
    for (size_t I = 0; I < nbq; I++) {
        double r = -INFINITY;
        int any = 0;
        for (size_t J = 0; J < nbk; J++) {
            double d = 0;
            for (size_t e = 0; e < D; e++)
                d += qh[I * D + e] * kh[J * D + e];
            L[I * nbk + J] = s * d;
            if (pair_kind(causal, off, I, J) != HIDDEN) {
                r = L[I * nbk + J] > r ? L[I * nbk + J] : r;
                any = 1;
            }
        }
        if (!any)
            r = 0;
        size_t row0 = nrank;
        for (size_t J = 0; J < nbk; J++) {
            if (pair_kind(causal, off, I, J) != VISIBLE)
                continue;
            double S = L[I * nbk + J] - r;
            if (cq[I] * ck[J] == 0)
                S -= 1e4;
            long long dist = (long long)J - (long long)I - shift;
            if (dist < 0)
                dist = -dist;
            if (p->prior_diagonal > 0 && dist <= p->prior_diagonal / 2)
                S += 5e3;
            if (I < p->prior_first)
                S += 5e3;
            if (J < p->prior_first)
                S += 5e3;
            rk[nrank].s = S;
            rk[nrank++].idx = I * nbk + J;
        }
        /* the row minimum: the best visible pairs with real keys */
        if (p->min_blocks_per_row && cq[I] > 0) {
            qsort(rk + row0, nrank - row0, sizeof *rk, rank_cmp);
            size_t got = 0;
            for (size_t t = row0; t < nrank && got < p->min_blocks_per_row; t++)
                if (ck[rk[t].idx % nbk] > 0)
                    F[rk[t].idx] = 1, got++;
            nF += got;
        }
    }
    qsort(rk, nrank, sizeof *rk, rank_cmp);
    int budget_set = p->num_blocks || p->block_per_row;
    uint64_t bpr = p->block_per_row ? p->block_per_row : 8;
    uint64_t kk = p->num_blocks ? p->num_blocks : bpr * nbq;
    if (p->target_error > 0 && !budget_set)
        kk = nvis;
    if (kk > nvis)
        kk = nvis;
    uint64_t kmax = kk;

    /* The rows the estimate samples: real rows of block rows where a
     * visible pair with real keys is left out, spread evenly. */
    size_t n = p->error_samples ? p->error_samples : 32, nu = 0, m = 0;
    uint64_t k0 = kk;
    if (p->target_error > 0)
        k0 = nbq < kmax ? nbq : kmax; /* the first step of the ladder */
    if (estimate) {
        ref_select(&c, rk, nrank, F, nF, k0, T);
        for (size_t i = 0; i < Nq; i++) {
            size_t I = i / RB;
            int loose = 0;
            for (size_t J = 0; J < nbk; J++)
                loose |= pair_kind(causal, off, I, J) == VISIBLE && cq[I] > 0 &&
                         ck[J] > 0 && !T[I * nbk + J];
            if (mq[i] > 0 && loose)
                U[nu++] = i;
        }
        /* each row drawn in proportion to its block row's share of
         * low-resolution mass left out, plus 5% of the mean; systematic
         * sampling over the running sum */
        m = n < nu ? n : nu;
        double wsum = 0;
        for (size_t x = 0; x < nu; x++) {
            size_t I = U[x] / RB;
            double mx = -INFINITY, all = 0, left = 0;
            for (size_t J = 0; J < nbk; J++)
                if (pair_kind(causal, off, I, J) == VISIBLE && ck[J] > 0 &&
                    L[I * nbk + J] + log(ck[J]) > mx)
                    mx = L[I * nbk + J] + log(ck[J]);
            for (size_t J = 0; J < nbk; J++) {
                if (pair_kind(causal, off, I, J) != VISIBLE || ck[J] == 0)
                    continue;
                double e = exp(L[I * nbk + J] + log(ck[J]) - mx);
                all += e;
                left += T[I * nbk + J] ? 0 : e;
            }
            Uw[x] = left / all;
            wsum += Uw[x];
        }
        double floor = nu ? 0.05 * wsum / (double)nu : 0, run = 0;
        Wtot = wsum + floor * (double)nu;
        for (size_t x = 0, t = 0; x < nu && t < m; x++) {
            run += Uw[x] + floor;
            while (t < m && run >= (2.0 * t + 1.0) * Wtot / (2.0 * m))
                S[t] = U[x], Sw[t++] = Uw[x] + floor;
            if (x == nu - 1)
                for (; t < m; t++)
                    S[t] = U[x], Sw[t] = Uw[x] + floor;
        }
        for (size_t t = 0; t < m; t++)
            ref_row(&c, NULL, S[t], X + t * D);
    }
    if (p->target_error > 0) {
        double nr = 0, xx = 0;
        for (size_t i = 0; i < Nq; i++)
            nr += mq[i] > 0;
        for (size_t t = 0; t < m * D; t++)
            xx += X[t] * X[t];
        double bound = (double)ATTN_TARGET_MARGIN * p->target_error;
        for (uint64_t b = 1;; b = attn_ladder_next(b)) {
            uint64_t kc = b * nbq < kmax ? b * nbq : kmax;
            ref_select(&c, rk, nrank, F, nF, kc, T);
            double ee = 0;
            for (size_t t = 0; t < m; t++) {
                double et = 0;
                ref_row(&c, T, S[t], row);
                for (size_t e = 0; e < D; e++)
                    et += (row[e] - X[t * D + e]) * (row[e] - X[t * D + e]);
                ee += et * (Wtot / Sw[t]);
            }
            kk = kc;
            if (ee <= bound * bound * nr * xx || kc >= kmax)
                break;
        }
    }
    ref_select(&c, rk, nrank, F, nF, kk, T);
    for (size_t i = 0; i < Nq; i++)
        ref_row(&c, T, i, out + i * D);
    hs->budget = kk > nF ? kk : nF;
    hs->blocks_selected = hs->budget + npart;
    hs->density = total ? (double)hs->blocks_selected / (double)total : 0.0;
    if (estimate) {
        double num = 0, den = 0;
        for (size_t t = 0; t < m; t++) {
            double w = Wtot / ((double)m * Sw[t]);
            for (size_t e = 0; e < D; e++) {
                double o = out[S[t] * D + e], x = X[t * D + e];
                num += w * (o - x) * (o - x);
                den += w * x * x;
            }
        }
        for (size_t i = 0, u = 0; i < Nq; i++) {
            if (u < nu && U[u] == i) {
                u++;
                continue;
            }
            for (size_t e = 0; e < D; e++)
                den += mq[i] > 0 ? out[i * D + e] * out[i * D + e] : 0;
        }
        hs->err_num = num;
        hs->err_den = den;
        hs->est_rel_err = den > 0 ? sqrt(num / den) : 0.0;
    }
    rc = 0;
out:
    free(cq), free(ck), free(qh), free(kh), free(vh), free(L), free(rk);
    free(T), free(F), free(tl), free(tv), free(U), free(Uw), free(X), free(row);
    return rc;
}

int ref64_attention(const struct attn_problem *p, const double *q,
                    const double *k, const double *v, double *out,
                    uint64_t *selected)
{
    struct attn_head_stats *hs = calloc((size_t)p->B * p->H, sizeof *hs);
    if (!hs)
        return -1;
    int rc = ref64_attention_heads(p, q, k, v, out, hs);
    uint64_t sel = 0;
    for (size_t h = 0; h < (size_t)p->B * p->H; h++)
        sel += hs[h].blocks_selected;
    if (selected && rc == 0)
        *selected = sel;
    free(hs);
    return rc;
}

int ref64_attention_heads(const struct attn_problem *p, const double *q,
                          const double *k, const double *v, double *out,
                          struct attn_head_stats *heads)
{
    size_t Nq = p->Nq, Nk = p->Nk, D = p->D;
    size_t Nqp = (Nq + RB - 1) / RB * RB, Nkp = (Nk + RB - 1) / RB * RB;
    double s = p->scale != 0.0f ? (double)p->scale : 1.0 / sqrt((double)D);
    double *hq = malloc(Nqp * D * sizeof *hq),
           *hk = malloc(Nkp * D * sizeof *hk);
    double *hv = malloc(Nkp * D * sizeof *hv);
    double *mq = malloc(Nqp * sizeof *mq), *mk = malloc(Nkp * sizeof *mk);
    /* The query mask: q_mask, else the key mask in self-attention. */
    const uint8_t *qmask = p->q_mask ? p->q_mask : Nq == Nk ? p->mask : NULL;
    int rc = -1;
    if (!hq || !hk || !hv || !mq || !mk)
        goto out;
    for (uint32_t b = 0; b < p->B; b++) {
        for (size_t t = 0; t < Nkp; t++)
            mk[t] = t < Nk && (!p->mask || p->mask[b * Nk + t]) ? 1.0 : 0.0;
        for (size_t t = 0; t < Nqp; t++)
            mq[t] = t < Nq && (!qmask || qmask[b * Nq + t]) ? 1.0 : 0.0;
        for (uint32_t h = 0; h < p->H; h++) {
            uint32_t kvh = h / (p->H / p->Hkv);
            const double *sq = q + ((size_t)b * p->H + h) * Nq * D;
            const double *sk = k + ((size_t)b * p->Hkv + kvh) * Nk * D;
            const double *sv = v + ((size_t)b * p->Hkv + kvh) * Nk * D;
            for (size_t t = 0; t < Nqp; t++)
                for (size_t e = 0; e < D; e++)
                    hq[t * D + e] = t < Nq ? mq[t] * sq[t * D + e] : 0;
            for (size_t t = 0; t < Nkp; t++)
                for (size_t e = 0; e < D; e++) {
                    int in = t < Nk;
                    hk[t * D + e] = in ? mk[t] * sk[t * D + e] : 0;
                    hv[t * D + e] = in ? mk[t] * sv[t * D + e] : 0;
                }
            if (ref_head(p, Nqp, Nkp, D, hq, hk, hv, mq, mk, s,
                         out + ((size_t)b * p->H + h) * Nq * D,
                         &heads[(size_t)b * p->H + h]) != 0)
                goto out;
        }
    }
    rc = 0;
out:
    free(hq), free(hk), free(hv), free(mq), free(mk);
    return rc;
}

uint64_t ref64_pairs_seen(const struct attn_problem *p)
{
    size_t nbq = (p->Nq + RB - 1) / RB, nbk = (p->Nk + RB - 1) / RB;
    long long off = (long long)p->Nk - (long long)p->Nq;
    uint64_t n = 0;
    for (size_t I = 0; I < nbq; I++)
        for (size_t J = 0; J < nbk; J++)
            n += pair_kind(p->causal != 0, off, I, J) != HIDDEN;
    return n;
}
