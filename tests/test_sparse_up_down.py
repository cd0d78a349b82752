"""gs_sparse_ffn_up_down: a gated FFN's up and down projections for the active
neurons, the gate's activation given (the CATS FFN of model/sparse.py).

Every graph runs on a 1-thread and a 2-thread pool; the results must be the same
bytes. Budgets:
- against a float64 numpy oracle (weights dequantized, the activations as
  quantized to up's vec_dot_type, act * (up . h) masked, then the down rows):
  each up dot within eps * sum|w x| (the dot kernels' budget, as in
  test_sparse_bundle.py) times |act|, plus 2e-6 * sum|c w| for the float32
  down sums;
- against the three-op form (mul_mat_sparse, mul, axpy_sparse): the same dots,
  the down rows summed in 8 chunks instead of one ascending sum: within 4e-6 *
  sum|c w|, and bit-identical when a token has at most one active neuron;
- up and down_t of different types, and rows further apart than their size (views
  of one tensor of [up row | down_t row] records).
"""
import numpy as np
import pytest

from pyinfer._lib import GSShapeError, GSTypeError
from pyinfer.tensor import Context, Graph, ThreadPool, quantize
from op_util import run
from test_sparse_bundle import DOT_EPS, DOT_EPS_Q8_1, as_quantized_activations
from test_sparse_ops import WEIGHT_TYPES, T, dequantized, index_array, random_active, row_len


def problem(rng, t, td, m=300, n_tokens=1, density=0.3, e=256):
    e = row_len(td, row_len(t, e))
    up, down_t = (rng.standard_normal((m, e)).astype(np.float32) / 4 for _ in range(2))
    act = rng.standard_normal((n_tokens, m)).astype(np.float32)
    x = rng.standard_normal((n_tokens, e)).astype(np.float32)
    active = random_active(rng, n_tokens, m, density)
    skip = (rng.random(m) < 0.1).astype(np.int32)
    return up, down_t, act, x, active, skip


def fused(pools, t, td, up, down_t, act, x, idx, skip, records=False):
    """The op's output; with `records`, up and down_t are views into one buffer of
    interleaved [up row | down_t row] records."""
    def build(ctx):
        i = ctx.from_numpy(idx) if idx is not None else None
        s = ctx.from_numpy(skip) if skip is not None else None
        if records:
            wu, wd = interleaved(ctx, t, td, up, down_t)
        else:
            wu, wd = ctx.from_numpy(up, t=t), ctx.from_numpy(down_t, t=td)
        return ctx.sparse_ffn_up_down(wu, wd, ctx.from_numpy(act), ctx.from_numpy(x), i, s)
    return run(pools, build)


def interleaved(ctx, t, td, up, down_t):
    """Views of a {2 E, M} tensor of one type whose rows are [up row | down_t row]."""
    assert t == td
    m, e = up.shape
    base = ctx.new_tensor(t, (2 * e, m), "records")
    base.raw()[:] = quantize(np.concatenate([up, down_t], axis=1), t).reshape(-1)
    nb = base.nb
    return (ctx.view(base, (e, m), (nb[0], nb[1]), 0),
            ctx.view(base, (e, m), (nb[0], nb[1]), nb[1] // 2))


def three_ops(pools, t, td, up, down_t, act, x, idx, skip):
    def build(ctx):
        i = ctx.from_numpy(idx)
        s = ctx.from_numpy(skip) if skip is not None else None
        u = ctx.mul_mat_sparse(ctx.from_numpy(up, t=t), ctx.from_numpy(x), i, s)
        return ctx.axpy_sparse(ctx.from_numpy(down_t, t=td), ctx.mul(ctx.from_numpy(act), u), i, s)
    return run(pools, build)


def check_against_numpy(pools, rng, t, td, n_tokens, e=256, records=False):
    up, down_t, act, x, active, skip = problem(rng, t, td, n_tokens=n_tokens, e=e)
    got = fused(pools, t, td, up, down_t, act, x, index_array(active), skip, records)
    live = (active & (skip[None, :] == 0)).astype(np.float64)
    wu, wd = dequantized(t, up), dequantized(td, down_t)
    xq = as_quantized_activations(t, x)
    a = act.astype(np.float64)
    c = a * (xq @ wu.T) * live
    want = c @ wd
    eps = DOT_EPS_Q8_1 if t in (T.Q4_1, T.Q5_1) else DOT_EPS
    dc = np.abs(a) * eps * (np.abs(xq) @ np.abs(wu).T) * live
    bound = dc @ np.abs(wd) + DOT_EPS * (np.abs(c) @ np.abs(wd)) + 1e-30
    err = np.abs(got - want) / bound
    assert err.max() <= 1.0, f"{t.name}/{td.name}: error {err.max():.2f} x the budget"
    assert np.abs(want).max() > 5 * bound.max()    # a wrong row or activation would fail


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 3])
def test_up_down_matches_masked_numpy(pools, rng, level, t, n_tokens):
    check_against_numpy(pools, rng, t, t, n_tokens)


