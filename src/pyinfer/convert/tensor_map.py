"""Architectures and their Hugging Face -> GGUF tensor maps, as data.

One table per architecture (``ARCH_SPECS``): the GGUF architecture it writes,
the HF names of its tensors with their GGUF names, ggml shapes and data
transforms, the hyper-parameter keys it writes (``keys``, values in
``hf_config.HFParams``), and its conventions (RoPE pair layout, Gemma's norm
offset, norm kind). Names, shapes, keys and transforms are those of llama.cpp's
``convert_hf_to_gguf.py`` (llama-cpp-python 0.3.36's vendor/llama.cpp), and
PowerInfer's (its convert-hf-to-powerinfer-gguf.py) for the sparse layout:
``ffn_down`` stored transposed as ``ffn_down_t`` (its bias, OPT's, renamed with
it) and the predictor ``fc1``/``fc2``.

``plan`` turns a checkpoint's tensor list into the ordered GGUF tensors to
write, checking that every required tensor is present with the right shape and
that the checkpoint holds nothing the map does not know.

Shapes are ggml ``ne`` (innermost first), written with the symbols of
``HFParams.dims``: E n_embd, F n_ff, V n_vocab, Q n_head*head_dim, K
n_head_kv*head_dim, D head_dim, P position rows (OPT), X n_expert, G an expert's
FFN size, S the shared expert's; "Q+2K" sums, "2F" scales, "1" is one.
Transforms (``op``, applied in hf_to_gguf.py): ``rope_q``/``rope_k`` (HF's
rotate-half rows -> llama.cpp's interleaved pairs, only for ``rope="normal"``),
``falcon_qkv`` (Falcon's grouped [q.., k, v] per KV group -> all q, all k, all
v), ``neox_qkv`` (GPT-NeoX's per-head [q, k, v] -> all q, all k, all v).
Mixture-of-experts checkpoints hold one tensor per expert: an HF name with
``{x}`` stands for experts 0 .. n_expert-1, stacked (expert x at ne[2] = x) into
one 3-D GGUF tensor, as llama.cpp's converter merges them.

Adding an architecture: an ``ArchSpec`` here (its tensor rules and keys) and its
``HF_ARCHITECTURES`` / ``HF_MODEL_TYPES`` names; in hf_config.py only a config
name no architecture used yet (or a variant to refuse), in hf_to_gguf.py only a
transform no architecture needed yet; and a row of ``ARCHS`` in
scripts/make_arch_oracles.py, whose fixture tests/test_arch_oracle.py then
compares with llama.cpp's conversion and runs against transformers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

REQUIRED, OPTIONAL, UNTIED = "required", "optional", "untied"   # TensorRule.need


class UnsupportedArchitectureError(ValueError):
    """config.json names an architecture this converter does not know."""


@dataclass(frozen=True)
class TensorRule:
    gguf: str                   # GGUF name ("blk.{i}." is prefixed to a layer tensor's)
    hf: Tuple[str, ...]         # HF names, alternatives (the arch's layer prefix is prefixed)
    ne: str                     # ggml shape (see the module doc)
    op: str = ""                # data transform
    need: str = REQUIRED        # REQUIRED; OPTIONAL: written when the checkpoint has it;
                                # UNTIED: required unless config.json ties it to the embeddings
    fused: Tuple[str, ...] = ()  # stacked experts: HF names of one tensor holding every expert
                                # (transformers 5's in-memory layout), read when the per-expert
                                # ones are absent, with the transform fused_op
    fused_op: str = ""


def _r(gguf: str, hf, ne: str, op: str = "", need: str = REQUIRED) -> TensorRule:
    return TensorRule(gguf, (hf,) if isinstance(hf, str) else tuple(hf), ne, op, need)


def _wb(gguf: str, hf, ne: str, w_op: str = "", bias: str = OPTIONAL, b_op: str = "") -> Tuple[TensorRule, ...]:
    """A weight and its bias (`bias`: REQUIRED, OPTIONAL or "" for none)."""
    hfs = (hf,) if isinstance(hf, str) else tuple(hf)
    out = [_r(gguf + ".weight", [h + ".weight" for h in hfs], ne, w_op)]
    if bias:
        out.append(_r(gguf + ".bias", [h + ".bias" for h in hfs], ne.split(",")[-1], b_op, bias))
    return tuple(out)


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str                          # general.architecture
    layer_prefix: str                       # HF prefix of layer i's tensors ("{i}" the index)
    globals: Tuple[TensorRule, ...]         # before the layers: embeddings
    layer: Tuple[TensorRule, ...]
    tail: Tuple[TensorRule, ...]            # after the layers: output norm, output
    keys: Tuple[str, ...]                   # "{arch}." keys written (values: HFParams.gguf_values)
    activations: Tuple[str, ...]            # accepted FFN activations of config.json
    rope: str = "neox"                      # "normal": q/k rows permuted; "neox": kept; "none"
    norm: str = "rms"                       # "rms" (rms_norm_eps) or "layer" (LayerNorm eps)
    norm_shift: float = 0.0                 # added to every *norm.weight (Gemma: x * (1 + w))
    powerinfer: bool = False                # has a PowerInfer layout (ReLU FFN, ffn_down_t)
    gated_both: bool = False                # act(gate) * act(up) (bamboo)
    ignored: Tuple[str, ...] = ()           # HF tensors that hold nothing a GGUF stores
    aliases: Tuple[Tuple[str, str], ...] = ()   # HF name prefixes read as another (old layouts)
    spm_add_space_prefix: Optional[bool] = None  # tokenizer.ggml.add_space_prefix of SPM vocabs

    @property
    def permute_qk(self) -> bool:
        return self.rope == "normal"

    @property
    def moe(self) -> bool:
        """Its layers hold a router and stacked experts (config.json gives their counts)."""
        return any(t.gguf == "ffn_gate_inp.weight" for t in self.layer)


# ---- the tables -------------------------------------------------------------------------------

_ROPE_IGNORED = ("{L}self_attn.rotary_emb.inv_freq",)
_LM_EMBD = (_r("token_embd.weight", "model.embed_tokens.weight", "E,V"),)
_LM_TAIL = (_r("output_norm.weight", "model.norm.weight", "E"),
            _r("output.weight", "lm_head.weight", "E,V", need=UNTIED))
_LM_TAIL_BIASED = (*_wb("output_norm", "model.norm", "E"),
                   _r("output.weight", "lm_head.weight", "E,V", need=UNTIED))

_ATTN = (
    *_wb("attn_q", "self_attn.q_proj", "E,Q", "rope_q", OPTIONAL, "rope_q"),
    *_wb("attn_k", "self_attn.k_proj", "E,K", "rope_k", OPTIONAL, "rope_k"),
    *_wb("attn_v", "self_attn.v_proj", "E,K"),
)
_GATED_FFN = (
    _r("ffn_gate.weight", "mlp.gate_proj.weight", "E,F"),
    _r("ffn_up.weight", "mlp.up_proj.weight", "E,F"),
    _r("ffn_down.weight", "mlp.down_proj.weight", "F,E"),
)
_LLAMA_LAYER = (
    _r("attn_norm.weight", "input_layernorm.weight", "E"),
    *_ATTN,
    _r("attn_output.weight", "self_attn.o_proj.weight", "Q,E"),
    _r("ffn_norm.weight", "post_attention_layernorm.weight", "E"),
    *_GATED_FFN,
)
_QK_NORM = (_r("attn_q_norm.weight", "self_attn.q_norm.weight", "D"),
            _r("attn_k_norm.weight", "self_attn.k_norm.weight", "D"))
_GEMMA_LAYER = (
    _r("attn_norm.weight", "input_layernorm.weight", "E"),
    *_ATTN,
    _r("attn_output.weight", "self_attn.o_proj.weight", "Q,E"),
    _r("post_attention_norm.weight", "post_attention_layernorm.weight", "E"),
    _r("ffn_norm.weight", "pre_feedforward_layernorm.weight", "E"),
    _r("post_ffw_norm.weight", "post_feedforward_layernorm.weight", "E"),
    *_GATED_FFN,
)


def _required_biases(rules: Tuple[TensorRule, ...]) -> Tuple[TensorRule, ...]:
    return tuple(TensorRule(t.gguf, t.hf, t.ne, t.op, REQUIRED)
                 if t.gguf in ("attn_q.bias", "attn_k.bias", "attn_v.bias") else t for t in rules)


def _experts(prefix: str, names: Tuple[str, str, str], router: str, fused: bool = False) -> Tuple[TensorRule, ...]:
    """The router ({E, X}) and the stacked experts of an MoE layer, HF names
    `prefix`{x}.`name`.weight for the gate, up and down projections; with `fused`, also
    `prefix`gate_up_proj ([X, 2G, E]: each expert's gate rows, then its up rows) and
    `prefix`down_proj ([X, E, G]), with or without ".weight", as llama.cpp's Qwen2MoeModel
    reads them."""
    gate, up, down = (f"{prefix}{{x}}.{n}.weight" for n in names)

    def one(gguf: str, hf: str, ne: str, stacked: str = "", op: str = "") -> TensorRule:
        alts = (prefix + stacked, prefix + stacked + ".weight") if fused else ()
        return TensorRule(gguf, (hf,), ne, fused=alts, fused_op=op)
    return (_r("ffn_gate_inp.weight", router, "E,X"),
            one("ffn_gate_exps.weight", gate, "E,G,X", "gate_up_proj", "gate_half"),
            one("ffn_up_exps.weight", up, "E,G,X", "gate_up_proj", "up_half"),
            one("ffn_down_exps.weight", down, "G,E,X", "down_proj"))


_ATTN_NORMS = (_r("attn_norm.weight", "input_layernorm.weight", "E"),)
_ATTN_OUT_FFN_NORM = (_r("attn_output.weight", "self_attn.o_proj.weight", "Q,E"),
             _r("ffn_norm.weight", "post_attention_layernorm.weight", "E"))
_QWEN_EXPERTS = _experts("mlp.experts.", ("gate_proj", "up_proj", "down_proj"), "mlp.gate.weight", fused=True)
_OLMOE_EXPERTS = _experts("mlp.experts.", ("gate_proj", "up_proj", "down_proj"), "mlp.gate.weight")
_SHARED_EXPERT = (
    _r("ffn_gate_inp_shexp.weight", "mlp.shared_expert_gate.weight", "E,1"),
    _r("ffn_gate_shexp.weight", "mlp.shared_expert.gate_proj.weight", "E,S"),
    _r("ffn_up_shexp.weight", "mlp.shared_expert.up_proj.weight", "E,S"),
    _r("ffn_down_shexp.weight", "mlp.shared_expert.down_proj.weight", "S,E"),
)
_MOE_KEYS = ("expert_count", "expert_used_count")

_LM_KEYS = ("context_length", "embedding_length", "block_count", "feed_forward_length",
            "attention.head_count", "attention.head_count_kv", "rope.freq_base",
            "attention.layer_norm_rms_epsilon", "attention.key_length", "attention.value_length")
_SILU = ("silu",)
_SILU_RELU = ("silu", "relu", "fatrelu")
_GELU = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python")

ARCH_SPECS: Dict[str, ArchSpec] = {
    "llama": ArchSpec(
        "llama", "model.layers.{i}.", _LM_EMBD, _LLAMA_LAYER, _LM_TAIL,
        _LM_KEYS + ("vocab_size", "rope.dimension_count", "attention.sliding_window"),
        _SILU_RELU, rope="normal", powerinfer=True, ignored=_ROPE_IGNORED),
    "bamboo": ArchSpec(
        "bamboo", "model.layers.{i}.", _LM_EMBD, _LLAMA_LAYER, _LM_TAIL,
        _LM_KEYS + ("vocab_size", "rope.dimension_count"), ("relu", "fatrelu"), rope="normal", powerinfer=True,
        gated_both=True, ignored=_ROPE_IGNORED),
    "qwen2": ArchSpec(
        "qwen2", "model.layers.{i}.", _LM_EMBD, _required_biases(_LLAMA_LAYER), _LM_TAIL, _LM_KEYS,
        _SILU, ignored=_ROPE_IGNORED),
    "qwen3": ArchSpec(
        "qwen3", "model.layers.{i}.", _LM_EMBD, _LLAMA_LAYER + _QK_NORM, _LM_TAIL, _LM_KEYS, _SILU,
        ignored=_ROPE_IGNORED),
    "gemma2": ArchSpec(
        "gemma2", "model.layers.{i}.", _LM_EMBD, _GEMMA_LAYER, _LM_TAIL[:1],
        ("context_length", "embedding_length", "block_count", "feed_forward_length",
         "attention.head_count", "attention.head_count_kv", "rope.freq_base",
         "attention.layer_norm_rms_epsilon", "attention.key_length", "attention.value_length",
         "attn_logit_softcapping", "final_logit_softcapping", "attention.sliding_window",
         "attention.sliding_window_pattern"),
        ("gelu_pytorch_tanh", "gelu"), norm_shift=1.0, ignored=("lm_head.weight",),
        spm_add_space_prefix=False),
    "gemma3": ArchSpec(
        "gemma3", "model.layers.{i}.", _LM_EMBD, _GEMMA_LAYER + _QK_NORM, _LM_TAIL[:1],
        _LM_KEYS + ("rope.freq_base_swa", "final_logit_softcapping", "attention.sliding_window",
                    "attention.sliding_window_pattern"),
        ("gelu_pytorch_tanh", "gelu"), norm_shift=1.0, ignored=("lm_head.weight",),
        spm_add_space_prefix=False),
    "phi3": ArchSpec(
        "phi3", "model.layers.{i}.", _LM_EMBD,
        (_r("attn_norm.weight", "input_layernorm.weight", "E"),
         _r("attn_qkv.weight", "self_attn.qkv_proj.weight", "E,Q+2K"),
         _r("attn_output.weight", "self_attn.o_proj.weight", "Q,E"),
         _r("ffn_norm.weight", "post_attention_layernorm.weight", "E"),
         _r("ffn_up.weight", "mlp.gate_up_proj.weight", "E,2F"),
         _r("ffn_down.weight", "mlp.down_proj.weight", "F,E")),
        _LM_TAIL,
        ("context_length", "rope.scaling.original_context_length", "embedding_length",
         "feed_forward_length", "block_count", "attention.head_count", "attention.head_count_kv",
         "attention.layer_norm_rms_epsilon", "rope.dimension_count", "rope.freq_base",
         "attention.sliding_window", "rope.scaling.attn_factor"),
        _SILU, ignored=_ROPE_IGNORED),
    "stablelm": ArchSpec(
        "stablelm", "model.layers.{i}.", _LM_EMBD,
        (*_wb("attn_norm", "input_layernorm", "E", bias=REQUIRED),
         *_ATTN,
         _r("attn_output.weight", "self_attn.o_proj.weight", "Q,E"),
         *_wb("ffn_norm", "post_attention_layernorm", "E", bias=REQUIRED),
         *_GATED_FFN),
        _LM_TAIL_BIASED,
        ("context_length", "embedding_length", "block_count", "feed_forward_length",
         "rope.dimension_count", "attention.head_count", "attention.head_count_kv", "rope.freq_base",
         "use_parallel_residual", "attention.layer_norm_epsilon"),
        _SILU, norm="layer", ignored=_ROPE_IGNORED),
    "starcoder2": ArchSpec(
        "starcoder2", "model.layers.{i}.", _LM_EMBD,
        (*_wb("attn_norm", "input_layernorm", "E", bias=REQUIRED),
         *_ATTN,
         *_wb("attn_output", "self_attn.o_proj", "Q,E"),
         *_wb("ffn_norm", "post_attention_layernorm", "E", bias=REQUIRED),
         *_wb("ffn_up", "mlp.c_fc", "E,F"),
         *_wb("ffn_down", "mlp.c_proj", "F,E")),
        _LM_TAIL_BIASED,
        ("block_count", "context_length", "embedding_length", "feed_forward_length",
         "attention.head_count", "attention.head_count_kv", "rope.freq_base", "attention.layer_norm_epsilon"),
        _GELU, norm="layer", ignored=_ROPE_IGNORED),
    "falcon": ArchSpec(
        "falcon", "transformer.h.{i}.",
        (_r("token_embd.weight", "transformer.word_embeddings.weight", "E,V"),),
        (*_wb("attn_norm", ("input_layernorm", "ln_mlp"), "E", bias=REQUIRED),
         _r("attn_norm_2.weight", "ln_attn.weight", "E", need=OPTIONAL),
         _r("attn_norm_2.bias", "ln_attn.bias", "E", need=OPTIONAL),
         *_wb("attn_qkv", "self_attention.query_key_value", "E,Q+2K", "falcon_qkv", OPTIONAL, "falcon_qkv"),
         *_wb("attn_output", "self_attention.dense", "Q,E"),
         *_wb("ffn_up", "mlp.dense_h_to_4h", "E,F"),
         *_wb("ffn_down", "mlp.dense_4h_to_h", "F,E")),
        (*_wb("output_norm", "transformer.ln_f", "E", bias=REQUIRED),
         _r("output.weight", "lm_head.weight", "E,V", need=UNTIED)),
        ("context_length", "tensor_data_layout", "embedding_length", "feed_forward_length", "block_count",
         "attention.head_count", "attention.head_count_kv", "attention.layer_norm_epsilon", "rope.freq_base"),
        ("gelu", "relu"), norm="layer", powerinfer=True),
    "gptneox": ArchSpec(
        "gptneox", "gpt_neox.layers.{i}.",
        (_r("token_embd.weight", "gpt_neox.embed_in.weight", "E,V"),),
        (*_wb("attn_norm", "input_layernorm", "E", bias=REQUIRED),
         *_wb("attn_qkv", "attention.query_key_value", "E,Q+2K", "neox_qkv", OPTIONAL, "neox_qkv"),
         *_wb("attn_output", "attention.dense", "Q,E"),
         *_wb("ffn_norm", "post_attention_layernorm", "E", bias=REQUIRED),
         *_wb("ffn_up", "mlp.dense_h_to_4h", "E,F"),
         *_wb("ffn_down", "mlp.dense_4h_to_h", "F,E")),
        (*_wb("output_norm", "gpt_neox.final_layer_norm", "E", bias=REQUIRED),
         _r("output.weight", "embed_out.weight", "E,V", need=UNTIED)),
        ("context_length", "embedding_length", "block_count", "feed_forward_length", "rope.dimension_count",
         "attention.head_count", "use_parallel_residual", "attention.layer_norm_epsilon", "rope.freq_base"),
        _GELU, norm="layer",
        ignored=("{L}attention.bias", "{L}attention.masked_bias", "{L}attention.rotary_emb.inv_freq")),
    "opt": ArchSpec(
        "opt", "model.decoder.layers.{i}.",
        (_r("token_embd.weight", "model.decoder.embed_tokens.weight", "E,V"),
         _r("position_embd.weight", "model.decoder.embed_positions.weight", "E,P")),
        (*_wb("attn_norm", "self_attn_layer_norm", "E", bias=REQUIRED),
         *_wb("attn_q", "self_attn.q_proj", "E,Q", bias=REQUIRED),
         *_wb("attn_k", "self_attn.k_proj", "E,K", bias=REQUIRED),
         *_wb("attn_v", "self_attn.v_proj", "E,K", bias=REQUIRED),
         *_wb("attn_output", "self_attn.out_proj", "Q,E", bias=REQUIRED),
         *_wb("ffn_norm", "final_layer_norm", "E", bias=REQUIRED),
         *_wb("ffn_up", "fc1", "E,F", bias=REQUIRED),
         *_wb("ffn_down", "fc2", "F,E", bias=REQUIRED)),
        (*_wb("output_norm", "model.decoder.final_layer_norm", "E", bias=REQUIRED),
         _r("output.weight", "lm_head.weight", "E,V", need=UNTIED)),
        ("context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
         "attention.head_count_kv", "attention.layer_norm_epsilon"),
        ("relu",), rope="none", norm="layer", powerinfer=True, aliases=(("decoder.", "model.decoder."),)),
    # mixtures of experts; "expert_weights_norm" is written only where config.json's
    # norm_topk_prob differs from what llama.cpp's graph does for the architecture
    "mixtral": ArchSpec(
        "llama", "model.layers.{i}.", _LM_EMBD,
        _ATTN_NORMS + _ATTN + _ATTN_OUT_FFN_NORM
        + _experts("block_sparse_moe.experts.", ("w1", "w3", "w2"), "block_sparse_moe.gate.weight"),
        _LM_TAIL,
        _LM_KEYS + ("vocab_size", "rope.dimension_count", "attention.sliding_window") + _MOE_KEYS,
        _SILU, rope="normal", ignored=_ROPE_IGNORED),
    "qwen2moe": ArchSpec(
        "qwen2moe", "model.layers.{i}.", _LM_EMBD,
        _ATTN_NORMS + _ATTN + _ATTN_OUT_FFN_NORM + _QWEN_EXPERTS + _SHARED_EXPERT, _LM_TAIL,
        _LM_KEYS + _MOE_KEYS + ("expert_feed_forward_length", "expert_shared_feed_forward_length",
                                "expert_weights_norm"),
        _SILU, ignored=_ROPE_IGNORED),
    "qwen3moe": ArchSpec(
        "qwen3moe", "model.layers.{i}.", _LM_EMBD, _ATTN_NORMS + _ATTN + _ATTN_OUT_FFN_NORM + _QK_NORM + _QWEN_EXPERTS,
        _LM_TAIL, _LM_KEYS + _MOE_KEYS + ("expert_feed_forward_length", "expert_weights_norm"),
        _SILU, ignored=_ROPE_IGNORED),
    "olmoe": ArchSpec(
        "olmoe", "model.layers.{i}.", _LM_EMBD,
        _ATTN_NORMS + _ATTN + _ATTN_OUT_FFN_NORM
        + (_r("attn_q_norm.weight", "self_attn.q_norm.weight", "Q"),
           _r("attn_k_norm.weight", "self_attn.k_norm.weight", "K"))
        + _OLMOE_EXPERTS,
        _LM_TAIL, _LM_KEYS + _MOE_KEYS + ("expert_weights_norm",), _SILU, ignored=_ROPE_IGNORED),
}
# the top-k normalisation llama.cpp's graph hard-codes per architecture (build_moe_ffn's norm_w)
MOE_NORM = {"llama": True, "qwen2moe": False, "qwen3moe": True, "olmoe": False}

# config.json "architectures"[0] -> key of ARCH_SPECS
HF_ARCHITECTURES: Dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "BambooForCausalLM": "bamboo",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
    "StableLmForCausalLM": "stablelm",
    "Starcoder2ForCausalLM": "starcoder2",
    "FalconForCausalLM": "falcon",
    "RWForCausalLM": "falcon",
    "GPTNeoXForCausalLM": "gptneox",
    "OPTForCausalLM": "opt",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2moe",
    "Qwen3MoeForCausalLM": "qwen3moe",
    "OlmoeForCausalLM": "olmoe",
}
# config.json "model_type", used when "architectures" is absent
HF_MODEL_TYPES: Dict[str, str] = {
    "llama": "llama", "mistral": "llama", "bamboo": "bamboo", "qwen2": "qwen2", "qwen3": "qwen3",
    "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3", "stablelm": "stablelm",
    "starcoder2": "starcoder2", "falcon": "falcon", "gpt_neox": "gptneox", "opt": "opt",
    "mixtral": "mixtral", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "olmoe": "olmoe",
}


def detect_arch(cfg: dict) -> Tuple[str, ArchSpec]:
    """(the HF architecture name, its ArchSpec); bamboo's model_type wins over architectures."""
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


# ---- shapes ------------------------------------------------------------------------------------

_TERM = re.compile(r"^(\d*)([A-Z]?)$")


def eval_ne(ne: str, dims: Dict[str, int]) -> Tuple[int, ...]:
    """A shape string ("E,Q+2K") with the sizes of `dims` ({"E": 64, ...})."""
    out = []
    for dim in ne.split(","):
        total = 0
        for term in dim.split("+"):
            m = _TERM.match(term.strip())
            if not m:
                raise ValueError(f"bad shape term {term!r} in {ne!r}")
            if not m.group(2):
                if not m.group(1):
                    raise ValueError(f"bad shape term {term!r} in {ne!r}")
                total += int(m.group(1))
                continue
            total += int(m.group(1) or 1) * dims[m.group(2)]
        out.append(total)
    return tuple(out)


# ---- planning ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedTensor:
    name: str                       # GGUF name
    ne: Tuple[int, ...]             # ggml shape, innermost first
    source: str                     # HF tensor name (in the model or predictor checkpoint); "" generated
    from_predictor: bool = False
    op: str = ""                    # rope_q, rope_k, falcon_qkv, neox_qkv, transpose, norm_shift
    experts: Tuple[str, ...] = ()   # stacked experts: the HF tensor of each (source is the first)


def source_shape(t: PlannedTensor) -> Tuple[int, ...]:
    """The PyTorch shape the source tensor must have for `t`."""
    if t.op == "transpose":
        return tuple(t.ne)                  # [E, F] in torch order is ne {E, F} transposed
    if t.experts:
        return tuple(reversed(t.ne[:-1]))   # each expert's matrix
    if t.op in ("gate_half", "up_half"):
        return (t.ne[2], 2 * t.ne[1], t.ne[0])   # every expert's gate and up rows
    return tuple(reversed(t.ne))


def canonical_name(spec: ArchSpec, name: str) -> str:
    """`name` with the architecture's old-layout prefixes rewritten (OPT's "decoder.")."""
    for old, new in spec.aliases:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _patterns(spec: ArchSpec) -> List["re.Pattern[str]"]:
    """Regexes of every HF name the map knows (mapped or ignored), layer index as group 1
    (an expert's index as group "x")."""
    lp = re.escape(spec.layer_prefix).replace(r"\{i\}", r"(\d+)")
    pats = [re.escape(h) for t in spec.globals + spec.tail for h in t.hf]
    pats += [lp + re.escape(h).replace(r"\{x\}", r"(?P<x>\d+)") for t in spec.layer for h in t.hf + t.fused]
    pats += [re.escape(g).replace(re.escape("{L}"), lp) if g.startswith("{L}") else re.escape(g)
             for g in spec.ignored]
    return [re.compile("^" + p + "$") for p in pats]


def check_names(spec: ArchSpec, names, n_layer: int, n_expert: int = 0) -> Optional[str]:
    """The first checkpoint tensor the map does not know (or of a layer >= n_layer, or an
    expert >= n_expert), with why."""
    pats = _patterns(spec)
    for name in names:
        m = next((m for m in (p.match(name) for p in pats) if m), None)
        if m is None:
            return f"unexpected tensor '{name}' in the checkpoint: no GGUF name for it in " \
                   f"architecture {spec.gguf_arch}"
        if m.groups() and m.group(1) is not None and int(m.group(1)) >= n_layer:
            return f"tensor '{name}' belongs to layer {m.group(1)}, but config.json has " \
                   f"num_hidden_layers = {n_layer}"
        if m.groupdict().get("x") is not None and int(m.group("x")) >= n_expert:
            return f"tensor '{name}' belongs to expert {m.group('x')}, but config.json has " \
                   f"{n_expert} experts"
    return None


def _pick(t: TensorRule, present, prefix: str = "") -> Optional[str]:
    for h in t.hf:
        if prefix + h in present:
            return prefix + h
    return None


def plan_rules(spec: ArchSpec, dims: Dict[str, int], n_layer: int, present, tied: Optional[bool],
               sparse: bool, pred_hidden: Optional[List[int]] = None) -> Tuple[List[PlannedTensor], List[str]]:
    """(GGUF tensors in file order, HF names of required tensors that are missing).
    `present`: the checkpoint's names; `tied`: config.json's tie_word_embeddings (None: unstated);
    `sparse`: PowerInfer layout; `pred_hidden`: per layer, the hidden size of its predictor."""
    planned: List[PlannedTensor] = []
    missing: List[str] = []

    def add(t: TensorRule, prefix: str, gguf_prefix: str) -> None:
        if any("{x}" in h for h in t.hf):
            add_experts(t, prefix, gguf_prefix)
            return
        src = _pick(t, present, prefix)
        need = t.need
        if need == UNTIED:
            need = OPTIONAL if tied is not False else REQUIRED
        if src is None:
            if need == REQUIRED:
                missing.append(prefix + t.hf[0])
            return
        name, op = gguf_prefix + t.gguf, t.op
        if spec.norm_shift and name.endswith("norm.weight"):
            op = "norm_shift"
        ne = eval_ne(t.ne, dims)
        if sparse and t.gguf.startswith("ffn_down."):
            name = name.replace("ffn_down.", "ffn_down_t.")
            if t.gguf.endswith(".weight"):
                ne, op = (ne[1], ne[0]), "transpose"
        planned.append(PlannedTensor(name, ne, src, op=op))

    def add_experts(t: TensorRule, prefix: str, gguf_prefix: str) -> None:
        stacked = _pick(TensorRule(t.gguf, t.fused, t.ne), present, prefix) if t.fused else None
        first = _pick(TensorRule(t.gguf, tuple(h.replace("{x}", "0") for h in t.hf), t.ne), present, prefix)
        if stacked is not None and first is None:
            planned.append(PlannedTensor(gguf_prefix + t.gguf, eval_ne(t.ne, dims), stacked, op=t.fused_op))
            return
        srcs = []
        for x in range(dims["X"]):
            one = TensorRule(t.gguf, tuple(h.replace("{x}", str(x)) for h in t.hf), t.ne)
            src = _pick(one, present, prefix)
            if src is None:
                missing.append(prefix + one.hf[0])
                return
            srcs.append(src)
        planned.append(PlannedTensor(gguf_prefix + t.gguf, eval_ne(t.ne, dims), srcs[0], op=t.op,
                                     experts=tuple(srcs)))

    for t in spec.globals:
        add(t, "", "")
    for i in range(n_layer):
        for t in spec.layer:
            add(t, spec.layer_prefix.replace("{i}", str(i)), f"blk.{i}.")
        if pred_hidden is not None:
            planned += predictor_tensors(i, dims["E"], dims["F"], pred_hidden[i])
    for t in spec.tail:
        add(t, "", "")
    return planned, missing


def predictor_tensors(i: int, n_embd: int, n_ff: int, hidden: int) -> List[PlannedTensor]:
    """PowerInfer's predictor of layer i: fc1 (ne {E, H}) and fc2 (ne {H, F})."""
    return [PlannedTensor(f"blk.{i}.fc1.weight", (n_embd, hidden), f"{i}.fc1.weight", True),
            PlannedTensor(f"blk.{i}.fc2.weight", (hidden, n_ff), f"{i}.fc2.weight", True)]
