"""convert: tiny random HF checkpoints -> GGUF / PowerInfer GGUF.

Oracles: tests/reference/numpy_hf.py (the HF model math on HF-layout weights),
an index-based RoPE row permutation written here, and gguf.quants for the
quantized tensors. Error budget of the engine against the float64 reference on
F32 files: 5e-3 of the largest |logit| (the engine keeps its KV cache in F16).
"""
import json
import os
import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest
from gguf.quants import quantize as gguf_quantize

from pyinfer.convert.checkpoint import CheckpointError
from pyinfer.convert.hf_config import ConfigError
from pyinfer.convert.hf_to_gguf import ConvertError, ConvertOptions, convert
from pyinfer.convert.tensor_map import UnsupportedArchitectureError
from pyinfer.config import ContextSettings
from pyinfer.engine import Engine
from pyinfer.gguf_model import GGUFFile
from reference.numpy_hf import forward
from reference.tiny_hf import make_tiny_hf

TOKENS = [5, 77, 123, 9, 250, 31, 18, 300]


def rope_rows(n_heads: int, head_dim: int) -> np.ndarray:
    """Source row of every GGUF row: pair t of a head = (HF row t, HF row t + head_dim/2)."""
    idx = []
    for h in range(n_heads):
        for t in range(head_dim // 2):
            idx += [h * head_dim + t, h * head_dim + head_dim // 2 + t]
    return np.asarray(idx)


def expected_gguf_arrays(cfg, w, sparse=False):
    """GGUF name -> float32 array in GGUF numpy layout, derived independently of convert/."""
    E, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = E // nh
    permute = cfg["model_type"] != "qwen2"
    out = {"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"]}
    if "lm_head.weight" in w:
        out["output.weight"] = w["lm_head.weight"]
    for i in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        q, k = w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"]
        out[b + "attn_q.weight"] = q[rope_rows(nh, hd)] if permute else q
        out[b + "attn_k.weight"] = k[rope_rows(nkv, hd)] if permute else k
        out[b + "attn_v.weight"] = w[p + "self_attn.v_proj.weight"]
        for n in "qkv":
            if p + f"self_attn.{n}_proj.bias" in w:
                out[b + f"attn_{n}.bias"] = w[p + f"self_attn.{n}_proj.bias"]
        out[b + "attn_output.weight"] = w[p + "self_attn.o_proj.weight"]
        out[b + "attn_norm.weight"] = w[p + "input_layernorm.weight"]
        out[b + "ffn_norm.weight"] = w[p + "post_attention_layernorm.weight"]
        out[b + "ffn_gate.weight"] = w[p + "mlp.gate_proj.weight"]
        out[b + "ffn_up.weight"] = w[p + "mlp.up_proj.weight"]
        down = w[p + "mlp.down_proj.weight"]
        if sparse:
            out[b + "ffn_down_t.weight"] = np.ascontiguousarray(down.T)
        else:
            out[b + "ffn_down.weight"] = down
    return out


def run_engine(path, tokens=TOKENS):
    e = Engine(str(path), ContextSettings(n_ctx=64))
    try:
        return e.decode(tokens, logits_all=True)
    finally:
        e.close()


def assert_logits_close(got, ref, budget=5e-3):
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < budget, f"relative logit error {err:.2e} > {budget}"


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_dense_f32_runs_like_hf_math(tmp_path, arch):
    cfg, w = make_tiny_hf(tmp_path / "hf", arch, seed=3)
    out = tmp_path / "m.gguf"
    r = convert(str(tmp_path / "hf"), ConvertOptions(str(out), "f32", progress=False))
    assert r.arch == ("qwen2" if arch == "qwen2" else "llama") and not r.powerinfer
    assert_logits_close(run_engine(out), forward(cfg, w, TOKENS))


@pytest.mark.parametrize("arch", ["relu_llama", "bamboo"])
def test_dense_relu_models_run_like_hf_math(tmp_path, arch):
    """Dense ReLU-llama (pyinfer.ffn_activation = relu) and bamboo (relu on gate and up)."""
    cfg, w = make_tiny_hf(tmp_path / "hf", arch, seed=5)
    out = tmp_path / "m.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(out), "f32", progress=False))
    assert_logits_close(run_engine(out), forward(cfg, w, TOKENS))


def test_without_permutation_the_logits_differ(tmp_path, monkeypatch):
    """The oracle sees the q/k permutation: converting without it misses the budget by far."""
    import dataclasses
    from pyinfer.convert import tensor_map
    cfg, w = make_tiny_hf(tmp_path / "hf", "llama", seed=3)
    monkeypatch.setitem(tensor_map.ARCH_SPECS, "llama", dataclasses.replace(tensor_map.ARCH_SPECS["llama"], rope="neox"))
    out = tmp_path / "m.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(out), "f32", progress=False))
    ref = forward(cfg, w, TOKENS)
    err = np.abs(run_engine(out) - ref).max() / np.abs(ref).max()
    assert err > 10 * 5e-3


def test_new_transformers_layout_sharded_bf16_tied(tmp_path):
    """rope_theta inside rope_parameters, BF16 shards with an index, tied embeddings."""
    cfg, w = make_tiny_hf(tmp_path / "hf", "llama", seed=5, dtype="BF16", shards=3, new_layout=True,
                          config_over=dict(tie_word_embeddings=True, rope_theta=50000.0))
    out = tmp_path / "m.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(out), "f32", progress=False))
    f = GGUFFile(str(out))
    assert "output.weight" not in f.tensors
    assert f.metadata["llama.rope.freq_base"] == 50000.0
    assert_logits_close(run_engine(out), forward(cfg, w, TOKENS))


def test_metadata(tmp_path):
    cfg, w = make_tiny_hf(tmp_path / "hf", "qwen2", seed=1)
    out = tmp_path / "m.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(out), "q8_0", progress=False))
    r = gguf.GGUFReader(str(out))           # the stock reader accepts the file
    md = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert md["general.architecture"] == "qwen2"
    assert md["qwen2.block_count"] == 2 and md["qwen2.embedding_length"] == 64
    assert md["qwen2.attention.head_count_kv"] == 2 and md["qwen2.feed_forward_length"] == 96
    assert md["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert md["general.file_type"] == 7 and md["general.quantization_version"] == 2
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "gpt-2"
    assert md["tokenizer.ggml.bos_token_id"] == 1 and md["tokenizer.ggml.eos_token_id"] == 2
    assert md["tokenizer.ggml.add_bos_token"] is False
    assert "<|im_start|>" in md["tokenizer.chat_template"]
    assert md["general.sampling.temp"] == pytest.approx(0.7)
    assert len(md["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    assert md["tokenizer.ggml.token_type"][1] == gguf.TokenType.CONTROL
    assert len(md["tokenizer.ggml.merges"]) > 0


@pytest.mark.parametrize("outtype,qtype", [
    ("f16", gguf.GGMLQuantizationType.F16), ("bf16", gguf.GGMLQuantizationType.BF16),
    ("q8_0", gguf.GGMLQuantizationType.Q8_0), ("q4_0", gguf.GGMLQuantizationType.Q4_0),
    ("q4_1", gguf.GGMLQuantizationType.Q4_1), ("q5_0", gguf.GGMLQuantizationType.Q5_0),
    ("q5_1", gguf.GGMLQuantizationType.Q5_1)])
def test_quantized_tensors_equal_gguf_quants(tmp_path, outtype, qtype):
    cfg, w = make_tiny_hf(tmp_path / "hf", "llama", seed=2)
    out = tmp_path / "m.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(out), outtype, progress=False))
    want = expected_gguf_arrays(cfg, w)
    r = gguf.GGUFReader(str(out))
    assert {t.name for t in r.tensors} == set(want)
    for t in r.tensors:
        a = want[t.name]
        if a.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(t.data, a)
            continue
        expect = qtype
        if outtype.startswith("q") and outtype != "q8_0" and t.name == "output.weight":
            expect = gguf.GGMLQuantizationType.Q8_0       # llama.cpp: rows of 64 are no Q6_K rows
        assert t.tensor_type == expect, t.name
        ref = a.astype(np.float16) if expect == gguf.GGMLQuantizationType.F16 else gguf_quantize(a, expect)
        np.testing.assert_array_equal(np.asarray(t.data).view(np.uint8).reshape(-1),
                                      np.asarray(ref).view(np.uint8).reshape(-1), err_msg=t.name)


def test_q4_k_m_mix_and_logits(tmp_path):
    """q4_k_m on rows of 256: Q4_K mostly, Q6_K for output and the use_more_bits layers'
    attn_v/ffn_down; ffn_down rows of n_ff=320 fall back (Q4_K -> Q5_0, Q6_K -> Q8_0)."""
    over = dict(hidden_size=256, intermediate_size=320, num_hidden_layers=8, num_attention_heads=4,
                num_key_value_heads=4)
    cfg, w = make_tiny_hf(tmp_path / "hf", "llama", seed=4, config_over=over)
    out = tmp_path / "m.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(out), "q4_k_m", progress=False))
    T = gguf.GGMLQuantizationType
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(out)).tensors}
    more = {0, 3, 6, 7}                     # use_more_bits(i, 8)
    assert types["output.weight"] == T.Q6_K and types["token_embd.weight"] == T.Q4_K
    for i in range(8):
        assert types[f"blk.{i}.attn_q.weight"] == T.Q4_K
        assert types[f"blk.{i}.attn_v.weight"] == (T.Q6_K if i in more else T.Q4_K)
        assert types[f"blk.{i}.ffn_down.weight"] == (T.Q8_0 if i in more else T.Q5_0)
        assert types[f"blk.{i}.ffn_up.weight"] == T.Q4_K
        assert types[f"blk.{i}.attn_norm.weight"] == T.F32
    # dequantized (by gguf.quants) every matrix is within its type's relative RMS error budget
    budget = {T.Q4_K: 0.12, T.Q5_0: 0.06, T.Q6_K: 0.03, T.Q8_0: 0.01}
    want = expected_gguf_arrays(cfg, w)
    for t in gguf.GGUFReader(str(out)).tensors:
        if t.tensor_type in budget:
            a = want[t.name]
            d = gguf.quants.dequantize(t.data, t.tensor_type).reshape(a.shape)
            rel = np.sqrt(np.mean((d - a) ** 2) / np.mean(a ** 2))
            assert rel < budget[t.tensor_type], (t.name, t.tensor_type.name, rel)
    f32 = tmp_path / "f32.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(f32), "f32", progress=False))
    ref, got = run_engine(f32), run_engine(out)
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("arch", ["relu_llama", "bamboo"])
def test_relu_models_dense(tmp_path, arch):
    cfg, w = make_tiny_hf(tmp_path / "hf", arch, seed=6)
    out = tmp_path / "m.gguf"
    r = convert(str(tmp_path / "hf"), ConvertOptions(str(out), "f32", progress=False))
    assert r.arch == ("bamboo" if arch == "bamboo" else "llama") and not r.powerinfer
    f = GGUFFile(str(out))
    assert not f.is_powerinfer and f.metadata["pyinfer.ffn_activation"] == "relu"
    want = expected_gguf_arrays(cfg, w)
    assert set(f.tensors) == set(want)
    for name, a in want.items():
        np.testing.assert_array_equal(np.asarray(f.tensors[name].data), a, err_msg=name)


def write_predictors(d, cfg, hidden=16, seed=9, fmt="npz", threshold=0.25):
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    E, F = cfg["hidden_size"], cfg["intermediate_size"]
    preds = {}
    for i in range(cfg["num_hidden_layers"]):
        fc1 = rng.standard_normal((hidden, E)).astype(np.float32)
        fc2 = rng.standard_normal((F, hidden)).astype(np.float32)
        preds[i] = (fc1, fc2)
        if fmt == "npz":
            np.savez(os.path.join(d, f"model_{i}.npz"), **{"fc1.weight": fc1, "fc2.weight": fc2})
        else:
            import torch
            torch.save({"fc1.weight": torch.from_numpy(fc1), "fc2.weight": torch.from_numpy(fc2)},
                       os.path.join(d, f"model_{i}.pt"))
    if threshold is not None:
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write(f'{{"sparse_threshold": {threshold}}}')
    return preds


def check_powerinfer_file(path, cfg, w, preds, threshold):
    with open(path, "rb") as fh:
        assert fh.read(4) == b"PWRI"
    f = GGUFFile(str(path))
    assert f.is_powerinfer
    E, F = cfg["hidden_size"], cfg["intermediate_size"]
    want = expected_gguf_arrays(cfg, w, sparse=True)
    for i in range(cfg["num_hidden_layers"]):
        assert f"blk.{i}.ffn_down.weight" not in f.tensors
        assert f.tensors[f"blk.{i}.ffn_down_t.weight"].ne == (E, F)
        if preds is not None:
            fc1, fc2 = preds[i]
            H = fc1.shape[0]
            assert f.tensors[f"blk.{i}.fc1.weight"].ne == (E, H)
            assert f.tensors[f"blk.{i}.fc2.weight"].ne == (H, F)
            want[f"blk.{i}.fc1.weight"], want[f"blk.{i}.fc2.weight"] = fc1, fc2
    assert set(f.tensors) == set(want)
    for name, a in want.items():
        np.testing.assert_array_equal(np.asarray(f.tensors[name].data), a, err_msg=name)
    if threshold is None:
        assert "powerinfer.sparse_threshold" not in f.metadata
    else:
        assert f.metadata["powerinfer.sparse_threshold"] == pytest.approx(threshold)
    # densified (ffn_down_t transposed back, rows un-permuted) it is the HF model again
    dense = {}
    hd = E // cfg["num_attention_heads"]
    for i in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        dense[p + "mlp.down_proj.weight"] = np.asarray(f.tensors[b + "ffn_down_t.weight"].data).T
        q = np.asarray(f.tensors[b + "attn_q.weight"].data)
        dense[p + "self_attn.q_proj.weight"] = q[np.argsort(rope_rows(cfg["num_attention_heads"], hd))]
    rebuilt = {**w, **dense}
    # (float64 sums in another memory order: equal to rounding)
    np.testing.assert_allclose(forward(cfg, rebuilt, TOKENS), forward(cfg, w, TOKENS), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["relu_llama", "bamboo"])
def test_powerinfer_with_predictors(tmp_path, arch):
    cfg, w = make_tiny_hf(tmp_path / "hf", arch, seed=7)
    preds = write_predictors(tmp_path / "pred", cfg)
    out = tmp_path / "m.powerinfer.gguf"
    r = convert(str(tmp_path / "hf"), ConvertOptions(str(out), "f32", predictor_dir=str(tmp_path / "pred"),
                                                      progress=False))
    assert r.powerinfer
    check_powerinfer_file(out, cfg, w, preds, 0.25)


def test_powerinfer_torch_predictors(tmp_path):
    pytest.importorskip("torch", reason="model_{i}.pt predictors need torch (the optional [torch] extra)")
    cfg, w = make_tiny_hf(tmp_path / "hf", "relu_llama", seed=8)
    preds = write_predictors(tmp_path / "pred", cfg, hidden=8, fmt="pt", threshold=None)
    out = tmp_path / "m.powerinfer.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(out), "f32", predictor_dir=str(tmp_path / "pred"),
                                                  progress=False))
    check_powerinfer_file(out, cfg, w, preds, None)


