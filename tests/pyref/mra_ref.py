"""Float64 ground truth of MRA-2 attention, written straight from the spec
(attention/README.md), cross-attention and causal masking included.

Used by the integration tests (mractl, the daemon, the clients) to check
what the service answers.  Dense Nq x Nk per head: for test sizes only.

    out, blocks_selected, blocks_total = attention(q, k, v, mask=None,
        method="mra2", block_per_row=8, num_blocks=None, prior_first=0,
        prior_diagonal=0, scale=None, q_mask=None, causal=False,
        min_blocks_per_row=0, error_samples=0, target_error=0)

    With heads=True, attention() returns (out, blocks_selected,
    blocks_total, info): info["est_rel_err"] is the problem's estimated
    error (None when nothing was estimated) and info["heads"] a list, in
    (b, h) order, of dicts with the head's "budget", "blocks_selected",
    "blocks_total", "density", "est_rel_err" and the sums "err_num",
    "err_den" behind it (attention/README.md, "Accuracy controls").

q: [B, H, Nq, D]; k, v: [B, Hkv, Nk, D]; mask: [B, Nk] of 0/1 or None
(every key real); q_mask: [B, Nq] of 0/1 or None (then the key mask when
Nq == Nk, else every query real); causal: query i sees key j only when
j <= i + Nk - Nq (the queries are the last Nq positions).  The output is
[B, H, Nq, D].
"""
import math

import numpy as np

BLOCK = 32
# Accuracy controls (attention/README.md): the rows sampled per head when
# target_error is set without error_samples, the most error_samples may
# ask, and the margin of the budget search.
DEFAULT_SAMPLES = 32
MAX_SAMPLES = 256
TARGET_MARGIN = 0.7


