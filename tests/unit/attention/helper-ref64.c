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

/* One head.  q: [Nqp, D], k, v: [Nkp, D], already masked and padded; mq:
 * [Nqp], mk: [Nkp]. */
static int ref_head(const struct attn_problem *p, size_t Nqp, size_t Nkp,
                    size_t D, const double *q, const double *k, const double *v,
                    const double *mq, const double *mk, double s, double *out,
                    uint64_t *sel_out)
{
    size_t Nq = p->Nq, nbq = Nqp / RB, nbk = Nkp / RB;
    long long off = (long long)p->Nk - (long long)p->Nq;
    int causal = p->causal != 0;
    int rc = -1;
    double *cq = calloc(nbq, sizeof *cq), *ck = calloc(nbk, sizeof *ck);
    double *qh = calloc(nbq * D, sizeof *qh), *kh = calloc(nbk * D, sizeof *kh);
    double *vh = calloc(nbk * D, sizeof *vh), *L = calloc(nbq * nbk, sizeof *L);
    struct ref_rank *rk = malloc(nbq * nbk * sizeof *rk);
    uint8_t *T = calloc(nbq * nbk, 1);
    /* per row terms: logits and value pointers */
    double *tl = malloc((Nkp + nbk) * sizeof *tl);
    const double **tv = malloc((Nkp + nbk) * sizeof *tv);
    if (!cq || !ck || !qh || !kh || !vh || !L || !rk || !T || !tl || !tv)
        goto out;

    memset(out, 0, Nq * D * sizeof *out);
    if (p->method == ATTN_EXACT) {
        for (size_t I = 0; I < nbq; I++)
            for (size_t J = 0; J < nbk; J++)
                *sel_out += pair_kind(causal, off, I, J) != HIDDEN;
        for (size_t i = 0; i < Nq; i++) {
            if (mq[i] == 0)
                continue;
            size_t nt = 0;
            for (size_t j = 0; j < Nkp; j++) {
                if (mk[j] == 0 || (causal && (long long)j > (long long)i + off))
                    continue;
                double d = 0;
                for (size_t e = 0; e < D; e++)
                    d += q[i * D + e] * k[j * D + e];
                tl[nt] = s * d;
                tv[nt++] = v + j * D;
            }
            softmax_terms(nt, tl, tv, D, out + i * D);
        }
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
    size_t nvis = 0, nrank = 0;
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
        for (size_t J = 0; J < nbk; J++) {
            enum pair_kind kind = pair_kind(causal, off, I, J);
            if (kind == PARTIAL) {
                T[I * nbk + J] = 1; /* forced, outside the budget */
                (*sel_out)++;
            }
            if (kind != VISIBLE)
                continue;
            nvis++;
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
    }
    uint64_t bpr = p->block_per_row ? p->block_per_row : 8;
    uint64_t kk = p->num_blocks ? p->num_blocks : bpr * nbq;
    if (kk > nvis)
        kk = nvis;
    qsort(rk, nrank, sizeof *rk, rank_cmp);
    for (size_t t = 0; t < kk; t++)
        T[rk[t].idx] = 1;
    *sel_out += kk;

    for (size_t i = 0; i < Nq; i++) {
        size_t I = i / RB, nt = 0;
        if (mq[i] == 0)
            continue;
        for (size_t J = 0; J < nbk; J++) {
            enum pair_kind kind = pair_kind(causal, off, I, J);
            if (kind == HIDDEN)
                continue;
            if (T[I * nbk + J]) {
                for (size_t j = J * RB; j < (J + 1) * RB; j++) {
                    if (mk[j] == 0 ||
                        (causal && (long long)j > (long long)i + off))
                        continue;
                    double d = 0;
                    for (size_t e = 0; e < D; e++)
                        d += q[i * D + e] * k[j * D + e];
                    tl[nt] = s * d;
                    tv[nt++] = v + j * D;
                }
            } else if (p->method == ATTN_MRA2 && kind == VISIBLE &&
                       cq[I] * ck[J] > 0) {
                tl[nt] = L[I * nbk + J] + log(ck[J]);
                tv[nt++] = vh + J * D;
            }
        }
        softmax_terms(nt, tl, tv, D, out + i * D);
    }
    rc = 0;
out:
    free(cq), free(ck), free(qh), free(kh), free(vh), free(L), free(rk);
    free(T), free(tl), free(tv);
    return rc;
}

int ref64_attention(const struct attn_problem *p, const double *q,
                    const double *k, const double *v, double *out,
                    uint64_t *selected)
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
    uint64_t sel = 0;
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
                         out + ((size_t)b * p->H + h) * Nq * D, &sel) != 0)
                goto out;
        }
    }
    if (selected)
        *selected = sel;
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
