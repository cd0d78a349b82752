"""The neuron-sparse FFN ops (gs_sparse_index, gs_sparse_predict,
gs_mul_mat_sparse, gs_axpy_sparse) against numpy and against the dense ops.

Every graph runs on a 1-thread and a 2-thread pool; the results must be
identical byte for byte. Budgets:
- index: exact (the ids numpy finds);
- row-sparse product: entries of inactive or skipped neurons exactly 0; the
  others bit-equal to gs_mul_mat's where both use the same kernel (always
  for one token or an all-active index; for a batch, the 32-block types), else
  within 2e-6 * sum|w x| (the dot kernels' budget in test_simd.py);
- axpy: within 1e-6 * sum|act w| of a float64 oracle whose weights are
  dequantized by gguf.quants (float32 accumulation over a few hundred rows).
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

from pyinfer._lib import GSRuntimeError, GSShapeError, GSTypeError
from pyinfer.tensor import Context, GGMLType, Graph, quantize
from op_util import run

T = GGMLType
WEIGHT_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
K_TYPES = (T.Q4_K, T.Q5_K, T.Q6_K)
BLOCK32_TYPES = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)


def index_lists(idx):
    """The meaningful part of an index (count and ids of each token)."""
    return [col[:1 + col[0]].copy() for col in idx]


def row_len(t, n):
    return 256 * (n // 256 + 1) if t in K_TYPES else n


def weights(ctx, t, w):
    """A {K, M} tensor of type t from float rows w (M, K)."""
    tensor = ctx.new_tensor(t, w.shape[::-1], "w")
    tensor.raw()[:] = quantize(w, t).reshape(-1)
    return tensor


def dequantized(t, w):
    """What the stored weights of float rows w decode to, by gguf.quants (float64)."""
    raw = quantize(w, t)
    if t == T.F32:
        return raw.view(np.float32).astype(np.float64).reshape(w.shape)
    if t == T.F16:
        return raw.view(np.float16).astype(np.float64).reshape(w.shape)
    if t == T.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64).reshape(w.shape)
    return gq.dequantize(raw, QT(int(t))).astype(np.float64).reshape(w.shape)


def index_array(active):
    """active: bool (n_tokens, M) -> the index format, int32 (n_tokens, M + 1)."""
    n, m = active.shape
    out = np.full((n, m + 1), -7, dtype=np.int32)   # unspecified tail: junk
    for t in range(n):
        ids = np.flatnonzero(active[t])
        out[t, 0] = ids.size
        out[t, 1:1 + ids.size] = ids
    return out


def random_active(rng, n, m, density):
    return rng.random((n, m)) < density


# ---- index ------------------------------------------------------------------------
@pytest.mark.parametrize("n_tokens", [1, 3])
@pytest.mark.parametrize("threshold", [0.4, 0.0, -np.inf, np.inf])
def test_sparse_index_matches_numpy(pools, rng, n_tokens, threshold):
    m = 1000
    score = rng.standard_normal((n_tokens, m)).astype(np.float32)
    score[0, 5] = np.nan
    score[0, 7] = np.float32(0.4)              # exactly at the threshold: active
    got = run(pools, lambda ctx: ctx.sparse_index(ctx.from_numpy(score), threshold), meaning=index_lists)
    assert got.shape == (n_tokens, m + 1)
    for t in range(n_tokens):
        want = np.flatnonzero(score[t] >= threshold)
        assert got[t, 0] == want.size
        np.testing.assert_array_equal(got[t, 1:1 + want.size], want)


def test_sparse_predict_is_thresholded_relu_mlp(pools, rng):
    n_embd, hidden, m, n = 64, 96, 256, 4
    fc1 = rng.standard_normal((hidden, n_embd)).astype(np.float32) / 8
    fc2 = rng.standard_normal((m, hidden)).astype(np.float32) / 10
    x = rng.standard_normal((n, n_embd)).astype(np.float32)
    score = np.maximum(x.astype(np.float64) @ fc1.T.astype(np.float64), 0) @ fc2.T.astype(np.float64)
    threshold = 0.1
    assert np.abs(score - threshold).min() > 1e-4     # no decision within rounding of the threshold
    got = run(pools, lambda ctx: ctx.sparse_predict(ctx.from_numpy(fc1), ctx.from_numpy(fc2),
                                                    ctx.from_numpy(x), threshold), meaning=index_lists)
    assert got.shape == (n, m + 1)
    for t in range(n):
        want = np.flatnonzero(score[t] >= threshold)
        assert got[t, 0] == want.size
        np.testing.assert_array_equal(got[t, 1:1 + want.size], want)


# ---- row-sparse product -----------------------------------------------------------------
def sparse_and_dense(pools, t, w, x, idx, skip):
    def build(ctx):
        a = weights(ctx, t, w)
        b = ctx.from_numpy(x)
        i = ctx.from_numpy(idx) if idx is not None else None
        s = ctx.from_numpy(skip) if skip is not None else None
        return [ctx.mul_mat_sparse(a, b, i, s), ctx.mul_mat(a, b)]
    return run(pools, build)


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 5, 70])
def test_mul_mat_sparse_random_masks(pools, rng, level, t, n_tokens):
    k, m = row_len(t, 320), 300
    w = rng.standard_normal((m, k)).astype(np.float32)
    x = rng.standard_normal((n_tokens, k)).astype(np.float32)
    active = random_active(rng, n_tokens, m, 0.3)
    active[:, 100:140] = True                       # a run every token needs
    skip = (rng.random(m) < 0.1).astype(np.int32)
    got, dense = sparse_and_dense(pools, t, w, x, index_array(active), skip)
    live = active & (skip[None, :] == 0)
    assert np.all(got[~live] == 0)
    # batched dense products of float and K types follow llama.cpp's GEMM
    # order (matmul.c gs_cpu_gemm_order), the sparse op its per-row order
    if n_tokens == 1 or t in BLOCK32_TYPES:
        np.testing.assert_array_equal(got[live], dense[live])
    else:
        scale = np.abs(x.astype(np.float64)) @ np.abs(dequantized(t, w)).T
        assert (np.abs(got - dense)[live] / scale[live]).max() <= 2e-6


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("density", [0.1, 0.6], ids=["per-token", "dense+mask"])
def test_mul_mat_sparse_batch_equals_tokens_alone(pools, rng, level, t, density):
    """A batch keeping few neurons runs token by token, one keeping many (mean share >=
    0.25) runs every row through the dense tiles and zeroes the rest: either way each
    entry has the bits of the token computed alone."""
    k, m, n = row_len(t, 256), 200, 6
    w = rng.standard_normal((m, k)).astype(np.float32)
    x = rng.standard_normal((n, k)).astype(np.float32)
    idx = index_array(random_active(rng, n, m, density))
    skip = (rng.random(m) < 0.1).astype(np.int32)
    batch, _ = sparse_and_dense(pools, t, w, x, idx, skip)
    for i in range(n):
        alone, _ = sparse_and_dense(pools, t, w, x[i:i + 1], idx[i:i + 1], skip)
        np.testing.assert_array_equal(batch[i], alone[0])


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 6])
def test_mul_mat_sparse_all_active_equals_dense(pools, rng, t, n_tokens):
    k, m = row_len(t, 256), 150
    w = rng.standard_normal((m, k)).astype(np.float32)
    x = rng.standard_normal((n_tokens, k)).astype(np.float32)
    everything = index_array(np.ones((n_tokens, m), dtype=bool))
    for idx in (everything, None):
        got, dense = sparse_and_dense(pools, t, w, x, idx, None)
        np.testing.assert_array_equal(got, dense)


def test_mul_mat_sparse_no_index_honours_skip(pools, rng):
    k, m = 128, 90
    w = rng.standard_normal((m, k)).astype(np.float32)
    x = rng.standard_normal((3, k)).astype(np.float32)
    skip = np.zeros(m, dtype=np.int32)
    skip[[0, 1, 50, 89]] = 1
    got, dense = sparse_and_dense(pools, T.Q8_0, w, x, None, skip)
    np.testing.assert_array_equal(got, np.where(skip[None, :] != 0, 0, dense))


def test_mul_mat_sparse_empty_index(pools, rng):
    k, m = 64, 40
    w = rng.standard_normal((m, k)).astype(np.float32)
    x = rng.standard_normal((2, k)).astype(np.float32)
    got, _ = sparse_and_dense(pools, T.F16, w, x, index_array(np.zeros((2, m), dtype=bool)), None)
    assert np.all(got == 0)


# ---- axpy --------------------------------------------------------------------------------
def axpy(pools, t, w_t, act, idx, skip=None):
    def build(ctx):
        i = ctx.from_numpy(idx) if idx is not None else None
        s = ctx.from_numpy(skip) if skip is not None else None
        return ctx.axpy_sparse(weights(ctx, t, w_t), ctx.from_numpy(act), i, s)
    return run(pools, build)


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 4, 70])
def test_axpy_sparse_matches_masked_numpy(pools, rng, level, t, n_tokens):
    e, m = row_len(t, 320), 260
    w_t = rng.standard_normal((m, e)).astype(np.float32)     # ffn_down_t: one row per neuron
    act = rng.standard_normal((n_tokens, m)).astype(np.float32)
    active = random_active(rng, n_tokens, m, 0.25)
    skip = (rng.random(m) < 0.1).astype(np.int32)
    got = axpy(pools, t, w_t, act, index_array(active), skip)
    live = (active & (skip[None, :] == 0)).astype(np.float64)
    wd = dequantized(t, w_t)
    want = (act * live) @ wd
    scale = np.abs(act * live) @ np.abs(wd) + 1e-30
    err = np.abs(got - want) / scale
    assert err.max() <= 1e-6, f"{t.name} {level}: rel. error {err.max():.2e}"


@pytest.mark.parametrize("t", [T.F16, T.Q4_0, T.Q6_K], ids=lambda t: t.name)
def test_axpy_sparse_all_active_equals_no_index(pools, rng, t):
    e, m, n = row_len(t, 128), 100, 3
    w_t = rng.standard_normal((m, e)).astype(np.float32)
    act = rng.standard_normal((n, m)).astype(np.float32)
    everything = index_array(np.ones((n, m), dtype=bool))
    np.testing.assert_array_equal(axpy(pools, t, w_t, act, everything), axpy(pools, t, w_t, act, None))


def test_axpy_batch_equals_one_token_at_a_time(pools, rng):
    """Each token of a batch gets what it gets alone (same neurons, same order
    of additions)."""
    e, m, n = 256, 200, 5
    w_t = rng.standard_normal((m, e)).astype(np.float32)
    act = rng.standard_normal((n, m)).astype(np.float32)
    idx = index_array(random_active(rng, n, m, 0.2))
    batch = axpy(pools, T.Q4_0, w_t, act, idx)
    for t in range(n):
        alone = axpy(pools, T.Q4_0, w_t, act[t:t + 1], idx[t:t + 1])
        np.testing.assert_array_equal(batch[t], alone[0])


# ---- errors ------------------------------------------------------------------------------
BAD_COLUMNS = {
    "count too large": [41] + list(range(40)),
    "negative count": [-1] + [0] * 40,
    "not ascending": [3, 5, 4, 9] + [0] * 37,
    "repeated id": [2, 5, 5] + [0] * 38,
    "id out of range": [2, 5, 40] + [0] * 38,
    "negative id": [1, -3] + [0] * 39,
}


@pytest.mark.parametrize("why", list(BAD_COLUMNS))
@pytest.mark.parametrize("op", ["mul_mat_sparse", "axpy_sparse"])
@pytest.mark.parametrize("n_tokens", [1, 3])
def test_bad_index_is_a_runtime_error(pools, rng, why, op, n_tokens):
    m = 40
    idx = index_array(np.ones((n_tokens, m), dtype=bool))
    idx[n_tokens - 1] = BAD_COLUMNS[why]
    w = rng.standard_normal((m, 64)).astype(np.float32)
    for n_threads in (1, 2):
        with Context(8 << 20) as ctx:
            i = ctx.from_numpy(idx)
            if op == "mul_mat_sparse":
                out = ctx.mul_mat_sparse(weights(ctx, T.F32, w), ctx.from_numpy(
                    rng.standard_normal((n_tokens, 64)).astype(np.float32)), i)
            else:
                out = ctx.axpy_sparse(weights(ctx, T.F32, w), ctx.from_numpy(
                    rng.standard_normal((n_tokens, m)).astype(np.float32)), i)
            g = Graph(ctx).build(out).plan(n_threads)
            with pytest.raises(GSRuntimeError, match="not an active-neuron list"):
                g.compute(pools[n_threads])


def test_shape_and_type_errors():
    with Context(8 << 20) as ctx:
        w = ctx.new_tensor(T.Q4_0, (64, 40))
        x = ctx.new_tensor(T.F32, (64, 2))
        with pytest.raises(GSShapeError, match="index must be contiguous"):
            ctx.mul_mat_sparse(w, x, ctx.new_tensor(T.I32, (40, 2)))
        with pytest.raises(GSShapeError, match="index must be contiguous"):
            ctx.mul_mat_sparse(w, x, ctx.new_tensor(T.I32, (41, 1)))
        with pytest.raises(GSTypeError, match="expected i32"):
            ctx.mul_mat_sparse(w, x, ctx.new_tensor(T.F32, (41, 2)))
        with pytest.raises(GSShapeError, match="one value per neuron"):
            ctx.mul_mat_sparse(w, x, None, ctx.new_tensor(T.I32, (39,)))
        with pytest.raises(GSShapeError, match="n_ff"):
            ctx.axpy_sparse(w, ctx.new_tensor(T.F32, (39, 2)))
        with pytest.raises(GSTypeError, match="f32"):
            ctx.sparse_index(ctx.new_tensor(T.F16, (40, 2)), 0.0)
        with pytest.raises(GSShapeError, match="hidden size"):
            ctx.sparse_predict(ctx.new_tensor(T.F32, (64, 32)), ctx.new_tensor(T.F32, (64, 40)), x, 0.0)
