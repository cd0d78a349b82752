"""The dense engine against a numpy reference forward, on tiny random models."""
import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from pyinfer.config import ContextSettings, ModelConfig
from pyinfer.engine import Engine
from pyinfer.gguf_model import GGUFFile, ModelLoadError
from reference.numpy_llama import NumpyLlama
from reference.tiny_model import write_tiny_llama
from engine_util import rel_err as _rel_err, small_engine as _engine

Q = gguf.GGMLQuantizationType


LLAMA31_FACTORS = np.concatenate([np.ones(3), np.linspace(1.0, 8.0, 3), np.full(2, 8.0)])


@pytest.mark.parametrize("arch,tied,ff", [("llama", False, None), ("llama", True, None),
                                          ("qwen2", False, None), ("llama", False, LLAMA31_FACTORS)],
                         ids=["llama", "llama-tied", "qwen2", "llama31-rope-freqs"])
def test_logits_match_numpy_reference_f32(tmp_path, arch, tied, ff):
    path = write_tiny_llama(tmp_path / "m.gguf", arch=arch, tied=tied, rope_freqs=ff, rope_base=50.0)
    eng = _engine(path)
    ref = NumpyLlama(str(path), eng.cfg)
    tokens = [3, 17, 5, 42, 8, 60, 7, 1, 33, 2, 90, 11, 4, 4, 19, 27, 81, 9, 12, 50]
    want = ref.forward(tokens)
    # prompt in chunks of n_batch=16 (GEMM path), then single-token decode (GEMV path)
    got = eng.decode(tokens[:18], logits_all=True)
    for t in tokens[18:]:
        got = np.vstack([got, eng.decode([t])[None]])
    # F16 KV cache and Q8 activations for F32 weights are not used: F32 weights
    # take F32 activations, so the error is the F16 cache's (~1e-3)
    assert _rel_err(got, want) < 5e-3
    eng.close()


@pytest.mark.parametrize("wtype,budget", [(Q.F16, 5e-3), (Q.Q8_0, 2e-2), (Q.Q4_0, 5e-2), (Q.Q4_1, 5e-2)])
def test_quantized_weights_match_reference(tmp_path, wtype, budget):
    path = write_tiny_llama(tmp_path / "m.gguf", weight_type=wtype, n_embd=64, n_ff=128)
    eng = _engine(path)
    ref = NumpyLlama(str(path), eng.cfg)
    tokens = list(range(3, 15))
    want = ref.forward(tokens)[-1]
    got = eng.decode(tokens)
    # quantized activations add error; the argmax must agree on a random model
    assert _rel_err(got, want) < budget
    eng.close()


def test_kv_reuse_after_truncate(tmp_path):
    path = write_tiny_llama(tmp_path / "m.gguf")
    eng = _engine(path)
    a = eng.decode([5, 6, 7, 8, 9])
    eng.truncate(3)
    b = eng.decode([8, 9])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    eng.close()


def test_context_overflow_raises(tmp_path):
    path = write_tiny_llama(tmp_path / "m.gguf")
    eng = _engine(path, n_ctx=8)
    eng.decode([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"Requested tokens \(9\) exceed context window of 8"):
        eng.decode([1, 2, 3, 4])
    assert eng.n_past == 5  # nothing lost
    eng.close()


def test_missing_file_and_garbage_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        GGUFFile(str(tmp_path / "nope.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 100)
    with pytest.raises(ModelLoadError):
        GGUFFile(str(bad))
    bad.write_bytes(b"NOPE" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        GGUFFile(str(bad))


def test_missing_tensor_is_named(tmp_path):
    path = write_tiny_llama(tmp_path / "m.gguf")
    f = GGUFFile(str(path))
    with pytest.raises(ModelLoadError, match="blk.9.attn_q.weight"):
        f.require("blk.9.attn_q.weight")
    with pytest.raises(ModelLoadError, match="expected"):
        f.require("blk.0.attn_q.weight", (1, 2))


def test_config_from_smollm2(smollm2):
    cfg = ModelConfig.from_metadata(GGUFFile(str(smollm2)).metadata)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_ff, cfg.n_head, cfg.n_head_kv) == (30, 576, 1536, 9, 3)
    assert cfg.rope_freq_base == 100000.0 and cfg.head_dim == 64


def _llama_cpp_records():
    path = Path(__file__).parent / "data" / "SmolLM2-135M-Instruct.Q4_1.llama_cpp.json"
    return json.loads(path.read_text())["records"]


def test_smollm2_logits_bit_identical_to_llama_cpp(smollm2):
    """The float32 logits after each prompt (one batch) and after each of the
    next single-token steps hash to exactly what llama.cpp produced
    (scripts/record_llama_cpp.py): activation quantization, dot-product lane
    order, RoPE, attention, SiLU and norms all reproduce its arithmetic."""
    import hashlib

    eng = Engine(str(smollm2), ContextSettings(n_ctx=512, n_batch=512, n_threads=2))
    for rec in _llama_cpp_records():
        eng.truncate(0)
        got = [hashlib.sha256(eng.decode(rec["prompt_tokens"]).astype(np.float32).tobytes()).hexdigest()]
        for tok in rec["greedy"][:len(rec["logits_sha256"]) - 1]:
            got.append(hashlib.sha256(eng.decode([tok]).astype(np.float32).tobytes()).hexdigest())
        assert got == rec["logits_sha256"], rec["prompt"]
    eng.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_smollm2_greedy_matches_llama_cpp(smollm2, threads):
    """Greedy tokens equal llama.cpp's for all 48 recorded tokens of every prompt."""
    eng = Engine(str(smollm2), ContextSettings(n_ctx=512, n_batch=512, n_threads=threads))
    for rec in _llama_cpp_records():
        eng.truncate(0)
        logits = eng.decode(rec["prompt_tokens"])
        out = []
        for _ in rec["greedy"]:
            out.append(int(np.argmax(logits)))
            logits = eng.decode([out[-1]])
        assert out == rec["greedy"], rec["prompt"]
    eng.close()


def test_decode_threads_apart_from_batch_threads(tmp_path):
    """n_threads (single-token decode) and n_threads_batch (prompt chunks) differ:
    one pool serves both and the logits are the same bits as with equal counts."""
    path = write_tiny_llama(tmp_path / "m.gguf", weight_type=Q.Q4_0, n_embd=64, n_ff=128)
    tokens = list(range(3, 30))
    runs = []
    for nt, ntb in [(2, 2), (1, 2), (2, 1)]:
        eng = _engine(path, n_threads=nt, n_threads_batch=ntb)
        got = [eng.decode(tokens[:20])]
        got += [eng.decode([t]) for t in tokens[20:]]
        runs.append(np.stack(got))
        eng.close()
    np.testing.assert_array_equal(runs[1], runs[0])
    np.testing.assert_array_equal(runs[2], runs[0])
