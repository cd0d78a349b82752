"""A loaded model's weights and KV cache, and its forward pass as a planned ggml_sparse graph.

One graph is built per token count and re-run: token ids and positions are
input tensors rewritten before each run, the KV cache is written at the
positions given (set_rows) and read by the fused causal attention op. The
layers are those of the file's architecture (model/arch.py; the graph is
built by model/forward.py).
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..config import ModelConfig
from ..gguf_model import GGUFFile, ModelLoadError
from ..backend import plan_backends, release
from ..tensor import Context, GGMLType, Graph, Tensor
from .arch import LAYER_TENSORS, NORM_TENSORS, POWERINFER_REPLACES, get_arch
from .forward import FFN, build_forward, dense_ffn, ffn_block, logits  # noqa: F401
from .kv_cache import KVCache  # noqa: F401

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
    """One layer's tensors (model/arch.py's LAYER_TENSORS names them in the file); the
    architecture decides which are present (None: absent)."""
    attn_norm: Tensor       # {n_embd}
    wq: Optional[Tensor]    # {n_embd, n_head*head_dim} (None: fused in wqkv)
    wk: Optional[Tensor]    # {n_embd, n_head_kv*head_dim}
    wv: Optional[Tensor]    # {n_embd, n_head_kv*head_dim}
    wo: Tensor              # {n_head*head_dim, n_embd}
    ffn_norm: Optional[Tensor]    # {n_embd} (None: falcon, whose FFN reads attn_norm's output)
    w_gate: Optional[Tensor]      # {n_embd, n_ff} (None: the "plain" FFNs, model/arch.py)
    w_up: Tensor            # {n_embd, n_ff}
    w_down: Optional[Tensor]      # {n_ff, n_embd}; None in PowerInfer files, which have:
    bq: Optional[Tensor] = None   # qwen2 attention biases
    bk: Optional[Tensor] = None
    bv: Optional[Tensor] = None
    w_down_t: Optional[Tensor] = None   # {n_embd, n_ff}: ffn_down_t, row i = neuron i's output
    fc1: Optional[Tensor] = None        # {n_embd, H}: activation predictor, first layer
    fc2: Optional[Tensor] = None        # {H, n_ff}: activation predictor, second layer
    attn_q_norm: Optional[Tensor] = None     # {head_dim}: RMS norm of each query head (gemma3)
    attn_k_norm: Optional[Tensor] = None     # {head_dim}: ... of each key head
    attn_post_norm: Optional[Tensor] = None  # {n_embd}: norm of the attention output (gemma)
    ffn_post_norm: Optional[Tensor] = None   # {n_embd}: norm of the FFN output (gemma)
    # LayerNorm architectures (falcon, opt, gpt-neox): norm biases, fused QKV, biases
    attn_norm_b: Optional[Tensor] = None     # {n_embd}
    attn_norm_2: Optional[Tensor] = None     # {n_embd}: falcon-40b's ln_attn (attn_norm: ln_mlp)
    attn_norm_2_b: Optional[Tensor] = None
    ffn_norm_b: Optional[Tensor] = None
    wqkv: Optional[Tensor] = None       # {n_embd, (n_head + 2 n_head_kv) head_dim}: q, k, v rows
    bqkv: Optional[Tensor] = None
    bo: Optional[Tensor] = None         # {n_embd}: attention output bias
    b_up: Optional[Tensor] = None       # {n_ff}
    b_down: Optional[Tensor] = None     # {n_embd}
    b_down_t: Optional[Tensor] = None   # {n_embd}: PowerInfer OPT's ffn_down_t.bias (= ffn_down's)
    # mixture of experts (model/moe.py), in place of w_gate/w_up/w_down
    ffn_gate_inp: Optional[Tensor] = None    # {n_embd, n_expert}: the router
    ffn_gate_exps: Optional[Tensor] = None   # {n_embd, n_ff_exp, n_expert}: expert e's gate is [:, :, e]
    ffn_up_exps: Optional[Tensor] = None     # {n_embd, n_ff_exp, n_expert}
    ffn_down_exps: Optional[Tensor] = None   # {n_ff_exp, n_embd, n_expert}
    ffn_gate_inp_shexp: Optional[Tensor] = None   # {n_embd, 1}: the shared expert's sigmoid gate
    ffn_gate_shexp: Optional[Tensor] = None  # {n_embd, n_ff_shexp}
    ffn_up_shexp: Optional[Tensor] = None    # {n_embd, n_ff_shexp}
    ffn_down_shexp: Optional[Tensor] = None  # {n_ff_shexp, n_embd}
    index: int = -1                          # the layer's number (names of its graph outputs)


@dataclass
class LlamaWeights:
    tok_embd: Tensor        # {n_embd, n_vocab}
    layers: List[LayerWeights]
    out_norm: Tensor        # {n_embd}
    output: Tensor          # {n_embd, n_vocab} (tok_embd when tied)
    rope_freqs: Optional[Tensor] = None   # {rope_dims/2} F32: Llama 3.1's RoPE frequency factors
    out_norm_b: Optional[Tensor] = None   # {n_embd}: the final LayerNorm's bias (norm "layer")
    pos_embd: Optional[Tensor] = None     # {n_embd, n_ctx_train + pos_offset}: learned positions (OPT)
    rope_long: Optional[Tensor] = None    # {rope_dims/2} F32: LongRoPE's factors for contexts
    rope_short: Optional[Tensor] = None   # longer than n_ctx_orig, and for the others (phi3)

    def rope_factors(self, cfg: ModelConfig, n_ctx: int) -> Optional[Tensor]:
        """The RoPE frequency factors of a context of n_ctx positions (llama.cpp's
        get_rope_factors: rope_freqs, else LongRoPE's long ones past n_ctx_orig, else short)."""
        if self.rope_freqs is not None:
            return self.rope_freqs
        n_ctx_seq = -(-n_ctx // 256) * 256      # llama.cpp pads the context to a multiple of 256
        return self.rope_long if n_ctx_seq > cfg.n_ctx_orig else self.rope_short

    @classmethod
    def from_gguf(cls, f: GGUFFile, cfg: ModelConfig, ctx: Context,
                  repack: bool = True) -> "LlamaWeights":
        """Wrap the file's tensors (no copy) in ``ctx`` (a no_alloc context).

        Each layer holds the tensors its architecture lists (model/arch.py: required,
        then optional ones when present). With ``repack``, the matrices only ever used
        as mul_mat weights (attention q/k/v/o, the dense FFN's gate/up/down, an untied
        output) that qualify (Q4_0 or Q4_K with rows % 8 == 0, see gs_tensor_repack) are
        repacked as llama.cpp does by default on x86 (its ``use_extra_bufts``: Q4_0
        into the interleaved-rows layout, Q4_K keeping its bytes, products in its
        repacked order), and the file pages they were read from are released.
        token_embd (read by get_rows), the FFNs of PowerInfer layers, ffn_up of
        CATS-calibrated files (sparse ops) and the stacked experts of MoE layers (mul_mat_id
        reads the file's layout) stay as mapped; an MoE layer's router and shared expert are
        ordinary products, repacked like the others."""
        spec = get_arch(cfg.arch)
        E, V = cfg.n_embd, cfg.n_vocab

        read = set()

        def wrap(name, ne, optional=False):
            if optional and f.get(name) is None:
                return None
            read.add(name)
            info = f.get(name)
            if ne is not None and (info is None or _squeezed(info.ne) != _squeezed(ne)):
                info = f.require(name, ne)      # raises: missing, or another shape
            if info is None:
                raise ModelLoadError(f"tensor '{name}' is missing")
            t = ctx.new_tensor(_weight_type(info.type, name), info.ne, name)
            t.set_data(info.data)
            return t

        layers = []
        required, may_hold = spec.layer_tensors(cfg.n_expert)
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            fields = dict.fromkeys(LAYER_TENSORS)
            powerinfer = f.get(p + LAYER_TENSORS["w_down_t"][0]) is not None
            for field_name in sorted(required | may_hold):
                suffix, shape = LAYER_TENSORS[field_name][0], spec.shape(field_name)
                # a PowerInfer layer holds ffn_down_t (and its bias) in place of ffn_down
                optional = field_name not in required or (field_name in POWERINFER_REPLACES and powerinfer)
                t = wrap(p + suffix, shape(cfg) if shape else None, optional)
                if t is not None and field_name in NORM_TENSORS:
                    _f32(t, p + suffix)
                fields[field_name] = t
            if spec.qkv_either and fields["wqkv"] is None and None in (fields["wq"], fields["wk"], fields["wv"]):
                raise ModelLoadError(f"layer {i} has neither {p}attn_qkv.weight nor all of {p}attn_q/k/v.weight")
            layers.append(LayerWeights(**fields, index=i))
        tok_embd = wrap("token_embd.weight", (E, V))
        output = wrap("output.weight", (E, V), optional=True) or tok_embd
        if repack:
            mats = [output] if output is not tok_embd else []
            # a CATS-calibrated file (model/sparse.py) reads ffn_up by rows (mul_mat_sparse)
            cats = CATS_THRESHOLDS_KEY in f.metadata
            for layer in layers:
                mats += [layer.wq, layer.wk, layer.wv, layer.wqkv, layer.wo]
                if layer.w_down_t is None and layer.fc1 is None:
                    mats += [layer.w_gate, layer.w_down] + ([] if cats else [layer.w_up])
                mats += [layer.ffn_gate_inp, layer.ffn_gate_shexp, layer.ffn_up_shexp, layer.ffn_down_shexp]
            for t in mats:
                if t is not None and t.can_repack:
                    mapped = f.get(t.name).data
                    t.repack()
                    _release_pages(mapped)
        rope_freqs, rope_long, rope_short = (
            _f32(wrap(name, (cfg.rope_dims // 2,), optional=True), name)
            for name in ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"))
        out_norm_b = None
        if spec.norm == "layer":
            out_norm_b = _f32(wrap("output_norm.bias", (E,)), "output_norm.bias")
        pos_embd = None
        if spec.pos_offset is not None:
            pos_embd = wrap("position_embd.weight", (E, cfg.n_ctx_train + spec.pos_offset))
        out_norm = _f32(wrap("output_norm.weight", (E,)), "output_norm.weight")
        unread = sorted(set(f.tensors) - read)
        if unread:
            # a variant of the architecture this engine does not run: refuse rather than ignore
            raise ModelLoadError(f"{cfg.arch}: the file holds tensors this engine does not use "
                                 f"({', '.join(unread[:4])}{', ...' if len(unread) > 4 else ''}): "
                                 "this variant of the architecture is not supported")
        return cls(tok_embd, layers, out_norm, output, rope_freqs, out_norm_b, pos_embd, rope_long, rope_short)


def _squeezed(ne) -> tuple:
    """A shape without its trailing 1s: ggml's {n, 1} and {n} are one shape (llama.cpp's
    converter writes ffn_gate_inp_shexp as {n_embd, 1}, its quantizer as {n_embd})."""
    ne = tuple(ne)
    while len(ne) > 1 and ne[-1] == 1:
        ne = ne[:-1]
    return ne


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


def _f32(t: Optional[Tensor], name: str) -> Optional[Tensor]:
    if t is not None and t.type != GGMLType.F32:
        raise ModelLoadError(f"tensor '{name}' must be F32, found {t.type.name}")
    return t


class ForwardGraph:
    """A planned forward pass for exactly ``n_tokens`` tokens.

    Inputs: ``tokens`` and ``pos`` (int32 numpy views, rewrite before run(); run() makes
    room in a short sliding-window cache for the positions); with several sequences,
    ``slots`` too: each token's row in its sequence's stream (seq * n_ctx + pos).
    Output: ``logits`` (float32 view, shape (n_outputs, n_vocab)) for the
    last ``n_outputs`` tokens; or, with ``embeddings``, the final normed
    hidden states (n_outputs, n_embd).
    """

    def __init__(self, cfg: ModelConfig, w: LlamaWeights, kv: KVCache, n_tokens: int,
                 n_outputs: int, n_threads: int, embeddings: bool = False,
                 ffn: Optional[FFN] = None, backends: Optional[list] = None, rowwise: bool = False):
        """`backends`: [CPU, device] to plan over (pyinfer.backend; the weights and caches
        placed on the device run there), None: the CPU alone. `rowwise`: every product in
        the single-row order (a batch of several sequences' tokens: gs_mul_mat_rowwise)."""
        self.n_tokens = n_tokens
        self.ctx = Context(mem_size=(4 << 20) + 96 * 1024 * cfg.n_layer)
        ctx = self.ctx
        ctx.rowwise_products = rowwise
        tokens = ctx.new_tensor(GGMLType.I32, (n_tokens,), "tokens")
        pos = ctx.new_tensor(GGMLType.I32, (n_tokens,), "pos")
        # the short sliding-window caches' slots (model/kv_cache.py), filled by run()
        slots = ctx.new_tensor(GGMLType.I32, (n_tokens,), "swa_slots") if kv.swa_rows else \
            ctx.new_tensor(GGMLType.I32, (n_tokens,), "kv_slots") if kv.n_seq > 1 else None
        hidden = build_forward(ctx, cfg, w, kv, tokens, pos, ffn or dense_ffn(cfg), n_outputs, slots)
        out = hidden if embeddings else logits(ctx, cfg, w, hidden)
        out.name = "embeddings" if embeddings else "logits"
        self.graph = Graph(ctx, max_nodes=64 + 56 * cfg.n_layer).build(out)
        self.backends = backends
        if backends:
            plan_backends(self.graph, backends, n_threads)
        else:
            self.graph.plan(n_threads)
        self.tokens = tokens.numpy()
        self.pos = pos.numpy()
        self.out = out.numpy()
        self.kv = kv
        self.slots = slots.numpy() if slots is not None else None

    def run(self, pool) -> None:
        if self.slots is not None and self.kv.swa_rows:
            self.kv.make_room(int(self.pos.min()), int(self.pos.max()))
            np.subtract(self.pos, self.kv.swa_base, out=self.slots)
        self.graph.compute(pool)

    def close(self) -> None:
        if self.backends and self.ctx._ptr is not None:
            release(self.graph)          # the device memory of its plan (the context does not hold it)
        self.ctx.close()


# compatibility names (the llama graph is now one architecture of build_forward)
build_llama = build_forward
