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
only their ids are there. With an ``expert_map`` (model/moe_hybrid.py's LayerSlots: some
experts in device slots, an I32 {n_expert} -> slot map, its complement on the CPU) the experts'
products run split: ``map_ids`` turns the ids into slots for the device and into the
complementary ids for the CPU, each ``mul_mat_id`` gives zero rows for the other's choices, and
the two are added before ``moe_sum``: bit-identical to the CPU-only FFN (moe_hybrid.py says
why).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional

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
                  expert_map: Optional[Any] = None) -> Tensor:
    """The MoE FFN of `layer` on h {n_embd, T} (the ffn_norm'ed residual): {n_embd, T}.
    `expert_map`: a moe_hybrid.LayerSlots (gate/up/down slot tensors, device_map, cpu_map):
    the slots' experts computed from the slots, the others from the layer's tensors."""
    if isinstance(expert_map, Tensor):
        raise NotImplementedError("expert_map: a bare id -> slot map is not enough; pass the layer's slots "
                                  "(model/moe_hybrid.py LayerSlots: slot tensors, device and CPU maps)")
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
    if expert_map is None:
        down = experts_ffn(ctx, layer.ffn_gate_exps, layer.ffn_up_exps, layer.ffn_down_exps, hb, ids)
    else:           # the device's part first: the scheduler starts it, the CPU's runs meanwhile
        m = expert_map
        d_dev = experts_ffn(ctx, m.gate, m.up, m.down, hb, ctx.map_ids(ids, m.device_map))
        d_cpu = experts_ffn(ctx, layer.ffn_gate_exps, layer.ffn_up_exps, layer.ffn_down_exps, hb,
                            ctx.map_ids(ids, m.cpu_map))
        down = ctx.add(d_dev, d_cpu)
    out = ctx.moe_sum(down, weights)
    if layer.ffn_gate_inp_shexp is not None:
        out = ctx.add(out, shared_expert(ctx, layer, h))
    return out


def experts_ffn(ctx: Context, gate_exps: Tensor, up_exps: Tensor, down_exps: Tensor, hb: Tensor,
                ids: Tensor) -> Tensor:
    """down_exps[ids] . silu(gate_exps[ids] . hb) * (up_exps[ids] . hb): {n_embd, k, T} (rows of
    ids -1 are zero)."""
    act = ctx.glu(ctx.mul_mat_id(gate_exps, hb, ids), ctx.mul_mat_id(up_exps, hb, ids), Unary.SILU)
    return ctx.mul_mat_id(down_exps, act, ids)


def shared_expert(ctx: Context, layer: "LayerWeights", h: Tensor) -> Tensor:
    """sigmoid(ffn_gate_inp_shexp . h) * (down_shexp . silu(gate_shexp . h) * (up_shexp . h))."""
    gate = ctx.unary(ctx.mul_mat(layer.ffn_gate_inp_shexp, h), Unary.SIGMOID)     # {1, T}
    act = ctx.glu(ctx.mul_mat(layer.ffn_gate_shexp, h), ctx.mul_mat(layer.ffn_up_shexp, h), Unary.SILU)
    return ctx.mul(ctx.mul_mat(layer.ffn_down_shexp, act), gate)


def moe_ffn(cfg: ModelConfig) -> "FFN":
    """build_moe_ffn as an FFN builder (model/forward.py's FFN: (ctx, layer, x, h))."""
    return lambda ctx, layer, x, h: build_moe_ffn(ctx, cfg, layer, h)
