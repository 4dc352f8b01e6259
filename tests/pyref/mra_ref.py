"""Float64 ground truth of MRA-2 attention, written straight from the spec.

Used by the integration tests (mractl, the daemon, the clients) to check
what the service answers.  Dense N x N per head: for test sizes only.

    out, blocks_selected, blocks_total = attention(q, k, v, mask=None,
        method="mra2", block_per_row=8, num_blocks=None, prior_first=0,
        prior_diagonal=0, scale=None)

q: [B, H, N, D]; k, v: [B, Hkv, N, D]; mask: [B, N] of 0/1 or None.
"""
import math

import numpy as np

BLOCK = 32


def _select(S, k):
    """The k pairs with the largest S over the whole grid; ties go to the
    smaller flat index.  Returns a boolean nb x nb matrix."""
    flat = S.reshape(-1)
    idx = np.arange(flat.size)
    order = np.lexsort((idx, -flat))  # last key primary: -S ascending, then index
    sel = np.zeros(flat.size, dtype=bool)
    sel[order[:k]] = True
    return sel.reshape(S.shape)


def head(q, k, v, m, method, budget, prior_first, prior_diagonal, s):
    """One query head.  q, k, v: [N, D] float64; m: [N] 0/1."""
    N, D = q.shape
    nb = -(-N // BLOCK)
    P = nb * BLOCK - N
    m = np.concatenate([m.astype(np.float64), np.zeros(P)])
    pad = lambda x: np.concatenate([x, np.zeros((P, D))]) * m[:, None]
    q, k, v = pad(q), pad(k), pad(v)
    out = np.zeros((nb * BLOCK, D))

    if method == "exact":
        logits = s * q @ k.T
        valid = m[None, :] > 0
        logits = np.where(valid, logits, -np.inf)
        for i in range(N):
            if m[i] == 0 or not valid[0].any():
                continue
            row = logits[i]
            w = np.exp(row - row.max())
            out[i] = (w / w.sum()) @ v
        return out[:N], nb * nb

    c = m.reshape(nb, BLOCK).sum(1)
    def means(x):
        tot = x.reshape(nb, BLOCK, D).sum(1)
        return np.where(c[:, None] > 0, tot / np.maximum(c, 1)[:, None], 0.0)
    qh, kh, vh = means(q), means(k), means(v)
    L = s * qh @ kh.T
    r = L.max(axis=1)
    I = np.arange(nb)[:, None]
    J = np.arange(nb)[None, :]
    S = L - r[:, None] - 1e4 * ((c[:, None] * c[None, :]) == 0)
    if prior_diagonal > 0:
        S = S + 5e3 * (np.abs(I - J) <= prior_diagonal // 2)
    S = S + 5e3 * (I < prior_first) + 5e3 * (J < prior_first)
    kk = min(budget, nb * nb)
    T = _select(S, kk)

    for Ib in range(nb):
        rows = slice(Ib * BLOCK, (Ib + 1) * BLOCK)
        logit_parts, value_parts = [], []
        for Jb in range(nb):
            cols = slice(Jb * BLOCK, (Jb + 1) * BLOCK)
            if T[Ib, Jb]:
                lg = s * q[rows] @ k[cols].T
                lg = np.where(m[None, cols] > 0, lg, -np.inf)
                logit_parts.append(lg)
                value_parts.append(v[cols])
            elif method == "mra2" and c[Ib] * c[Jb] > 0:
                lg = np.full((BLOCK, 1), L[Ib, Jb] + math.log(c[Jb]))
                logit_parts.append(lg)
                value_parts.append(vh[Jb][None, :])
        if not logit_parts:
            continue
        lg = np.concatenate(logit_parts, axis=1)
        vals = np.concatenate(value_parts, axis=0)
        for t in range(BLOCK):
            i = Ib * BLOCK + t
            if i >= N or m[i] == 0:
                continue
            row = lg[t]
            if not np.isfinite(row).any():
                continue
            w = np.exp(row - row[np.isfinite(row)].max())
            out[i] = (w / w.sum()) @ vals
    return out[:N], kk


def attention(q, k, v, mask=None, method="mra2", block_per_row=8,
              num_blocks=None, prior_first=0, prior_diagonal=0, scale=None):
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    assert H % Hkv == 0
    if mask is None:
        mask = np.ones((B, N), dtype=np.uint8)
    s = 1.0 / math.sqrt(D) if scale is None else float(scale)
    nb = -(-N // BLOCK)
    budget = num_blocks if num_blocks is not None else block_per_row * nb
    out = np.zeros((B, H, N, D))
    selected = 0
    for b in range(B):
        for h in range(H):
            kv = h // (H // Hkv)
            out[b, h], sel = head(q[b, h], k[b, kv], v[b, kv], mask[b],
                                  method, budget, prior_first,
                                  prior_diagonal, s)
            selected += sel
    return out, selected, B * H * nb * nb


def rel_err(x, ref):
    """Relative Frobenius error of x against ref (absolute when ref is 0)."""
    x = np.asarray(x, dtype=np.float64)
    den = np.linalg.norm(ref)
    num = np.linalg.norm(x - ref)
    return num / den if den > 0 else num
