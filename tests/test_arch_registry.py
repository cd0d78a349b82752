"""What the architecture registry (model/arch.py) reads from a file beyond the logits the
oracles check (tests/test_arch_oracle.py): the defaults llama.cpp gives each architecture's
missing keys, LongRoPE's choice of factors, and the refusal of tensors no part of the engine
reads (a variant of an architecture that would otherwise run silently wrong)."""
import os

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter, GGUFValueType

from pyinfer.config import ContextSettings, ModelConfig
from pyinfer.convert.hf_to_gguf import ConvertOptions, convert
from pyinfer.engine import Engine
from pyinfer.gguf_model import ModelLoadError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "arch")


def _md(arch, **keys):
    md = {"general.architecture": arch, f"{arch}.attention.head_count": 4, f"{arch}.embedding_length": 64,
          f"{arch}.block_count": 4, f"{arch}.feed_forward_length": 64, f"{arch}.context_length": 256}
    md.update({f"{arch}.{k}": v for k, v in keys.items()})
    return md


def test_gemma2_defaults_are_llama_cpps():
    """llama.cpp's gemma2: window 4096 on every other layer (the first local), soft-caps 50
    (attention) and 30 (logits), the local layers' RoPE the global one."""
    cfg = ModelConfig.from_metadata(_md("gemma2", **{"rope.freq_base": 20000.0}), n_vocab=320)
    assert cfg.n_swa == 4096 and cfg.swa_layers == (True, False, True, False)
    assert (cfg.attn_logit_softcap, cfg.final_logit_softcap) == (50.0, 30.0)
    assert cfg.rope(0) == cfg.rope(1) == (20000.0, 1.0)
    cfg = ModelConfig.from_metadata(_md("gemma2", **{"attention.sliding_window": 8,
                                                     "rope.freq_base_swa": 5000.0}), n_vocab=320)
    assert cfg.n_swa == 8 and cfg.rope(0) == (5000.0, 1.0) and cfg.rope(1) == (10000.0, 1.0)


def test_gemma3_local_rope_base_defaults_to_10000():
    cfg = ModelConfig.from_metadata(_md("gemma3", **{"rope.freq_base": 1e6, "attention.sliding_window": 8,
                                                      "block_count": 6}), n_vocab=320)
    assert cfg.rope(0) == (10000.0, 1.0) and cfg.rope(5) == (1e6, 1.0)


@pytest.mark.parametrize("arch,window", [("llama", 8), ("qwen2", 0), ("phi3", 0), ("qwen3", 0)])
def test_which_architectures_read_a_window(arch, window):
    """Our Mistral files carry llama.attention.sliding_window (every layer local); llama.cpp's
    qwen2, qwen3 and phi3 ignore the key, and so do we."""
    cfg = ModelConfig.from_metadata(_md(arch, **{"attention.sliding_window": 8}), n_vocab=320)
    assert cfg.n_swa == window and (not window or all(cfg.swa_layers))
    assert cfg.rope(0) == cfg.rope(3) == (10000.0, 1.0)


def test_rope_scaling_keys_are_checked():
    with pytest.raises(Exception, match="attn_factor"):
        ModelConfig.from_metadata(_md("phi3", **{"rope.scaling.attn_factor": float("nan")}), n_vocab=320)
    with pytest.raises(Exception, match="original_context_length"):
        ModelConfig.from_metadata(_md("phi3", **{"rope.scaling.original_context_length": -1}), n_vocab=320)
    assert ModelConfig.from_metadata(_md("phi3"), n_vocab=320).n_ctx_orig == 256


def test_longrope_factors_follow_the_context_size():
    """llama.cpp's get_rope_factors: the long factors once the context exceeds the original
    training context (256 here), the short ones below; the logits change with them."""
    path = os.path.join(DATA, "phi3_longrope", "llama_cpp.f32.gguf")
    factors = {t.name: np.array(t.data) for t in GGUFReader(path).tensors if t.name.startswith("rope_factors")}
    assert not np.array_equal(factors["rope_factors_short.weight"], factors["rope_factors_long.weight"])
    tokens = list(range(5, 29))
    out = {}
    for n_ctx in (256, 512):
        e = Engine(path, ContextSettings(n_ctx=n_ctx))
        try:
            chosen = e.weights.rope_factors(e.cfg, n_ctx)
            assert chosen is (e.weights.rope_long if n_ctx > 256 else e.weights.rope_short)
            out[n_ctx] = e.decode(tokens, logits_all=True)
        finally:
            e.close()
    assert np.abs(out[256] - out[512]).max() > 1e-4