def test_powerinfer_sparse_without_predictors_quantized(tmp_path):
    cfg, w = make_tiny_hf(tmp_path / "hf", "relu_llama", seed=8)
    out = tmp_path / "m.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(out), "q8_0", sparse=True, progress=False))
    f = GGUFFile(str(out))
    assert f.is_powerinfer and not any(".fc1." in n for n in f.tensors)
    t = f.tensors["blk.1.ffn_down_t.weight"]
    ref = gguf_quantize(np.ascontiguousarray(w["model.layers.1.mlp.down_proj.weight"].T),
                        gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), ref.reshape(-1))


# ---- malformed input: a clear error, and no file (or temporary file) left behind ----

def _assert_nothing_written(tmp_path):
    assert sorted(os.listdir(tmp_path)) == ["hf"], os.listdir(tmp_path)


@pytest.mark.parametrize("case,exc,words", [
    ("missing", ConvertError, "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("shape", ConvertError, "'model.layers.0.self_attn.k_proj.weight' has shape [64, 64], expected [32, 64]"),
    ("arch", UnsupportedArchitectureError, "MambaForCausalLM"),
    ("extra", ConvertError, "unexpected tensor 'model.layers.0.mlp.extra.weight'"),
    ("act", ConfigError, "hidden_act 'gelu'"),
    ("silu_sparse", ConvertError, "needs a ReLU model"),
])
def test_malformed_checkpoints(tmp_path, case, exc, words):
    kw = {}
    if case == "missing":
        kw["drop"] = ("model.layers.1.mlp.up_proj.weight",)
    elif case == "shape":
        kw["reshape"] = {"model.layers.0.self_attn.k_proj.weight": (64, 64)}
    elif case == "arch":
        kw["config_over"] = {"architectures": ["MambaForCausalLM"], "model_type": "mamba"}
    elif case == "extra":
        kw["reshape"] = {"model.layers.0.mlp.extra.weight": (4, 4)}
    elif case == "act":
        kw["config_over"] = {"hidden_act": "gelu"}
    make_tiny_hf(tmp_path / "hf", "llama", **kw)
    with pytest.raises(exc, match=None) as info:
        convert(str(tmp_path / "hf"), ConvertOptions(str(tmp_path / "out.gguf"), "q8_0",
                                                      sparse=case == "silu_sparse", progress=False))
    assert words in str(info.value)
    _assert_nothing_written(tmp_path)


def test_failure_while_writing_removes_partial_file(tmp_path):
    """A tensor that turns out unreadable mid-way (truncated shard) leaves nothing behind."""
    make_tiny_hf(tmp_path / "hf", "llama", shards=2)
    shard = tmp_path / "hf" / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="does not match"):
        convert(str(tmp_path / "hf"), ConvertOptions(str(tmp_path / "out.gguf"), "f16", progress=False))
    _assert_nothing_written(tmp_path)


