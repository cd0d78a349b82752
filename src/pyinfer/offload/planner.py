"""GPU placement under a VRAM budget (DESIGN.md fixed decision 7).

Two modes, both exact: every device byte (tensors, KV caches, hot-neuron slices, scratch) is
counted with its alignment, the arena rounding included, and a plan never exceeds its budget.

* `plan_hybrid` (PowerInfer models, or any model given a `vram_budget`): the forward's scratch
  is reserved, then whole tensors go to the GPU in priority order - attention, predictors,
  norms, output, KV cache (layer by layer within a kind) - until the first one that does not
  fit; what is left is filled with hot-neuron FFN slices taken from the GPU index's per-layer
  neuron lists (each list in priority order), the same share of every layer's list, topped up
  one neuron at a time. Everything not placed runs on the CPU.
* `plan_layers` (`n_gpu_layers`, as llama.cpp's -ngl): the last n layers go to the GPU whole
  (with their KV caches); more than n_layer (or -1) adds the output norm and matrix. A request
  that does not fit the budget is an error, never a silent downgrade.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .budget import arena_bytes, ffn_slice_bytes, part, scratch_parts
from .experts import LayerExperts, expert_values, fill_experts
from .model_spec import ModelSpec, check_hot_neurons, is_expert_tensor

PRIORITY = ("attention", "predictor", "norm", "output", "kv")


class OffloadBudgetError(ValueError):
    """A placement that was asked for explicitly (n_gpu_layers) does not fit the budget."""


@dataclass
class Item:
    """One dense unit of placement: a tensor, or a layer's KV cache (kind "kv")."""
    name: str
    kind: str
    layer: Optional[int]
    nbytes: int               # device bytes it takes (aligned parts)
    on_gpu: bool = False


@dataclass
class LayerSlice:
    """A layer's hot-neuron slice: neuron ids on the GPU (ascending) and its bytes."""
    layer: int
    n_ff: int
    hot: np.ndarray
    nbytes: int
    requested: int            # neurons the GPU index listed for this layer

    def gpu_idx(self) -> np.ndarray:
        """PowerInfer's gpu_idx: I32 [n_ff], 1 for neurons on the GPU (the CPU's skip)."""
        g = np.zeros(self.n_ff, dtype=np.int32)
        g[self.hot] = 1
        return g


@dataclass
class OffloadPlan:
    mode: str                          # "hybrid" or "layers"
    budget: int
    items: List[Item]
    slices: List[LayerSlice]
    scratch: int                       # forward scratch reserved (0 when nothing is placed)
    gpu_layers: List[int] = field(default_factory=list)   # mode "layers": whole layers
    notes: List[str] = field(default_factory=list)
    # MoE models (offload/experts.py): per layer the experts' device slots (mode "hybrid"),
    # the experts per layer, and n_cpu_moe (the first layers whose experts stay on the CPU)
    experts: List[LayerExperts] = field(default_factory=list)
    n_expert: int = 0
    n_cpu_moe: int = 0

    @property
    def parts_total(self) -> int:
        return self.scratch + sum(i.nbytes for i in self.items if i.on_gpu) + \
            sum(s.nbytes for s in self.slices) + sum(e.nbytes for e in self.experts)

    def experts_of(self, layer: int) -> Optional[LayerExperts]:
        return next((e for e in self.experts if e.layer == layer), None)

    @property
    def device_bytes(self) -> int:
        """The arena the plan allocates: what the device loses, <= budget."""
        t = self.parts_total
        return arena_bytes(t) if t else 0

    def gpu_bytes_of(self, layer: Optional[int]) -> int:
        """Device bytes of one layer's items and slice (None: the global ones)."""
        n = sum(i.nbytes for i in self.items if i.on_gpu and i.layer == layer)
        return n + sum(s.nbytes for s in self.slices if s.layer == layer) + \
            sum(e.nbytes for e in self.experts if e.layer == layer)


def dense_items(spec: ModelSpec, with_ffn: bool) -> List[Item]:
    """The model's dense units in priority order (FFN weights last, embedding never)."""
    items = []
    for kind in PRIORITY:
        if kind == "kv":
            items += [Item(f"blk.{i}.kv_cache", "kv", i, spec.kv_bytes[i]) for i in range(spec.n_layer)]
            continue
        ts = [t for t in spec.tensors if t.kind == kind]
        ts.sort(key=lambda t: (t.layer is None, t.layer if t.layer is not None else 0, t.name))
        items += [Item(t.name, kind, t.layer, part(t.nbytes)) for t in ts]
    if with_ffn:
        items += [Item(t.name, "ffn", t.layer, part(t.nbytes)) for t in spec.tensors if t.kind == "ffn"]
    return items


def _logits_part(spec: ModelSpec) -> int:
    s = spec.scratch
    return part(4 * s.n_vocab * s.n_batch)


def _check_n_cpu_moe(n_cpu_moe) -> int:
    if not isinstance(n_cpu_moe, (int, np.integer)) or isinstance(n_cpu_moe, bool) or n_cpu_moe < 0:
        raise ValueError(f"n_cpu_moe must be an integer >= 0, got {n_cpu_moe!r}")
    return int(n_cpu_moe)


