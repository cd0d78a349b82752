"""PowerInfer models (PWRI files) end to end: the sparse FFN against a numpy
reference of PowerInfer's semantics (tests/reference/numpy_sparse.py), the
threshold from the file and its overrides, and the dense switch.

Budgets: greedy tokens identical to the reference's; logits within 5e-3 of the
reference (relative to the largest, the F16 KV cache's error as in
test_engine.py). Sparse with every neuron active is bit-identical to the dense
run of the same file: both use the same kernels for every neuron.
"""
import math
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from pyinfer import Llama
from pyinfer.gguf_model import ModelLoadError
from reference.numpy_sparse import NumpyPowerInfer
from reference.tiny_model import write_tiny_llama
from tiny_chat_model import write_tiny_chat_model
from engine_util import greedy as _greedy, small_engine as _engine, rel_err as _rel_err

Q = gguf.GGMLQuantizationType
PROMPT = [3, 17, 5, 42, 8, 60, 7]




@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("pwri")
    return {arch: str(write_tiny_llama(d / f"{arch}.gguf", arch=arch, powerinfer=True, seed=3))
            for arch in ("llama", "bamboo")}


@pytest.mark.parametrize("arch", ["llama", "bamboo"])
@pytest.mark.parametrize("threshold", [None, -math.inf, 0.3, 1.0])
def test_greedy_text_matches_powerinfer_reference(models, arch, threshold):
    eng = _engine(models[arch], sparse_threshold=threshold)
    ref = NumpyPowerInfer(models[arch], eng.cfg, 0.0 if threshold is None else threshold)
    got, logits = _greedy(eng, PROMPT, 12)
    want = ref.greedy(PROMPT, 12)
    assert got == want
    full = ref.forward(PROMPT + want[:-1])
    np.testing.assert_array_less(_rel_err(logits, full[len(PROMPT) - 1:]), 5e-3)
    # the thresholds span dense to very sparse: the predictor really drops neurons
    frac = np.mean(ref.active_fraction)
    assert (frac == 1.0) if threshold == -math.inf else (frac < 0.8)
    eng.close()


def test_dense_switch_matches_reference(models):
    eng = _engine(models["bamboo"], dense=True)
    ref = NumpyPowerInfer(models["bamboo"], eng.cfg, 0.0, dense=True)
    got, _ = _greedy(eng, PROMPT, 10)
    assert got == ref.greedy(PROMPT, 10)
    assert "dense=True" in eng.ffn_mode
    eng.close()


