"""Float64 ground truth of MRA-2 attention, written straight from the spec
(attention/README.md), cross-attention and causal masking included.

Used by the integration tests (mractl, the daemon, the clients) to check
what the service answers.  Dense Nq x Nk per head: for test sizes only.

    out, blocks_selected, blocks_total = attention(q, k, v, mask=None,
        method="mra2", block_per_row=8, num_blocks=None, prior_first=0,
        prior_diagonal=0, scale=None, q_mask=None, causal=False)

q: [B, H, Nq, D]; k, v: [B, Hkv, Nk, D]; mask: [B, Nk] of 0/1 or None
(every key real); q_mask: [B, Nq] of 0/1 or None (then the key mask when
Nq == Nk, else every query real); causal: query i sees key j only when
j <= i + Nk - Nq (the queries are the last Nq positions).  The output is
[B, H, Nq, D].
"""
import math

import numpy as np

BLOCK = 32


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
         causal=False):
    """One query head.  q: [Nq, D], k, v: [Nk, D] float64; mk: [Nk] and mq:
    [Nq] of 0/1.  Returns (out [Nq, D], blocks_selected, blocks_total)."""
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

    if method == "exact":
        logits = np.where(seen, s * q @ k.T, -np.inf)
        out = _softmax_rows(logits, v, rows_on)
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
    kk = min(budget, int(visible.sum()))
    T = _select(S, kk, visible) | partial

    # 5. the terms of each block row
    out = np.zeros((nbq * BLOCK, D))
    for Ib in range(nbq):
        rows = slice(Ib * BLOCK, (Ib + 1) * BLOCK)
        logit_parts, value_parts = [], []
        for Jb in range(nbk):
            cols = slice(Jb * BLOCK, (Jb + 1) * BLOCK)
            if T[Ib, Jb]:
                # high resolution: the keys this row sees
                lg = np.where(seen[rows, cols], s * q[rows] @ k[cols].T,
                              -np.inf)
                logit_parts.append(lg)
                value_parts.append(v[cols])
            elif (method == "mra2" and visible[Ib, Jb]
                  and cq[Ib] * ck[Jb] > 0):
                # low resolution: only from visible pairs not in T
                lg = np.full((BLOCK, 1), L[Ib, Jb] + math.log(ck[Jb]))
                logit_parts.append(lg)
                value_parts.append(vh[Jb][None, :])
        if not logit_parts:
            continue
        lg = np.concatenate(logit_parts, axis=1)
        vals = np.concatenate(value_parts, axis=0)
        out[rows] = _softmax_rows(lg, vals, rows_on[rows])
    # a row that sees no key is 0 (it has no terms: a visible pair would
    # show it every key of its block)
    out[~seen.any(axis=1)] = 0.0
    return out[:Nq], kk + int(partial.sum()), total


def query_mask(mask, q_mask, B, Nq, Nk):
    """The query mask of the spec: q_mask, else the key mask when Nq == Nk,
    else all ones; [B, Nq] uint8."""
    if q_mask is not None:
        return np.asarray(q_mask, dtype=np.uint8).reshape(B, Nq)
    if Nq == Nk and mask is not None:
        return np.asarray(mask, dtype=np.uint8).reshape(B, Nq)
    return np.ones((B, Nq), dtype=np.uint8)


def attention(q, k, v, mask=None, method="mra2", block_per_row=8,
              num_blocks=None, prior_first=0, prior_diagonal=0, scale=None,
              q_mask=None, causal=False):
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
    budget = num_blocks if num_blocks is not None else block_per_row * nbq
    out = np.zeros((B, H, Nq, D))
    selected = total = 0
    for b in range(B):
        for h in range(H):
            kv = h // (H // Hkv)
            out[b, h], sel, tot = head(q[b, h], k[b, kv], v[b, kv], mk[b],
                                       mq[b], method, budget, prior_first,
                                       prior_diagonal, s, bool(causal))
            selected += sel
            total += tot
    return out, selected, total


def rel_err(x, ref):
    """Relative Frobenius error of x against ref (absolute when ref is 0)."""
    x = np.asarray(x, dtype=np.float64)
    den = np.linalg.norm(ref)
    num = np.linalg.norm(x - ref)
    return num / den if den > 0 else num
