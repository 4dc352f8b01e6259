/*
 * helper-ref64.c - the float64 reference of ref64.h.  Follows the spec's
 * steps literally: mask and pad, block means, low-resolution logits, the
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

/* One head.  q, k, v: [Np, D] already masked and padded; m: [Np]. */
static int ref_head(const struct attn_problem *p, size_t Np, size_t D,
                    const double *q, const double *k, const double *v,
                    const double *m, double s, double *out, uint64_t *sel_out)
{
    size_t N = p->N, nb = Np / RB;
    int rc = -1;
    double *lg = malloc(Np * sizeof *lg);
    double *c = calloc(nb, sizeof *c);
    double *qh = calloc(nb * D, sizeof *qh), *kh = calloc(nb * D, sizeof *kh);
    double *vh = calloc(nb * D, sizeof *vh), *L = calloc(nb * nb, sizeof *L);
    struct ref_rank *rk = malloc(nb * nb * sizeof *rk);
    uint8_t *T = calloc(nb * nb, 1);
    /* per row terms: logits and value pointers */
    double *tl = malloc((Np + nb) * sizeof *tl);
    const double **tv = malloc((Np + nb) * sizeof *tv);
    if (!lg || !c || !qh || !kh || !vh || !L || !rk || !T || !tl || !tv)
        goto out;

    memset(out, 0, N * D * sizeof *out);
    if (p->method == ATTN_EXACT) {
        *sel_out += nb * nb;
        for (size_t i = 0; i < N; i++) {
            if (m[i] == 0)
                continue;
            size_t nt = 0;
            for (size_t j = 0; j < Np; j++) {
                if (m[j] == 0)
                    continue;
                double d = 0;
                for (size_t e = 0; e < D; e++)
                    d += q[i * D + e] * k[j * D + e];
                tl[nt] = s * d;
                tv[nt++] = v + j * D;
            }
            if (nt == 0)
                continue;
            double mx = -INFINITY, den = 0;
            for (size_t t = 0; t < nt; t++)
                mx = tl[t] > mx ? tl[t] : mx;
            for (size_t t = 0; t < nt; t++)
                den += exp(tl[t] - mx);
            for (size_t t = 0; t < nt; t++) {
                double w = exp(tl[t] - mx) / den;
                for (size_t e = 0; e < D; e++)
                    out[i * D + e] += w * tv[t][e];
            }
        }
        rc = 0;
        goto out;
    }

    for (size_t I = 0; I < nb; I++) {
        for (size_t t = 0; t < RB; t++)
            c[I] += m[I * RB + t];
        for (size_t t = 0; t < RB; t++)
            for (size_t e = 0; e < D; e++) {
                qh[I * D + e] += q[(I * RB + t) * D + e];
                kh[I * D + e] += k[(I * RB + t) * D + e];
                vh[I * D + e] += v[(I * RB + t) * D + e];
            }
        for (size_t e = 0; e < D; e++) {
            qh[I * D + e] = c[I] > 0 ? qh[I * D + e] / c[I] : 0;
            kh[I * D + e] = c[I] > 0 ? kh[I * D + e] / c[I] : 0;
            vh[I * D + e] = c[I] > 0 ? vh[I * D + e] / c[I] : 0;
        }
    }
    for (size_t I = 0; I < nb; I++) {
        double r = -INFINITY;
        for (size_t J = 0; J < nb; J++) {
            double d = 0;
            for (size_t e = 0; e < D; e++)
                d += qh[I * D + e] * kh[J * D + e];
            L[I * nb + J] = s * d;
            r = L[I * nb + J] > r ? L[I * nb + J] : r;
        }
        for (size_t J = 0; J < nb; J++) {
            double S = L[I * nb + J] - r;
            if (c[I] * c[J] == 0)
                S -= 1e4;
            size_t dist = I > J ? I - J : J - I;
            if (p->prior_diagonal > 0 && dist <= p->prior_diagonal / 2)
                S += 5e3;
            if (I < p->prior_first)
                S += 5e3;
            if (J < p->prior_first)
                S += 5e3;
            rk[I * nb + J].s = S;
            rk[I * nb + J].idx = I * nb + J;
        }
    }
    uint64_t bpr = p->block_per_row ? p->block_per_row : 8;
    uint64_t kk = p->num_blocks ? p->num_blocks : bpr * nb;
    if (kk > nb * nb)
        kk = nb * nb;
    qsort(rk, nb * nb, sizeof *rk, rank_cmp);
    for (size_t t = 0; t < kk; t++)
        T[rk[t].idx] = 1;
    *sel_out += kk;

    for (size_t i = 0; i < N; i++) {
        size_t I = i / RB, nt = 0;
        if (m[i] == 0)
            continue;
        for (size_t J = 0; J < nb; J++) {
            if (T[I * nb + J]) {
                for (size_t j = J * RB; j < (J + 1) * RB; j++) {
                    if (m[j] == 0)
                        continue;
                    double d = 0;
                    for (size_t e = 0; e < D; e++)
                        d += q[i * D + e] * k[j * D + e];
                    tl[nt] = s * d;
                    tv[nt++] = v + j * D;
                }
            } else if (p->method == ATTN_MRA2 && c[I] * c[J] > 0) {
                tl[nt] = L[I * nb + J] + log(c[J]);
                tv[nt++] = vh + J * D;
            }
        }
        if (nt == 0)
            continue;
        double mx = -INFINITY, den = 0;
        for (size_t t = 0; t < nt; t++)
            mx = tl[t] > mx ? tl[t] : mx;
        for (size_t t = 0; t < nt; t++)
            den += exp(tl[t] - mx);
        for (size_t t = 0; t < nt; t++) {
            double w = exp(tl[t] - mx) / den;
            for (size_t e = 0; e < D; e++)
                out[i * D + e] += w * tv[t][e];
        }
    }
    rc = 0;
out:
    free(lg), free(c), free(qh), free(kh), free(vh), free(L), free(rk);
    free(T), free(tl), free(tv);
    return rc;
}

