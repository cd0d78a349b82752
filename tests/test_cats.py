"""Training-free (CATS) sparsity: the magnitude index op, the CATS FFN on a tiny model
against a numpy reference, calibration, and a calibrated SmolLM2.

Budgets:
- gs_sparse_index_abs: exact (the ids numpy finds), at every SIMD level, 1 and 2
  threads byte-identical;
- tiny model: logits within 5e-3 of the numpy reference relative to the largest
  (the F16 KV cache's error, as in test_sparse_model.py), greedy tokens identical;
  with ffn_down_t stored as F32 the same budget;
- calibration: on the calibration tokens themselves, the fraction of |silu(gate)|
  below each layer's threshold is the target within 0.01 when a random sample of
  half the values picks the threshold (sampling error ~0.004);
- SmolLM2 calibrated at 0%: the logits equal the dense file's within 1e-5 of the
  largest (same kernels; silu and the product run as two ops instead of one).
"""
import math

import gguf
import numpy as np
import pytest

from pyinfer.config import ContextSettings
from pyinfer.engine import Engine
from pyinfer.gguf_model import ModelLoadError
from pyinfer.sparsity.calibrate import (CalibrationResult, collect_activations, thresholds_for,
                                        write_calibrated)
from pyinfer.tensor import GGMLType
from reference.numpy_llama import NumpyLlama
from reference.tiny_model import write_tiny_llama
from op_util import run
from test_sparse_ops import index_lists
from engine_util import greedy as _greedy, small_engine as _engine, rel_err as _rel_err

PROMPT = [3, 17, 5, 42, 8, 60, 7, 11, 90, 4]
CALIB = [int(t) for t in np.random.default_rng(0).integers(3, 96, 128)]


# ---- the index op --------------------------------------------------------------------
@pytest.mark.parametrize("n_tokens", [1, 3])
@pytest.mark.parametrize("threshold", [0.0, 0.3, math.inf])
def test_sparse_index_abs_matches_numpy(pools, rng, level, n_tokens, threshold):
    # every length up to two AVX-512 vectors and past it (tails), and n_ff sizes
    for m in list(range(1, 35)) + [63, 100, 1536, 1537]:
        act = rng.standard_normal((n_tokens, m)).astype(np.float32)
        act[0, 0] = np.nan                     # never active
        if m > 2:
            act[0, 1] = -0.3                    # |a| exactly at the threshold: active
            act[0, 2] = -0.0
        got = run(pools, lambda ctx: ctx.sparse_index_abs(ctx.from_numpy(act), threshold),
                  meaning=index_lists)
        assert got.shape == (n_tokens, m + 1)
        for t in range(n_tokens):
            want = np.flatnonzero(np.abs(act[t]) >= np.float32(threshold))
            assert got[t, 0] == want.size, (m, t)
            np.testing.assert_array_equal(got[t, 1:1 + want.size], want)


def test_sparse_index_abs_nan_threshold_is_an_error():
    from pyinfer._lib import GSValueError
    from pyinfer.tensor import Context
    with Context(1 << 20) as ctx:
        with pytest.raises(GSValueError, match="NaN"):
            ctx.sparse_index_abs(ctx.new_tensor(GGMLType.F32, (8, 1)), math.nan)


# ---- a tiny model against numpy --------------------------------------------------------
class NumpyCATS(NumpyLlama):
    """CATS semantics: a = silu(gate.h); neurons with |a| < threshold[layer] give 0."""

    def __init__(self, path, cfg, thresholds):
        super().__init__(path, cfg)
        self.thresholds = thresholds
        self.kept = []

    def ffn(self, i, x, h):
        p, w = f"blk.{i}.", self.w
        g = h @ w[p + "ffn_gate.weight"].T
        a = g / (1.0 + np.exp(-g))
        keep = np.abs(a) >= self.thresholds[i]
        self.kept.append(float(keep.mean()))
        return (a * keep * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T




@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("cats") / "tiny.gguf", seed=5))


