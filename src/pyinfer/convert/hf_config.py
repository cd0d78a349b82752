"""config.json (+ generation_config.json) -> the hyper-parameters a GGUF needs.

Accepts what old and current ``transformers`` versions write: ``rope_theta`` at
the top level, inside ``rope_parameters`` (transformers >= 5, also per layer
type as Gemma 3 writes it) or inside ``rope_scaling``; scaling described by
``type`` or ``rope_type``; each architecture's names for the same value
(``num_kv_heads``, ``layer_norm_epsilon``, ``ffn_dim``, ``rotary_pct`` ...).
``HFParams.gguf_values`` gives the value of every GGUF key an architecture
writes, computed as llama.cpp's converter computes it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .tensor_map import MOE_NORM, ArchSpec, detect_arch


class ConfigError(ValueError):
    """config.json lacks a value or holds one this converter cannot represent."""


# the keys of an architecture's hyper-parameters, as the HFParams field they come from
# (None values are not written); RoPE scaling keys are written by hf_to_gguf itself
GGUF_KEYS: Dict[str, str] = {
    "context_length": "n_ctx", "embedding_length": "n_embd", "block_count": "n_layer",
    "feed_forward_length": "n_ff", "attention.head_count": "n_head", "attention.head_count_kv": "n_head_kv",
    "attention.key_length": "key_length", "attention.value_length": "key_length",
    "attention.layer_norm_rms_epsilon": "rms_eps", "attention.layer_norm_epsilon": "norm_eps",
    "rope.freq_base": "rope_theta", "rope.freq_base_swa": "rope_theta_swa", "rope.dimension_count": "rope_dims",
    "attention.sliding_window": "sliding_window", "attention.sliding_window_pattern": "swa_pattern",
    "attn_logit_softcapping": "attn_softcap", "final_logit_softcapping": "final_softcap",
    "use_parallel_residual": "parallel_residual", "tensor_data_layout": "tensor_data_layout",
    "vocab_size": "n_vocab", "rope.scaling.original_context_length": "orig_ctx",
    "rope.scaling.attn_factor": "rope_attn_factor",
    "expert_count": "n_expert", "expert_used_count": "n_expert_used", "expert_feed_forward_length": "n_ff_exp",
    "expert_shared_feed_forward_length": "n_ff_shexp", "expert_weights_norm": "expert_weights_norm",
}
# llama.cpp's period of local/global attention layers (load_swa_pattern's default): the
# converter writes attention.sliding_window_pattern only when layer_types differs from it
SWA_PERIODS = {"gemma2": 2, "gemma3": 6}


@dataclass
class HFParams:
    arch: ArchSpec
    hf_arch: str                # architectures[0] (or model_type)
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rms_eps: Optional[float]    # RMSNorm architectures
    n_ctx: int
    rope_theta: Optional[float]                                  # None: no RoPE (OPT)
    rope_scaling: Dict[str, Any] = field(default_factory=dict)   # {} when none
    tie_embeddings: Optional[bool] = None                        # None: not stated
    hidden_act: str = "silu"
    key_length: Optional[int] = None     # head_dim when config.json states it
    norm_eps: Optional[float] = None     # LayerNorm architectures
    rope_dims: Optional[int] = None      # rotated dimensions per head (partial rotary)
    n_pos: int = 0                       # rows of a learned position table (OPT: positions + 2)
    sliding_window: Optional[int] = None
    swa_pattern: Optional[List[int]] = None   # per layer 1 = local, only when not the default
    rope_theta_swa: Optional[float] = None
    attn_softcap: Optional[float] = None
    final_softcap: Optional[float] = None
    parallel_residual: Optional[bool] = None
    tensor_data_layout: Optional[str] = None
    orig_ctx: Optional[int] = None
    rope_attn_factor: Optional[float] = None
    rope_factors: Dict[str, List[float]] = field(default_factory=dict)  # LongRoPE: long, short
    n_expert: int = 0                    # mixture of experts: experts per layer
    n_expert_used: Optional[int] = None  # ... run per token
    n_ff_exp: Optional[int] = None       # an expert's FFN size (written where the GGUF has the key)
    n_ff_shexp: Optional[int] = None     # the shared expert's
    expert_weights_norm: Optional[bool] = None   # written only against llama.cpp's per-arch default
    name: str = ""
    generation: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict)

    @property
    def relu(self) -> bool:
        return self.hidden_act in ("relu", "fatrelu")

    @property
    def dims(self) -> Dict[str, int]:
        """The shape symbols of tensor_map (E, F, V, Q, K, D, P, X, G, S)."""
        return {"E": self.n_embd, "F": self.n_ff, "V": self.n_vocab, "Q": self.n_head * self.head_dim,
                "K": self.n_head_kv * self.head_dim, "D": self.head_dim, "P": self.n_pos,
                "X": self.n_expert, "G": self.n_ff_exp or self.n_ff, "S": self.n_ff_shexp or self.n_ff}

    def gguf_values(self) -> Dict[str, Any]:
        """"{arch}." key suffix -> value, for every key of the architecture that has one."""
        out = {k: getattr(self, GGUF_KEYS[k]) for k in self.arch.keys}
        if self.arch.gguf_arch == "phi3" and out.get("attention.sliding_window") is None:
            out["attention.sliding_window"] = 0          # llama.cpp's mark of "none" for Phi-3
        return {k: v for k, v in out.items() if v is not None}


def read_json(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        try:
            value = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: a JSON {type(value).__name__}, expected an object")
    return value


def _rope(cfg: Dict[str, Any]) -> tuple:
    """(theta, scaling dict with a normalised 'type' key or {}, theta of the local layers or
    None). Gemma 3 (transformers >= 5) nests them per layer type: full_attention for the
    global layers, sliding_attention for the local ones."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for key, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if not isinstance(value, dict):
            raise ConfigError(f"config.json: '{key}' must be an object, found {value!r:.40}")
    local = params.get("sliding_attention")
    if isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    theta = next((d[k] for d in (cfg, params, scaling) for k in ("rope_theta", "rotary_emb_base")
                  if d.get(k) is not None), 10000.0)
    theta = _number("rope_theta", theta, positive=True)
    local_theta = (local or {}).get("rope_theta", cfg.get("rope_local_base_freq"))
    if local_theta is not None:
        local_theta = _number("rope_local_base_freq", local_theta, positive=True)
    src = params if params.get("rope_type", params.get("type")) not in (None, "default") else scaling
    kind = src.get("rope_type", src.get("type"))
    if kind in (None, "default"):
        return theta, {}, local_theta
    out = dict(src)
    out["type"] = kind
    return theta, out, local_theta