def test_bin_checkpoint_needs_torch_or_reads_with_it(tmp_path):
    cfg, w = make_tiny_hf(tmp_path / "hf", "llama", seed=11)
    os.remove(tmp_path / "hf" / "model.safetensors")
    try:
        import torch
    except ImportError:
        (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
        with pytest.raises(CheckpointError, match="needs PyTorch"):
            convert(str(tmp_path / "hf"), ConvertOptions(str(tmp_path / "o.gguf"), "f32", progress=False))
        return
    torch.save({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in w.items()},
               tmp_path / "hf" / "pytorch_model.bin")
    out = tmp_path / "o.gguf"
    convert(str(tmp_path / "hf"), ConvertOptions(str(out), "f32", progress=False))
    wb = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in w.items()}
    assert_logits_close(run_engine(out), forward(cfg, wb, TOKENS))


# ---- issue 18: a checkpoint whose header or config pyinfer would refuse is refused before
# anything is written (offsets checked as the `safetensors` library checks them) ----

def _rewrite_header(path, change):
    """Rewrite a safetensors file's JSON header through `change(header)` (which edits it or
    returns a replacement); the data bytes are kept as they are."""
    data = open(path, "rb").read()
    n, = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header = change(header) or header
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + data[8 + n:])


def _by_begin(h):
    return sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])