@pytest.mark.parametrize("down_t", [None, GGMLType.F32])
@pytest.mark.parametrize("quantile", [0.0, 0.5, 0.8])
def test_cats_ffn_matches_numpy(tiny, tmp_path, down_t, quantile):
    eng = _engine(tiny)
    # calibrated on other tokens: thresholds equal to activations of the tested
    # tokens would make the float32 engine and the float64 reference disagree
    samples = collect_activations(eng, CALIB, 64, samples_per_run=0)
    eng.close()
    res = thresholds_for(samples, quantile)
    out = tmp_path / "cats.gguf"
    write_calibrated(tiny, str(out), res, down_t)
    eng = _engine(out)
    assert "CATS" in eng.ffn_mode
    ref = NumpyCATS(tiny, eng.cfg, res.thresholds)
    got, logits = _greedy(eng, PROMPT, 8)
    want_logits = []
    tokens = list(PROMPT)
    for tok in got:
        want_logits.append(ref.forward(tokens)[-1])
        tokens.append(tok)
    assert got == [int(np.argmax(row)) for row in want_logits]
    assert _rel_err(logits, np.stack(want_logits)) < 5e-3
    if quantile > 0:   # the reference really dropped neurons
        assert np.mean(ref.kept) < 1.0 - quantile / 2


def test_calibrated_file_runs_densely_with_dense_true(tiny, tmp_path):
    eng = _engine(tiny, n_batch=64)
    samples = collect_activations(eng, CALIB, 64, samples_per_run=0)
    eng.close()
    out = tmp_path / "cats.gguf"
    write_calibrated(tiny, str(out), thresholds_for(samples, 0.7))
    plain, dense, sparse = _engine(tiny), _engine(out, dense=True), _engine(out)
    assert "dense" in dense.ffn_mode
    a, b, c = plain.decode(PROMPT), dense.decode(PROMPT), sparse.decode(PROMPT)
    np.testing.assert_array_equal(a, b)
    assert _rel_err(c, a) > 1e-3     # 70% sparsity does change the output


def test_calibrated_q4_0_model_runs_with_repacked_weights(tmp_path):
    """Q4_0 matrices are repacked at load except ffn_up, which the CATS FFN reads by rows:
    the calibrated file loads and runs, sparse output close to the dense one."""
    path = str(write_tiny_llama(tmp_path / "q.gguf", weight_type=gguf.GGMLQuantizationType.Q4_0,
                                n_embd=64, n_ff=128, seed=3))
    eng = _engine(path, n_batch=64)
    samples = collect_activations(eng, CALIB, 64, samples_per_run=0)
    dense = eng.decode(PROMPT)
    eng.close()
    out = tmp_path / "cats.gguf"
    write_calibrated(path, str(out), thresholds_for(samples, 0.3))
    eng = _engine(out)
    layer = eng.weights.layers[0]
    assert layer.w_gate.is_repacked and layer.w_down.is_repacked and not layer.w_up.is_repacked
    sparse = eng.decode(PROMPT)
    assert "CATS" in eng.ffn_mode and 0 < _rel_err(sparse, dense) < 0.3
    eng.close()


def test_calibration_hits_the_target(tiny):
    eng = _engine(tiny, n_batch=64)
    samples = collect_activations(eng, CALIB * 2, 64, samples_per_run=4096)   # half of each run
    full = collect_activations(eng, CALIB * 2, 64, samples_per_run=0)
    eng.close()
    for target in (0.3, 0.5, 0.7):
        res = thresholds_for(samples, target)
        for layer, thr in zip(full, res.thresholds):
            assert abs(float(np.mean(layer < thr)) - target) < 0.01


def test_bad_threshold_keys_are_load_errors(tiny, tmp_path):
    out = tmp_path / "bad.gguf"
    write_calibrated(tiny, str(out), CalibrationResult(0.5, [0.1], [0.5], 10))   # 1 value, 2 layers
    with pytest.raises(ModelLoadError, match="2 layers"):
        _engine(out)


# ---- SmolLM2 ---------------------------------------------------------------------------
def test_smollm2_calibrated_at_zero_gives_dense_logits(smollm2, tmp_path):
    out = tmp_path / "smol0.gguf"
    write_calibrated(str(smollm2), str(out), CalibrationResult(0.0, [0.0] * 30, [0.0] * 30, 0))
    prompt = [1, 504, 3458, 282, 4371, 314, 253, 1345, 28, 357, 416]
    dense = Engine(str(smollm2), ContextSettings(n_ctx=64, n_threads=2))
    cats = Engine(str(out), ContextSettings(n_ctx=64, n_threads=2))
    assert "CATS" in cats.ffn_mode
    for eng in (dense, cats):
        eng.decode(prompt[:-2])
    a = np.stack([dense.decode([t]) for t in prompt[-2:]])
    b = np.stack([cats.decode([t]) for t in prompt[-2:]])
    assert _rel_err(b, a) < 1e-5
    dense.close()
    cats.close()