def ladder(nbq, kmax):
    """The budgets target_error tries, smallest first: b * nbq for b = 1,
    2, 3, ... with b growing by max(1, floor(b/4)), capped at kmax; the
    last is kmax."""
    ks, b = [], 1
    while True:
        k = min(b * nbq, kmax)
        if not ks or k != ks[-1]:
            ks.append(k)
        if k >= kmax:
            return ks
        b += max(1, b // 4)


def spread(rows, weights, n):
    """Systematic sampling of m = min(n, u) of the u rows `rows`
    (ascending) with probabilities proportional to `weights`: sample t is
    the first row where the running sum of the weights reaches (2t+1)/2m
    of their total (a row may come more than once).  Returns the rows,
    their weights and the total."""
    u = len(rows)
    m = min(n, u)
    c = np.cumsum(np.asarray(weights, dtype=np.float64))
    W = float(c[-1]) if u else 0.0
    picked = []
    for t in range(m):
        j = int(np.searchsorted(c, (2 * t + 1) * W / (2 * m), side="left"))
        picked.append(min(j, u - 1))
    return [rows[j] for j in picked], [float(weights[j]) for j in picked], W


def _select(S, k, allowed):
    """The k pairs with the largest S among the `allowed` ones (a boolean
    matrix of S's shape), over the whole grid; ties go to the smaller flat
    index.  Returns a boolean matrix of S's shape."""
    flat = S.reshape(-1)
    idx = np.flatnonzero(allowed.reshape(-1))
    order = idx[np.lexsort((idx, -flat[idx]))]  # -S ascending, then index
    sel = np.zeros(flat.size, dtype=bool)
    sel[order[:k]] = True
    return sel.reshape(S.shape)


def grid(Nq, Nk, causal):
    """(visible, hidden) boolean nbq x nbk matrices of the padded block grid:
    a pair is visible when every key of block J is seen by every query of
    block I, hidden when none is, partial otherwise.  Without causality
    every pair is visible."""
    nbq, nbk = -(-Nq // BLOCK), -(-Nk // BLOCK)
    I = np.arange(nbq)[:, None]
    J = np.arange(nbk)[None, :]
    if not causal:
        return np.ones((nbq, nbk), bool), np.zeros((nbq, nbk), bool)
    off = Nk - Nq
    visible = BLOCK * (J + 1) - 1 <= BLOCK * I + off
    hidden = BLOCK * J > BLOCK * (I + 1) - 1 + off
    return visible, hidden


def _softmax_rows(lg, vals, rows_on):
    """sum_t softmax(lg[r])_t * vals[t] for each row r where rows_on[r] and
    lg[r] has a finite entry (-inf entries are not terms); other rows 0."""
    out = np.zeros((lg.shape[0], vals.shape[1]))
    finite = np.isfinite(lg)
    live = rows_on & finite.any(axis=1)
    if not live.any():
        return out
    x = lg[live]
    mx = np.where(np.isfinite(x), x, -np.inf).max(axis=1, keepdims=True)
    w = np.where(np.isfinite(x), np.exp(x - mx), 0.0)
    out[live] = (w / w.sum(axis=1, keepdims=True)) @ vals
    return out


def head(q, k, v, mk, mq, method, budget, prior_first, prior_diagonal, s,
         causal=False, min_blocks_per_row=0, error_samples=0, target_error=0,
         budget_set=True, info=None):
    """One query head.  q: [Nq, D], k, v: [Nk, D] float64; mk: [Nk] and mq:
    [Nq] of 0/1.  Returns (out [Nq, D], blocks_selected, blocks_total);
    fills the dict `info` (when given) with the head's statistics.
    `budget_set` says whether the caller named the budget (it caps
    target_error's search) or it is the default."""
    Nq, D = q.shape
    Nk = k.shape[0]
    nbq, nbk = -(-Nq // BLOCK), -(-Nk // BLOCK)
    off = Nk - Nq
    # 1. pad with masked tokens; masked tokens are zeroed
    mq = np.concatenate([np.asarray(mq, np.float64), np.zeros(nbq * BLOCK - Nq)])
    mk = np.concatenate([np.asarray(mk, np.float64), np.zeros(nbk * BLOCK - Nk)])
    q = np.concatenate([q, np.zeros((nbq * BLOCK - Nq, D))]) * mq[:, None]
    k = np.concatenate([k, np.zeros((nbk * BLOCK - Nk, D))]) * mk[:, None]
    v = np.concatenate([v, np.zeros((nbk * BLOCK - Nk, D))]) * mk[:, None]
    # which keys each (padded) query row may see: real keys, and under
    # causality those at positions j <= i + off
    seen = np.broadcast_to(mk[None, :] > 0, (nbq * BLOCK, nbk * BLOCK))
    if causal:
        pos = np.arange(nbq * BLOCK)[:, None] + off
        seen = seen & (np.arange(nbk * BLOCK)[None, :] <= pos)
    visible, hidden = grid(Nq, Nk, causal)
    partial = ~visible & ~hidden
    total = int((~hidden).sum())
    rows_on = mq > 0
    if info is None:
        info = {}

    def exact_rows(rows):
        rows = np.asarray(rows, dtype=np.int64)
        logits = np.where(seen[rows], s * q[rows] @ k.T, -np.inf)
        return _softmax_rows(logits, v, rows_on[rows])

    if method == "exact":
        out = exact_rows(np.arange(Nq))
        info.update(budget=int(visible.sum()), blocks_selected=total,
                    blocks_total=total, err_num=0.0, err_den=0.0,
                    est_rel_err=0.0 if error_samples or target_error else None)
        return out[:Nq], total, total

    # 2.-3. block means, low-resolution logits and row maxima
    cq = mq.reshape(nbq, BLOCK).sum(1)
    ck = mk.reshape(nbk, BLOCK).sum(1)

    def means(x, c, nb):
        tot = x.reshape(nb, BLOCK, D).sum(1)
        return np.where(c[:, None] > 0, tot / np.maximum(c, 1)[:, None], 0.0)

    qh, kh, vh = means(q, cq, nbq), means(k, ck, nbk), means(v, ck, nbk)
    L = s * qh @ kh.T
    # r_I over the pairs that are not hidden; 0 for a row of hidden pairs
    open_rows = (~hidden).any(axis=1)
    r = np.where(~hidden, L, -np.inf).max(axis=1, initial=-np.inf)
    r = np.where(open_rows, r, 0.0)
    # 4. scores and the selection: partial pairs always, then the budget
    # among the visible pairs
    I = np.arange(nbq)[:, None]
    J = np.arange(nbk)[None, :]
    S = L - r[:, None] - 1e4 * ((cq[:, None] * ck[None, :]) == 0)
    if prior_diagonal > 0:
        centre = I + off // BLOCK  # floor, also for negative offsets
        S = S + 5e3 * (np.abs(J - centre) <= prior_diagonal // 2)
    S = S + 5e3 * (I < prior_first) + 5e3 * (J < prior_first)
    nvis = int(visible.sum())
    # the row minimum: in each block row with real queries, the
    # min_blocks_per_row visible pairs with real keys of largest score
    # (ties to the smaller J), counted in the budget first
    real_pair = visible & (cq[:, None] > 0) & (ck[None, :] > 0)
    F = np.zeros_like(visible)
    if min_blocks_per_row > 0:
        for Ib in range(nbq):
            Js = np.flatnonzero(real_pair[Ib])
            Js = Js[np.lexsort((Js, -S[Ib, Js]))][:min_blocks_per_row]
            F[Ib, Js] = True
    nF = int(F.sum())

    def select(kk):
        return F | _select(S, max(kk - nF, 0), visible & ~F) | partial

    # 5. the terms of each block row
    def mra_rows(T, rows):
        """The method's output rows `rows` (ascending) under selection T."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), D))
        for Ib in np.unique(rows // BLOCK):
            pick = np.flatnonzero(rows // BLOCK == Ib)
            rr = rows[pick]
            logit_parts, value_parts = [], []
            for Jb in range(nbk):
                cols = slice(Jb * BLOCK, (Jb + 1) * BLOCK)
                if T[Ib, Jb]:
                    # high resolution: the keys this row sees
                    lg = np.where(seen[rr, cols], s * q[rr] @ k[cols].T,
                                  -np.inf)
                    logit_parts.append(lg)
                    value_parts.append(v[cols])
                elif (method == "mra2" and visible[Ib, Jb]
                      and cq[Ib] * ck[Jb] > 0):
                    # low resolution: only from visible pairs not in T
                    lg = np.full((len(rr), 1), L[Ib, Jb] + math.log(ck[Jb]))
                    logit_parts.append(lg)
                    value_parts.append(vh[Jb][None, :])
            if not logit_parts:
                continue
            lg = np.concatenate(logit_parts, axis=1)
            vals = np.concatenate(value_parts, axis=0)
            out[pick] = _softmax_rows(lg, vals, rows_on[rr])
        # a row that sees no key is 0 (it has no terms: a visible pair
        # would show it every key of its block)
        out[~seen[rows].any(axis=1)] = 0.0
        return out

    def sample_rows(T):
        """U, the real rows of block rows where a visible pair with real
        keys is left out of T, the rows sampled from it (each with a
        probability proportional to its block row's share of
        low-resolution mass that T leaves out, plus 5% of the mean), their
        weights and the weights' total."""
        loose = (real_pair & ~T).any(axis=1)
        U = [i for i in range(Nq) if rows_on[i] and loose[i // BLOCK]]
        share = np.zeros(nbq)
        for Ib in np.flatnonzero(loose):
            Js = np.flatnonzero(visible[Ib] & (ck > 0))
            a = L[Ib, Js] + np.log(ck[Js])
            e = np.exp(a - a.max())
            share[Ib] = e[~T[Ib, Js]].sum() / e.sum()
        p = [float(share[i // BLOCK]) for i in U]
        wsum = float(np.cumsum(p)[-1]) if U else 0.0
        floor = 0.05 * wsum / len(U) if U else 0.0
        rows, w, W = spread(U, [x + floor for x in p],
                            error_samples or DEFAULT_SAMPLES)
        return U, rows, w, W

    kmax = min(budget, nvis)
    kk = kmax
    U = Srows = None
    if target_error:
        if not budget_set:
            kmax = nvis
        cands = ladder(nbq, kmax)
        U, Srows, Sw, W = sample_rows(select(cands[0]))
        X = exact_rows(Srows)
        nr = int(rows_on[:Nq].sum())
        xden = nr * float((X ** 2).sum())
        kk = cands[-1]
        for c in cands:
            # m times the squared errors of U estimated from the samples
            e2 = ((mra_rows(select(c), Srows) - X) ** 2).sum(axis=1)
            est2 = float(sum(e * (W / w) for e, w in zip(e2, Sw)))
            if est2 <= (TARGET_MARGIN * target_error) ** 2 * xden:
                kk = c
                break
    T = select(kk)
    out = mra_rows(T, np.arange(Nq))
    selected = int((T & ~partial).sum()) + int(partial.sum())
    info.update(budget=max(kk, nF), blocks_selected=selected, blocks_total=total,
                err_num=0.0, err_den=0.0, est_rel_err=None)
    if error_samples or target_error:
        if U is None:
            U, Srows, Sw, W = sample_rows(T)
            X = exact_rows(Srows)
        # each sample stands for W / (m w) rows of U
        f = np.array([W / (len(Srows) * w) for w in Sw])
        inU = np.zeros(nbq * BLOCK, bool)
        inU[U] = True
        rest = rows_on.copy()
        rest[Nq:] = False
        rest &= ~inU
        num = float((f * ((out[Srows] - X) ** 2).sum(axis=1)).sum()) if Srows else 0.0
        den = float((out[rest[:Nq]] ** 2).sum())
        den += float((f * (X ** 2).sum(axis=1)).sum()) if Srows else 0.0
        info.update(err_num=num, err_den=den,
                    est_rel_err=math.sqrt(num / den) if den > 0 else 0.0)
    return out[:Nq], selected, total


def query_mask(mask, q_mask, B, Nq, Nk):
    """The query mask of the spec: q_mask, else the key mask when Nq == Nk,
    else all ones; [B, Nq] uint8."""
    if q_mask is not None:
        return np.asarray(q_mask, dtype=np.uint8).reshape(B, Nq)
    if Nq == Nk and mask is not None:
        return np.asarray(mask, dtype=np.uint8).reshape(B, Nq)
    return np.ones((B, Nq), dtype=np.uint8)


def attention(q, k, v, mask=None, method="mra2", block_per_row=None,
              num_blocks=None, prior_first=0, prior_diagonal=0, scale=None,
              q_mask=None, causal=False, min_blocks_per_row=0,
              error_samples=0, target_error=0, heads=False):
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    assert k.shape == (B, Hkv, Nk, D) and v.shape == k.shape
    assert H % Hkv == 0
    mq = query_mask(mask, q_mask, B, Nq, Nk)
    mk = (np.ones((B, Nk), dtype=np.uint8) if mask is None
          else np.asarray(mask, dtype=np.uint8).reshape(B, Nk))
    s = 1.0 / math.sqrt(D) if scale is None else float(scale)
    nbq = -(-Nq // BLOCK)
    budget_set = bool(num_blocks) or bool(block_per_row)
    bpr = block_per_row or 8
    budget = num_blocks if num_blocks else bpr * nbq
    out = np.zeros((B, H, Nq, D))
    selected = total = 0
    infos = []
    for b in range(B):
        for h in range(H):
            kv = h // (H // Hkv)
            info = {}
            out[b, h], sel, tot = head(q[b, h], k[b, kv], v[b, kv], mk[b],
                                       mq[b], method, budget, prior_first,
                                       prior_diagonal, s, bool(causal),
                                       min_blocks_per_row, error_samples,
                                       target_error, budget_set, info)
            info["density"] = sel / tot if tot else 0.0
            infos.append(info)
            selected += sel
            total += tot
    if not heads:
        return out, selected, total
    num = sum(i["err_num"] for i in infos)
    den = sum(i["err_den"] for i in infos)
    est = None
    if error_samples or target_error:
        est = math.sqrt(num / den) if den > 0 else 0.0
    return out, selected, total, {"est_rel_err": est, "heads": infos}


def rel_err(x, ref):
    """Relative Frobenius error of x against ref (absolute when ref is 0)."""
    x = np.asarray(x, dtype=np.float64)
    den = np.linalg.norm(ref)
    num = np.linalg.norm(x - ref)
    return num / den if den > 0 else num