def _shift(h, name, by):
    h[name]["data_offsets"] = [o + by for o in h[name]["data_offsets"]]


NORM0, NORM1 = "model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight"

SAFETENSORS_CASES = {
    # the first tensor moved before the data section (into the header): [-256, 0)
    "negative": (lambda h: _shift(h, _by_begin(h)[0], -h[_by_begin(h)[0]]["data_offsets"][1]),
                 "data range [-"),
    # two tensors of the same size sharing their bytes
    "overlapping": (lambda h: h[NORM1].update(data_offsets=h[NORM0]["data_offsets"]), "overlaps tensor"),
    # a tensor two bytes early: into the end of the one before it
    "misaligned": (lambda h: _shift(h, _by_begin(h)[-1], -2), "overlaps tensor"),
    # the last tensor past the end of the file
    "out_of_file": (lambda h: _shift(h, _by_begin(h)[-1], 64), "does not match the file"),
    "too_large": (lambda h: h[NORM0].update(data_offsets=[0, 2**64 + 256]), "does not match the file"),
    "dtype_size": (lambda h: h[NORM0].update(dtype="F16"), "does not match its shape"),
    "unknown_dtype": (lambda h: h[NORM0].update(dtype="F8_E4M3"), "unsupported dtype 'F8_E4M3'"),
    "dtype_not_a_name": (lambda h: h[NORM0].update(dtype=["F32"]), "unsupported dtype ['F32']"),
    "bad_shape": (lambda h: h[NORM0].update(shape=[-64]), "invalid shape [-64]"),
    "no_offsets": (lambda h: h[NORM0].pop("data_offsets") and None, "invalid data_offsets None"),
    "not_an_object": (lambda h: [h], "a JSON list, not an object"),
}


