"""The forward pass as a ggml_sparse graph: embeddings, the architecture's block per
layer (model/arch.py), the final norm and the logits.

A block function sees a `LayerBuilder`: the operations of one layer with everything
the layer needs bound (its KV cache, positions, RoPE, window, the FFN builder), so that
the block reads like the architecture's math. The shared pieces follow llama.cpp's
graph operation for operation (so both engines give bit-identical results where the
kernels do): e.g. gemma's queries are scaled before attention, as llama.cpp does,
rather than the scores after it.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from ..config import ModelConfig
from ..tensor import Context, GGMLType, RopeMode, RopeYarn, Tensor, Unary, yarn_attn_factor
from .arch import Arch, get_arch
from .moe import moe_ffn

if TYPE_CHECKING:
    from .llama import KVCache, LayerWeights, LlamaWeights

# An FFN graph builder: (ctx, layer, x, h) -> the FFN's output, where x is the
# residual stream entering the FFN and h = ffn_norm(x) (PowerInfer's predictor
# reads x). ffn_block below is the dense gated FFN; model/sparse.py has the
# ReLU-family FFNs of PowerInfer files.
FFN = Callable[[Context, "LayerWeights", Tensor, Tensor], Tensor]

_ACTS = {"silu": Unary.SILU, "relu": Unary.RELU, "gelu": Unary.GELU}


class LayerBuilder:
    """The operations of layer `i` for its block function (model/arch.py)."""

    def __init__(self, ctx: Context, cfg: ModelConfig, spec: Arch, i: int, kv: "KVCache",
                 pos: Tensor, ffn: FFN, rope_freqs: Optional[Tensor], n_outputs: Optional[int],
                 slots: Optional[Tensor] = None):
        self.ctx, self.cfg, self.spec, self.i = ctx, cfg, spec, i
        self.k_cache, self.v_cache = kv.k[i], kv.v[i]
        self.pos, self._ffn, self.rope_freqs = pos, ffn, rope_freqs
        # the cache slots of the tokens: their positions, a short window cache's slots, or
        # (several sequences) their rows in their sequences' streams
        self.slots = slots if kv.n_seq > 1 or kv.short and kv.short[i] else pos
        self.n_stream = kv.n_stream
        n_tokens = pos.ne[0]
        last = i == cfg.n_layer - 1
        self.n_keep = n_outputs if last and n_outputs is not None and n_outputs < n_tokens else None

    def norm(self, x: Tensor, w: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """The architecture's norm of x: RMS norm times the weight w, or LayerNorm times w
        plus the bias (norm "layer")."""
        return _norm(self.ctx, self.cfg, self.spec, x, w, bias)

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        return self.ctx.add(a, b)

    def outputs(self, x: Tensor) -> Tensor:
        """x {n, n_tokens} reduced to the rows whose outputs are wanted (the last
        layer of a graph with fewer outputs than tokens; elsewhere x itself). As
        llama.cpp, what follows in the last layer runs on those rows only, which also
        makes its matmuls the same single-row or batched kernels."""
        if self.n_keep is None:
            return x
        n_tokens = x.ne[1]
        return self.ctx.view(x, (x.ne[0], self.n_keep), (4, x.nb[1]), (n_tokens - self.n_keep) * x.nb[1])

    def ffn(self, layer: "LayerWeights", x: Tensor, h: Tensor) -> Tensor:
        return self._ffn(self.ctx, layer, x, h)

    def attention(self, layer: "LayerWeights", h: Tensor) -> Tensor:
        """Self-attention of h {n_embd, n} through this layer's KV cache, after the output
        projection: q/k/v projections (+ biases), per-head Q/K RMS norms where the layer
        has them, RoPE with the layer's base and scale, the sliding window of local
        layers, logit soft-capping."""
        ctx, cfg = self.ctx, self.cfg
        n = h.ne[1] if len(h.ne) > 1 else 1
        hd, nh, nkv = cfg.head_dim, cfg.n_head, cfg.n_head_kv

        def proj(wt, bias):
            y = ctx.mul_mat(wt, h)
            return ctx.add(y, bias) if bias is not None else y

        if layer.wqkv is not None:     # fused: rows [q heads | k heads | v heads], viewed apart
            qkv = proj(layer.wqkv, layer.bqkv)
            row, f = qkv.nb[1], qkv.nb[0]
            q = ctx.view(qkv, (hd, nh, n), (f, hd * f, row))
            k = ctx.view(qkv, (hd, nkv, n), (f, hd * f, row), nh * hd * f)
            v = ctx.view(qkv, (hd * nkv, n), (f, row), (nh + nkv) * hd * f)
        else:
            q, k = proj(layer.wq, layer.bq), proj(layer.wk, layer.bk)
            if self.spec.qk_norm_full:     # olmoe: norms over the whole projections, then the heads
                q, k = self.norm(q, layer.attn_q_norm), self.norm(k, layer.attn_k_norm)
            q, k = ctx.reshape(q, (hd, nh, n)), ctx.reshape(k, (hd, nkv, n))
            v = proj(layer.wv, layer.bv)
        if layer.attn_q_norm is not None and not self.spec.qk_norm_full:
            q = self.norm(q, layer.attn_q_norm)
        if layer.attn_k_norm is not None and not self.spec.qk_norm_full:
            k = self.norm(k, layer.attn_k_norm)
        if self.spec.rope:
            mode = RopeMode.NEOX if cfg.rope_neox else RopeMode.NORMAL
            base, scale = cfg.rope(self.i)
            yarn, attn_factor = None, cfg.rope_attn_factor
            if cfg.rope_ext_factor:
                yarn = RopeYarn(cfg.n_ctx_orig, cfg.rope_ext_factor, cfg.rope_beta_fast, cfg.rope_beta_slow)
                attn_factor = yarn_attn_factor(scale, cfg.rope_attn_factor)
            q, k = (ctx.rope(t, self.pos, cfg.rope_dims, mode, base, scale, self.rope_freqs, yarn, attn_factor)
                    for t in (q, k))
        kq_scale = cfg.attn_scale or 1.0 / math.sqrt(hd)
        if self.spec.q_prescale:
            q, kq_scale = ctx.scale(q, kq_scale), 1.0
        # quantized caches: Q and K (and V, undone on the output) turned by a Walsh-Hadamard
        # rotation first, as llama.cpp does (attn_rot_k/v): outliers spread over a block
        rot_k, rot_v = kv_rotations(ctx, hd, self.k_cache.type, self.v_cache.type)
        if rot_k is not None:
            q, k = rotate(ctx, q, rot_k), rotate(ctx, k, rot_k)
        if rot_v is not None:
            v = rotate(ctx, v, rot_v)
        k_all = ctx.set_rows(self.k_cache, ctx.view(k, (hd * nkv, n), (k.nb[0], k.nb[2])), self.slots)
        v_all = ctx.set_rows(self.v_cache, v, self.slots)
        n_ctx = self.k_cache.ne[1]
        # {hd, nkv, n_ctx} views: a value (or a Q8_0/Q4_0 block), a head's row, a slot's row
        kc, vc = self.k_cache, self.v_cache
        k_all = ctx.view(k_all, (hd, nkv, n_ctx), (kc.nb[0], kc.nb[1] // nkv, kc.nb[1]))
        v_all = ctx.view(v_all, (hd, nkv, n_ctx), (vc.nb[0], vc.nb[1] // nkv, vc.nb[1]))
        attn = ctx.attention(q, k_all, v_all, self.slots, kq_scale, window=cfg.window(self.i),
                             softcap=cfg.attn_logit_softcap, n_stream=self.n_stream)
        if rot_v is not None:
            attn = rotate(ctx, attn, rot_v)
        out = ctx.mul_mat(layer.wo, ctx.reshape(attn, (hd * nh, n)))
        return ctx.add(out, layer.bo) if layer.bo is not None else out


_QUANT_KV = (GGMLType.Q8_0, GGMLType.Q4_0)


def hadamard(n: int) -> np.ndarray:
    """The orthonormal n x n Walsh-Hadamard matrix (Sylvester's order, entries +-1/sqrtf(n)),
    symmetric: H @ H = I."""
    h = np.ones((1, 1), dtype=np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h * np.float32(1.0 / np.sqrt(np.float32(n)))


def kv_rotations(ctx: Context, hd: int, k_type: int, v_type: int):
    """llama.cpp's attention rotations for quantized caches (llama_kv_cache attn_rot_k /
    attn_rot_v; head_dim a multiple of 64): K (and Q) in blocks of the largest power of two
    dividing head_dim, V in blocks of 64. (H_k, H_v) as F32 tensors of `ctx` (made once per
    context), None where the cache is not quantized."""
    if hd % 64:
        return None, None
    n_k = 64
    while hd % (2 * n_k) == 0:
        n_k *= 2
    cache = ctx.__dict__.setdefault("_kv_rotations", {})
    def mat(n):
        if n not in cache:
            cache[n] = ctx.from_numpy(hadamard(n))
        return cache[n]
    return (mat(n_k) if k_type in _QUANT_KV else None), (mat(64) if v_type in _QUANT_KV else None)


def rotate(ctx: Context, x: Tensor, h: Tensor) -> Tensor:
    """x (F32, any shape with ne0 a multiple of h's size) with every h.ne[0] consecutive
    values multiplied by the symmetric matrix h."""
    n = h.ne[0]
    contiguous = all(x.nb[i] == x.nb[i - 1] * x.ne[i - 1] for i in range(1, len(x.ne)))
    if not contiguous:
        x = ctx.cast(x, GGMLType.F32)
    total = int(np.prod(x.ne))
    # always the batched order: even one token's rotation is a product of many rows (its
    # heads' blocks), so the order does not depend on how many tokens the batch holds
    return ctx.reshape(ctx.mul_mat(h, ctx.reshape(x, (n, total // n)), rowwise=False), x.ne)


def build_forward(ctx: Context, cfg: ModelConfig, w: "LlamaWeights", kv: "KVCache",
                  tokens: Tensor, pos: Tensor, ffn: FFN, n_outputs: Optional[int] = None,
                  slots: Optional[Tensor] = None) -> Tensor:
    """Final normed hidden states {n_embd, n_outputs} of the last n_outputs (default: all)
    of `tokens` at positions `pos`, through the layers of cfg's architecture; `slots`: their
    rows in a short sliding-window cache or in their sequences' streams (model/kv_cache.py),
    when kv has either."""
    spec = get_arch(cfg.arch)
    x = ctx.get_rows(w.tok_embd, tokens)
    if spec.embd_scale:
        x = ctx.scale(x, float(np.sqrt(np.float32(cfg.n_embd))))   # sqrtf(n_embd), as llama.cpp
    if w.pos_embd is not None:
        x = ctx.add(x, ctx.get_rows(_position_rows(ctx, spec, w.pos_embd, kv.n_ctx), pos))
    for i, layer in enumerate(w.layers):
        b = LayerBuilder(ctx, cfg, spec, i, kv, pos, ffn, w.rope_factors(cfg, kv.n_ctx), n_outputs, slots)
        x = spec.block(b, layer, x)
    return _norm(ctx, cfg, spec, x, w.out_norm, w.out_norm_b)


def _norm(ctx: Context, cfg: ModelConfig, spec: Arch, x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    if spec.norm == "layer":       # as llama.cpp's LLM_NORM: norm, times w, plus the bias
        y = ctx.mul(ctx.norm(x, cfg.norm_eps), w)
        return ctx.add(y, bias) if bias is not None else y
    return ctx.mul(ctx.rms_norm(x, cfg.rms_eps), w)


def _position_rows(ctx: Context, spec: Arch, table: Tensor, n_ctx: int) -> Tensor:
    """The rows of a learned position table that positions 0.. read (row p + pos_offset)."""
    n_pos = table.ne[1] - spec.pos_offset
    if n_ctx > n_pos:
        raise ValueError(f"n_ctx {n_ctx} exceeds the {n_pos} positions the model's learned "
                         "position embeddings cover")
    return ctx.view(table, (table.ne[0], n_pos), table.nb[:2], spec.pos_offset * table.nb[1])


def logits(ctx: Context, cfg: ModelConfig, w: "LlamaWeights", hidden: Tensor) -> Tensor:
    """The output projection of the final hidden states, soft-capped where the model
    says (c tanh(logits / c), as llama.cpp: a scale by 1/c, tanh, a scale by c)."""
    out = ctx.mul_mat(w.output, hidden)
    cap = cfg.final_logit_softcap
    if cap:
        out = ctx.scale(ctx.unary(ctx.scale(out, float(np.float32(1.0) / np.float32(cap))), Unary.TANH), cap)
    return out


def dense_ffn(cfg: ModelConfig) -> FFN:
    """The dense FFN of `cfg`'s architecture (its kind: gated or plain) and activation as an
    FFN builder; a model with experts gets the mixture of experts (model/moe.py)."""
    if cfg.n_expert:
        return moe_ffn(cfg)
    block = DENSE_FFNS[get_arch(cfg.arch).ffn]
    return lambda ctx, layer, x, h: block(ctx, cfg, layer, h)


def ffn_block(ctx: Context, cfg: ModelConfig, layer: "LayerWeights", h: Tensor) -> Tensor:
    """down . (act(gate . h) * (up . h)); bamboo: act(gate . h) * act(up . h)."""
    if layer.w_gate is None:     # one product for both (phi3's ffn_up: the gate rows, then the up rows)
        gate_up = ctx.mul_mat(layer.w_up, h)
        n_ff, n = gate_up.ne[0] // 2, gate_up.ne[1]
        gate = ctx.view(gate_up, (n_ff, n), gate_up.nb[:2])
        up = ctx.view(gate_up, (n_ff, n), gate_up.nb[:2], n_ff * gate_up.nb[0])
    else:
        gate, up = ctx.mul_mat(layer.w_gate, h), ctx.mul_mat(layer.w_up, h)
    return ctx.mul_mat(layer.w_down, ctx.glu(gate, up, _ACTS[cfg.ffn_act], cfg.ffn_gate_both))


def plain_ffn_block(ctx: Context, cfg: ModelConfig, layer: "LayerWeights", h: Tensor) -> Tensor:
    """down . act(up . h + b_up) + b_down (no gate; biases where the layer has them)."""
    up = ctx.mul_mat(layer.w_up, h)
    if layer.b_up is not None:
        up = ctx.add(up, layer.b_up)
    out = ctx.mul_mat(layer.w_down, ctx.unary(up, _ACTS[cfg.ffn_act]))
    return ctx.add(out, layer.b_down) if layer.b_down is not None else out


# Arch.ffn -> the dense FFN of that kind (model/sparse.py has the PowerInfer ones)
DENSE_FFNS = {"gated": ffn_block, "plain": plain_ffn_block}
