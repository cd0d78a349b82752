"""The fused sparse FFN over neuron bundles (gs_sparse_ffn_bundle) and the
bundle layout of PowerInfer models (pyinfer/model/sparse.py NeuronBundles).

Every graph runs on a 1-thread and a 2-thread pool; the results must be
identical byte for byte. Budgets:
- against a float64 numpy oracle (weights dequantized by gguf.quants, the
  activations as quantized to the weights' vec_dot_type, masked relu-glu,
  then the down rows): each dot within 2e-6 * sum|w x| (the dot kernels'
  budget in test_simd.py; Q4_1/Q5_1: 2^-11, their Q8_1 activations keep
  each block's sum as F16, which the decoded activations do not show), carried through relu-glu (relu is 1-Lipschitz)
  and |down|, plus 2e-6 * sum|act w| for the float32 down sums;
- against the unfused ops (mul_mat_sparse, glu, axpy_sparse): the same
  gate/up values and activations, the down rows summed in 8 chunks instead
  of one ascending sum: within 4e-6 * sum|act w|, and bit-identical when a
  token has at most one active neuron (the same single addition);
- every neuron active equals no index, bit for bit;
- tiny PowerInfer models: the same greedy tokens with the bundle on and off
  at several thresholds, logits within 1e-4 (relative to the largest).
"""
import math

import numpy as np
import pytest

from pyinfer._lib import GSShapeError, GSTypeError
from pyinfer.tensor import Context, Unary, dequantize, quantize, quantize_activations, type_info
from reference.tiny_model import write_tiny_llama
from op_util import run
from test_sparse_ops import WEIGHT_TYPES, T, dequantized, index_array, random_active, row_len
from engine_util import greedy as _greedy, small_engine as _engine

DOT_EPS = 2e-6
DOT_EPS_Q8_1 = 2.0 ** -11   # Q4_1/Q5_1: the F16 block sums of Q8_1 activations


def as_quantized_activations(t, x):
    """x (n, E) as the kernels see it: quantized to t's vec_dot_type, decoded (float64)."""
    vt = type_info(t).vec_dot_type
    return np.stack([dequantize(quantize_activations(row, t), vt) for row in x]).astype(np.float64)


def bundle_tensor(ctx, t, gate, up, down_t):
    """The {3 E, M} bundle of type t from float rows (M, E) of gate, up and ffn_down_t."""
    m, e = gate.shape
    raw = np.concatenate([quantize(w, t) for w in (gate, up, down_t)], axis=1)
    tensor = ctx.new_tensor(t, (3 * e, m), "bundle")
    tensor.raw()[:] = raw.reshape(-1)
    return tensor


def problem(rng, t, m=300, n_tokens=1, density=0.3, e=256):
    e = row_len(t, e)
    gate, up, down_t = (rng.standard_normal((m, e)).astype(np.float32) / 4 for _ in range(3))
    x = rng.standard_normal((n_tokens, e)).astype(np.float32)
    active = random_active(rng, n_tokens, m, density)
    skip = (rng.random(m) < 0.1).astype(np.int32)
    return gate, up, down_t, x, active, skip


def fused(pools, t, gate, up, down_t, x, idx, skip, both_relu):
    def build(ctx):
        i = ctx.from_numpy(idx) if idx is not None else None
        s = ctx.from_numpy(skip) if skip is not None else None
        return ctx.sparse_ffn_bundle(bundle_tensor(ctx, t, gate, up, down_t), ctx.from_numpy(x), i, s,
                                     both_relu=both_relu)
    return run(pools, build)


def unfused(pools, t, gate, up, down_t, x, idx, skip, both_relu):
    def build(ctx):
        i = ctx.from_numpy(idx)
        s = ctx.from_numpy(skip) if skip is not None else None
        h = ctx.from_numpy(x)
        wg, wu, wd = (ctx.from_numpy(w, t=t) for w in (gate, up, down_t))
        act = ctx.glu(ctx.mul_mat_sparse(wg, h, i, s), ctx.mul_mat_sparse(wu, h, i, s), Unary.RELU,
                      gate_b=both_relu)
        return ctx.axpy_sparse(wd, act, i, s)
    return run(pools, build)


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 3])
@pytest.mark.parametrize("both_relu", [False, True], ids=["llama", "bamboo"])
def test_bundle_matches_masked_numpy(pools, rng, level, t, n_tokens, both_relu):
    check_against_numpy(pools, rng, level, t, n_tokens, both_relu)