def _assert_untouched(tmp_path, existing=None):
    """Nothing new in tmp_path (no output, no temporary file); `existing` kept byte for byte."""
    want = ["hf"] + (["out.gguf"] if existing is not None else [])
    assert sorted(os.listdir(tmp_path)) == want, os.listdir(tmp_path)
    if existing is not None:
        assert (tmp_path / "out.gguf").read_bytes() == existing


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_malformed_safetensors_headers(tmp_path, case):
    change, words = SAFETENSORS_CASES[case]
    make_tiny_hf(tmp_path / "hf", "llama")
    _rewrite_header(tmp_path / "hf" / "model.safetensors", change)
    with pytest.raises(CheckpointError) as info:
        convert(str(tmp_path / "hf"), ConvertOptions(str(tmp_path / "out.gguf"), "f16", progress=False))
    assert words in str(info.value)
    _assert_untouched(tmp_path)


def test_gap_and_trailing_bytes(tmp_path):
    """A gap before a tensor or bytes after the last one: the header does not describe the file."""
    make_tiny_hf(tmp_path / "hf", "llama")
    st = tmp_path / "hf" / "model.safetensors"
    with open(st, "ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(CheckpointError, match="8 bytes after the last tensor's data"):
        convert(str(tmp_path / "hf"), ConvertOptions(str(tmp_path / "out.gguf"), "f16", progress=False))
    _rewrite_header(st, lambda h: _shift(h, _by_begin(h)[-1], 8))
    with pytest.raises(CheckpointError, match="leaves a gap of 8 bytes"):
        convert(str(tmp_path / "hf"), ConvertOptions(str(tmp_path / "out.gguf"), "f16", progress=False))
    _assert_untouched(tmp_path)


CONFIG_CASES = [
    ({"rope_theta": -1}, "'rope_theta' is -1.0, must be a finite number > 0"),
    ({"rope_theta": 0}, "'rope_theta' is 0.0"),
    ({"num_key_value_heads": 3}, "num_attention_heads (4) is not a multiple of num_key_value_heads (3)"),
    ({"hidden_size": 0}, "'hidden_size' is 0, must be >= 1"),
    ({"num_hidden_layers": -2}, "'num_hidden_layers' is -2"),
    ({"vocab_size": "320"}, "'vocab_size' must be an integer, found '320'"),
    ({"head_dim": 15}, "the head size 15 is odd"),
    ({"hidden_size": 66}, "hidden_size (66) is not a multiple of num_attention_heads (4)"),
    ({"rms_norm_eps": -1e-5}, "'rms_norm_eps' is -1e-05"),
    ({"max_position_embeddings": 0}, "'max_position_embeddings' is 0"),
    ({"rope_scaling": {"type": "linear", "factor": 0}}, "'rope_scaling.factor' is 0.0"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 4}},
     "high_freq_factor (4.0) must be greater than low_freq_factor (4.0)"),
    ({"rope_scaling": "linear"}, "'rope_scaling' must be an object"),
    ({"architectures": "LlamaForCausalLM"}, "'architectures' must be a list of names"),
]