def plan_hybrid(spec: ModelSpec, budget: int,
                hot_neurons: Optional[Sequence[np.ndarray]] = None,
                expert_counts: Optional[Sequence[np.ndarray]] = None, n_cpu_moe: int = 0,
                expert_slots: Optional[int] = None) -> OffloadPlan:
    """Dense tensors by priority, then hot-neuron slices from `hot_neurons` (per layer, ids in
    priority order; None: no GPU index, the FFN stays on the CPU). MoE models: then whole
    experts by their routing frequency (`expert_counts`, per layer; None: uniform), none in
    layers < n_cpu_moe, at most `expert_slots` per layer (offload/experts.py)."""
    n_cpu_moe = _check_n_cpu_moe(n_cpu_moe)
    plan = OffloadPlan("hybrid", budget, dense_items(spec, with_ffn=False), [], 0,
                       n_expert=spec.n_expert, n_cpu_moe=n_cpu_moe)
    base = sum(scratch_parts(spec.scratch, output_on_gpu=False, dense_ffn_on_gpu=False))
    if arena_bytes(base) > budget:
        plan.notes.append(f"the budget ({budget} B) does not hold the forward's scratch "
                          f"({base} B): everything runs on the CPU")
        return plan
    plan.scratch = base
    used = base
    for it in plan.items:
        extra = _logits_part(spec) if it.kind == "output" else 0
        if arena_bytes(used + it.nbytes + extra) > budget:
            plan.notes.append(f"dense placement stopped at {it.name} ({it.nbytes} B): the rest "
                              "of the dense tensors run on the CPU")
            break
        it.on_gpu = True
        used += it.nbytes
        plan.scratch += extra
        used += extra
    if spec.n_expert:
        plan.experts, moe_scratch = fill_experts(spec, budget, used, expert_values(spec, expert_counts),
                                                 n_cpu_moe, expert_slots)
        plan.scratch += moe_scratch
        used += moe_scratch + sum(e.nbytes for e in plan.experts)
    if hot_neurons is None:
        if spec.sparse:
            plan.notes.append("no GPU index: every FFN neuron runs on the CPU")
        return plan
    hot = check_hot_neurons(hot_neurons, spec.n_layer, spec.n_ff)
    counts = _fill_slices(spec, hot, budget, used)
    for i, n in enumerate(counts):
        if n:
            plan.slices.append(LayerSlice(i, spec.n_ff, np.sort(hot[i][:n]).astype(np.int32),
                                          ffn_slice_bytes(spec.ffn_rows[i], n, spec.n_embd, spec.n_ff),
                                          len(hot[i])))
    short = sum(len(h) for h in hot) - sum(counts)
    if short > 0:
        plan.notes.append(f"{short} neurons of the GPU index did not fit the budget: they run on the "
                          "CPU (an index made for a larger budget; regenerate it for this one)")
    return plan


def _fill_slices(spec: ModelSpec, hot: List[np.ndarray], budget: int, used: int) -> List[int]:
    """How many neurons of each layer's list fit: the largest common share, then one more
    neuron per layer in turn while the arena still fits the budget."""
    lens = [len(h) for h in hot]
    top = max(lens, default=0)

    def counts_at(k: int) -> List[int]:
        return [min(n, -(-k * n // top)) for n in lens] if top else [0] * len(lens)

    def total(counts: List[int]) -> int:
        return used + sum(ffn_slice_bytes(spec.ffn_rows[i], c, spec.n_embd, spec.n_ff)
                          for i, c in enumerate(counts))

    lo, hi = 0, top
    while lo < hi:                     # largest k whose share fits
        mid = (lo + hi + 1) // 2
        if arena_bytes(total(counts_at(mid))) <= budget:
            lo = mid
        else:
            hi = mid - 1
    counts = counts_at(lo)
    grown = True
    while grown:
        grown = False
        for i in range(len(counts)):
            if counts[i] < lens[i]:
                counts[i] += 1
                if arena_bytes(total(counts)) <= budget:
                    grown = True
                else:
                    counts[i] -= 1
    return counts


def plan_layers(spec: ModelSpec, budget: int, n_gpu_layers: int, n_cpu_moe: int = 0) -> OffloadPlan:
    """Whole layers on the GPU, as llama.cpp's -ngl: layers n_layer - n .. n_layer - 1; n >
    n_layer or n < 0 adds the output norm and output matrix; the expert tensors of layers <
    n_cpu_moe stay on the CPU (llama.cpp's --n-cpu-moe). OffloadBudgetError when the request
    does not fit."""
    n_cpu_moe = _check_n_cpu_moe(n_cpu_moe)
    L = spec.n_layer
    n = L + 1 if n_gpu_layers < 0 else min(n_gpu_layers, L + 1)
    layers = list(range(L - min(n, L), L))
    with_output = n > L
    plan = OffloadPlan("layers", budget, dense_items(spec, with_ffn=True), [], 0, layers,
                       n_expert=spec.n_expert, n_cpu_moe=n_cpu_moe)
    if not layers and not with_output:
        return plan
    for it in plan.items:
        it.on_gpu = (it.layer in layers) if it.layer is not None else \
            (with_output and it.kind in ("output", "norm"))
        if it.on_gpu and it.layer is not None and it.layer < n_cpu_moe and is_expert_tensor(it.name):
            it.on_gpu = False
    plan.scratch = sum(scratch_parts(spec.scratch, output_on_gpu=with_output, dense_ffn_on_gpu=bool(layers)))
    if plan.device_bytes > budget:
        raise OffloadBudgetError(
            f"n_gpu_layers={n_gpu_layers} needs {plan.device_bytes / 2**20:.1f} MiB of VRAM "
            f"(weights, KV cache and scratch), the budget is {budget / 2**20:.1f} MiB: lower "
            "n_gpu_layers or raise vram_budget")
    return plan


def summary(plan: OffloadPlan) -> Dict[str, int]:
    """Device bytes by kind ("scratch", "slices" and the item kinds)."""
    out: Dict[str, int] = {"scratch": plan.scratch, "slices": sum(s.nbytes for s in plan.slices)}
    if plan.experts:
        out["experts"] = sum(e.nbytes for e in plan.experts)
    for it in plan.items:
        if it.on_gpu:
            out[it.kind] = out.get(it.kind, 0) + it.nbytes
    return out