def _with_extra_tensor(src, dst, name, shape):
    """A copy of GGUF `src` with one more F32 tensor `name`."""
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            w.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(key, field.contents(), vtype)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.add_tensor(name, np.ones(shape[::-1], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("name,extra,shape", [
    ("stablelm", "blk.0.attn_q_norm.weight", (16, 4)),     # StableLM 2 12B's per-head LayerNorm
    ("llama", "blk.1.ffn_gate_inp.weight", (64, 4)),       # an MoE router
])
def test_unread_tensors_are_refused(tmp_path, name, extra, shape):
    src = str(tmp_path / "src.gguf")
    convert(os.path.join(DATA, name, "hf"), ConvertOptions(src, "f32", progress=False))
    Engine(src, ContextSettings(n_ctx=32)).close()          # the file as converted runs
    dst = str(tmp_path / "extra.gguf")
    _with_extra_tensor(src, dst, extra, shape)
    with pytest.raises(ModelLoadError, match=f"does not use.*{extra}.*not supported"):
        Engine(dst, ContextSettings(n_ctx=32))


def test_rope_scaling_types():
    """llama.cpp's reading: no type with a factor is linear, "none" ignores the factor, yarn
    blends (ext_factor 1) over the original context; DeepSeek's log multiplier is refused."""
    cfg = ModelConfig.from_metadata(_md("llama", **{"rope.scaling.factor": 4.0}), n_vocab=320)
    assert (cfg.rope_freq_scale, cfg.rope_ext_factor) == (0.25, 0.0)
    cfg = ModelConfig.from_metadata(_md("llama", **{"rope.scaling.type": "none", "rope.scaling.factor": 4.0}),
                                    n_vocab=320)
    assert cfg.rope_freq_scale == 1.0
    cfg = ModelConfig.from_metadata(_md("qwen2", **{"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                                                    "rope.scaling.original_context_length": 32}), n_vocab=320)
    assert (cfg.rope_freq_scale, cfg.rope_ext_factor, cfg.n_ctx_orig) == (0.25, 1.0, 32)
    with pytest.raises(Exception, match="yarn_log_multiplier"):
        ModelConfig.from_metadata(_md("qwen2", **{"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                                                  "rope.scaling.yarn_log_multiplier": 0.1}), n_vocab=320)
    with pytest.raises(Exception, match="not supported"):
        ModelConfig.from_metadata(_md("qwen2", **{"rope.scaling.type": "dynamic"}), n_vocab=320)


def test_yarn_as_a_context_option():
    """llama-cpp-python's rope_scaling_type=YARN (+ rope_freq_scale, yarn_orig_ctx) on a file
    without scaling gives the logits of the same model whose file says YaRN (qwen2_yarn: factor
    4 over 32 positions); yarn_ext_factor=0 leaves plain linear scaling."""
    from pyinfer import Llama
    from pyinfer.llama_options import LLAMA_ROPE_SCALING_TYPE_YARN
    path = os.path.join(DATA, "qwen2_yarn", "llama_cpp.f32.gguf")
    tokens = list(range(5, 29))

    def scores(**kw):
        llm = Llama(path, n_ctx=64, logits_all=True, verbose=False, **kw)
        try:
            llm.eval(tokens)
            return np.array(llm.scores[:len(tokens)])
        finally:
            llm.close()

    plain = {"kv_overrides": {"qwen2.rope.scaling.type": "none"}}
    file_yarn = scores()
    option_yarn = scores(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE_YARN, rope_freq_scale=0.25, yarn_orig_ctx=32,
                         **plain)
    np.testing.assert_array_equal(option_yarn, file_yarn)
    no_scaling = scores(**plain)
    assert np.abs(no_scaling - file_yarn).max() > 1e-2
    linear = scores(rope_scaling_type=LLAMA_ROPE_SCALING_TYPE_YARN, rope_freq_scale=0.25, yarn_orig_ctx=32,
                    yarn_ext_factor=0.0, **plain)
    assert np.abs(linear - file_yarn).max() > 1e-2