@pytest.mark.parametrize("over,words", CONFIG_CASES,
                         ids=[f"{next(iter(o))}-{i}" for i, (o, _) in enumerate(CONFIG_CASES)])
def test_config_values_pyinfer_would_refuse(tmp_path, over, words):
    make_tiny_hf(tmp_path / "hf", "llama")
    cfg_path = tmp_path / "hf" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **over}))
    existing = b"an older conversion"
    (tmp_path / "out.gguf").write_bytes(existing)
    with pytest.raises(ConfigError) as info:
        convert(str(tmp_path / "hf"), ConvertOptions(str(tmp_path / "out.gguf"), "f16", progress=False))
    assert words in str(info.value)
    _assert_untouched(tmp_path, existing)


def test_rope_theta_minus_one_would_be_refused_by_the_loader_too():
    """The converter's refusal mirrors the loader's: ModelConfig refuses the same value."""
    from pyinfer.config import ModelConfig, UnsupportedModelError
    md = {"general.architecture": "llama", "llama.attention.head_count": 4, "llama.embedding_length": 64,
          "llama.block_count": 2, "llama.feed_forward_length": 96, "llama.rope.freq_base": -1.0}
    with pytest.raises(UnsupportedModelError, match="rope_freq_base is -1.0"):
        ModelConfig.from_metadata(md, n_vocab=320)


