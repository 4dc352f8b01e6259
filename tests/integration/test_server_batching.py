"""Black-box tests of batching: concurrent requests share a batch within
the batching window (problems of different Nq, Nk and causality too), each
still gets the answer it would get alone, and the batch limits hold."""
import threading

import numpy as np

import mra_ref
from mrad_server import MradServer, metric_value

RNG = np.random.default_rng(7)


def concurrent(srv, problems, **params):
    """Posts every problem at once from its own thread; returns the
    (out, stats) pairs in order.  A problem is (q, k, v) or (q, k, v,
    its own params)."""
    results = [None] * len(problems)
    start = threading.Barrier(len(problems))

    def run(i):
        q, k, v, *own = problems[i]
        start.wait()
        results[i] = srv.attention(q, k, v, **dict(params, **(own[0] if own
                                                              else {})))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in results)
    return results


def problems(n, N=96, D=16, H=2):
    out = []
    for _ in range(n):
        q = RNG.standard_normal((1, H, N, D)).astype(np.float32)
        k = RNG.standard_normal((1, H, N, D)).astype(np.float32)
        v = RNG.standard_normal((1, H, N, D)).astype(np.float32)
        out.append((q, k, v))
    return out


def test_concurrent_requests_are_batched_and_answers_stay_exact():
    args = ["--batch-window-us", "300000", "--max-batch-requests", "8"]
    with MradServer(args, threads=2) as srv:
        probs = problems(5)
        results = concurrent(srv, probs, method="mra2", block_per_row=2)
        sizes = [st["batch_requests"] for _, st in results]
        assert max(sizes) > 1, sizes
        for (q, k, v), (out, st) in zip(probs, results):
            f = lambda a: a.astype(np.float64)
            ref, selected, _ = mra_ref.attention(f(q), f(k), f(v), method="mra2",
                                                 block_per_row=2)
            assert mra_ref.rel_err(out, ref) <= 1e-4
            assert st["blocks_selected"] == selected
        # Alone, each request gives bitwise the same answer.
        q, k, v = probs[0]
        alone, st = srv.attention(q, k, v, method="mra2", block_per_row=2)
        assert st["batch_requests"] == 1
        assert np.array_equal(alone, results[0][0])
        text = srv.metrics()
        count = metric_value(text, "mrad_batch_requests_count")
        singles = metric_value(text, "mrad_batch_requests_bucket", {"le": "1"})
        total = metric_value(text, "mrad_batch_requests_sum")
        assert singles < count and total == 6  # 5 batched requests + 1 alone


def test_batch_limits_hold():
    # At most 2 requests, and at most 200 tokens (B*max(Nq,Nk)), per batch.
    args = ["--batch-window-us", "300000", "--max-batch-requests", "2"]
    with MradServer(args, threads=2) as srv:
        results = concurrent(srv, problems(5, N=32))
        sizes = [st["batch_requests"] for _, st in results]
        assert max(sizes) == 2 and min(sizes) >= 1, sizes
    args = ["--batch-window-us", "300000", "--max-batch-tokens", "200"]
    with MradServer(args, threads=2) as srv:
        results = concurrent(srv, problems(4, N=96))
        sizes = [st["batch_requests"] for _, st in results]
        assert max(sizes) <= 2, sizes  # 96 tokens each: two fit in 200
        # A decode step weighs its keys: 1 query over 299 keys is 299.
        steps = [(q[:, :, :1], np.concatenate([k] * 3 + [k[:, :, :11]], 2),
                  np.concatenate([v] * 3 + [v[:, :, :11]], 2),
                  {"causal": True})
                 for q, k, v in problems(3, N=96)]
        results = concurrent(srv, steps)
        sizes = [st["batch_requests"] for _, st in results]
        assert max(sizes) == 1, sizes


def test_mixed_shapes_share_batches_and_answer_as_alone():
    """Problems of different Nq, Nk and causality sent at once share
    batches; each answer is bitwise the one it gets alone, and matches the
    float64 reference."""
    shapes = [(40, 100, True), (100, 40, True), (1, 300, True),
              (64, 64, False), (64, 64, True), (33, 70, False),
              (70, 33, True), (1, 1, True)]
    probs = []
    for nq, nk, causal in shapes:
        q = RNG.standard_normal((1, 2, nq, 16)).astype(np.float32)
        k = RNG.standard_normal((1, 1, nk, 16)).astype(np.float32)
        v = RNG.standard_normal((1, 1, nk, 16)).astype(np.float32)
        q_mask = (RNG.random((1, nq)) < 0.8).astype(np.uint8)
        probs.append((q, k, v, {"causal": causal, "q_mask": q_mask}))
    args = ["--batch-window-us", "300000", "--max-batch-requests", "8"]
    params = dict(method="mra2", block_per_row=1, prior_diagonal=3)
    with MradServer(args, threads=2) as srv:
        results = concurrent(srv, probs, **params)
        sizes = [st["batch_requests"] for _, st in results]
        assert max(sizes) > 1, sizes
        for (q, k, v, own), (out, st) in zip(probs, results):
            assert out.shape == q.shape
            f = lambda a: a.astype(np.float64)
            ref, selected, total = mra_ref.attention(f(q), f(k), f(v),
                                                     **params, **own)
            assert mra_ref.rel_err(out, ref) <= 1e-4
            assert (st["blocks_selected"], st["blocks_total"]) == \
                (selected, total)
        for (q, k, v, own), (out, _) in zip(probs, results):
            alone, st = srv.attention(q, k, v, **params, **own)
            assert st["batch_requests"] == 1
            assert np.array_equal(alone, out)
