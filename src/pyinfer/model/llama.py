"""The llama-family forward pass (llama, qwen2) as a ggml_sparse graph.

One graph is built per token count and re-run: token ids and positions are
input tensors rewritten before each run, the KV cache is written at the
positions given (set_rows) and read by the fused causal attention op.
"""
from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

from ..config import ModelConfig
from ..gguf_model import GGUFFile, ModelLoadError
from ..tensor import Context, GGMLType, Graph, RopeMode, Tensor, Unary

# the types a weight may have: those with dot-product and get_rows kernels (activation-only
# types such as Q8_1/Q8_K and the integer types are refused at load, not at the first forward)
WEIGHT_TYPES = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0,
                          GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q4_K, GGMLType.Q5_K,
                          GGMLType.Q6_K})


def _weight_type(t, name: str):
    if t not in WEIGHT_TYPES:
        raise ModelLoadError(f"tensor '{name}' has type {getattr(t, 'name', t)}, which is not a weight type "
                             f"(expected one of {', '.join(sorted(x.name for x in WEIGHT_TYPES))})")
    return t


CATS_THRESHOLDS_KEY = "pyinfer.sparsity.thresholds"   # see model/sparse.py


@dataclass
class LayerWeights:
    attn_norm: Tensor       # {n_embd}
    wq: Tensor              # {n_embd, n_head*head_dim}
    wk: Tensor              # {n_embd, n_head_kv*head_dim}
    wv: Tensor              # {n_embd, n_head_kv*head_dim}
    wo: Tensor              # {n_head*head_dim, n_embd}
    ffn_norm: Tensor        # {n_embd}
    w_gate: Tensor          # {n_embd, n_ff}
    w_up: Tensor            # {n_embd, n_ff}
    w_down: Optional[Tensor]      # {n_ff, n_embd}; None in PowerInfer files, which have:
    bq: Optional[Tensor] = None   # qwen2 attention biases
    bk: Optional[Tensor] = None
    bv: Optional[Tensor] = None
    w_down_t: Optional[Tensor] = None   # {n_embd, n_ff}: ffn_down_t, row i = neuron i's output
    fc1: Optional[Tensor] = None        # {n_embd, H}: activation predictor, first layer
    fc2: Optional[Tensor] = None        # {H, n_ff}: activation predictor, second layer