@pytest.mark.parametrize("case", ["rope_theta", "negative_offsets"])
def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    make_tiny_hf(tmp_path / "hf", "llama")
    if case == "rope_theta":
        cfg_path = tmp_path / "hf" / "config.json"
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "rope_theta": -1}))
    else:
        _rewrite_header(tmp_path / "hf" / "model.safetensors", SAFETENSORS_CASES["negative"][0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, os.path.join(root, "convert.py"), str(tmp_path / "hf"),
                        "--outfile", str(tmp_path / "out.gguf"), "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert.py: error: "), p.stderr
    assert ("rope_theta" if case == "rope_theta" else "data range [-") in lines[0]
    _assert_untouched(tmp_path)


def test_commit_failure_leaves_no_file(tmp_path, monkeypatch):
    """The writer is atomic: data goes to a temporary file renamed at the end; if the rename
    itself fails, the temporary file is removed and the old output stays."""
    from pyinfer.convert import writer
    make_tiny_hf(tmp_path / "hf", "llama")
    (tmp_path / "out.gguf").write_bytes(b"old")

    def fail(src, dst):
        assert os.path.basename(src).startswith(".out.gguf.part") and os.path.getsize(src) > 1000
        raise OSError(28, "No space left on device", dst)
    monkeypatch.setattr(writer.os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        convert(str(tmp_path / "hf"), ConvertOptions(str(tmp_path / "out.gguf"), "f16", progress=False))
    _assert_untouched(tmp_path, b"old")
