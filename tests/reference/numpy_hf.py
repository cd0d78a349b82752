"""The Hugging Face model math in numpy (float64): the oracle for the converter's tests.

Works on HF tensor names and layouts ([out, in] weights, q/k rows in HF's
``rotate_half`` RoPE order), so it is independent of the GGUF permutation the
converter applies. Covers LlamaForCausalLM / MistralForCausalLM (SiLU or ReLU
MLP), Qwen2ForCausalLM (q/k/v biases) and bamboo (relu(gate) * relu(up)).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_inv_freq(cfg: dict, dim: int) -> np.ndarray:
    params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def forward(cfg: dict, w: Dict[str, np.ndarray], tokens: Sequence[int]) -> np.ndarray:
    """Logits (n_tokens, vocab) of a fresh sequence."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}
    E, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or E // nh
    eps = cfg["rms_norm_eps"]
    act = cfg.get("hidden_act", "silu")
    both = cfg.get("model_type") == "bamboo"
    n = len(tokens)
    ang = np.arange(n, dtype=np.float64)[:, None] * rope_inv_freq(cfg, hd)[None, :]
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    mask = np.triu(np.full((n, n), -np.inf), 1)

    def f(x):
        return np.maximum(x, 0) if act in ("relu", "fatrelu") else x / (1 + np.exp(-x))

    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)

        def proj(name):
            y = h @ w[p + f"self_attn.{name}.weight"].T
            return y + w[p + f"self_attn.{name}.bias"] if p + f"self_attn.{name}.bias" in w else y

        q = proj("q_proj").reshape(n, nh, hd)
        k = proj("k_proj").reshape(n, nkv, hd)
        v = proj("v_proj").reshape(n, nkv, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = np.empty((n, nh, hd))
        for head in range(nh):
            kv = head // (nh // nkv)
            s = q[:, head] @ k[:, kv].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            out[:, head] = (s / s.sum(axis=-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(n, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = f(h @ w[p + "mlp.gate_proj.weight"].T)
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (g * (f(u) if both else u)) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head_w = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head_w.T
