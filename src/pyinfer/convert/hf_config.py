"""config.json (+ generation_config.json) -> the hyper-parameters a GGUF needs.

Accepts what old and current ``transformers`` versions write: ``rope_theta`` at
the top level, inside ``rope_parameters`` (transformers >= 5) or inside
``rope_scaling``; scaling described by ``type`` or ``rope_type``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from .tensor_map import ArchSpec, detect_arch


class ConfigError(ValueError):
    """config.json lacks a value or holds one this converter cannot represent."""


SUPPORTED_ACTIVATIONS = ("silu", "relu", "fatrelu")


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
    rms_eps: float
    n_ctx: int
    rope_theta: float
    rope_scaling: Dict[str, Any] = field(default_factory=dict)   # {} when none
    tie_embeddings: Optional[bool] = None                        # None: not stated
    hidden_act: str = "silu"
    head_dim_explicit: bool = False
    name: str = ""
    generation: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict)

    @property
    def relu(self) -> bool:
        return self.hidden_act in ("relu", "fatrelu")


def read_json(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None


def _rope(cfg: Dict[str, Any]) -> tuple:
    """(theta, scaling dict with a normalised 'type' key, or {})."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", scaling.get("rope_theta", 10000.0)))
    src = params if params.get("rope_type", params.get("type")) not in (None, "default") else scaling
    kind = src.get("rope_type", src.get("type"))
    if kind in (None, "default"):
        return float(theta), {}
    out = dict(src)
    out["type"] = kind
    return float(theta), out


def load_params(model_dir: str) -> HFParams:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{model_dir} has no config.json")
    cfg = read_json(path)
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    arch_name, spec = detect_arch(cfg)

    def need(*keys):
        for k in keys:
            if k in cfg and cfg[k] is not None:
                return cfg[k]
        raise ConfigError(f"config.json lacks '{keys[0]}'")

    n_embd = int(need("hidden_size"))
    n_head = int(need("num_attention_heads"))
    head_dim = cfg.get("head_dim")
    act = str(cfg.get("hidden_act", "silu")).lower()
    if act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError(f"hidden_act {act!r} is not supported for {arch_name} "
                          f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    theta, scaling = _rope(cfg)
    if scaling and scaling["type"] not in ("linear", "llama3", "yarn"):
        raise ConfigError(f"RoPE scaling {scaling['type']!r} is not supported (linear, llama3, yarn are)")
    gen_path = os.path.join(model_dir, "generation_config.json")
    return HFParams(
        arch=spec,
        hf_arch=arch_name,
        n_vocab=int(need("vocab_size")),
        n_embd=n_embd,
        n_layer=int(need("num_hidden_layers")),
        n_ff=int(need("intermediate_size")),
        n_head=n_head,
        n_head_kv=int(cfg.get("num_key_value_heads") or n_head),
        head_dim=int(head_dim) if head_dim else n_embd // n_head,
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),   # transformers' default
        n_ctx=int(cfg.get("max_position_embeddings", cfg.get("max_sequence_length", 2048))),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=cfg.get("tie_word_embeddings"),
        hidden_act=act,
        head_dim_explicit=bool(head_dim) and int(head_dim) != n_embd // n_head,
        name=_model_name(cfg, model_dir),
        generation=read_json(gen_path) if os.path.isfile(gen_path) else {},
        raw=cfg,
    )


def _model_name(cfg: Dict[str, Any], model_dir: str) -> str:
    name = cfg.get("_name_or_path") or ""
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