def _rotary_fraction(cfg: Dict[str, Any]) -> float:
    """The fraction of each head RoPE rotates (partial_rotary_factor, GPT-NeoX's rotary_pct)."""
    params = cfg.get("rope_parameters") or {}
    for d, k in ((params, "partial_rotary_factor"), (cfg, "partial_rotary_factor"), (cfg, "rotary_pct")):
        if isinstance(d, dict) and d.get(k) is not None:
            v = _number(k, d[k], positive=True)
            if v > 1:
                raise ConfigError(f"config.json: '{k}' is {v}, must be at most 1")
            return v
    return 1.0


def _integer(key: str, v, minimum: int = 1) -> int:
    """An integer value of config.json (a float such as 64.0 is accepted), at least `minimum`."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"config.json: '{key}' must be an integer, found {v!r:.40}")
    if v < minimum:
        raise ConfigError(f"config.json: '{key}' is {v}, must be >= {minimum}")
    return v


def _number(key: str, v, positive: bool = False) -> float:
    """A finite number of config.json: > 0 with `positive`, else >= 0."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ConfigError(f"config.json: '{key}' must be a number, found {v!r:.40}")
    v = float(v)
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise ConfigError(f"config.json: '{key}' is {v}, must be a finite number {'>' if positive else '>='} 0")
    return v


def _check_scaling(s: Dict[str, Any]) -> None:
    """The RoPE scaling values this converter reads (with llama3_rope_factors' defaults)."""
    llama3 = s["type"] == "llama3"
    _number("rope_scaling.factor", s.get("factor", 8.0 if llama3 else None), positive=True)
    if "original_max_position_embeddings" in s or llama3:
        _integer("rope_scaling.original_max_position_embeddings",
                 s.get("original_max_position_embeddings", 8192))
    if llama3:
        low = _number("rope_scaling.low_freq_factor", s.get("low_freq_factor", 1.0), positive=True)
        high = _number("rope_scaling.high_freq_factor", s.get("high_freq_factor", 4.0), positive=True)
        if high <= low:
            raise ConfigError(f"config.json: rope_scaling.high_freq_factor ({high}) must be greater than "
                              f"low_freq_factor ({low})")


