"""Carrying out an OffloadPlan on a device backend (pyinfer/backend.py).

`place_plan` moves what the plan puts on the device into the device's memory: the weights it
lists (by their GGUF names) and the KV caches of its layers. From then on the forward graphs
are planned over [CPU, device] (model/llama.py's ForwardGraph with `backends`): every node runs
where its weight lives, and the scheduler copies what crosses a boundary (gs_backend.h). The
device's memory is the budget: an arena of exactly that many bytes, so a plan whose accounting
were wrong would fail to place or to plan, never use more.

Hot-neuron slices (the hybrid FFN of `plan_hybrid`) run through `attach_hybrid`: each layer's
hot rows on the device and its cold ones on the CPU at the same time (model/sparse_hybrid.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional

from .. import backend as _backend
from ..backend import Backend, place
from ..tensor import Tensor
from .planner import OffloadPlan

TIED_OUTPUT = "token_embd.weight (as output)"    # model_spec's name of a tied output matrix


@dataclass
class Placement:
    """What `place_plan` put on the device."""
    device: str
    tensors: List[str] = field(default_factory=list)    # GGUF names of the weights placed
    kv_layers: List[int] = field(default_factory=list)
    bytes_placed: int = 0
    notes: List[str] = field(default_factory=list)
    released: bool = False              # the engine closed: the device memory was given back


def weight_tensors(weights) -> Dict[str, Tensor]:
    """Every weight Tensor of a LlamaWeights by its GGUF name."""
    out: Dict[str, Tensor] = {}

    def add(obj):
        for f in fields(obj):
            t = getattr(obj, f.name)
            if isinstance(t, Tensor):
                out.setdefault(t.name, t)
    add(weights)
    for layer in weights.layers:
        add(layer)
    return out


def _untie_output(weights, ctx, f) -> Tensor:
    """A separate Tensor for a tied output matrix (the embedding's bytes in the file), so that
    the device holds its own copy while the embedding lookup stays on the host."""
    emb = weights.tok_embd
    out = ctx.new_tensor(emb.type, emb.ne, "output.weight (tied)")
    out.set_data(f.get("token_embd.weight").data)
    weights.output = out
    return out


def place_plan(plan: OffloadPlan, weights, kv, device: Backend, ctx, f) -> Placement:
    """Move the plan's device tensors and KV caches to `device` (GSMemoryError when they do
    not fit its memory: the plan's accounting is checked by construction). `ctx`, `f`: the
    weights' context and GGUF file (a tied output matrix gets a second tensor there)."""
    by_name = weight_tensors(weights)
    result = Placement(device.name)
    for it in plan.items:
        if not it.on_gpu:
            continue
        if it.kind == "kv":
            for t in (kv.k[it.layer], kv.v[it.layer]):
                place(t, device)
                result.bytes_placed += t.nbytes
            result.kv_layers.append(it.layer)
            continue
        t = _untie_output(weights, ctx, f) if it.name == TIED_OUTPUT else by_name.get(it.name)
        if t is None:        # a tensor of the file the engine does not hold (none today)
            result.notes.append(f"{it.name}: planned for the device but not used by the engine")
            continue
        place(t, device)
        result.tensors.append(it.name)
        result.bytes_placed += t.nbytes
    return result


def attach_hybrid(engine, threshold: Optional[float]):
    """The hybrid FFN (model/sparse_hybrid.py) of an engine whose plan has hot-neuron slices:
    (ffn builder, HotSlices) with the slices placed on the engine's device, or (None, None)
    with a note when the model's FFN cannot run hybrid (not a PowerInfer model run sparsely)."""
    from ..model.sparse_hybrid import HotSlices, hybrid_ffn, layer_positions
    plan, placement = engine.offload_plan, engine.placement
    if not plan.slices:
        return None, None
    if threshold is None or engine.ffn is None:
        placement.notes.append("hot neurons are planned for the device, but this model's FFN does not "
                               "run sparsely (dense=True, or not a PowerInfer model): it runs on the CPU")
        return None, None
    hot = HotSlices(engine.weights, plan.slices, engine.device)
    placement.bytes_placed += hot.nbytes
    ffn = hybrid_ffn(engine.ffn, hot, layer_positions(engine.weights), threshold=threshold,
                     both_relu=engine.cfg.arch == "bamboo")
    return ffn, hot


def attach_experts(engine):
    """The hybrid MoE FFN (model/moe_hybrid.py) of an engine whose plan places experts:
    (ffn builder, ExpertSlots, ExpertCache or None), the slots filled with the plan's experts on
    the engine's device; with the settings' extra `expert_cache` (True or "lru"; "pinned": half
the slots keep the plan's hottest experts) the slots run as a cache
    (offload/expert_cache.py) fed after every forward (Engine.forward_hooks). (None, None, None)
    when the plan places no expert."""
    from ..model.moe import routing_ids
    from ..model.moe_hybrid import ExpertSlots, hybrid_moe_ffn
    from .expert_cache import ExpertCache
    plan, placement = engine.offload_plan, engine.placement
    if not plan.experts:
        return None, None, None
    slots = ExpertSlots(engine.weights, plan.experts, engine.device)
    placement.bytes_placed += slots.nbytes
    cache = None
    policy = engine.settings.extra.get("expert_cache")
    if policy:
        cache = ExpertCache(engine.weights, slots, "lru" if policy is True else policy)
        engine.forward_hooks.append(lambda g: cache.after_forward(routing_ids(g.graph)))
    return hybrid_moe_ffn(engine.cfg, slots), slots, cache


def unplace_all(placement: Placement, weights, kv) -> None:
    """Give the device memory of a placement back (the engine closes; nothing is copied
    back: the weights' host bytes are the file's, the caches are being freed)."""
    if placement.released:
        return
    by_name = weight_tensors(weights)
    for name in placement.tensors:
        t = weights.output if name == TIED_OUTPUT else by_name.get(name)
        if t is not None:
            _backend.unplace(t)
    for i in placement.kv_layers:
        _backend.unplace(kv.k[i])
        _backend.unplace(kv.v[i])
    placement.released = True