@pytest.mark.parametrize("wtype", [Q.F16, Q.Q4_0, Q.Q8_0, Q.Q5_1, Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
def test_all_neurons_active_is_bit_identical_to_dense(tmp_path, wtype):
    n_ff = 256 if wtype in (Q.Q4_K, Q.Q6_K) else 128
    kw = dict(powerinfer=True, weight_type=wtype, n_embd=256 if n_ff == 256 else 64, n_ff=n_ff,
              pred_hidden=256 if n_ff == 256 else 64)
    path = write_tiny_llama(tmp_path / "m.gguf", **kw)
    logits = []
    for settings in (dict(sparse_threshold=-math.inf), dict(dense=True)):
        eng = _engine(path, **settings)
        prompt = eng.decode(PROMPT, logits_all=True)       # a batch
        step = eng.decode([11])                             # one token
        logits.append((prompt, step))
        eng.close()
    np.testing.assert_array_equal(logits[0][0], logits[1][0])
    np.testing.assert_array_equal(logits[0][1], logits[1][1])


def test_batch_and_single_tokens_agree(models):
    """A prompt run as one batch and token by token give the same logits within
    float rounding (the attention and dense products of a batch round
    differently)."""
    a = _engine(models["llama"], sparse_threshold=0.3)
    b = _engine(models["llama"], sparse_threshold=0.3)
    batch = a.decode(PROMPT, logits_all=True)
    single = np.stack([b.decode([t]) for t in PROMPT])
    assert _rel_err(batch, single) < 1e-4
    a.close()
    b.close()


def test_threshold_from_file_and_overrides(tmp_path):
    path = str(write_tiny_llama(tmp_path / "m.gguf", powerinfer=True, sparse_threshold=0.4))
    eng = _engine(path)
    assert "threshold 0.4" in eng.ffn_mode
    ref = NumpyPowerInfer(path, eng.cfg, 0.4)
    assert _greedy(eng, PROMPT, 6)[0] == ref.greedy(PROMPT, 6)
    eng.close()
    eng = _engine(path, sparse_threshold=0.1)
    assert "threshold 0.1" in eng.ffn_mode
    eng.close()
    eng = _engine(path, kv_overrides={"powerinfer.sparse_threshold": 0.2})
    assert "threshold 0.2" in eng.ffn_mode
    eng.close()


def test_llama_keywords(tmp_path, capsys):
    path = str(write_tiny_chat_model(tmp_path / "chat.gguf", powerinfer=True, seed=5))
    llm = Llama(path, n_ctx=64, n_threads=2, sparse_threshold=0.3, verbose=True)
    assert "sparse FFN relu(gate)*up" in capsys.readouterr().err
    ref = NumpyPowerInfer(path, llm._engine.cfg, 0.3)
    out = llm.generate(PROMPT, temp=0.0)
    assert [next(out) for _ in range(8)] == ref.greedy(PROMPT, 8)
    text = llm.create_completion("the", max_tokens=6, temperature=0.0)["choices"][0]["text"]
    assert text.encode("utf-8", "ignore")    # runs through the text API
    llm.close()
    dense = Llama(path, n_ctx=64, n_threads=2, dense=True, verbose=False)
    assert "dense=True" in dense._engine.ffn_mode
    dense.close()


def test_missing_predictor_needs_dense(tmp_path):
    path = write_tiny_llama(tmp_path / "m.gguf", powerinfer=True, predictor=False)
    with pytest.raises(ModelLoadError, match="no activation predictor.*dense=True"):
        _engine(path)
    _engine(path, dense=True).close()


def test_sparse_options_on_a_dense_model_warn(tmp_path):
    path = write_tiny_llama(tmp_path / "m.gguf")
    with pytest.warns(RuntimeWarning, match="only apply to PowerInfer models"):
        _engine(path, sparse_threshold=0.5).close()


def test_synthetic_model_plants_its_sparsity(tmp_path):
    """scripts/make_synthetic_sparse.py: the PowerInfer file runs at the planted
    sparsity (as the numpy reference's predictor decides) and its dense twin
    is a plain GGUF with the same weights."""
    out = tmp_path / "syn.powerinfer.gguf"
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_synthetic_sparse.py"
    subprocess.run([sys.executable, str(script), "--shape", "tiny", "--layers", "2", "--vocab", "tiny",
                    "--type", "q8_0", "--sparsity", "0.8", "--pred-hidden", "64", "--out", str(out)],
                   check=True, capture_output=True)
    dense = tmp_path / "syn.dense.gguf"
    assert out.read_bytes()[:4] == b"PWRI" and dense.read_bytes()[:4] == b"GGUF"
    eng = _engine(out)
    ref = NumpyPowerInfer(str(out), eng.cfg, 0.0)
    tokens = list(range(3, 40))
    ref.forward(tokens)
    assert abs(np.mean(ref.active_fraction) - 0.2) < 0.05
    # Q8_0 weights and activations; an activation rounding may flip a decision at the threshold
    np.testing.assert_array_less(_rel_err(eng.decode(tokens, logits_all=True), ref.forward(tokens)), 5e-2)
    eng.close()
    twin = _engine(dense)
    assert twin.ffn is None and twin.weights.layers[0].w_down is not None
    twin.close()
