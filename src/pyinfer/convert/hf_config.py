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
            value = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: a JSON {type(value).__name__}, expected an object")
    return value


def _rope(cfg: Dict[str, Any]) -> tuple:
    """(theta, scaling dict with a normalised 'type' key, or {})."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for key, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if not isinstance(value, dict):
            raise ConfigError(f"config.json: '{key}' must be an object, found {value!r:.40}")
    theta = next((d["rope_theta"] for d in (cfg, params, scaling) if d.get("rope_theta") is not None), 10000.0)
    src = params if params.get("rope_type", params.get("type")) not in (None, "default") else scaling
    kind = src.get("rope_type", src.get("type"))
    theta = _number("rope_theta", theta, positive=True)
    if kind in (None, "default"):
        return theta, {}
    out = dict(src)
    out["type"] = kind
    return theta, out


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


def load_params(model_dir: str) -> HFParams:
    """The hyper-parameters of config.json, refusing (ConfigError, naming the key) every value
    the GGUF loader would refuse: sizes < 1, head counts that do not divide, an odd or
    inconsistent head size, RoPE theta or scaling factor <= 0 or not finite, a negative
    norm epsilon."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{model_dir} has no config.json")
    cfg = read_json(path)
    if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    _check_types(cfg)
    arch_name, spec = detect_arch(cfg)

    def need(*keys):
        for k in keys:
            if k in cfg and cfg[k] is not None:
                return _integer(k, cfg[k])
        raise ConfigError(f"config.json lacks '{keys[0]}'")

    n_embd = need("hidden_size")
    n_head = need("num_attention_heads")
    n_head_kv = _integer("num_key_value_heads", cfg.get("num_key_value_heads") or n_head)
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
    if dim % 2:
        raise ConfigError(f"config.json: the head size {dim} is odd; RoPE rotates pairs")
    act = str(cfg.get("hidden_act", "silu")).lower()
    if act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError(f"hidden_act {act!r} is not supported for {arch_name} "
                          f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    theta, scaling = _rope(cfg)
    if scaling and scaling["type"] not in ("linear", "llama3", "yarn"):
        raise ConfigError(f"RoPE scaling {scaling['type']!r} is not supported (linear, llama3, yarn are)")
    if scaling:
        _check_scaling(scaling)
    tie = cfg.get("tie_word_embeddings")
    if tie is not None and not isinstance(tie, bool):
        raise ConfigError(f"config.json: 'tie_word_embeddings' must be true or false, found {tie!r:.40}")
    gen_path = os.path.join(model_dir, "generation_config.json")
    return HFParams(
        arch=spec,
        hf_arch=arch_name,
        n_vocab=need("vocab_size"),
        n_embd=n_embd,
        n_layer=need("num_hidden_layers"),
        n_ff=need("intermediate_size"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=dim,
        rms_eps=_number("rms_norm_eps", 1e-6 if cfg.get("rms_norm_eps") is None   # transformers' default
                        else cfg["rms_norm_eps"]),
        n_ctx=_integer("max_position_embeddings", next(
            (cfg[k] for k in ("max_position_embeddings", "max_sequence_length") if cfg.get(k) is not None), 2048)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=tie,
        hidden_act=act,
        head_dim_explicit=bool(head_dim) and int(head_dim) != n_embd // n_head,
        name=_model_name(cfg, model_dir),
        generation=read_json(gen_path) if os.path.isfile(gen_path) else {},
        raw=cfg,
    )


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

