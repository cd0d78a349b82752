"""Tiny random Hugging Face checkpoints (safetensors + json), written without torch.

``make_tiny_hf(dir, arch=...)`` writes config.json, model safetensors (one file
or shards with an index), a byte-level BPE tokenizer.json trained on a few
sentences, tokenizer_config.json and generation_config.json, and returns
(config dict, {HF name: float32 array}) so tests can run the HF math on the
exact weights that were written (BF16 weights are rounded before returning).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Optional

import numpy as np

TEXT = ("The quick brown fox jumps over the lazy dog. Hello world! 12345 numbers and "
        "symbols: {}[]()<>. Pack my box with five dozen liquor jugs. Ünïcödé text, "
        "tabs\tand\nnew lines. I've been told it's there, we'll see.")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (as torch does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path: str, tensors: Dict[str, np.ndarray], dtype: str = "F32") -> None:
    """Minimal safetensors writer: dtype F32, F16 or BF16 for every tensor."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        if dtype == "BF16":
            raw = to_bf16_bits(a).tobytes()
        else:
            raw = np.ascontiguousarray(a, dtype={"F32": "<f4", "F16": "<f2"}[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """Minimal safetensors reader (F32, F16, BF16): {name: float32 array}."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = np.frombuffer(blob[a:b], dtype={"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[info["dtype"]])
        a32 = from_bf16_bits(raw) if info["dtype"] == "BF16" else raw.astype(np.float32)
        out[name] = a32.reshape(info["shape"])
    return out


def train_bpe_tokenizer(vocab_size: int, style: str = "gpt2"):
    """A byte-level BPE `tokenizers.Tokenizer` trained on TEXT: `style` "gpt2" (ByteLevel
    pre-tokenizer with the GPT-2 regex) or "llama3" (Llama-3 split regex, then ByteLevel)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    if style == "llama3":
        regex = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([TEXT] * 4, trainer)
    return tk


def tiny_config(arch: str = "llama", **over) -> dict:
    base = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    base.update({
        "llama": dict(architectures=["LlamaForCausalLM"], model_type="llama"),
        "mistral": dict(architectures=["MistralForCausalLM"], model_type="mistral"),
        "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rms_norm_eps=1e-6),
        "relu_llama": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="relu"),
        "bamboo": dict(architectures=["BambooForCausalLM"], model_type="bamboo", hidden_act="relu"),
    }[arch])
    base.update(over)
    return base


def random_weights(cfg: dict, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    E, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or E // nh

    def mat(rows, cols, scale=None):
        return (rng.standard_normal((rows, cols)) * (scale or 1 / np.sqrt(cols))).astype(np.float32)

    def vec(n, base=1.0, noise=0.1):
        return (base + noise * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(V, E, 1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(E)
        w[p + "self_attn.q_proj.weight"] = mat(nh * hd, E)
        w[p + "self_attn.k_proj.weight"] = mat(nkv * hd, E)
        w[p + "self_attn.v_proj.weight"] = mat(nkv * hd, E)
        if cfg["model_type"] == "qwen2":
            w[p + "self_attn.q_proj.bias"] = vec(nh * hd, 0.0, 0.5)
            w[p + "self_attn.k_proj.bias"] = vec(nkv * hd, 0.0, 0.5)
            w[p + "self_attn.v_proj.bias"] = vec(nkv * hd, 0.0, 0.5)
        w[p + "self_attn.o_proj.weight"] = mat(E, nh * hd)
        w[p + "post_attention_layernorm.weight"] = vec(E)
        w[p + "mlp.gate_proj.weight"] = mat(F, E)
        w[p + "mlp.up_proj.weight"] = mat(F, E)
        w[p + "mlp.down_proj.weight"] = mat(E, F)
    w["model.norm.weight"] = vec(E)
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = mat(V, E)
    return w


def write_tokenizer(d: str, vocab_size: int, style: str = "gpt2", tokenizer_class: Optional[str] = None) -> None:
    tk = train_bpe_tokenizer(vocab_size, style)
    tk.save(os.path.join(d, "tokenizer.json"))
    cfg = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
           "chat_template": CHAT_TEMPLATE, "model_max_length": 256}
    if tokenizer_class:
        cfg["tokenizer_class"] = tokenizer_class
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)


def train_sentencepiece(vocab_size: int) -> bytes:
    """A SentencePiece BPE model (tokenizer.model bytes) trained on TEXT: byte fallback,
    identity normalisation (no 240 KB character map), ids <pad>=0 </s>=1 <s>=2 <unk>=3."""
    import io

    import sentencepiece as spm
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([TEXT] * 8), model_writer=out, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, pad_id=0, eos_id=1, bos_id=2,
        unk_id=3, normalization_rule_name="identity", add_dummy_prefix=False, split_digits=True,
        remove_extra_whitespaces=False, minloglevel=2)
    return out.getvalue()


def make_tiny_hf(d, arch: str = "llama", *, seed: int = 0, dtype: str = "F32", shards: int = 1,
                 config_over: Optional[dict] = None, tokenizer_style: str = "gpt2",
                 drop=(), reshape=None, new_layout: bool = False):
    """Write a tiny checkpoint into directory `d`; returns (config, weights as written).
    `drop`: HF names left out; `reshape`: {name: bad shape}; `new_layout`: rope_theta inside
    rope_parameters as transformers >= 5 writes it."""
    d = str(d)
    os.makedirs(d, exist_ok=True)
    cfg = tiny_config(arch, **(config_over or {}))
    w = random_weights(cfg, seed)
    if dtype == "BF16":
        w = {k: from_bf16_bits(to_bf16_bits(v)) for k, v in w.items()}
    elif dtype == "F16":
        w = {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}
    written = {k: v for k, v in w.items() if k not in drop}
    for k, shape in (reshape or {}).items():
        written[k] = np.zeros(shape, np.float32)
    names = list(written)
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), written, dtype)
    else:
        index = {}
        for s in range(shards):
            part = names[s::shards]
            fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(os.path.join(d, fn), {k: written[k] for k in part}, dtype)
            index.update({k: fn for k in part})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": index}, f)
    saved = dict(cfg)
    if new_layout:
        theta = saved.pop("rope_theta")
        saved["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
        saved["dtype"] = saved.pop("torch_dtype")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(saved, f)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.7, "top_p": 0.9}, f)
    write_tokenizer(d, cfg["vocab_size"], tokenizer_style)
    return cfg, w