@pytest.mark.parametrize("t, td", [(T.Q4_1, T.Q8_0), (T.Q4_0, T.Q8_0), (T.Q4_K, T.F16), (T.F16, T.F32),
                                   (T.Q6_K, T.Q5_1)], ids=lambda t: t.name)
def test_up_down_mixed_types(pools, rng, level, t, td):
    check_against_numpy(pools, rng, t, td, 2)


@pytest.mark.parametrize("t", [T.Q4_1, T.Q8_0, T.F16], ids=lambda t: t.name)
def test_up_down_rows_further_apart_than_their_size(pools, rng, level, t):
    check_against_numpy(pools, rng, t, t, 2, records=True)


@pytest.mark.parametrize("e", [96, 800])
def test_up_down_rows_of_odd_block_counts(pools, rng, level, e):
    check_against_numpy(pools, rng, T.Q4_1, T.Q8_0, 2, e=e)


@pytest.mark.parametrize("t, td", [(T.Q4_1, T.Q8_0), (T.Q8_0, T.Q8_0), (T.Q5_K, T.Q5_K), (T.BF16, T.F16)],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 4])
def test_up_down_equals_three_ops(pools, rng, t, td, n_tokens):
    up, down_t, act, x, active, skip = problem(rng, t, td, n_tokens=n_tokens)
    idx = index_array(active)
    got = fused(pools, t, td, up, down_t, act, x, idx, skip)
    want = three_ops(pools, t, td, up, down_t, act, x, idx, skip)
    live = (active & (skip[None, :] == 0)).astype(np.float64)
    x64 = x.astype(np.float64)
    c = np.abs(act * (x64 @ dequantized(t, up).T)) * live
    scale = c @ np.abs(dequantized(td, down_t)) + 1e-30
    assert (np.abs(got - want) / scale).max() <= 4e-6


def test_up_down_one_active_neuron_is_bit_identical_to_three_ops(pools, rng):
    up, down_t, act, x, _, _ = problem(rng, T.Q4_1, T.Q8_0, m=64, n_tokens=3)
    active = np.zeros((3, 64), dtype=bool)
    active[0, 5] = active[2, 63] = True                 # token 1: none
    idx = index_array(active)
    got = fused(pools, T.Q4_1, T.Q8_0, up, down_t, act, x, idx, None)
    np.testing.assert_array_equal(got, three_ops(pools, T.Q4_1, T.Q8_0, up, down_t, act, x, idx, None))
    assert np.all(got[1] == 0) and np.any(got[0] != 0)