def check_against_numpy(pools, rng, level, t, n_tokens, both_relu, e=256):
    gate, up, down_t, x, active, skip = problem(rng, t, n_tokens=n_tokens, e=e)
    got = fused(pools, t, gate, up, down_t, x, index_array(active), skip, both_relu)
    live = (active & (skip[None, :] == 0)).astype(np.float64)
    wg, wu, wd = (dequantized(t, w) for w in (gate, up, down_t))
    xq = as_quantized_activations(t, x)
    g, u = xq @ wg.T, xq @ wu.T
    ur = np.maximum(u, 0) if both_relu else u
    act = np.maximum(g, 0) * ur * live
    want = act @ wd
    eps = DOT_EPS_Q8_1 if t in (T.Q4_1, T.Q5_1) else DOT_EPS
    dg, du = eps * (np.abs(xq) @ np.abs(wg).T), eps * (np.abs(xq) @ np.abs(wu).T)
    dact = (dg * (np.abs(ur) + du) + np.abs(g) * du) * live
    bound = dact @ np.abs(wd) + DOT_EPS * (np.abs(act) @ np.abs(wd)) + 1e-30
    err = np.abs(got - want) / bound
    assert err.max() <= 1.0, f"{t.name} {level}: error {err.max():.2f} x the budget"
    # a wrong activation or row would be far outside: the budget is tight enough to fail
    assert np.abs(want).max() > 5 * bound.max()


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 4])
def test_bundle_equals_unfused_ops(pools, rng, level, t, n_tokens):
    gate, up, down_t, x, active, skip = problem(rng, t, n_tokens=n_tokens)
    idx = index_array(active)
    got = fused(pools, t, gate, up, down_t, x, idx, skip, False)
    want = unfused(pools, t, gate, up, down_t, x, idx, skip, False)
    live = (active & (skip[None, :] == 0)).astype(np.float64)
    wg, wu, wd = (dequantized(t, w) for w in (gate, up, down_t))
    x64 = x.astype(np.float64)
    act = np.abs(np.maximum(x64 @ wg.T, 0) * (x64 @ wu.T)) * live
    scale = act @ np.abs(wd) + 1e-30
    assert (np.abs(got - want) / scale).max() <= 4e-6


@pytest.mark.parametrize("e", [96, 800, 4096])
@pytest.mark.parametrize("both_relu", [False, True], ids=["llama", "bamboo"])
def test_bundle_q4_0_rows_of_any_block_count(pools, rng, level, e, both_relu):
    """Q4_0 has its own AVX-512 kernel (vec_avx512_bundle.c) that takes block scales 8 at a
    time: rows of 3, 25 and 128 blocks stay within the numpy budget at every level."""
    check_against_numpy(pools, rng, level, T.Q4_0, 3, both_relu, e)


@pytest.mark.parametrize("t", [T.F16, T.Q4_0, T.Q5_1, T.Q6_K], ids=lambda t: t.name)
def test_bundle_one_active_neuron_is_bit_identical_to_unfused(pools, rng, t):
    gate, up, down_t, x, _, _ = problem(rng, t, m=64, n_tokens=3)
    active = np.zeros((3, 64), dtype=bool)
    active[0, 5] = active[2, 63] = True                # token 1: none
    gate[5] *= np.sign(x[0] @ gate[5])                  # so that neuron's relu passes
    idx = index_array(active)
    got = fused(pools, t, gate, up, down_t, x, idx, None, False)
    np.testing.assert_array_equal(got, unfused(pools, t, gate, up, down_t, x, idx, None, False))
    assert np.all(got[1] == 0) and np.any(got[0] != 0)


