"""Converted tiny random models generate what `transformers` generates (greedy).

Needs torch and transformers (skipped otherwise). The models are saved by the
installed transformers' own `save_pretrained` (its current config.json and
safetensors layout), converted to F32, and run by the engine; greedy tokens
must be identical and logits within 5e-3 of the largest |logit| (F16 KV cache).
"""
import numpy as np
import pytest

_WHY = "the transformers oracle needs torch and transformers (optional: pip install torch transformers)"
torch = pytest.importorskip("torch", reason=_WHY)
transformers = pytest.importorskip("transformers", reason=_WHY)

from pyinfer.convert.hf_to_gguf import ConvertOptions, convert  # noqa: E402
from pyinfer.config import ContextSettings  # noqa: E402
from pyinfer.engine import Engine  # noqa: E402
from reference.tiny_hf import write_tokenizer  # noqa: E402

PROMPT = [1, 40, 77, 123, 9, 250, 31]
N_NEW = 16


def _model(arch):
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  initializer_range=0.3, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    if arch == "llama":
        cfg = transformers.LlamaConfig(rope_theta=10000.0, **common)
        cls = transformers.LlamaForCausalLM
    elif arch == "mistral":
        cfg = transformers.MistralConfig(rope_theta=1e6, sliding_window=None, **common)
        cls = transformers.MistralForCausalLM
    else:
        cfg = transformers.Qwen2Config(rope_theta=1e6, **common)
        cls = transformers.Qwen2ForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():                       # norms away from 1, biases nonzero
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_greedy_generation_matches_transformers(tmp_path, arch):
    model = _model(arch)
    d = tmp_path / "hf"
    model.save_pretrained(str(d))
    write_tokenizer(str(d), 320)
    out = tmp_path / "m.gguf"
    convert(str(d), ConvertOptions(str(out), "f32", progress=False))

    with torch.no_grad():
        ref_tokens = model.generate(torch.tensor([PROMPT]), max_new_tokens=N_NEW, do_sample=False,
                                    min_new_tokens=N_NEW, pad_token_id=0)[0, len(PROMPT):].tolist()
        ref_logits = model(torch.tensor([PROMPT])).logits[0].double().numpy()

    e = Engine(str(out), ContextSettings(n_ctx=64))
    try:
        logits = e.decode(PROMPT, logits_all=True)
        err = np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()
        assert err < 5e-3, err
        got, last = [], logits[-1]
        for _ in range(N_NEW):
            got.append(int(np.argmax(last)))
            last = e.decode([got[-1]])
    finally:
        e.close()
    assert got == ref_tokens


def test_linear_rope_scaling_matches_transformers(tmp_path):
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  initializer_range=0.3, tie_word_embeddings=True)
    cfg = transformers.LlamaConfig(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0},
                                   **common)
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(cfg).eval()
    d = tmp_path / "hf"
    model.save_pretrained(str(d))
    write_tokenizer(str(d), 320)
    out = tmp_path / "m.gguf"
    convert(str(d), ConvertOptions(str(out), "f32", progress=False))
    with torch.no_grad():
        ref = model(torch.tensor([PROMPT])).logits[0].double().numpy()
    e = Engine(str(out), ContextSettings(n_ctx=64))
    try:
        got = e.decode(PROMPT, logits_all=True)
    finally:
        e.close()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 5e-3


def test_llama3_rope_factors_match_transformers(tmp_path):
    """rope_freqs.weight holds base / scaled frequency ratios as transformers computes them."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from pyinfer.convert.hf_config import load_params, llama3_rope_factors
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0}
    cfg = transformers.LlamaConfig(vocab_size=320, hidden_size=256, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=2, max_position_embeddings=512, rope_parameters=rope)
    d = tmp_path / "hf"
    cfg.save_pretrained(str(d))
    inv_scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    head_dim = 128
    inv = 1.0 / 500000.0 ** (np.arange(0, head_dim, 2) / head_dim)
    np.testing.assert_allclose(llama3_rope_factors(load_params(str(d))), inv / inv_scaled.double().numpy(),
                               rtol=1e-5)