@dataclass
class LlamaWeights:
    tok_embd: Tensor        # {n_embd, n_vocab}
    layers: List[LayerWeights]
    out_norm: Tensor        # {n_embd}
    output: Tensor          # {n_embd, n_vocab} (tok_embd when tied)
    rope_freqs: Optional[Tensor] = None   # {rope_dims/2} F32: Llama 3.1's RoPE frequency factors

    @classmethod
    def from_gguf(cls, f: GGUFFile, cfg: ModelConfig, ctx: Context,
                  repack: bool = True) -> "LlamaWeights":
        """Wrap the file's tensors (no copy) in ``ctx`` (a no_alloc context).

        With ``repack``, the matrices only ever used as mul_mat weights
        (attention q/k/v/o, the dense FFN's gate/up/down, an untied output)
        that qualify (Q4_0 with rows % 8 == 0, see gs_tensor_repack) are
        rewritten into the interleaved-rows layout, as llama.cpp does by
        default on x86 (its ``use_extra_bufts``), and the file pages they were
        read from are released. token_embd (read by get_rows), the FFNs of
        PowerInfer layers and ffn_up of CATS-calibrated files (sparse ops) stay
        as mapped."""
        E, V, F = cfg.n_embd, cfg.n_vocab, cfg.n_ff
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim

        def wrap(name, ne, optional=False):
            if optional and f.get(name) is None:
                return None
            info = f.require(name, ne)
            t = ctx.new_tensor(_weight_type(info.type, name), info.ne, name)
            t.set_data(info.data)
            return t

        def wrap_any(name):   # a tensor whose shape the file decides (checked by the ops)
            info = f.get(name)
            if info is None:
                return None
            t = ctx.new_tensor(_weight_type(info.type, name), info.ne, name)
            t.set_data(info.data)
            return t

        layers = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            down_t = wrap(p + "ffn_down_t.weight", (E, F), optional=True)
            layers.append(LayerWeights(
                attn_norm=_f32(wrap(p + "attn_norm.weight", (E,)), p + "attn_norm.weight"),
                wq=wrap(p + "attn_q.weight", (E, q_dim)),
                wk=wrap(p + "attn_k.weight", (E, kv_dim)),
                wv=wrap(p + "attn_v.weight", (E, kv_dim)),
                wo=wrap(p + "attn_output.weight", (q_dim, E)),
                ffn_norm=_f32(wrap(p + "ffn_norm.weight", (E,)), p + "ffn_norm.weight"),
                w_gate=wrap(p + "ffn_gate.weight", (E, F)),
                w_up=wrap(p + "ffn_up.weight", (E, F)),
                w_down=wrap(p + "ffn_down.weight", (F, E), optional=down_t is not None),
                bq=wrap(p + "attn_q.bias", (q_dim,), optional=True),
                bk=wrap(p + "attn_k.bias", (kv_dim,), optional=True),
                bv=wrap(p + "attn_v.bias", (kv_dim,), optional=True),
                w_down_t=down_t, fc1=wrap_any(p + "fc1.weight"), fc2=wrap_any(p + "fc2.weight"),
            ))
        tok_embd = wrap("token_embd.weight", (E, V))
        output = wrap("output.weight", (E, V), optional=True) or tok_embd
        if repack:
            mats = [output] if output is not tok_embd else []
            # a CATS-calibrated file (model/sparse.py) reads ffn_up by rows (mul_mat_sparse)
            cats = CATS_THRESHOLDS_KEY in f.metadata
            for layer in layers:
                mats += [layer.wq, layer.wk, layer.wv, layer.wo]
                if layer.w_down_t is None and layer.fc1 is None:
                    mats += [layer.w_gate, layer.w_down] + ([] if cats else [layer.w_up])
            for t in mats:
                if t.can_repack:
                    mapped = f.get(t.name).data
                    t.repack()
                    _release_pages(mapped)
        rope_freqs = wrap("rope_freqs.weight", (cfg.rope_dims // 2,), optional=True)
        if rope_freqs is not None:
            _f32(rope_freqs, "rope_freqs.weight")
        return cls(tok_embd, layers, _f32(wrap("output_norm.weight", (E,)), "output_norm.weight"),
                   output, rope_freqs)


def _release_pages(data: np.ndarray) -> None:
    """Drop the resident pages of the file map under `data` (a view of the
    GGUF reader's np.memmap) that lie wholly inside it, so a repacked copy
    does not double the weights' memory; nothing when it is not mapped."""
    top = data     # the memmap made on the mmap object (its views are memmaps too)
    while isinstance(top.base, np.ndarray):
        top = top.base
    mm = top.base
    if not isinstance(top, np.memmap) or not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    map_start = top.ctypes.data - top.offset % mmap.ALLOCATIONGRANULARITY
    lo = data.ctypes.data - map_start
    hi = lo + data.nbytes
    page = mmap.PAGESIZE
    lo = (lo + page - 1) // page * page
    hi = hi // page * page
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _f32(t: Tensor, name: str) -> Tensor:
    if t.type != GGMLType.F32:
        raise ModelLoadError(f"tensor '{name}' must be F32, found {t.type.name}")
    return t


@dataclass
class KVCache:
    """Per-layer K and V caches: {n_head_kv*head_dim, n_ctx} rows indexed by position."""
    k: List[Tensor]
    v: List[Tensor]
    n_ctx: int

    @classmethod
    def allocate(cls, cfg: ModelConfig, n_ctx: int, kv_type: GGMLType = GGMLType.F16) -> "KVCache":
        kv_dim = cfg.n_head_kv * cfg.head_dim
        row_bytes = kv_dim * (2 if kv_type == GGMLType.F16 else 4)
        ctx = Context(mem_size=2 * cfg.n_layer * (row_bytes * n_ctx + 1024) + 4096)
        k = [ctx.new_tensor(kv_type, (kv_dim, n_ctx), f"cache_k_l{i}") for i in range(cfg.n_layer)]
        v = [ctx.new_tensor(kv_type, (kv_dim, n_ctx), f"cache_v_l{i}") for i in range(cfg.n_layer)]
        cache = cls(k, v, n_ctx)
        cache._ctx = ctx
        return cache

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k) + sum(t.nbytes for t in self.v)

    def close(self) -> None:
        self._ctx.close()


class ForwardGraph:
    """A planned forward pass for exactly ``n_tokens`` tokens.

    Inputs: ``tokens`` and ``pos`` (int32 numpy views, rewrite before run()).
    Output: ``logits`` (float32 view, shape (n_outputs, n_vocab)) for the
    last ``n_outputs`` tokens; or, with ``embeddings``, the final normed
    hidden states (n_outputs, n_embd).
    """

    def __init__(self, cfg: ModelConfig, w: LlamaWeights, kv: KVCache, n_tokens: int,
                 n_outputs: int, n_threads: int, embeddings: bool = False,
                 ffn: Optional["FFN"] = None):
        self.n_tokens = n_tokens
        self.ctx = Context(mem_size=(4 << 20) + 64 * 1024 * cfg.n_layer)
        ctx = self.ctx
        tokens = ctx.new_tensor(GGMLType.I32, (n_tokens,), "tokens")
        pos = ctx.new_tensor(GGMLType.I32, (n_tokens,), "pos")
        hidden = build_llama(ctx, cfg, w, kv, tokens, pos, ffn or dense_ffn(cfg), n_outputs)
        out = hidden if embeddings else ctx.mul_mat(w.output, hidden)
        out.name = "embeddings" if embeddings else "logits"
        self.graph = Graph(ctx, max_nodes=64 + 40 * cfg.n_layer).build(out).plan(n_threads)
        self.tokens = tokens.numpy()
        self.pos = pos.numpy()
        self.out = out.numpy()

    def run(self, pool) -> None:
        self.graph.compute(pool)

    def close(self) -> None:
        self.ctx.close()


# An FFN graph builder: (ctx, layer, x, h) -> the FFN's output, where x is the
# residual stream entering the FFN and h = ffn_norm(x) (PowerInfer's predictor
# reads x). ffn_block below is the dense SwiGLU; model/sparse.py has the
# ReLU-family FFNs of PowerInfer files.
FFN = Callable[[Context, LayerWeights, Tensor, Tensor], Tensor]


def build_llama(ctx: Context, cfg: ModelConfig, w: LlamaWeights, kv: KVCache,
                tokens: Tensor, pos: Tensor, ffn: FFN, n_outputs: Optional[int] = None) -> Tensor:
    """Final normed hidden states {n_embd, n_outputs} of the last n_outputs (default: all)
    of `tokens` at positions `pos`. As llama.cpp, the last layer's FFN runs on those rows
    only (which also makes its matmuls the same single-row or batched kernels)."""
    x = ctx.get_rows(w.tok_embd, tokens)
    n_tokens = tokens.ne[0]
    for i, layer in enumerate(w.layers):
        h = ctx.mul(ctx.rms_norm(x, cfg.rms_eps), layer.attn_norm)
        x = ctx.add(x, attention_block(ctx, cfg, layer, kv.k[i], kv.v[i], h, pos, w.rope_freqs))
        if i == len(w.layers) - 1 and n_outputs is not None and n_outputs < n_tokens:
            x = ctx.view(x, (cfg.n_embd, n_outputs), (4, x.nb[1]), (n_tokens - n_outputs) * x.nb[1])
        h = ctx.mul(ctx.rms_norm(x, cfg.rms_eps), layer.ffn_norm)
        x = ctx.add(x, ffn(ctx, layer, x, h))
    return ctx.mul(ctx.rms_norm(x, cfg.rms_eps), w.out_norm)


def attention_block(ctx: Context, cfg: ModelConfig, layer: LayerWeights, k_cache: Tensor,
                    v_cache: Tensor, h: Tensor, pos: Tensor,
                    rope_freqs: Optional[Tensor] = None) -> Tensor:
    n = h.ne[1] if len(h.ne) > 1 else 1
    hd, nh, nkv = cfg.head_dim, cfg.n_head, cfg.n_head_kv

    def proj(wt, bias):
        y = ctx.mul_mat(wt, h)
        return ctx.add(y, bias) if bias is not None else y

    q = ctx.reshape(proj(layer.wq, layer.bq), (hd, nh, n))
    k = ctx.reshape(proj(layer.wk, layer.bk), (hd, nkv, n))
    v = proj(layer.wv, layer.bv)
    mode = RopeMode.NEOX if cfg.rope_neox else RopeMode.NORMAL
    q = ctx.rope(q, pos, cfg.rope_dims, mode, cfg.rope_freq_base, cfg.rope_freq_scale, rope_freqs)
    k = ctx.rope(k, pos, cfg.rope_dims, mode, cfg.rope_freq_base, cfg.rope_freq_scale, rope_freqs)
    k_all = ctx.set_rows(k_cache, ctx.reshape(k, (hd * nkv, n)), pos)
    v_all = ctx.set_rows(v_cache, v, pos)
    n_ctx = k_cache.ne[1]
    esz = k_cache.nb[0]
    k_all = ctx.view(k_all, (hd, nkv, n_ctx), (esz, hd * esz, k_cache.nb[1]))
    v_all = ctx.view(v_all, (hd, nkv, n_ctx), (esz, hd * esz, v_cache.nb[1]))
    attn = ctx.attention(q, k_all, v_all, pos, 1.0 / math.sqrt(hd))
    return ctx.mul_mat(layer.wo, ctx.reshape(attn, (hd * nh, n)))


def dense_ffn(cfg: ModelConfig) -> FFN:
    """The dense FFN of `cfg`'s activation as an FFN builder."""
    return lambda ctx, layer, x, h: ffn_block(ctx, cfg, layer, h)


def ffn_block(ctx: Context, cfg: ModelConfig, layer: LayerWeights, h: Tensor) -> Tensor:
    op = Unary.RELU if cfg.ffn_act == "relu" else Unary.SILU
    act = ctx.glu(ctx.mul_mat(layer.w_gate, h), ctx.mul_mat(layer.w_up, h), op, cfg.ffn_gate_both)
    return ctx.mul_mat(layer.w_down, act)