def _check_types(cfg: Dict[str, Any]) -> None:
    archs = cfg.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise ConfigError(f"config.json: 'architectures' must be a list of names, found {archs!r:.40}")
    if cfg.get("model_type") is not None and not isinstance(cfg["model_type"], str):
        raise ConfigError(f"config.json: 'model_type' must be a string, found {cfg['model_type']!r:.40}")


def _first(cfg: Dict[str, Any], keys: Tuple[str, ...]) -> Tuple[Optional[str], Any]:
    """(key, value) of the first of `keys` config.json sets to a non-null value."""
    return next(((k, cfg[k]) for k in keys if cfg.get(k) is not None), (None, None))


def load_params(model_dir: str) -> HFParams:
    """The hyper-parameters of config.json, refusing (ConfigError, naming the key) every value
    the GGUF loader would refuse: sizes < 1, head counts that do not divide, an odd or
    inconsistent head size, RoPE theta or scaling factor <= 0 or not finite, a negative
    norm epsilon, and the model variants the architecture's GGUF cannot describe."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{model_dir} has no config.json")
    cfg = read_json(path)
    if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    _check_types(cfg)
    arch_name, spec = detect_arch(cfg)
    arch = spec.gguf_arch

    def need(*keys, default=None):
        k, v = _first(cfg, keys)
        if k is None:
            if default is not None:
                return default
            raise ConfigError(f"config.json lacks '{keys[0]}'")
        return _integer(k, v)

    n_embd = need("hidden_size", "n_embd")
    n_head = need("num_attention_heads", "n_head")
    if arch == "falcon" and cfg.get("multi_query", True) and not cfg.get("new_decoder_architecture"):
        n_head_kv = 1                                   # Falcon-7B: one K/V head (multi-query)
    else:
        n_head_kv = need("num_key_value_heads", "num_kv_heads", "n_head_kv", default=n_head)
    if n_head % n_head_kv:
        raise ConfigError(f"config.json: num_attention_heads ({n_head}) is not a multiple of "
                          f"num_key_value_heads ({n_head_kv})")
    head_dim = cfg.get("head_dim")
    if head_dim:
        head_dim = _integer("head_dim", head_dim)
    elif n_embd % n_head:
        raise ConfigError(f"config.json: hidden_size ({n_embd}) is not a multiple of "
                          f"num_attention_heads ({n_head}), and no head_dim is given")
    dim = int(head_dim) if head_dim else n_embd // n_head
    if dim % 2 and spec.rope != "none":
        raise ConfigError(f"config.json: the head size {dim} is odd; RoPE rotates pairs")
    _, act = _first(cfg, ("hidden_act", "hidden_activation", "activation", "activation_function"))
    act = str(act or spec.activations[0]).lower()
    if act not in spec.activations:
        raise ConfigError(f"hidden_act {act!r} is not supported for {arch_name} "
                          f"(supported: {', '.join(spec.activations)})")
    theta, scaling, theta_swa = _rope(cfg)
    allowed = ("longrope", "su") if arch == "phi3" else ("linear", "llama3", "yarn")
    if scaling and scaling["type"] not in allowed:
        raise ConfigError(f"RoPE scaling {scaling['type']!r} is not supported for {arch_name} "
                          f"({', '.join(allowed)} are)")
    if scaling and arch != "phi3":
        _check_scaling(scaling)
    tie = cfg.get("tie_word_embeddings")
    if tie is not None and not isinstance(tie, bool):
        raise ConfigError(f"config.json: 'tie_word_embeddings' must be true or false, found {tie!r:.40}")
    _refuse_variants(cfg, arch, arch_name, n_embd)
    ctx_key, n_ctx = _first(cfg, ("max_position_embeddings", "max_sequence_length", "n_positions"))
    n_ctx = 2048 if ctx_key is None else _integer(ctx_key, n_ctx)
    p = HFParams(
        arch=spec,
        hf_arch=arch_name,
        n_vocab=need("vocab_size"),
        n_embd=n_embd,
        n_layer=need("num_hidden_layers", "n_layer"),
        n_ff=need("intermediate_size", "ffn_hidden_size", "ffn_dim", default=4 * n_embd if arch == "falcon" else None),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=dim,
        rms_eps=None,
        n_ctx=n_ctx,
        rope_theta=None if spec.rope == "none" else theta,
        rope_scaling=scaling,
        tie_embeddings=tie,
        hidden_act=act,
        key_length=dim if head_dim else None,
        name=_model_name(cfg, model_dir),
        raw=cfg,
    )
    _arch_values(p, cfg, theta_swa)
    gen_path = os.path.join(model_dir, "generation_config.json")
    p.generation = read_json(gen_path) if os.path.isfile(gen_path) else {}
    return p


def _refuse_variants(cfg: Dict[str, Any], arch: str, arch_name: str, n_embd: int) -> None:
    """Model variants whose GGUF would need tensors or math the architecture does not have."""
    bad = None
    if arch == "falcon" and cfg.get("alibi"):
        bad = "ALiBi position biases (alibi = true)"
    elif arch == "falcon" and cfg.get("parallel_attn") is False:
        bad = "sequential attention and MLP (parallel_attn = false)"
    elif arch == "opt" and cfg.get("do_layer_norm_before") is False:
        bad = "post-layer norms (do_layer_norm_before = false)"
    elif arch == "opt" and cfg.get("word_embed_proj_dim", n_embd) != n_embd:
        bad = f"projected embeddings (word_embed_proj_dim {cfg['word_embed_proj_dim']} != hidden_size {n_embd})"
    elif arch == "opt" and cfg.get("_remove_final_layer_norm"):
        bad = "no final layer norm (_remove_final_layer_norm = true)"
    elif arch == "stablelm" and cfg.get("qk_layernorm"):
        bad = "per-head Q/K layer norms (qk_layernorm = true)"
    elif arch in ("qwen2moe", "qwen3moe") and cfg.get("mlp_only_layers"):
        bad = f"dense layers among the MoE ones (mlp_only_layers = {cfg['mlp_only_layers']!r:.40})"
    elif arch in ("qwen2moe", "qwen3moe") and cfg.get("decoder_sparse_step", 1) != 1:
        bad = f"MoE layers every {cfg['decoder_sparse_step']!r:.20} layers (decoder_sparse_step)"
    elif arch == "olmoe" and cfg.get("clip_qkv") is not None:
        bad = "clipped Q/K/V (clip_qkv)"
    if bad:
        raise ConfigError(f"{arch_name} with {bad} is not supported")


def _arch_values(p: HFParams, cfg: Dict[str, Any], theta_swa: Optional[float]) -> None:
    """The architecture-specific values of `p` (as llama.cpp's converter computes them)."""
    arch = p.arch.gguf_arch
    if p.arch.norm == "rms":
        p.rms_eps = _number("rms_norm_eps", 1e-6 if cfg.get("rms_norm_eps") is None   # transformers' default
                            else cfg["rms_norm_eps"])
    else:
        k, v = _first(cfg, ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon", "norm_eps"))
        p.norm_eps = _number(k or "layer_norm_eps", 1e-5 if v is None else v)     # OPT: LayerNorm's default
    if p.arch.rope != "none":
        p.rope_dims = int(_rotary_fraction(cfg) * p.head_dim)
        if p.rope_dims % 2:
            raise ConfigError(f"config.json: {p.rope_dims} rotated dimensions per head; RoPE rotates pairs")
    if arch == "opt":
        p.n_pos = p.n_ctx + 2                  # OPT's position table starts at offset 2
        p.n_ctx = p.n_pos                      # PowerInfer's context_length (2050 for 2048)
    if arch == "falcon":
        p.tensor_data_layout = "jploski"       # llama.cpp's name for the regrouped QKV (falcon_qkv)
    if arch in ("stablelm", "gptneox"):
        p.parallel_residual = bool(cfg.get("use_parallel_residual", arch == "gptneox"))
    window = cfg.get("sliding_window")
    if window is not None and cfg.get("use_sliding_window", True) is not False:
        p.sliding_window = _integer("sliding_window", window)
    if arch == "gemma3" and cfg.get("sliding_window_pattern") == 1:
        p.sliding_window = None                # every layer global (llama.cpp writes no window)
    if arch in SWA_PERIODS and p.sliding_window:
        p.swa_pattern = _swa_pattern(cfg.get("layer_types"), p.n_layer, SWA_PERIODS[arch])
    if arch == "gemma3":
        p.rope_theta_swa = theta_swa if theta_swa is not None else 10000.0
    for key, attr in (("attn_logit_softcapping", "attn_softcap"), ("final_logit_softcapping", "final_softcap")):
        if cfg.get(key) is not None:
            setattr(p, attr, _number(key, cfg[key]))
    if arch == "phi3":
        _phi3_rope(p, cfg)
    if p.arch.moe:
        _moe_values(p, cfg)


def _moe_values(p: HFParams, cfg: Dict[str, Any]) -> None:
    """Expert counts and sizes (llama.cpp's converter: num_local_experts or num_experts,
    num_experts_per_tok, moe_intermediate_size, shared_expert_intermediate_size), and
    norm_topk_prob where it differs from llama.cpp's graph for the architecture."""
    k, v = _first(cfg, ("num_local_experts", "num_experts"))
    if k is None:
        raise ConfigError("config.json lacks 'num_local_experts' (or 'num_experts')")
    p.n_expert = _integer(k, v)
    p.n_expert_used = _integer("num_experts_per_tok", cfg.get("num_experts_per_tok"))
    if p.n_expert_used > p.n_expert:
        raise ConfigError(f"config.json: num_experts_per_tok ({p.n_expert_used}) exceeds the "
                          f"{p.n_expert} experts")
    arch = p.arch.gguf_arch
    if arch in ("qwen2moe", "qwen3moe"):
        p.n_ff_exp = _integer("moe_intermediate_size", cfg.get("moe_intermediate_size"))
    if arch == "qwen2moe":
        p.n_ff_shexp = _integer("shared_expert_intermediate_size", cfg.get("shared_expert_intermediate_size"))
    norm = cfg.get("norm_topk_prob")
    if norm is not None and not isinstance(norm, bool):
        raise ConfigError(f"config.json: 'norm_topk_prob' must be true or false, found {norm!r:.40}")
    if norm is not None and norm != MOE_NORM[arch]:
        p.expert_weights_norm = norm


def _swa_pattern(layer_types, n_layer: int, period: int) -> Optional[List[int]]:
    """Per layer 1 (sliding) or 0 (global) from layer_types, None when it is llama.cpp's
    default pattern (layer i local iff i % period < period - 1) or unstated."""
    if layer_types is None:
        return None
    if not isinstance(layer_types, list) or len(layer_types) != n_layer:
        raise ConfigError(f"config.json: 'layer_types' must list one type per layer ({n_layer})")
    flags = [int(t == "sliding_attention") for t in layer_types]
    default = [int(i % period < period - 1) for i in range(n_layer)]
    return None if flags == default else flags


def _phi3_rope(p: HFParams, cfg: Dict[str, Any]) -> None:
    """Phi-3's original context and LongRoPE factors (llama.cpp's Phi3MiniModel)."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    orig = params.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
    if orig is None:
        raise ConfigError("config.json lacks 'original_max_position_embeddings' (Phi-3)")
    p.orig_ctx = _integer("original_max_position_embeddings", orig)
    if not p.rope_scaling:
        return
    long, short = p.rope_scaling.get("long_factor"), p.rope_scaling.get("short_factor")
    half = p.rope_dims // 2
    for name, f in (("long_factor", long), ("short_factor", short)):
        if not isinstance(f, list) or len(f) != half:
            raise ConfigError(f"config.json: rope_scaling.{name} must list {half} factors (rotated dims / 2)")
        for v in f:
            _number(f"rope_scaling.{name}", v, positive=True)
    scale = p.n_ctx / p.orig_ctx
    p.rope_attn_factor = math.sqrt(1 + math.log(scale) / math.log(p.orig_ctx)) if scale > 1.0 else 1.0
    p.rope_factors = {"long": [float(v) for v in long], "short": [float(v) for v in short]}


def _model_name(cfg: Dict[str, Any], model_dir: str) -> str:
    name = cfg.get("_name_or_path") or ""
    if not isinstance(name, str):
        name = ""
    if name and not os.path.isabs(name) and name != ".":
        return name.rstrip("/").split("/")[-1]
    return os.path.basename(os.path.abspath(model_dir))


def llama3_rope_factors(p: HFParams) -> np.ndarray:
    """Per-frequency divisors of Llama 3.x RoPE scaling (llama.cpp's ``rope_freqs.weight``):
    1 for short wavelengths, `factor` for long ones, a smooth blend in between."""
    s = p.rope_scaling
    factor = float(s.get("factor", 8.0))
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    dim = p.head_dim
    freqs = 1.0 / (p.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    out: List[float] = []
    for f in freqs:
        wavelen = 2 * math.pi / float(f)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)

