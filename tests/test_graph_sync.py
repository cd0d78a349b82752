"""Barriers only where needed (graph.c plan_barriers): threads run
independent neighbouring nodes without waiting for each other, and meet
before a node that reads what another thread may still be writing, writes
what another may still be reading (including memory the planner reuses), or
shares scratch with a node still running.

Races are timing dependent, so each graph runs many times on 2 threads and
every run must equal a numpy oracle (and the 1-thread result bit for bit).
"""
import numpy as np
import pytest

from pyinfer._lib import GSRuntimeError
from pyinfer.tensor import Context, GGMLType, Graph, Unary, quantize

RUNS = 150


def q8_0(ctx, w):
    t = ctx.new_tensor(GGMLType.Q8_0, (w.shape[1], w.shape[0]))
    t.numpy()[...] = quantize(np.asarray(w, dtype=np.float32), GGMLType.Q8_0).reshape(t.numpy().shape)
    return t, np.asarray(w, dtype=np.float64)


def run_many(pools, ctx, out, runs=RUNS):
    g1 = Graph(ctx).build(out).plan(2)
    g1.compute(pools[1])
    want = out.numpy().copy()
    for _ in range(runs):
        g1.compute(pools[2])
        got = out.numpy()
        assert got.tobytes() == want.tobytes(), "2-thread run differs from the 1-thread run"
    return want


@pytest.mark.parametrize("n_tok", [1, 5])
def test_layer_shaped_graph(pools, n_tok):
    """Projections of two inputs (independent neighbours; with several tokens
    they share the scratch buffer, each quantizing its own input into it),
    element-wise nodes of one row
    split across threads, a chain whose buffers the planner reuses, and a
    K-cache write read by a later matmul."""
    rng = np.random.default_rng(n_tok)
    E, F = 256, 512
    with Context(32 << 20) as ctx:
        x_np = rng.standard_normal((n_tok, E)).astype(np.float32)
        x = ctx.from_numpy(x_np)
        x2_np = rng.standard_normal((n_tok, E)).astype(np.float32)
        x2 = ctx.from_numpy(x2_np)
        wq, wq_np = q8_0(ctx, rng.standard_normal((E, E)) * 0.1)
        wk, wk_np = q8_0(ctx, rng.standard_normal((E, E)) * 0.1)
        wv, wv_np = q8_0(ctx, rng.standard_normal((F, E)) * 0.1)
        wd, wd_np = q8_0(ctx, rng.standard_normal((E, F)) * 0.1)
        cache = ctx.new_tensor(GGMLType.F32, (E, 8))
        pos = ctx.from_numpy(np.arange(n_tok, dtype=np.int32))
        q = ctx.mul_mat(wq, x)
        k = ctx.mul_mat(wk, x2)
        v = ctx.mul_mat(wv, x)
        k_all = ctx.set_rows(cache, k, pos)
        kk = ctx.view(k_all, (E, n_tok), (4, k_all.nb[1]), 0)
        h = ctx.add(ctx.mul(q, kk), x)
        for _ in range(6):
            h = ctx.add(ctx.scale(h, 0.5), x)
        act = ctx.glu(v, v, Unary.RELU)
        out = ctx.add(h, ctx.mul_mat(wd, act))
        got = run_many(pools, ctx, out)
    # oracle in float64 (the matmuls see Q8_0 weights and Q8_0 activations)
    qn, kn, vn = x_np @ wq_np.T, x2_np @ wk_np.T, x_np @ wv_np.T
    hn = qn * kn + x_np
    for _ in range(6):
        hn = hn * 0.5 + x_np
    want = hn + (np.maximum(vn, 0) * vn) @ wd_np.T
    np.testing.assert_allclose(got, want, rtol=0, atol=0.05 * np.abs(want).max())


def test_error_in_one_node_with_independent_neighbours(pools):
    """A bad index fails one node while the other thread runs ahead through
    independent nodes: the compute returns the error (no deadlock), and runs
    again once the index is fixed."""
    with Context(4 << 20) as ctx:
        table = ctx.from_numpy(np.arange(40, dtype=np.float32).reshape(10, 4))
        idx_np = np.array([1, 12], dtype=np.int32)
        idx = ctx.from_numpy(idx_np)
        other = ctx.from_numpy(np.ones((2, 4), dtype=np.float32))
        a = ctx.scale(other, 2.0)
        rows = ctx.get_rows(table, idx)
        b = ctx.scale(other, 3.0)
        out = ctx.add(ctx.add(rows, a), b)
        g = Graph(ctx).build(out).plan(2)
        for _ in range(50):
            with pytest.raises(GSRuntimeError, match="get_rows"):
                g.compute(pools[2])
        idx.numpy()[1] = 3
        g.compute(pools[2])
        np.testing.assert_array_equal(out.numpy(), np.arange(40).reshape(10, 4)[[1, 3]] + 5.0)