int ref64_attention(const struct attn_problem *p, const double *q,
                    const double *k, const double *v, double *out,
                    uint64_t *selected)
{
    size_t N = p->N, D = p->D, nb = (N + RB - 1) / RB, Np = nb * RB;
    double s = p->scale != 0.0f ? (double)p->scale : 1.0 / sqrt((double)D);
    double *hq = malloc(Np * D * sizeof *hq), *hk = malloc(Np * D * sizeof *hk);
    double *hv = malloc(Np * D * sizeof *hv), *m = malloc(Np * sizeof *m);
    uint64_t sel = 0;
    int rc = -1;
    if (!hq || !hk || !hv || !m)
        goto out;
    for (uint32_t b = 0; b < p->B; b++) {
        for (size_t t = 0; t < Np; t++)
            m[t] = t < N && (!p->mask || p->mask[b * N + t]) ? 1.0 : 0.0;
        for (uint32_t h = 0; h < p->H; h++) {
            uint32_t kvh = h / (p->H / p->Hkv);
            const double *sq = q + ((size_t)b * p->H + h) * N * D;
            const double *sk = k + ((size_t)b * p->Hkv + kvh) * N * D;
            const double *sv = v + ((size_t)b * p->Hkv + kvh) * N * D;
            for (size_t t = 0; t < Np; t++)
                for (size_t e = 0; e < D; e++) {
                    int in = t < N;
                    hq[t * D + e] = in ? m[t] * sq[t * D + e] : 0;
                    hk[t * D + e] = in ? m[t] * sk[t * D + e] : 0;
                    hv[t * D + e] = in ? m[t] * sv[t * D + e] : 0;
                }
            if (ref_head(p, Np, D, hq, hk, hv, m, s,
                         out + ((size_t)b * p->H + h) * N * D, &sel) != 0)
                goto out;
        }
    }
    if (selected)
        *selected = sel;
    rc = 0;
out:
    free(hq), free(hk), free(hv), free(m);
    return rc;
}
