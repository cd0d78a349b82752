"""The mixture-of-experts FFN (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) as a ggml_sparse graph.

For the normed hidden states h {n_embd, T} of a layer with n_expert experts of which each
token runs k (llama.cpp's build_moe_ffn, operation for operation):

    logits  = ffn_gate_inp . h                      {n_expert, T}   the router
    probs   = softmax(logits)   (sigmoid where the file's expert_gating_func says)
    ids     = top_k(probs, k)                       {k, T}   by descending probability,
                                                             ties to the lower expert id
    w       = probs[ids]  (/ their sum where expert_weights_norm) (* expert_weights_scale)
    gate/up = ffn_{gate,up}_exps[ids] . h           {n_ff_exp, k, T}  (mul_mat_id, every chosen
                                                             expert reads the token's one row)
    down    = ffn_down_exps[ids] . silu(gate) * up  {n_embd, k, T}   (row u of token t by its
                                                             own expert)
    out     = sum over u of down[u] * w[u]          {n_embd, T}

plus, where the layer has one (qwen2moe), the shared expert every token runs, scaled by its
sigmoid gate: out += sigmoid(ffn_gate_inp_shexp . h) * down_shexp . silu(gate_shexp . h) *
(up_shexp . h).

The router's choice is a named output of the graph, ``moe_ids.<layer>`` (I32 {k, T}; its
memory is not reused), so that a caller can read which experts each token used after a
compute (``routing_ids``: routing traces for expert placement). In the last layer of a graph
with fewer outputs than tokens only the output tokens run the FFN (as in llama.cpp), so
only their ids are there. The builder's signature takes an ``expert_map`` (I32 {n_expert}:
where each expert's weights live, -1 where they are not) for a later placement layer, which
will route the ids through it (``map_ids``); experts are not placed yet, and passing a map
raises NotImplementedError.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional

import numpy as np

from ..config import GATING_FUNCS, ModelConfig
from ..tensor import Context, Graph, Tensor, Unary

if TYPE_CHECKING:
    from .forward import FFN
    from .llama import LayerWeights


def ids_name(layer: int) -> str:
    """The graph name of layer `layer`'s chosen expert ids."""
    return f"moe_ids.{layer}"


def routing_ids(graph: Graph) -> Dict[int, np.ndarray]:
    """layer -> the experts its tokens chose in `graph`'s last compute: int32 views of shape
    (T, k), row t the ids of token t by descending router probability."""
    out = {}
    for t in graph.nodes:
        if t.name.startswith("moe_ids."):
            out[int(t.name[len("moe_ids."):])] = t.numpy()
    return out


def build_moe_ffn(ctx: Context, cfg: ModelConfig, layer: "LayerWeights", h: Tensor,
                  expert_map: Optional[Tensor] = None) -> Tensor:
    """The MoE FFN of `layer` on h {n_embd, T} (the ffn_norm'ed residual): {n_embd, T}."""
    if expert_map is not None:
        raise NotImplementedError("expert placement (expert_map) is not implemented yet")
    n_embd = h.ne[0]
    n_tokens = h.ne[1] if len(h.ne) > 1 else 1
    k = cfg.n_expert_used
    logits = ctx.mul_mat(layer.ffn_gate_inp, h)
    if GATING_FUNCS[cfg.expert_gating_func] == "sigmoid":
        probs = ctx.unary(logits, Unary.SIGMOID)
    else:
        probs = ctx.soft_max(logits)
    ids = ctx.top_k(probs, k)
    ids.name = ids_name(layer.index)
    ids.set_output()            # kept (not reused by later nodes): readable after a compute
    scale = cfg.expert_weights_scale or 1.0
    weights = ctx.moe_weights(probs, ids, cfg.expert_weights_norm, scale)
    hb = ctx.reshape(h, (n_embd, 1, n_tokens))
    gate = ctx.mul_mat_id(layer.ffn_gate_exps, hb, ids)
    up = ctx.mul_mat_id(layer.ffn_up_exps, hb, ids)
    act = ctx.glu(gate, up, Unary.SILU)
    down = ctx.mul_mat_id(layer.ffn_down_exps, act, ids)
    out = ctx.moe_sum(down, weights)
    if layer.ffn_gate_inp_shexp is not None:
        out = ctx.add(out, shared_expert(ctx, layer, h))
    return out


def shared_expert(ctx: Context, layer: "LayerWeights", h: Tensor) -> Tensor:
    """sigmoid(ffn_gate_inp_shexp . h) * (down_shexp . silu(gate_shexp . h) * (up_shexp . h))."""
    gate = ctx.unary(ctx.mul_mat(layer.ffn_gate_inp_shexp, h), Unary.SIGMOID)     # {1, T}
    act = ctx.glu(ctx.mul_mat(layer.ffn_gate_shexp, h), ctx.mul_mat(layer.ffn_up_shexp, h), Unary.SILU)
    return ctx.mul(ctx.mul_mat(layer.ffn_down_shexp, act), gate)


def moe_ffn(cfg: ModelConfig) -> "FFN":
    """build_moe_ffn as an FFN builder (model/forward.py's FFN: (ctx, layer, x, h))."""
    return lambda ctx, layer, x, h: build_moe_ffn(ctx, cfg, layer, h)
