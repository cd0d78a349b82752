"""PowerInfer falcon and OPT files (FFN without a gate, model/sparse_plain.py) end to end.

The files: the architecture oracles' checkpoints (tests/data/arch: Falcon-7B and -40B
layouts, OPT) switched to ReLU (ReluFalcon's relu(up) FFN; OPT's is ReLU already) and
converted with random predictors to PWRI files, as tests/test_arch_oracle.py's
test_powerinfer_falcon_and_opt does. The oracle: tests/reference/numpy_sparse_plain.py,
a float64 numpy forward of each model with PowerInfer's sparse FFN.

Budgets: greedy tokens identical to the reference's; logits within 5e-3 of the reference
(relative to the largest; the engine's KV cache is F16). With every neuron active (threshold
-inf) the sparse graph is bit-identical to dense=True; results do not depend on the thread
count.
"""
import math

import numpy as np
import pytest

from engine_util import greedy as _greedy, rel_err as _rel_err, small_engine as _engine
from pyinfer.gguf_model import GGUFFile, ModelLoadError
from reference.numpy_sparse_plain import NumpySparsePlain
from reference.pwri_arch import oracle_tokens as _tokens, write_pwri

NAMES = ("falcon", "falcon40b", "opt")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pwri_arch"))
    return {name: write_pwri(name, d) for name in NAMES}


def test_files_are_powerinfer_layouts(models):
    for name, path in models.items():
        f = GGUFFile(path)
        assert f.is_powerinfer and f.metadata["pyinfer.ffn_activation"] == "relu"
        assert "blk.0.ffn_down_t.weight" in f.tensors and "blk.0.ffn_down.weight" not in f.tensors
        assert "blk.0.ffn_gate.weight" not in f.tensors
        assert ("blk.0.ffn_down_t.bias" in f.tensors) == (name == "opt")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("threshold", [None, -math.inf, 20.0])
def test_greedy_and_logits_match_the_sparse_reference(models, name, threshold):
    prompt = _tokens(name, 10)
    eng = _engine(models[name], sparse_threshold=threshold)
    assert "sparse FFN relu(up)" in eng.ffn_mode
    ref = NumpySparsePlain(models[name], eng.cfg, 0.0 if threshold is None else threshold)
    got, logits = _greedy(eng, prompt, 8)
    eng.close()
    want = ref.greedy(prompt, 8)
    assert got == want
    full = ref.forward(prompt + want[:-1])
    assert _rel_err(logits, full[len(prompt) - 1:]) < 5e-3
    # the thresholds span dense to sparse: the predictor really drops neurons
    frac = float(np.mean(ref.active_fraction))
    assert frac == 1.0 if threshold == -math.inf else 0.05 < frac < 0.8


@pytest.mark.parametrize("name", NAMES)
def test_dense_switch_matches_reference(models, name):
    prompt = _tokens(name, 12)
    eng = _engine(models[name], dense=True)
    assert "dense=True" in eng.ffn_mode
    ref = NumpySparsePlain(models[name], eng.cfg, 0.0, dense=True)
    assert _rel_err(eng.decode(prompt, logits_all=True), ref.forward(prompt)) < 5e-3
    eng.close()


def _run(path, prompt, **kw):
    eng = _engine(path, **kw)
    try:
        return eng.decode(prompt, logits_all=True), eng.decode([prompt[0]])   # a batch, then one token
    finally:
        eng.close()


@pytest.mark.parametrize("name", NAMES)
def test_all_neurons_active_is_bit_identical_to_dense(models, name):
    prompt = _tokens(name, 12)
    sparse = _run(models[name], prompt, sparse_threshold=-math.inf)
    dense = _run(models[name], prompt, dense=True)
    for a, b in zip(sparse, dense):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_one_and_two_threads_are_byte_identical(models, name):
    prompt = _tokens(name, 12)
    one = _run(models[name], prompt, n_threads=1, sparse_threshold=0.0)
    two = _run(models[name], prompt, n_threads=2, sparse_threshold=0.0)
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()


def test_batch_and_single_tokens_agree(models):
    prompt = _tokens("opt", 10)
    a, b = _engine(models["opt"]), _engine(models["opt"])
    batch = a.decode(prompt, logits_all=True)
    single = np.stack([b.decode([t]) for t in prompt])
    a.close()
    b.close()
    assert _rel_err(batch, single) < 1e-4


def test_missing_predictor_needs_dense(tmp_path):
    path = write_pwri("falcon", str(tmp_path), predictor=False)
    with pytest.raises(ModelLoadError, match="no activation predictor.*dense=True"):
        _engine(path)
    eng = _engine(path, dense=True)
    assert "dense ReLU FFN relu(up)" in eng.ffn_mode
    eng.close()
