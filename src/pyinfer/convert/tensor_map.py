"""Architectures and the one Hugging Face -> GGUF tensor name map.

Everything here is data: which HF architectures map to which GGUF
architecture, how each HF tensor is named in GGUF, which HF tensors carry
nothing a GGUF needs, and each tensor's expected shape. ``plan`` turns a
checkpoint's tensor list into the ordered list of GGUF tensors to write,
checking that every tensor is present with the right shape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple


class UnsupportedArchitectureError(ValueError):
    """config.json names an architecture this converter does not know."""


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str          # general.architecture
    permute_qk: bool        # HF rotate_half q/k rows -> GGUF interleaved pairs (llama.cpp "normal" RoPE)
    qkv_bias: bool          # q/k/v projections carry biases (qwen2)
    ffn: str                # "gated": act(gate)*up; "gated_both": act(gate)*act(up) (bamboo)


ARCH_SPECS: Dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", permute_qk=True, qkv_bias=False, ffn="gated"),
    "qwen2": ArchSpec("qwen2", permute_qk=False, qkv_bias=True, ffn="gated"),
    "bamboo": ArchSpec("bamboo", permute_qk=True, qkv_bias=False, ffn="gated_both"),
}

# config.json "architectures"[0] (or "model_type") -> key of ARCH_SPECS
HF_ARCHITECTURES: Dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "BambooForCausalLM": "bamboo",
}
HF_MODEL_TYPES: Dict[str, str] = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "bamboo": "bamboo"}

# HF name -> GGUF name; "{i}" is the layer index
TENSOR_NAMES: Dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}
# HF tensors that hold nothing a GGUF stores (recomputed at run time)
IGNORED_TENSORS = ("model.layers.{i}.self_attn.rotary_emb.inv_freq",)


def _pattern(template: str) -> "re.Pattern[str]":
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)") + "$")


_FORWARD = [(_pattern(hf), gg) for hf, gg in TENSOR_NAMES.items()]
_IGNORED = [_pattern(t) for t in IGNORED_TENSORS]
_REVERSE = {gg: hf for hf, gg in TENSOR_NAMES.items()}


def detect_arch(cfg: dict) -> Tuple[str, ArchSpec]:
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    key = None
    if model_type == "bamboo":
        key = "bamboo"
    elif archs and archs[0] in HF_ARCHITECTURES:
        key = HF_ARCHITECTURES[archs[0]]
    elif not archs and model_type in HF_MODEL_TYPES:
        key = HF_MODEL_TYPES[model_type]
    if key is None:
        named = archs[0] if archs else f"model_type {model_type!r}"
        raise UnsupportedArchitectureError(
            f"unsupported model architecture {named} (supported: {', '.join(sorted(HF_ARCHITECTURES))}, "
            f"or model_type {', '.join(sorted(HF_MODEL_TYPES))})")
    return (archs[0] if archs else str(model_type)), ARCH_SPECS[key]


def gguf_name(hf_name: str) -> Optional[str]:
    """The GGUF name of an HF tensor, '' for one to skip, None for an unknown one."""
    for pat, gg in _FORWARD:
        m = pat.match(hf_name)
        if m:
            return gg.replace("{i}", m.group(1)) if m.groups() else gg
    if any(p.match(hf_name) for p in _IGNORED):
        return ""
    return None


def hf_name(gguf_tensor: str) -> str:
    """The HF name of a GGUF tensor of the name map (layer index filled in)."""
    m = re.match(r"^blk\.(\d+)\.(.*)$", gguf_tensor)
    if m:
        return _REVERSE["blk.{i}." + m.group(2)].replace("{i}", m.group(1))
    return _REVERSE[gguf_tensor]


@dataclass(frozen=True)
class PlannedTensor:
    name: str                       # GGUF name
    ne: Tuple[int, ...]             # ggml shape, innermost first
    source: str                     # HF tensor name (in the model or predictor checkpoint)
    from_predictor: bool = False
    op: str = ""                    # "", "permute_q", "permute_k", "transpose"


def layer_tensors(p, i: int, sparse: bool, pred_hidden: Optional[int]) -> List[PlannedTensor]:
    """The GGUF tensors of layer `i` with their ggml shapes."""
    E, F, hd = p.n_embd, p.n_ff, p.head_dim
    q, kv = p.n_head * hd, p.n_head_kv * hd
    b = f"blk.{i}."
    permute = p.arch.permute_qk
    out = [
        (b + "attn_norm.weight", (E,), ""),
        (b + "attn_q.weight", (E, q), "permute_q" if permute else ""),
        (b + "attn_k.weight", (E, kv), "permute_k" if permute else ""),
        (b + "attn_v.weight", (E, kv), ""),
    ]
    if p.arch.qkv_bias:
        out += [(b + "attn_q.bias", (q,), ""), (b + "attn_k.bias", (kv,), ""), (b + "attn_v.bias", (kv,), "")]
    out += [
        (b + "attn_output.weight", (q, E), ""),
        (b + "ffn_norm.weight", (E,), ""),
        (b + "ffn_gate.weight", (E, F), ""),
        (b + "ffn_up.weight", (E, F), ""),
    ]
    planned = [PlannedTensor(n, ne, hf_name(n), op=op) for n, ne, op in out]
    if sparse:
        # HF down_proj [E, F] transposed: one contiguous row of n_embd values per neuron
        planned.append(PlannedTensor(b + "ffn_down_t.weight", (E, F), hf_name(b + "ffn_down.weight"), op="transpose"))
    else:
        planned.append(PlannedTensor(b + "ffn_down.weight", (F, E), hf_name(b + "ffn_down.weight")))
    if pred_hidden is not None:
        planned.append(PlannedTensor(b + "fc1.weight", (E, pred_hidden), f"{i}.fc1.weight", True))
        planned.append(PlannedTensor(b + "fc2.weight", (pred_hidden, F), f"{i}.fc2.weight", True))
    return planned


def source_shape(t: PlannedTensor) -> Tuple[int, ...]:
    """The PyTorch shape the source tensor must have for `t`."""
    if t.op == "transpose":
        return tuple(t.ne)                  # [E, F] in torch order is ne {E, F} transposed
    return tuple(reversed(t.ne))
