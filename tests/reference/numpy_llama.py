"""A plain numpy llama/qwen2 forward pass: the oracle for the engine's tests.

Weights come from a GGUF file and are dequantized with ``gguf.quants`` (an
implementation independent of ours). Written for clarity, not speed.
"""
from __future__ import annotations

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class NumpyLlama:
    def __init__(self, path: str, cfg):
        self.cfg = cfg
        r = GGUFReader(path)
        self.w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]

    @staticmethod
    def rms_norm(x, w, eps):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def rope(self, x, pos):
        """x: (n_tokens, n_heads, head_dim)."""
        cfg = self.cfg
        d = cfg.rope_dims
        inv = cfg.rope_freq_base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        if "rope_freqs.weight" in self.w:     # Llama 3.1 frequency factors divide the angles
            inv = inv / self.w["rope_freqs.weight"]
        ang = (np.asarray(pos, dtype=np.float64) * cfg.rope_freq_scale)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = x.copy()
        if cfg.rope_neox:
            a, b = x[..., : d // 2], x[..., d // 2: d]
            out[..., : d // 2] = a * cos - b * sin
            out[..., d // 2: d] = a * sin + b * cos
        else:
            a, b = x[..., 0:d:2], x[..., 1:d:2]
            out[..., 0:d:2] = a * cos - b * sin
            out[..., 1:d:2] = a * sin + b * cos
        return out

    def forward(self, tokens, hidden_only: bool = False):
        """Logits (n_tokens, n_vocab) for a fresh sequence of `tokens`."""
        cfg, w = self.cfg, self.w
        n = len(tokens)
        pos = np.arange(n)
        hd, nh, nkv = cfg.head_dim, cfg.n_head, cfg.n_head_kv
        x = w["token_embd.weight"][np.asarray(tokens)]
        mask = np.triu(np.full((n, n), -np.inf), 1)
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            h = self.rms_norm(x, w[p + "attn_norm.weight"], cfg.rms_eps)
            q = h @ w[p + "attn_q.weight"].T + w.get(p + "attn_q.bias", 0)
            k = h @ w[p + "attn_k.weight"].T + w.get(p + "attn_k.bias", 0)
            v = h @ w[p + "attn_v.weight"].T + w.get(p + "attn_v.bias", 0)
            q = self.rope(q.reshape(n, nh, hd), pos)
            k = self.rope(k.reshape(n, nkv, hd), pos)
            v = v.reshape(n, nkv, hd)
            group = nh // nkv
            out = np.empty((n, nh, hd))
            for head in range(nh):
                s = q[:, head] @ k[:, head // group].T / np.sqrt(hd) + mask
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                s /= s.sum(axis=-1, keepdims=True)
                out[:, head] = s @ v[:, head // group]
            x = x + out.reshape(n, nh * hd) @ w[p + "attn_output.weight"].T
            h = self.rms_norm(x, w[p + "ffn_norm.weight"], cfg.rms_eps)
            x = x + self.ffn(i, x, h)
        x = self.rms_norm(x, w["output_norm.weight"], cfg.rms_eps)
        return x if hidden_only else x @ w["output.weight"].T

    def ffn(self, i, x, h):
        """Layer i's FFN output for h = ffn_norm(x): SwiGLU."""
        p, w = f"blk.{i}.", self.w
        g = h @ w[p + "ffn_gate.weight"].T
        u = h @ w[p + "ffn_up.weight"].T
        return (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