def test_up_down_all_active_equals_no_index_and_batch_equals_tokens(pools, rng):
    up, down_t, act, x, active, skip = problem(rng, T.Q4_0, T.Q8_0, m=150, n_tokens=5)
    everything = index_array(np.ones((5, 150), dtype=bool))
    for s in (None, skip):
        np.testing.assert_array_equal(fused(pools, T.Q4_0, T.Q8_0, up, down_t, act, x, everything, s),
                                      fused(pools, T.Q4_0, T.Q8_0, up, down_t, act, x, None, s))
    idx = index_array(active)
    batch = fused(pools, T.Q4_0, T.Q8_0, up, down_t, act, x, idx, skip)
    for k in range(5):
        alone = fused(pools, T.Q4_0, T.Q8_0, up, down_t, act[k:k + 1], x[k:k + 1], idx[k:k + 1], skip)
        np.testing.assert_array_equal(batch[k], alone[0])


def test_up_down_more_threads_than_chunks(pools, rng):
    """12 threads (more than the 8 chunks: some take none) give the bytes of one thread."""
    up, down_t, act, x, active, skip = problem(rng, T.Q4_1, T.Q8_0, n_tokens=3)
    idx = index_array(active)
    want = fused(pools, T.Q4_1, T.Q8_0, up, down_t, act, x, idx, skip)
    with ThreadPool(12) as pool, Context(64 << 20) as ctx:
        out = ctx.sparse_ffn_up_down(ctx.from_numpy(up, t=T.Q4_1), ctx.from_numpy(down_t, t=T.Q8_0),
                                     ctx.from_numpy(act), ctx.from_numpy(x), ctx.from_numpy(idx),
                                     ctx.from_numpy(skip))
        Graph(ctx).build(out).plan(12).compute(pool)
        np.testing.assert_array_equal(out.numpy(), want)


def test_up_down_shape_and_type_errors():
    with Context(8 << 20) as ctx:
        up, down = ctx.new_tensor(T.Q4_0, (64, 40)), ctx.new_tensor(T.Q8_0, (64, 40))
        h, act = ctx.new_tensor(T.F32, (64, 2)), ctx.new_tensor(T.F32, (40, 2))
        with pytest.raises(GSShapeError, match="up's shape"):
            ctx.sparse_ffn_up_down(up, ctx.new_tensor(T.Q8_0, (64, 41)), act, h)
        with pytest.raises(GSShapeError, match="n_ff, n_tokens"):
            ctx.sparse_ffn_up_down(up, down, ctx.new_tensor(T.F32, (40, 3)), h)
        with pytest.raises(GSShapeError, match="n_embd"):
            ctx.sparse_ffn_up_down(up, down, act, ctx.new_tensor(T.F32, (96, 2)))
        with pytest.raises(GSShapeError, match="index must be contiguous"):
            ctx.sparse_ffn_up_down(up, down, act, h, ctx.new_tensor(T.I32, (40, 2)))
        with pytest.raises(GSTypeError, match="f32"):
            ctx.sparse_ffn_up_down(up, down, ctx.new_tensor(T.F16, (40, 2)), h)
        with pytest.raises(GSTypeError, match="dot product"):
            ctx.sparse_ffn_up_down(ctx.new_tensor(T.I32, (64, 40)), down, act, h)
        for bad in (T.I32, T.Q8_K, T.Q8_1):
            with pytest.raises(GSTypeError, match="float or weight type"):
                ctx.sparse_ffn_up_down(up, ctx.new_tensor(bad, (256 if bad != T.I32 else 64, 40)), act, h)
        with pytest.raises(GSShapeError, match="2-D"):
            ctx.sparse_ffn_up_down(ctx.new_tensor(T.Q4_0, (64, 40, 2)), down, act, h)
        with pytest.raises(GSShapeError, match="2-D"):     # rows closer than a row's bytes
            base = ctx.new_tensor(T.Q8_0, (64, 40))
            ctx.sparse_ffn_up_down(up, ctx.view(base, (64, 20), (base.nb[0], base.nb[1] // 2)), act, h)
        with pytest.raises(GSShapeError, match="one value per neuron"):
            ctx.sparse_ffn_up_down(up, down, act, h, None, ctx.new_tensor(T.I32, (39,)))
        with pytest.raises(GSTypeError, match="i32"):
            ctx.sparse_ffn_up_down(up, down, act, h, None, ctx.new_tensor(T.F32, (40,)))
