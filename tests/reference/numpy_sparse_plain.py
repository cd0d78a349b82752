"""Numpy forwards of PowerInfer's falcon and OPT files (FFN without a gate): the oracle of
the engine's model/sparse_plain.py.

Written from the models' math (transformers' Falcon and OPT decoders) on the file's tensors
in GGUF layout, float64, dequantized with gguf.quants:

* falcon: x + attn(ln_attn(x)) + mlp(ln_mlp(x)); one LayerNorm for both (7B: attn_norm) or
  two (40B: attn_norm for the MLP, attn_norm_2 for attention); fused QKV rows [q heads | k
  heads | v heads]; NeoX RoPE; tied output.
* opt: learned positions (position p reads row p + 2), x = x + attn(ln1(x)), x = x +
  mlp(ln2(x)), biases on every projection, no RoPE.

PowerInfer's sparse FFN: the predictor scores every neuron from the FFN's residual input x
(falcon: the layer input; OPT: the stream after attention), score = fc2 . relu(fc1 . x);
neuron i fires iff score[i] >= threshold, and only firing neurons add to the output:

    out = sum over firing i of relu(up_i . h + b_up[i]) * ffn_down_t[i]  (+ ffn_down_t.bias)
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def causal_attention(q, k, v):
    """q (n, nh, hd), k and v (n, nkv, hd) -> (n, nh * hd), heads sharing kv in groups."""
    n, nh, hd = q.shape
    group = nh // k.shape[1]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    out = np.empty((n, nh, hd))
    for head in range(nh):
        s = q[:, head] @ k[:, head // group].T / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        out[:, head] = (s / s.sum(axis=-1, keepdims=True)) @ v[:, head // group]
    return out.reshape(n, nh * hd)


class NumpySparsePlain:
    def __init__(self, path: str, cfg, threshold: float, dense: bool = False):
        with tempfile.TemporaryDirectory() as d:      # gguf's reader wants the GGUF magic
            copy = Path(d) / "model.gguf"
            shutil.copyfile(path, copy)
            with open(copy, "r+b") as f:
                f.write(b"GGUF")
            r = GGUFReader(str(copy))
            self.w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
        self.w.setdefault("output.weight", self.w["token_embd.weight"])
        self.cfg, self.threshold, self.dense = cfg, threshold, dense
        self.active_fraction = []     # per FFN call: share of (token, neuron) pairs computed

    def ln(self, x, name):
        return layer_norm(x, self.w[name + ".weight"], self.w[name + ".bias"], self.cfg.norm_eps)

    def rope_neox(self, x, pos):
        """x (n, heads, head_dim): pairs (i, i + d/2) of the first d = rope_dims turned."""
        d = self.cfg.rope_dims
        inv = self.cfg.rope_freq_base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = x.copy()
        a, b = x[..., : d // 2], x[..., d // 2: d]
        out[..., : d // 2] = a * cos - b * sin
        out[..., d // 2: d] = a * sin + b * cos
        return out

    def ffn(self, i, x, h):
        """Layer i's sparse FFN: x the predictor's input, h the FFN's normed input."""
        p, w = f"blk.{i}.", self.w
        act = np.maximum(h @ w[p + "ffn_up.weight"].T + w.get(p + "ffn_up.bias", 0.0), 0.0)
        if not self.dense:
            score = np.maximum(x @ w[p + "fc1.weight"].T, 0.0) @ w[p + "fc2.weight"].T
            fires = score >= self.threshold
            self.active_fraction.append(float(fires.mean()))
            act = act * fires
        return act @ w[p + "ffn_down_t.weight"] + w.get(p + "ffn_down_t.bias", 0.0)

    def falcon_layer(self, i, x, pos):
        cfg, w, p = self.cfg, self.w, f"blk.{i}."
        n, nh, nkv, hd = len(x), cfg.n_head, cfg.n_head_kv, cfg.head_dim
        h_mlp = self.ln(x, p + "attn_norm")
        h_attn = self.ln(x, p + "attn_norm_2") if p + "attn_norm_2.weight" in w else h_mlp
        qkv = h_attn @ w[p + "attn_qkv.weight"].T
        q = qkv[:, : nh * hd].reshape(n, nh, hd)
        k = qkv[:, nh * hd: (nh + nkv) * hd].reshape(n, nkv, hd)
        v = qkv[:, (nh + nkv) * hd:].reshape(n, nkv, hd)
        a = causal_attention(self.rope_neox(q, pos), self.rope_neox(k, pos), v) @ w[p + "attn_output.weight"].T
        return x + a + self.ffn(i, x, h_mlp)

    def opt_layer(self, i, x, pos):
        cfg, w, p = self.cfg, self.w, f"blk.{i}."
        n, nh, hd = len(x), cfg.n_head, cfg.head_dim

        def proj(name, h):
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        h = self.ln(x, p + "attn_norm")
        q, k, v = (proj(f"attn_{t}", h).reshape(n, -1, hd) for t in "qkv")
        x = x + proj("attn_output", causal_attention(q.reshape(n, nh, hd), k, v))
        return x + self.ffn(i, x, self.ln(x, p + "ffn_norm"))

    def forward(self, tokens):
        """Logits (n_tokens, n_vocab) of a fresh sequence."""
        w, n = self.w, len(tokens)
        pos = np.arange(n)
        x = w["token_embd.weight"][np.asarray(tokens)]
        if self.cfg.arch == "opt":
            x = x + w["position_embd.weight"][pos + 2]
        layer = self.falcon_layer if self.cfg.arch == "falcon" else self.opt_layer
        for i in range(self.cfg.n_layer):
            x = layer(i, x, pos)
        return self.ln(x, "output_norm") @ w["output.weight"].T

    def greedy(self, prompt, n):
        tokens = list(prompt)
        for _ in range(n):
            tokens.append(int(np.argmax(self.forward(tokens)[-1])))
        return tokens[len(prompt):]