@pytest.mark.parametrize("t", [T.F32, T.BF16, T.Q4_0, T.Q8_0, T.Q4_K], ids=lambda t: t.name)
def test_bundle_all_active_equals_no_index(pools, rng, t):
    gate, up, down_t, x, _, skip = problem(rng, t, m=150, n_tokens=3)
    everything = index_array(np.ones((3, 150), dtype=bool))
    for s in (None, skip):
        np.testing.assert_array_equal(fused(pools, t, gate, up, down_t, x, everything, s, True),
                                      fused(pools, t, gate, up, down_t, x, None, s, True))


def test_bundle_batch_equals_one_token_at_a_time(pools, rng):
    gate, up, down_t, x, active, skip = problem(rng, T.Q4_0, n_tokens=5)
    idx = index_array(active)
    batch = fused(pools, T.Q4_0, gate, up, down_t, x, idx, skip, False)
    for k in range(5):
        alone = fused(pools, T.Q4_0, gate, up, down_t, x[k:k + 1], idx[k:k + 1], skip, False)
        np.testing.assert_array_equal(batch[k], alone[0])


def test_bundle_shape_and_type_errors():
    with Context(8 << 20) as ctx:
        h = ctx.new_tensor(T.F32, (64, 2))
        with pytest.raises(GSShapeError, match="3 x n_embd"):
            ctx.sparse_ffn_bundle(ctx.new_tensor(T.Q4_0, (128, 40)), h)
        with pytest.raises(GSShapeError, match="index must be contiguous"):
            ctx.sparse_ffn_bundle(ctx.new_tensor(T.Q4_0, (192, 40)), h, ctx.new_tensor(T.I32, (40, 2)))
        with pytest.raises(GSTypeError, match="f32"):
            ctx.sparse_ffn_bundle(ctx.new_tensor(T.Q4_0, (192, 40)), ctx.new_tensor(T.F16, (64, 2)))
        with pytest.raises(GSShapeError, match="multiple"):
            ctx.sparse_ffn_bundle(ctx.new_tensor(T.Q4_0, (3 * 48, 40)), ctx.new_tensor(T.F32, (48, 1)))


# ---- PowerInfer models -------------------------------------------------------------------


@pytest.fixture(scope="module")
def q4_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    return {arch: str(write_tiny_llama(d / f"{arch}.gguf", arch=arch, powerinfer=True, seed=7, n_embd=64,
                                       n_ff=192, weight_type=T.Q4_0))
            for arch in ("llama", "bamboo")}


@pytest.mark.parametrize("arch", ["llama", "bamboo"])
@pytest.mark.parametrize("threshold", [-math.inf, 0.0, 0.3, 1.0])
def test_model_greedy_text_same_with_and_without_bundles(q4_models, arch, threshold):
    runs = []
    for on in (True, False):
        eng = _engine(q4_models[arch], sparse_threshold=threshold, neuron_bundle=on)
        assert ("neuron bundles" in eng.ffn_mode) == on
        runs.append(_greedy(eng, [3, 17, 5, 42, 8, 60, 7], 12))
        eng.close()
    (tok_on, logits_on), (tok_off, logits_off) = runs
    assert tok_on == tok_off
    assert np.abs(logits_on - logits_off).max() <= 1e-4 * np.abs(logits_off).max()


def test_model_dense_equals_all_active_with_bundles(q4_models):
    logits = []
    for settings in (dict(sparse_threshold=-math.inf), dict(dense=True)):
        eng = _engine(q4_models["llama"], **settings)
        assert "neuron bundles" in eng.ffn_mode
        logits.append((eng.decode([3, 17, 5, 42], logits_all=True), eng.decode([11])))
        eng.close()
    np.testing.assert_array_equal(logits[0][0], logits[1][0])
    np.testing.assert_array_equal(logits[0][1], logits[1][1])


def test_bundle_copies_the_weights_and_releases_nothing_it_reads(q4_models):
    """The bundle rows are the file's rows, and the file's mapping still reads
    back correctly after its pages were released."""
    eng = _engine(q4_models["llama"])
    w = eng.weights.layers[1]
    bundle = eng.ffn.keywords["bundles"][w].numpy().reshape(w.w_gate.ne[1], 3, -1)
    for k, t in enumerate((w.w_gate, w.w_up, w.w_down_t)):
        np.testing.assert_array_equal(bundle[:, k, :], t.numpy().reshape(bundle.shape[0], -1))
    eng.close()
